#!/usr/bin/env python3
"""No module of src/ imports one below it in the data flow (README "Layout"):

    config → checkpoint → weights → tokenizer → model → backend → sampler → chat → generate → engine → ffi

`error` and `synth` sit beside the flow (anyone may use them; synth itself uses at most `weights`).
The pairs in KNOWN are said on every run but do not fail it. Reads every `crate::<module>` path in non-test code (comments and `#[cfg(test)]` modules
left out) and prints each upward import with its file and line; exits 1 on any, or when it finds no
`crate::` path at all. Run by tools/test.sh.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
FLOW = ["config", "checkpoint", "weights", "quant", "tokenizer", "model", "backend", "sampler", "chat", "react",
        "generate", "engine", "server", "ffi"]
BESIDE = {"error": -1, "files": -1, "mapped": -1, "synth": FLOW.index("weights")}
# Known upward imports, said on every run but not failing it until they are moved.
KNOWN = {
    ("config", "tokenizer"): "GenerationConfig's defaults use tokenizer::ENDOFTEXT (the id belongs in config)",
}


def level(module):
    return FLOW.index(module) if module in FLOW else BESIDE.get(module)


def main():
    bad, known, seen = [], set(), 0
    for path in sorted(SRC.rglob("*.rs")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("bin", "lib.rs"):
            continue  # the CLI sits on top; lib.rs only declares the modules
        module = rel.parts[0].removesuffix(".rs")
        own = level(module)
        if own is None:
            bad.append(f"src/{rel}: module `{module}` is not in the flow of tools/check_layers.py")
            continue
        text = path.read_text(encoding="utf-8").split("#[cfg(test)]")[0]
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("//")[0]
            for m in re.finditer(r"\bcrate::(\w+)", code):
                seen += 1
                used = m.group(1)
                lv = level(used)
                if lv is None and used not in ("Error", "Result"):
                    bad.append(f"src/{rel}:{n}: crate::{used} is not a known module")
                elif lv is not None and lv > own and used != module and (module, used) in KNOWN:
                    known.add((module, used))
                elif lv is not None and lv > own and used != module:
                    bad.append(f"src/{rel}:{n}: `{module}` imports crate::{used}, which is below it in the flow")
    if seen == 0:
        print("check_layers: no crate:: paths found (is the pattern broken?)", file=sys.stderr)
        return 1
    for m, u in sorted(known):
        print(f"check_layers: known, to be moved: `{m}` imports crate::{u}: {KNOWN[(m, u)]}")
    for b in bad:
        print(b, file=sys.stderr)
    print(f"check_layers: {seen} crate:: paths, {len(bad)} against the flow")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
