#!/usr/bin/env bash
# The C-ABI stress test (tests/c_abi/stress.rs: threads creating, using and freeing models and sessions,
# frees racing use) under AddressSanitizer and ThreadSanitizer (issue 17). A run passes only with zero
# sanitizer reports. Each sanitizer first runs a negative control with the same sanitizer options
# (use_after_free.rs, racy.rs; built by rustc against the prebuilt std) that it must report, and the stress
# binary is checked for the sanitizer's runtime, so a clean stress run cannot come from a sanitizer
# that is silently off.
#
#   bash tools/sanitizers/run.sh                  # AddressSanitizer
#   bash tools/sanitizers/run.sh thread           # ThreadSanitizer
#   bash tools/sanitizers/run.sh address thread   # both (CI, from tools/test.sh)
#
# Nightly toolchain (`-Zsanitizer`; the image has one next to stable).
# - AddressSanitizer links against the prebuilt, uninstrumented standard library, hence
#   `-Cunsafe-allow-abi-mismatch=sanitizer` (rustc refuses to link sanitized crates against an
#   unsanitized std without it); ASan needs nothing from std's side to be exact.
# - ThreadSanitizer needs an instrumented std: without it TSan cannot see the synchronisation inside
#   std (Mutex + Condvar under rayon's LockLatch, Arc's drop fence) and reported ~350-450 false races per
#   run (2026-12-04). So it builds std itself (`-Zbuild-std`, the nightly's `rust-src` component, which
#   this script adds with rustup when missing): 0 reports, 2026-12-04.
#   If `rust-src` cannot be installed (no network to static.rust-lang.org), the thread run fails, or with
#   QWEN_TSAN_OPTIONAL=1 (tools/test.sh) prints "NOT RUN" loudly and goes on: never reported as passed.
# tsan.supp: suppressions limited to std internals, each with its reason; empty: none is needed.
# CPU backend only: no CUDA kernels are built. Builds go to $QWEN_TOOLS/sanitizer-target/<sanitizer>
# (default /tmp/qwen-ci-tools), so later runs on the same machine rebuild only what changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}
TARGET=x86_64-unknown-linux-gnu   # explicit, so RUSTFLAGS reach only target crates (not build scripts)
SANS=("$@")
[ ${#SANS[@]} -gt 0 ] || SANS=(address)
if ! grep -q '^nightly' <<<"$(rustup toolchain list)"; then
  echo "sanitizers: no nightly toolchain; install one with: rustup toolchain install nightly" >&2
  exit 1
fi
unset QWEN_REQUIRE_KERNELS CUDA_HOME CUDA_PATH NVCC
export RUST_BACKTRACE=0
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=0:exitcode=66:suppressions=$PWD/tools/sanitizers/tsan.supp"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for san in "${SANS[@]}"; do
  case "$san" in
    address) control=use_after_free; report="ERROR: AddressSanitizer: heap-use-after-free" ;;
    thread) control=racy; report="WARNING: ThreadSanitizer: data race" ;;
    *) echo "sanitizers: unknown sanitizer $san (address or thread)" >&2; exit 2 ;;
  esac
  flags="-Zsanitizer=$san -Cunsafe-allow-abi-mismatch=sanitizer"
  build_std=() target_dir="$T/sanitizer-target/$san"
  if [ "$san" = thread ]; then
    if ! grep -q '^rust-src' <<<"$(rustup component list --toolchain nightly --installed 2>/dev/null)" &&
       ! timeout 300 rustup component add rust-src --toolchain nightly >"$work/rust-src.log" 2>&1; then
      tail -5 "$work/rust-src.log" >&2
      if [ "${QWEN_TSAN_OPTIONAL:-0}" = 1 ]; then
        echo "sanitizers: thread: NOT RUN — the nightly's rust-src component (for -Zbuild-std) could not be installed" >&2
        continue
      fi
      echo "sanitizers: thread: needs the nightly's rust-src component: rustup component add rust-src --toolchain nightly" >&2
      exit 1
    fi
    build_std=(-Zbuild-std) target_dir="$T/sanitizer-target/thread-std"
  fi
  start=$(date +%s)
  # Negative control: must fail with the sanitizer's report.
  rustc +nightly --edition 2021 -g $flags --target "$TARGET" -o "$work/$control" "tools/sanitizers/$control.rs"
  if "$work/$control" >"$work/control.log" 2>&1; then
    echo "sanitizers: $san: the negative control $control.rs exited 0: the sanitizer is not working" >&2
    exit 1
  fi
  if ! grep -q "$report" "$work/control.log"; then
    tail -20 "$work/control.log" >&2
    echo "sanitizers: $san: the negative control $control.rs failed without \"$report\"" >&2
    exit 1
  fi
  # The stress test.
  rc=0
  test_flags="$flags"
  [ "$san" = thread ] && test_flags="-Zsanitizer=thread"   # std is built with it: no mismatch to allow
  touch "$work/stamp"
  RUSTFLAGS="$test_flags" cargo +nightly test -q "${build_std[@]}" --target "$TARGET" --target-dir "$target_dir" \
    --test c_abi -- stress >"$work/stress.log" 2>&1 || rc=$?
  reports=$(grep -c -E "^(WARNING: ThreadSanitizer|==[0-9]+==ERROR: (Address|Leak)Sanitizer)" "$work/stress.log" || true)
  if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    grep -v '^\s*$' "$work/stress.log" | tail -80 >&2
    echo "sanitizers: $san: the C-ABI stress test FAILED (exit $rc, $reports sanitizer reports)" >&2
    exit 1
  fi
  if ! grep -q "test stress::threads_create_use_and_free_models_and_sessions_concurrently ... ok\|1 passed" "$work/stress.log"; then
    tail -20 "$work/stress.log" >&2
    echo "sanitizers: $san: the stress test did not run" >&2
    exit 1
  fi
  # The test binary that ran must have been built with the sanitizer (its runtime linked in).
  bin=$(ls -t "$target_dir/$TARGET/debug/deps"/c_abi-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
  probe=$([ "$san" = thread ] && echo __tsan_read || echo __asan_report_load)
  found=0
  [ -n "$bin" ] && found=$( (nm "$bin" 2>/dev/null || true) | grep -c "$probe" || true)
  if [ "$found" -eq 0 ]; then
    echo "sanitizers: $san: the stress test binary ${bin:-(not found)} has no $probe (sanitizer runtime)" >&2
    exit 1
  fi
  echo "sanitizers: $san: control reported, stress test clean, sanitizer runtime linked ($(( $(date +%s) - start )) s with the build)"
done
