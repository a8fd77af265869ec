#!/usr/bin/env bash
# Build what the GPU machine runs (it has no Rust) into the git-ignored gpu-carry/: the kernel and
# whole-model test binary, the criterion kernel bench and qwen-run, release mode, stripped.
# Then, on the GPU machine (device tool, carry ["gpu-carry"]):  bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}
export CUDA_HOME=${CUDA_HOME:-$(echo "$T"/cuda/lib/python3*/site-packages/nvidia/cu13)}
export QWEN_REQUIRE_KERNELS=1
# Only Hopper SASS (H100/H200; the PTX is there too), in a target dir of its own so the normal
# build is not rebuilt: keeps what travels under the device tool's 64 MiB.
export QWEN_CUDA_ARCHS=${QWEN_CUDA_ARCHS:-90} CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu}
msgs=$(mktemp)
# The CPU-side checks of the kernel build first: every entry point of the PTX is in ENTRY_POINTS and
# the fatbin has sm_90 code (H200 run 5's call 3 was spent on a build whose new kernel had no entry
# in that list: this test would have said so).
cargo test --release --test cuda_build
cargo build --release --bin qwen-run
cargo test --release --test kernels --no-run --message-format=json >"$msgs"
cargo bench --bench kernels --no-run --message-format=json >>"$msgs"
rm -rf gpu-carry && mkdir -p gpu-carry
python3 - "$msgs" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("kernels",):
        kind = "bench" if "bench" in m["target"]["kind"] else "test"
        if m["profile"]["test"] or kind == "bench":
            dst = f"gpu-carry/{kind}-kernels"
            shutil.copy(m["executable"], dst); print("copied", m["executable"], "->", dst)
PY
cp "$CARGO_TARGET_DIR"/release/qwen-run gpu-carry/
strip gpu-carry/* || true
rm -f "$msgs"
du -sh gpu-carry/*
