#!/usr/bin/env bash
# tools/gpu_check.sh — the GPU check of issue 13 in ONE call (<= 585 s), on the GPU machine, from the
# repository root, with gpu-carry/ built by tools/gpu_build.sh. Logs go to $LOGS (default
# /tmp/qwen-gpu-logs); $OUT gets summary.json and gpu_check.tgz (every log): the device tool brings
# back at most 8 files, and run 5's 25 logs did not come back.
#
#   bash tools/gpu_check.sh               the whole check (BUDGET=585 seconds, STEPS below)
#   DRY_RUN=1 bash tools/gpu_check.sh     no GPU: stub binaries, the plan and every budget printed, the
#                                          summary built from the stubs' logs (checks this script)
#
# Device tool (issue 13): carry ["gpu-carry"], timeout_s 600, command `bash tools/gpu_check.sh`.
#
# Steps (STEPS picks and orders them; each gets at most its budget and what is left of BUDGET):
#   probe     nvidia-smi, and the backend's own probe: a GPU that is there but unusable (no kernels
#             in the build, compute capability < 8.0, module load failure) is said as such and fails
#   tests     every GPU test (kernel parity on every kernel, verified and opt-in, whole-model parity
#             on the default path and on each opt-in path, stale tickets, chat capacity) with
#             QWEN_REQUIRE_GPU=1, then chat on the tiny model
#   sanitize  compute-sanitizer memcheck + racecheck on the fused and cross-block kernels' tests
#   quant     the quantized-weight kernels (issue 15; their parity tests run in `tests`): memcheck +
#             racecheck on their tests, then their criterion benches (GB/s at the 7B shapes, short)
#   bench     qwen-run bench --synth 7b on the default (verified) path: load, prefill 512 / 2048 /
#             8000, decode 256 after 128 and 128 after 8000, memory at that context
#   quant7b   issue 15's GPU targets: the 7B shape written once to local disk (qwen-run synth), then
#             bench --quant nf4 and --quant int8 (quantized at load, uploaded packed; each also on
#             its opt-in rows GEMV, QWEN_NF4=rows / QWEN_INT8=rows): decode after
#             128, prefill 2048 (dequantize → cuBLAS), memory at 2K context, % of the floor from the
#             quantized bytes. Then GPTQ-Int4 / -Int8 checkpoints of the 7B shape (synth --gptq,
#             random codes) loaded as stored, Int4's prefill also with QWEN_GPTQ_DEQUANT=tile.
#   ab        each opt-in path against the default, interleaved (decode after 128 and 8000 tokens,
#             prefill 2048 / 8000 for the attention kernels): the numbers that promote or drop them
#   profile   per-kernel times of 16 decode steps (qwen-run's event timing), default and fused
#
# Exit status: non-zero when any test, sanitizer or step fails. Nothing falls back: a failing opt-in
# path is reported as a failure (summary.json "failures"), and the later steps still measure it.
set -uo pipefail
OUT=${OUT:-/tmp/qwen-gpu-out}; mkdir -p "$OUT"
FINAL_OUT=$OUT OUT=${LOGS:-/tmp/qwen-gpu-logs}; rm -rf "$OUT"; mkdir -p "$OUT"
BUDGET=${BUDGET:-585}
STEPS=${STEPS:-probe tests sanitize quant bench quant7b ab profile}
export QWEN_REPO_ROOT=$PWD QWEN_REQUIRE_GPU=1 RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
start=$(date +%s); deadline=$(( start + BUDGET ))
Q=gpu-carry/qwen-run TK=gpu-carry/test-kernels BK=gpu-carry/bench-kernels SAN=compute-sanitizer

if [ "${DRY_RUN:-0}" = 1 ]; then
  # Stubs that print what the real binaries print (the shapes summarize parses), so the whole script
  # and its summary run without a GPU.
  S=$OUT/stub; mkdir -p "$S"
  cat >"$S/test-kernels" <<'EOF'
#!/usr/bin/env bash
echo "running 3 tests"; echo "test gemv::gemv_matches_cpu ... ok"; echo "test model::model_fixtures_match_cpu ... ok"
echo "test model::model_every_opt_in_path_matches_cpu ... ok"
echo "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
EOF
  cat >"$S/qwen-run" <<'EOF'
#!/usr/bin/env bash
if [ "${1:-}" = chat ]; then cat >/dev/null; echo "Hello (stub)"; exit 0; fi
echo "tuning: graph=1 pdl=1 fuse=${QWEN_FUSE:-0} attn=${QWEN_ATTN:-run4} (stub)"
echo '{"backend":"cuda","load_s":2.0,"prefill":[{"tokens":2048,"tok_per_s":31000.0}],"decode_prompt":128,"decode_tokens":256,"decode_tok_per_s":215.0,"copy_gb_per_s":4266.0,"mem_used_bytes":16000000000,"context_tokens":8129,"floor_fraction":0.72}'
EOF
  cat >"$S/bench-kernels" <<'EOF'
#!/usr/bin/env bash
echo "attention_decode/cap32767_keys128_capacity_grid time: [10.0 us 10.1 us 10.2 us]"
EOF
  printf '#!/usr/bin/env bash\nshift 4; exec "$@"\n' >"$S/compute-sanitizer"
  printf '#!/usr/bin/env bash\necho "NVIDIA H200 (stub)"\n' >"$S/nvidia-smi"
  chmod +x "$S"/*
  Q=$S/qwen-run TK=$S/test-kernels BK=$S/bench-kernels SAN=$S/compute-sanitizer; export PATH="$S:$PATH"
  echo "DRY RUN: stub binaries in $S"
fi

# compute-sanitizer: on the PATH, or where the CUDA image keeps it.
if [ "${DRY_RUN:-0}" != 1 ] && ! command -v "$SAN" >/dev/null; then
  for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
           $(ls -d /opt/nvidia/*/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null); do
    if [ -x "$c" ]; then SAN=$c; break; fi
  done
fi
# cuBLAS from the system CUDA or from PyTorch's wheels.
for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
done
{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; uname -a; git rev-parse HEAD 2>/dev/null; } >"$OUT/env.txt" 2>&1

# run LOG LIMIT CMD...: append to $OUT/LOG.log, at most LIMIT seconds and never past the deadline;
# each call is one line of $OUT/steps.tsv (log, rc, seconds, command) for the summary.
run() { local log=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) - 10 )); [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "== $*: no time left, not run" | tee -a "$OUT/$log.log"; printf '%s\tskipped\t0\t%s\n' "$log" "$*" >>"$OUT/steps.tsv"; return 1; fi
  echo "== $* (<= ${limit}s)" | tee -a "$OUT/$log.log"; local t0; t0=$(date +%s)
  timeout "$limit" "$@" >>"$OUT/$log.log" 2>&1; local rc=$?
  echo "   rc=$rc ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/$log.log"
  printf '%s\t%s\t%s\t%s\n' "$log" "$rc" "$(( $(date +%s) - t0 ))" "$*" >>"$OUT/steps.tsv"; return $rc; }
: >"$OUT/steps.tsv"
B="bench --backend cuda --synth 7b"
# The opt-in paths the ab step measures against the default (name = environment).
# (QWEN_SAMPLER=auto is left out: on the greedy bench it runs what =block runs; the tests cover it.)
AB_PATHS=${AB_PATHS:-"fuse=QWEN_FUSE=1 attn_run4=QWEN_ATTN=run4 attn_wmma=QWEN_ATTN=wmma sampler_block=QWEN_SAMPLER=block gemv_prefetch=QWEN_GEMV=2,8,24 adec_length=QWEN_ADEC_GRID=length"}

echo "gpu_check: BUDGET ${BUDGET}s, steps: $STEPS (budgets: probe 15, tests 160+20, sanitize 40+4x35, quant 20+80, bench 60, quant7b 40+4x45 + 2x(40+45) + 30, ab 2x20 + 15 per path + 2x20, profile 30)"
for step in $STEPS; do case $step in
  probe)
    # qwen-run's probe says exactly why a present GPU cannot be used (not "no CUDA device").
    run probe 15 bash -c "nvidia-smi -L; $Q bench --backend cuda --synth tiny --prefill 1 --decode 1" ;;
  tests)
    run tests 160 "$TK" --test-threads=1
    run tests 20 bash -c "printf 'Hello!\nCount to five.\n/exit\n' | $Q chat --backend cuda --max-new-tokens 24 --seed 1" ;;
  sanitize)
    # Cross-block tickets (fused combine, residual RMSNorm, greedy / multi-block sampler), the GEMV
    # epilogues and the mma.sync / WMMA prefill (cp.async, ldmatrix).
    run sanitize 40 "$SAN" --tool memcheck --error-exitcode 99 "$TK" --test-threads=1 gemv_fused attention_decode_matches sampling_qwen attention_prefill_offset stale_tickets
    # racecheck one filter at a time (run 5: the four together ran past 30 s), so a slow one costs
    # only its own result.
    for f in gemv_residual attention_decode_ragged sampling_top_k_matches attention_prefill_offset; do
      run sanitize 35 "$SAN" --tool racecheck --error-exitcode 99 "$TK" --test-threads=1 "$f"
    done ;;
  quant)
    # gemv_quant.cu: bounds (memcheck) and the GPTQ block reduction / x staging in shared memory
    # (racecheck) on the small-shape tests, then the kernels' GB/s (criterion, short windows).
    run quant 12 "$SAN" --tool memcheck --error-exitcode 99 "$TK" --test-threads=1 gemv_quant_bnb gemv_quant_gptq
    run quant 8 "$SAN" --tool racecheck --error-exitcode 99 "$TK" --test-threads=1 gemv_quant_gptq
    run quant 80 "$BK" --bench 'gemv_quant|dequant' --warm-up-time 0.2 --measurement-time 0.4 --sample-size 10 ;;
  bench)
    run bench 35 "$Q" $B --prefill 512,2048,8000 --decode 256 --decode-prompt 128
    run bench 25 "$Q" $B --prefill 1 --decode 128 --decode-prompt 8000 ;;
  quant7b)
    Q7=${QWEN_Q7B_DIR:-/tmp/qwen-q7b}
    if run quant7b 40 "$Q" synth --preset 7b --out "$Q7"; then
      for f in ${QUANT7B_FORMATS:-nf4 nf4_rows int8 int8_rows}; do
        # <format>_rows: the same weights on the four-rows-a-warp GEMV (opt-in); the others on the
        # verified one (QWEN_NF4 / QWEN_INT8 = warp).
        case $f in
          nf4_rows) q=nf4 e=QWEN_NF4=rows i=QWEN_INT8=warp ;;
          int8_rows) q=int8 e=QWEN_NF4=warp i=QWEN_INT8=rows ;;
          *) q=$f e=QWEN_NF4=warp i=QWEN_INT8=warp ;;
        esac
        run "quant7b-$f" 45 env "$e" "$i" "$Q" bench --backend cuda --model "$Q7" --quant $q --prefill 2048 --decode 256 --decode-prompt 128
      done
    fi
    rm -rf "$Q7"
    # GPTQ-Int4 / -Int8 stored as the official checkpoints are (synth --gptq: random codes, group
    # 128), loaded as stored; the Int4 prefill also with the tiled dequantization (opt-in).
    for b in ${QUANT7B_GPTQ:-4 8}; do
      if run "quant7b-synth-gptq$b" 40 "$Q" synth --preset 7b --gptq "$b" --out "$Q7"; then
        run "quant7b-gptq$b" 45 "$Q" bench --backend cuda --model "$Q7" --prefill 2048 --decode 256 --decode-prompt 128
        if [ "$b" = 4 ]; then
          run quant7b-gptq4_tile 30 env QWEN_GPTQ_DEQUANT=tile "$Q" bench --backend cuda --model "$Q7" --prefill 2048 --decode 16 --decode-prompt 16
        fi
      fi
      rm -rf "$Q7"
    done ;;
  ab)
    # The default before and after the opt-in paths (its spread bounds the drift), each opt-in path
    # once in between; decode after 128 tokens (prefill 2048 / 8000 for the attention kernels), and
    # decode after 8,000 tokens for the paths that change the decode attention.
    dec="--prefill 2048,8000 --decode 256 --decode-prompt 128"
    run ab-default 20 "$Q" $B $dec
    for p in $AB_PATHS; do name=${p%%=*} envv=${p#*=}
      run "ab-$name" 15 env "$envv" "$Q" $B $dec
    done
    run ab-default 20 "$Q" $B $dec
    for p in $AB_PATHS; do name=${p%%=*} envv=${p#*=}
      case $name in fuse|adec_length) run "ab8k-$name" 20 env "$envv" "$Q" $B --prefill 1 --decode 128 --decode-prompt 8000 ;; esac
    done ;;
  profile)
    run profile 15 env QWEN_PROFILE=16 "$Q" $B --prefill 1 --decode 1 --decode-prompt 128
    run profile 15 env QWEN_FUSE=1 QWEN_PROFILE=16 "$Q" $B --prefill 1 --decode 1 --decode-prompt 128 ;;
  *) echo "unknown step $step" | tee -a "$OUT/steps.tsv" ;;
esac; done

python3 "$(dirname "$0")/gpu_summary.py" "$OUT" --seconds "$(( $(date +%s) - start ))"
rc=$?
cp "$OUT/summary.json" "$FINAL_OUT/" 2>/dev/null
tar czf "$FINAL_OUT/gpu_check.tgz" -C "$OUT" --exclude=stub .
echo "logs in $OUT, packed into $FINAL_OUT/gpu_check.tgz"
exit $rc
