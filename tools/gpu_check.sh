#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu-carry/ built by tools/gpu_build.sh.
# Every log goes under $OUT (the device tool brings it back). Order: cheapest and most telling first.
set -uo pipefail
OUT=${OUT:-/tmp/qwen-gpu-out}; mkdir -p "$OUT"
export QWEN_REPO_ROOT=$PWD QWEN_REQUIRE_GPU=1 RUST_BACKTRACE=1
# cuBLAS from the system CUDA or from PyTorch's wheels.
for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
done
{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; ldd --version | head -1; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; } >"$OUT/env.txt" 2>&1
run() { local name=$1; shift; echo "== $name: $*"; local t0=$(date +%s.%N)
  timeout "${STEP_TIMEOUT:-420}" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "   rc=$rc ($(echo "$(date +%s.%N) - $t0" | bc) s)"; tail -5 "$OUT/$name.log"; }
run kernels gpu-carry/test-kernels --test-threads=1 --nocapture
run chat-tiny bash -c 'printf "Hello!\nCount to five.\n/exit\n" | gpu-carry/qwen-run chat --backend cuda --max-new-tokens 24 --seed 1'
run bench-7b gpu-carry/qwen-run bench --backend cuda --synth 7b
if [ "${KERNEL_BENCH:-1}" = 1 ]; then run bench-kernels gpu-carry/bench-kernels --bench --warm-up-time 1 --measurement-time 2; fi
echo "logs in $OUT"
