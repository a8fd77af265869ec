#!/usr/bin/env bash
# Bounded fuzz smoke run for CI (FUZZING.md): builds the cargo-fuzz targets of fuzz/ (nightly, libFuzzer,
# AddressSanitizer, debug assertions) and runs each on its committed corpus for QWEN_FUZZ_SECS seconds
# (default 12; 4 targets = 48 s), with a 10 s time bound per input (a hang is a failure). Any crash,
# assertion failure, leak, timeout or OOM fails the script (libFuzzer exits non-zero) and leaves the input
# in fuzz/artifacts/<target>/.
#
#   tools/fuzz_smoke.sh                  # what CI runs
#   QWEN_FUZZ_SECS=600 tools/fuzz_smoke.sh chat     # longer, one target
#
# Installs cargo-fuzz (pinned) into $QWEN_TOOLS/cargo-fuzz on first use; builds into
# $QWEN_TOOLS/fuzz-target so later runs on the same machine only rebuild what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}
CARGO_FUZZ_VERSION=0.13.2
if ! grep -q '^nightly' <<<"$(rustup toolchain list)"; then
  echo "fuzz_smoke: no nightly toolchain; install one with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! "$T/cargo-fuzz/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install -q cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$T/cargo-fuzz"
fi
export PATH="$T/cargo-fuzz/bin:$PATH"
# The fuzz targets run on the CPU: no CUDA kernels (no minutes in nvcc, no QWEN_REQUIRE_KERNELS error).
unset QWEN_REQUIRE_KERNELS CUDA_HOME CUDA_PATH NVCC
TARGET_DIR="$T/fuzz-target"
SECS=${QWEN_FUZZ_SECS:-12}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(checkpoint tokenizer chat c_abi)

cd fuzz
log=$(mktemp)
start=$(date +%s)
if ! cargo +nightly fuzz build --debug-assertions --target-dir "$TARGET_DIR" >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "fuzz_smoke: build failed" >&2
  exit 1
fi
echo "fuzz_smoke: build took $(( $(date +%s) - start )) s"
[ "${QWEN_FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

for t in "${TARGETS[@]}"; do
  work=$(mktemp -d)   # new inputs go here; the committed corpus is only read
  QWEN_FUZZ_WORKDIR=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)")  # checkpoint's files
  export QWEN_FUZZ_WORKDIR
  rc=0
  cargo +nightly fuzz run --debug-assertions --target-dir "$TARGET_DIR" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=4096 -dict="dict/$t.dict" -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  rm -rf "$work" "$QWEN_FUZZ_WORKDIR"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  if [ "$rc" -ne 0 ]; then
    grep -vE '^(#[0-9]+|INFO:)' "$log" | tail -60 >&2
    echo "fuzz_smoke: $t FAILED (exit $rc); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  echo "fuzz_smoke: $t: $execs executions in $SECS s, no failure"
done
rm -f "$log"
