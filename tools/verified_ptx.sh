#!/usr/bin/env bash
# tools/verified_ptx.sh — proves that the kernels of a verified commit are unchanged (run 4: 9a9a5b1,
# the default; run 5: 8be7cb9, all 59 entry points, `bash tools/verified_ptx.sh 8be7cb9`): compiles
# cuda/ of the working tree and of the verified commit (git history) to PTX (compute_90, no line
# info, the build's flags otherwise) and compares every entry point that commit had, instruction by
# instruction (label numbers and the translation unit's hash in internal names normalised). Every
# entry of run 4 must be identical; the post-run-4 entries are listed as not verified.
#
#   bash tools/verified_ptx.sh [COMMIT]      (default: 9a9a5b1, run 4 of 2026-11-26)
#
# Needs nvcc (CUDA_HOME, or the pip wheels tools/test.sh installs under /tmp/qwen-ci-tools) and git
# history; no GPU. Exit 1 when a verified entry changed or is missing.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=${1:-9a9a5b1}
T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}
CUDA_HOME=${CUDA_HOME:-$(echo "$T"/cuda/lib/python3*/site-packages/nvidia/cu13)}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
[ -x "$NVCC" ] || { echo "verified_ptx: no nvcc at $NVCC (set CUDA_HOME or NVCC)" >&2; exit 2; }
W=$(mktemp -d "${TMPDIR:-/tmp}/qwen-verified-ptx.XXXXXX"); trap 'rm -rf "$W"' EXIT

ptx() {  # ptx NAME SRC_DIR: every .cu of SRC_DIR in one translation unit, as build.rs does
  local d=$W/$1
  (echo "// tu"; for f in $(ls "$2"/*.cu | sort); do echo "#include \"$f\""; done) >"$d.cu"
  "$NVCC" -ptx -O3 -std=c++17 --expt-relaxed-constexpr -I "$2" -arch=compute_90 "$d.cu" -o "$d.ptx" 2>"$d.log" ||
    { echo "verified_ptx: nvcc failed on $2:"; tail -20 "$d.log"; exit 2; }
}
mkdir -p "$W/old"
git -C "$ROOT" archive "$COMMIT" cuda | tar -x -C "$W/old" || { echo "verified_ptx: no commit $COMMIT here" >&2; exit 2; }
ptx old "$W/old/cuda"
ptx new "$ROOT/cuda"
python3 - "$W/old.ptx" "$W/new.ptx" "$COMMIT" <<'PY'
import re, sys
def entries(path):
    text = open(path).read()
    out = {}
    for part in re.split(r'\n(?=\.visible \.entry )', text)[1:]:
        name = re.match(r'\.visible \.entry (\w+)\(', part).group(1)
        body = part.split('\n}\n')[0]
        lines = [l for l in body.split('\n') if not l.strip().startswith(('.loc', '.file', '//'))]
        body = '\n'.join(lines)
        body = re.sub(r'\$L__BB\d+_', '$L__BB_', body)
        body = re.sub(r'__local_depot\d+', '__local_depot', body)
        body = re.sub(r'_INTERNAL_[0-9a-f]+_\d+_\w+?_[0-9a-f]+|_GLOBAL__N__[0-9a-f]+_\d+_\w+?_[0-9a-f]+', 'TU', body)
        out[name] = body
    return out
old, new = entries(sys.argv[1]), entries(sys.argv[2])
bad = 0
for n in sorted(old):
    if n not in new:
        print(f"  MISSING  {n}"); bad += 1
    elif old[n] != new[n]:
        print(f"  CHANGED  {n}"); bad += 1
    else:
        print(f"  same     {n}")
for n in sorted(set(new) - set(old)):
    print(f"  new      {n}  (not verified on a GPU)")
print(f"verified_ptx: {len(old) - bad} of {len(old)} entry points of {sys.argv[3]} identical in PTX" +
      ("" if bad == 0 else f"; {bad} changed or missing"))
sys.exit(1 if bad else 0)
PY
