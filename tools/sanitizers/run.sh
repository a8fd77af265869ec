#!/usr/bin/env bash
# The C-ABI stress test (tests/c_abi/stress.rs: threads creating, using and freeing models and sessions,
# frees racing use) under AddressSanitizer and ThreadSanitizer (issue 17). A run passes only with zero
# sanitizer reports. Each sanitizer first runs a negative control built with the same flags and options
# (use_after_free.rs, racy.rs) that it must report, so a clean stress run cannot come from a sanitizer that
# is silently off.
#
#   bash tools/sanitizers/run.sh              # AddressSanitizer (CI, from tools/test.sh)
#   bash tools/sanitizers/run.sh thread       # ThreadSanitizer: NOT clean yet, not in CI (below)
#
# ThreadSanitizer status (2026-12-04): its negative control is reported, but the stress test gives ~350-450
# reports per run and takes 263-313 s here. The ones read were false positives of the uninstrumented std:
# synchronisation TSan cannot see (rayon's LockLatch = std Mutex + Condvar; Arc's drop fence), e.g. a
# rayon worker reading the stack of the thread that started `backend::cpu::load_weights`, then that thread
# reusing its stack in `ffi::check_live`. They name rayon and qwen-rt frames, not std ones, so tsan.supp
# (std internals only) cannot cover them without hiding real races. Needs -Zbuild-std (rust-src), or
# classifying every report; until then CI runs AddressSanitizer only.
#
# Nightly toolchain (`-Zsanitizer`; the image has one next to stable). The standard library is the
# prebuilt, uninstrumented one: the image's nightly has no rust-src component and static.rust-lang.org is
# not reachable here, so `-Zbuild-std` is impossible. Hence `-Cunsafe-allow-abi-mismatch=sanitizer`
# (rustc refuses to link sanitized crates against an unsanitized std without it) and, for ThreadSanitizer,
# tsan.supp (suppressions limited to std internals, each with its reason; empty while none is needed).
# CPU backend only: no CUDA kernels are built. Builds go to $QWEN_TOOLS/sanitizer-target/<sanitizer>
# (default /tmp/qwen-ci-tools), so later runs on the same machine rebuild only what changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}
TARGET=x86_64-unknown-linux-gnu   # explicit, so RUSTFLAGS reach only target crates (not build scripts)
SANS=("$@")
[ ${#SANS[@]} -gt 0 ] || SANS=(address)
if ! rustup toolchain list | grep -q '^nightly'; then
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
  RUSTFLAGS="$flags" cargo +nightly test -q --target "$TARGET" --target-dir "$T/sanitizer-target/$san" \
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
  echo "sanitizers: $san: control reported, stress test clean ($(( $(date +%s) - start )) s with the build)"
done
