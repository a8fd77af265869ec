#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu-carry/ built by tools/gpu_build.sh.
# Every log goes under $OUT (the device tool brings back at most 8 files). Steps, most telling first
# (STEPS picks and orders them): tests (kernel + whole-model parity, chat on the tiny model; tests0:
# the tests again with programmatic dependent launch off; testsU: again with the GEMV epilogue
# fusions off, QWEN_FUSE=0),
# bench (qwen-run bench --synth 7b, prefill for each PREFILL_ATTNS (QWEN_ATTN), then decode for each
# FUSE_MODES x PDL_MODES x GEMV_CONFIGS),
# gemv (the GEMV configuration sweep of the kernel bench, and the gemv_ramp fit: fixed cost per launch
# vs streaming rate), torch (a 7B model on disk: load path,
# chat, tools/compare_torch.py side by side with transformers), kbench (every other kernel bench),
# ncu (every kernel's time and DRAM bytes in a short run; Firecracker machines only), profile
# (per-kernel times of a decode step from qwen-run's own event timing: works without ncu),
# sanitize (compute-sanitizer memcheck and racecheck on the fused kernels' tests).
# The whole script keeps inside BUDGET seconds (default 470): each step gets at most what is left.
# The run prepared for issue 5 (fits a 15-minute device budget with the machine's start; in the
# device tool: carry ["gpu-carry"], timeout_s ~570):
#   BUDGET=540 STEPS="tests bench profile sanitize ncu testsU gemv kbench" FUSE_MODES="1 0" REPS=1 \
#     ADEC_SPLITS="default 256 512" bash tools/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/qwen-gpu-out}; mkdir -p "$OUT"
export QWEN_REPO_ROOT=$PWD QWEN_REQUIRE_GPU=1 RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + ${BUDGET:-470} ))
# cuBLAS from the system CUDA or from PyTorch's wheels.
for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
done
{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv; ldd --version | head -1; uname -a; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; } >"$OUT/env.txt" 2>&1
# run LOG STEP_SECONDS CMD...: append to $OUT/LOG.log, never past the deadline.
run() { local log=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) - 5 )); [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "== $*: no time left, not run" | tee -a "$OUT/$log.log"; return 1; fi
  echo "== $* (<= ${limit}s)" | tee -a "$OUT/$log.log"; local t0=$(date +%s)
  timeout "$limit" "$@" >>"$OUT/$log.log" 2>&1; local rc=$?
  echo "   rc=$rc ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/$log.log"; tail -3 "$OUT/$log.log"; return $rc; }
# The copy bandwidth this card measured in the bench step (GB/s; H200 ~4266, an H100 less), for % columns.
copy_gbps() { local c; c=$(grep -ho 'device copy [0-9]*' "$OUT/bench-7b.log" 2>/dev/null | tail -1 | awk '{print $3}'); echo "${c:-4266}"; }
Q=gpu-carry/qwen-run
tests_rc=0
for step in ${STEPS:-tests bench gemv torch kbench}; do case $step in
  tests)
    run tests 150 gpu-carry/test-kernels --test-threads=1 --nocapture; tests_rc=$?
    # A new kernel that fails its tests must not spoil the run's measurements: the steps after this
    # one run on the previous kernel (written to $OUT/fallbacks.txt; sweeps that set the variable
    # themselves still measure both).
    failed=$(sed -n '/^failures:$/,$p' "$OUT/tests.log" | sed -n 's/^    \([a-z_]*\)::.*/\1/p' | sort -u | tr '\n' ' ')
    case " $failed " in *" attention_prefill "*)
      export QWEN_ATTN=wmma; echo "attention_prefill tests failed: QWEN_ATTN=wmma from here on" | tee -a "$OUT/fallbacks.txt" ;; esac
    case " $failed " in *" gemv_fused "*|*" attention_decode "*)
      export QWEN_FUSE=0; echo "fused-kernel tests failed: QWEN_FUSE=0 from here on" | tee -a "$OUT/fallbacks.txt" ;; esac
    case " $failed " in *" sampling "*)
      export QWEN_SAMPLER=block; echo "sampling tests failed: QWEN_SAMPLER=block from here on" | tee -a "$OUT/fallbacks.txt" ;; esac
    run tests 40 bash -c "printf 'Hello!\nCount to five.\n/exit\n' | $Q chat --backend cuda --max-new-tokens 24 --seed 1" ;;
  tests0)
    QWEN_PDL=0 run tests 150 gpu-carry/test-kernels --test-threads=1 ;;
  testsU)
    QWEN_FUSE=0 run tests 150 gpu-carry/test-kernels --test-threads=1 model ;;
  bench)
    # The defaults, then decode with each fusion mode (QWEN_FUSE) x PDL mode (QWEN_PDL) x GEMV
    # configuration (QWEN_GEMV), REPS times over, interleaved so drift shows as spread rather than
    # as a difference.
    run bench-7b 90 $Q bench --backend cuda --synth 7b
    # Prefill attention A/B in one run: the mma.sync kernel (default) against its WMMA fallback.
    for attn in ${PREFILL_ATTNS:-mma wmma}; do
      run bench-7b 50 env QWEN_ATTN=$attn $Q bench --backend cuda --synth 7b --prefill 512,2048,8000 --decode 1
    done
    # Decode at an 8K context, for each PDL mode and decode-attention split length (ADEC_SPLITS,
    # e.g. "128 256 512"; empty: the default for the capacity).
    for pdl in ${PDL_MODES:-1}; do for sl in ${ADEC_SPLITS:-default}; do
      run bench-7b 60 env QWEN_PDL=$pdl $( [ "$sl" = default ] || echo QWEN_ADEC_SPLIT=$sl ) $Q bench --backend cuda --synth 7b --prefill 8000 --decode-prompt 8000 --decode 128
    done; done
    for rep in $(seq "${REPS:-1}"); do for fuse in ${FUSE_MODES:-1 0}; do for pdl in ${PDL_MODES:-1}; do
      for cfg in ${GEMV_CONFIGS:-2,8 2,8,24}; do
        run bench-7b 40 env QWEN_FUSE=$fuse QWEN_PDL=$pdl QWEN_GEMV=$cfg $Q bench --backend cuda --synth 7b --prefill 128,2048
    done; done; done; done ;;
  sanitize)
    # The fused kernels (tickets across blocks, epilogues) and the mma.sync prefill attention
    # (cp.async, ldmatrix) under compute-sanitizer: memcheck for
    # out-of-bounds / misaligned accesses, then racecheck for shared-memory races (Firecracker only).
    run tests 150 compute-sanitizer --tool memcheck --error-exitcode 99 gpu-carry/test-kernels --test-threads=1 gemv_fused attention_decode_matches sampling_qwen attention_prefill_offset
    run tests 120 compute-sanitizer --tool racecheck --error-exitcode 99 gpu-carry/test-kernels --test-threads=1 gemv_residual attention_decode_ragged sampling_top_k_matches sampling_top_p attention_prefill_offset ;;
  profile)
    # Every kernel of 16 decode steps after 128 tokens, one by one with events (no graph, no ncu
    # needed), fused and unfused.
    for fuse in ${FUSE_MODES:-1 0}; do
      run bench-7b 60 env QWEN_FUSE=$fuse QWEN_PROFILE=16 $Q bench --backend cuda --synth 7b --prefill 1 --decode 1 --decode-prompt 128
    done ;;
  gemv)
    run bench-kernels 120 gpu-carry/bench-kernels --bench --warm-up-time 0.5 --measurement-time 1 gemv
    run bench-kernels 10 python3 tools/gemv_ramp_fit.py "$OUT/bench-kernels.log" --copy-gbps "$(copy_gbps)" ;;
  torch)
    run load-7b 60 bash -c "t0=\$(date +%s); $Q synth --preset 7b --out /tmp/q7b && echo \"synth: \$(( \$(date +%s) - t0 )) s\""
    run load-7b 40 bash -c "printf 'Hello!\nCount to five.\n/exit\n' | $Q chat --backend cuda --model /tmp/q7b --max-new-tokens 16 --seed 1"
    run load-7b 240 python3 tools/compare_torch.py --model /tmp/q7b --qwen-run $Q --out "$OUT/compare.json" ;;
  kbench)
    run bench-kernels 150 gpu-carry/bench-kernels --bench --warm-up-time 0.5 --measurement-time 1 "^(embedding|rmsnorm|swiglu|rotary|attention|gemm/|sampling)" ;;
  ncu)
    # Every kernel of a short run (warm-up, prefill, two decode steps through the graph), one light
    # metric pass each; summarised per kernel and grid by tools/ncu_summary.py.
    run ncu 120 ncu --clock-control none --graph-profiling node --csv --page raw -c 2500 \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \
      --log-file "$OUT/ncu.csv" $Q bench --backend cuda --synth 7b --prefill 1 --decode 2 --decode-prompt 4
    run ncu 30 python3 tools/ncu_summary.py "$OUT/ncu.csv" --copy-gbps "$(copy_gbps)" ;;
  *) echo "unknown step $step" ;;
esac; done
# A failed or hung test binary: each test alone, so one hang does not hide the others.
if [ "$tests_rc" != 0 ]; then
  for t in $(gpu-carry/test-kernels --list 2>/dev/null | sed -n 's/: test$//p'); do
    run pertest 20 gpu-carry/test-kernels --exact "$t" --test-threads=1 --nocapture >/dev/null
    echo "$t rc=$?" >>"$OUT/pertest-summary.txt"
  done
fi
echo "logs in $OUT"
