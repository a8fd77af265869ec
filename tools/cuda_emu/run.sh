#!/usr/bin/env bash
# tools/cuda_emu/run.sh — run every CUDA kernel of cuda/ on the CPU emulator against its host
# reference (what it checks and what it cannot: tools/cuda_emu/README.md). No GPU, no nvcc: g++ and
# python3 only. CI runs it from tools/test.sh with no arguments.
#
#   bash tools/cuda_emu/run.sh [--full] [--tsan | --asan] [HARNESS ...]
#     (default)  every harness (h_*.cpp) in its quick mode, g++ -O2
#     --full     the complete case lists (a bit slower; not in CI)
#     --tsan     build with -fsanitize=thread and run the cases under ThreadSanitizer (not in CI)
#     --asan     build with -fsanitize=address,undefined (not in CI)
#     HARNESS    only these (rmsnorm simple rotary attention_decode attention_prefill gemv gemv_quant sampling)
#   QWEN_CUDA_DIR   kernels to test (default: <repo>/cuda); point it at a copy for mutation checks
#   QWEN_EMU_JOBS   harnesses built / run at once (default: nproc)
#   QWEN_EMU_KEEP=1 keep the build dir (generated sources, binaries, full logs) and print its path
#
# Output: one line per harness (cases, worst error as a fraction of its tolerance, time); exit status
# non-zero when a kernel fails to transform or compile, a case fails, the emulator flags a problem
# (misaligned access, barrier after exit, cp.async not waited for, smem overrun), a sanitizer
# reports, or a cuda/*.cu is included by no harness.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CUDA_DIR=${QWEN_CUDA_DIR:-$ROOT/cuda}
JOBS=${QWEN_EMU_JOBS:-$(nproc 2>/dev/null || echo 2)}
MODE=1 SAN="" ONLY=()
for a in "$@"; do
  case "$a" in
    --full) MODE=0 ;;
    --tsan) SAN=tsan ;;
    --asan) SAN=asan ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) ONLY+=("$a") ;;
  esac
done

CXX=${CXX:-g++}
CXXFLAGS=(-std=c++20 -fno-strict-aliasing -pthread)
case "$SAN" in
  "")   CXXFLAGS+=(-O2) ;;
  tsan) CXXFLAGS+=(-O1 -g -fsanitize=thread) ;;
  asan) CXXFLAGS+=(-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer) ;;
esac
# TSan: every report is a failure (exit 66), benign-by-design races listed in tsan.supp.
export TSAN_OPTIONS="suppressions=$HERE/tsan.supp exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=0 ${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1 ${UBSAN_OPTIONS:-}"

t_start=$(date +%s.%N)
BUILD=$(mktemp -d "${TMPDIR:-/tmp}/qwen-cuda-emu.XXXXXX")
if [ "${QWEN_EMU_KEEP:-0}" = 1 ]; then
  echo "cuda_emu: build dir $BUILD (kept)"
else
  trap 'rm -rf "$BUILD"' EXIT
fi

# 1. cuda/*.cu(h) -> host C++ (generated, never committed).
if ! python3 "$HERE/make_emu.py" "$CUDA_DIR" "$BUILD/gen"; then
  echo "cuda_emu: FAIL: make_emu.py could not transform $CUDA_DIR" >&2
  exit 1
fi

# 2. Every kernel file must be exercised by some harness.
fail=0
problems=()  # repeated at the end, next to the summary
HARNESSES=()  # the slowest first, so that JOBS-wide scheduling packs well
for f in "$HERE"/h_attention_prefill.cpp "$HERE"/h_sampling.cpp "$HERE"/h_attention_decode.cpp "$HERE"/h_*.cpp; do
  [ -f "$f" ] || continue
  n=$(basename "$f" .cpp); n=${n#h_}
  [[ " ${HARNESSES[*]} " == *" $n "* ]] || HARNESSES+=("$n")
done
for cu in "$CUDA_DIR"/*.cu; do
  k=$(basename "$cu" .cu)
  if ! grep -q "#include \"${k}_emu.cu\"" "$HERE"/h_*.cpp; then
    problems+=("cuda_emu: FAIL: $k.cu is included by no harness (add it to a tools/cuda_emu/h_*.cpp)")
    fail=1
  fi
done
if [ ${#ONLY[@]} -gt 0 ]; then
  for h in "${ONLY[@]}"; do
    [ -f "$HERE/h_$h.cpp" ] || { echo "cuda_emu: no harness $h (have: ${HARNESSES[*]})" >&2; exit 2; }
  done
  HARNESSES=("${ONLY[@]}")
fi

# 3. Build and run each harness (JOBS at a time). Results: $BUILD/$h.{compile.log,log,rc,secs}.
one() {
  local h=$1
  if ! "$CXX" "${CXXFLAGS[@]}" -I "$BUILD/gen" -I "$HERE" -o "$BUILD/h_$h" "$HERE/h_$h.cpp" >"$BUILD/$h.compile.log" 2>&1; then
    echo compile >"$BUILD/$h.rc"
    return
  fi
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$BUILD" && timeout 1200 "./h_$h" "$MODE") >"$BUILD/$h.log" 2>&1
  echo $? >"$BUILD/$h.rc"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }' >"$BUILD/$h.secs"
}
running=0
for h in "${HARNESSES[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
  one "$h" &
  running=$((running + 1))
done
wait

# 4. Report.
label="quick"; [ "$MODE" = 0 ] && label="full"; [ -n "$SAN" ] && label="$label, $SAN"
echo "cuda_emu ($label): kernels from $CUDA_DIR"
for h in "${HARNESSES[@]}"; do
  rc=$(cat "$BUILD/$h.rc" 2>/dev/null || echo missing)
  if [ "$rc" = compile ]; then
    printf '  %-18s FAIL  does not compile:\n' "$h"
    grep -m 20 -E 'error|Error' "$BUILD/$h.compile.log" | sed 's/^/      /'
    fail=1
    continue
  fi
  sum=$(grep -m1 '^SUMMARY ' "$BUILD/$h.log" 2>/dev/null || true)
  cases=$(sed -n 's/.* cases=\([0-9]*\).*/\1/p' <<<"$sum")
  worst=$(sed -n 's/.* worst=\([^ ]*\).*/\1/p' <<<"$sum")
  secs=$(cat "$BUILD/$h.secs" 2>/dev/null || echo "?")
  if [ "$rc" = 0 ] && [ -n "$sum" ]; then
    printf '  %-18s ok    %4s cases, worst error %-9s of tolerance  %6ss\n' "$h" "$cases" "$worst" "$secs"
  else
    printf '  %-18s FAIL  exit %s, %s cases, worst %s  %ss\n' "$h" "$rc" "${cases:-?}" "${worst:-?}" "$secs"
    { grep -E '^FAIL:|^EMU|ThreadSanitizer|AddressSanitizer|runtime error|SUMMARY: ' "$BUILD/$h.log" | head -n 12
      echo "... ($(grep -c '^FAIL:' "$BUILD/$h.log") FAIL lines in all) last lines of the log:"
      tail -n 6 "$BUILD/$h.log"; } | cut -c1-240 | sed 's/^/      /'
    fail=1
  fi
done
for p in ${problems[@]+"${problems[@]}"}; do echo "$p"; done
total=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
if [ "$fail" = 0 ]; then
  echo "cuda_emu: all ${#HARNESSES[@]} harnesses passed (${total}s)"
else
  [ "${QWEN_EMU_KEEP:-0}" = 1 ] && note="; logs in $BUILD" || note="; QWEN_EMU_KEEP=1 keeps the logs"
  echo "cuda_emu: FAILED (${total}s$note)"
fi
exit "$fail"
