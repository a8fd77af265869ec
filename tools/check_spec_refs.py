#!/usr/bin/env python3
"""Every "spec §N.M" cited in the tree must name a section of docs/qwen-v1-spec.md.

Reads the files git tracks (plus new, not ignored ones), finds each citation ("spec §3.1",
"spec §5.1–5.3", "spec §1.1, §1.2", "spec §4"), and checks each section number (every one of a
range) against the spec's headings ("## 4. Tokenizer", "### 3.1 Dynamic NTK ..."). Prints every
citation that does not resolve, with its file and line, and exits 1; exits 1 too if it finds no
citation at all (a pattern that matches nothing would pass vacuously). Run by tools/test.sh.
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "qwen-v1-spec.md"

# "spec" then one or more §-numbers joined by ranges (– or -) and commas.
CITE = re.compile(r"spec\s+(§\s*\d+(?:\.\d+)?(?:\s*(?:[–-]|,\s*§?|/)\s*\d+(?:\.\d+)?)*)")
NUM = re.compile(r"\d+(?:\.\d+)?")


def sections(spec_text):
    found = set()
    for m in re.finditer(r"^#{2,3} (\d+)(?:\.(\d+))?\.? ", spec_text, re.M):
        found.add(m.group(1) if m.group(2) is None else f"{m.group(1)}.{m.group(2)}")
    return found


def cited(text):
    """(line, [section numbers]) of every citation in text; a range a–b lists every minor in it."""
    out = []
    for m in CITE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        body = m.group(1)
        nums = []
        for part in re.split(r",", body):
            ends = NUM.findall(part)
            if len(ends) == 2 and re.search(r"[–-]", part):
                a, b = ends
                major = a.split(".")[0]
                if "." in a and "." in b and b.split(".")[0] == major:
                    lo, hi = int(a.split(".")[1]), int(b.split(".")[1])
                    nums += [f"{major}.{i}" for i in range(lo, hi + 1)]
                    continue
            nums += ends
        out.append((line, nums))
    return out


def files():
    r = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    for name in r.stdout.splitlines():
        p = ROOT / name
        if p == SPEC or not p.is_file() or p.suffix in {".safetensors", ".npy", ".tiktoken"}:
            continue
        try:
            yield name, p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def main():
    known = sections(SPEC.read_text(encoding="utf-8"))
    bad, total = [], 0
    for name, text in files():
        for line, nums in cited(text):
            for n in nums:
                total += 1
                if n not in known:
                    bad.append(f"{name}:{line}: spec §{n} is not a section of {SPEC.relative_to(ROOT)}")
    if total == 0:
        print("check_spec_refs: found no spec citations at all (is the pattern broken?)", file=sys.stderr)
        return 1
    for b in bad:
        print(b, file=sys.stderr)
    print(f"check_spec_refs: {total} cited sections, {len(bad)} unresolved")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
