#!/usr/bin/env bash
# The README's test command. Installs what the tests need on first use (pinned nvcc 13.0 wheels so the
# CUDA kernels compile, libclang for the C-header drift test; both from PyPI into $QWEN_TOOLS, default
# /tmp/qwen-ci-tools), checks formatting (rustfmt.toml), that every "spec §" cited resolves in
# docs/qwen-v1-spec.md and that no src/ module imports one below it in the data flow
# (tools/check_layers.py), runs every test target, clippy with warnings as errors, then every CUDA
# kernel on the CPU emulator (tools/cuda_emu/run.sh: g++ + python3, no GPU), the server's Python tests
# (tools/serve_tests.sh: openai client, headless Chromium), the C-ABI stress test under ASan and TSan
# (tools/sanitizers/run.sh) and a bounded fuzz run (tools/fuzz_smoke.sh).
# CI (.ci/run) calls it with QWEN_REQUIRE_KERNELS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}   # outside the clone; reused when present
if [ ! -f "$T/cuda/bin/nvcc-ok" ]; then
  rm -rf "$T/cuda"
  python3 -m venv "$T/cuda"
  "$T/cuda/bin/pip" install -q --progress-bar off nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
     nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  touch "$T/cuda/bin/nvcc-ok"
fi
export CUDA_HOME=$(echo "$T"/cuda/lib/python3*/site-packages/nvidia/cu13)
"$CUDA_HOME/bin/nvcc" --version | tail -1

if [ ! -d "$T/clang/lib" ] || ! ls "$T"/clang/lib/python3*/site-packages/clang/native/libclang* >/dev/null 2>&1; then
  rm -rf "$T/clang"
  python3 -m venv "$T/clang"
  "$T/clang/bin/pip" install -q --progress-bar off libclang==18.1.1
fi
export LIBCLANG_PATH=$(echo "$T"/clang/lib/python3*/site-packages/clang/native)

cargo fmt --check
python3 tools/check_spec_refs.py
python3 tools/check_layers.py

cargo test --all-targets "$@"
cargo clippy --all-targets -- -D warnings

# The kernels in cuda/ on the CPU emulator against host references (~1 min on 2 cores; set -e: a failure fails CI).
bash tools/cuda_emu/run.sh

# `qwen-run serve` with the real openai client, 64 concurrent streams and the web page in headless Chromium
# (installs chromium + a pinned venv on first use: ~3 min; then ~45 s).
bash tools/serve_tests.sh

# The C-ABI stress test under AddressSanitizer and ThreadSanitizer (nightly; each after a negative control the
# sanitizer must report; TSan with an instrumented std, -Zbuild-std). Builds are cached in
# $QWEN_TOOLS/sanitizer-target. Without the nightly's rust-src component (installed by the script when it
# can be), the TSan run prints "NOT RUN" and is skipped, loudly (tools/sanitizers/run.sh).
QWEN_TSAN_OPTIONAL=1 bash tools/sanitizers/run.sh address thread

# Coverage-guided fuzz targets (fuzz/, cargo-fuzz on the image's nightly toolchain), each on its committed
# corpus for QWEN_FUZZ_SECS (12) seconds; the first build on a machine takes minutes (FUZZING.md).
bash tools/fuzz_smoke.sh
