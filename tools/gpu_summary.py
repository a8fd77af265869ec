#!/usr/bin/env python3
"""Summary of one tools/gpu_check.sh run: $OUT/summary.json and a one-screen summary on stdout.

    python3 tools/gpu_summary.py OUT_DIR [--seconds N]

Reads OUT_DIR/steps.tsv (one line per command: log, rc, seconds, command) and the logs. Exit status 1
when any test, sanitizer run or step failed or was skipped for lack of time (a skipped check is never
a pass), else 0.
"""
import json
import os
import re
import sys


def bench_json(path):
    """The qwen-run bench JSON lines of a log, in order."""
    out = []
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            line = line.strip()
            if line.startswith("{") and '"backend"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def main():
    d = sys.argv[1]
    secs = int(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else None
    steps = []
    if os.path.exists(os.path.join(d, "steps.tsv")):
        for line in open(os.path.join(d, "steps.tsv")):
            f = line.rstrip("\n").split("\t")
            if len(f) == 4:
                steps.append({"log": f[0], "rc": f[1], "seconds": int(f[2]), "command": f[3]})
    failures = [f"{s['log']}: rc={s['rc']}: {s['command']}" for s in steps if s["rc"] != "0"]
    tests_log = os.path.join(d, "tests.log")
    text = open(tests_log, errors="replace").read() if os.path.exists(tests_log) else ""
    passed = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", text))
    failed_n = sum(int(m) for m in re.findall(r"(\d+) failed", " ".join(re.findall(r"test result: .*", text))))
    failed_tests = sorted(set(re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)))
    skips = len(re.findall(r"^SKIP: ", text, re.M))
    if skips:
        failures.append(f"tests: {skips} SKIP lines under QWEN_REQUIRE_GPU=1")
    bench = bench_json(os.path.join(d, "bench.log"))
    ab = {"default": bench_json(os.path.join(d, "ab-default.log"))}
    for f in sorted(os.listdir(d)):
        m = re.match(r"(ab|ab8k)-(\w+)\.log$", f)
        if m and m.group(2) != "default":
            ab.setdefault(m.group(2), {})["after_8000" if m.group(1) == "ab8k" else "after_128"] = bench_json(os.path.join(d, f))
    # Issue 15: the quantized 7B shape (quant7b-<format>.log).
    quant7b = {f: bench_json(os.path.join(d, f"quant7b-{f}.log")) for f in ("nf4", "nf4_rows", "int8", "int8_rows", "gptq4", "gptq4_tile", "gptq8")}
    summary = {
        "seconds": secs,
        "ok": not failures and failed_n == 0 and passed > 0,
        "tests": {"passed": passed, "failed": failed_n, "failed_tests": failed_tests, "skips": skips},
        "failures": failures,
        "bench": bench,
        "ab": ab,
        "quant7b": quant7b,
        "steps": steps,
    }
    if passed == 0 and not any(s["log"] == "tests" for s in steps):
        summary["ok"] = not failures  # a run without the tests step: only its own steps count
    json.dump(summary, open(os.path.join(d, "summary.json"), "w"), indent=1)

    print("=" * 78)
    print(f"gpu_check summary ({secs} s): {'OK' if summary['ok'] else 'FAILED'}")
    print(f"tests: {passed} passed, {failed_n} failed, {skips} skipped" + (f": {', '.join(failed_tests)}" if failed_tests else ""))
    def line(what, b):
        """One bench JSON as a line: decode, % of the floor (its bytes per token), prefill, load, memory."""
        pf = ", ".join(f"{p['tokens']}: {p['tok_per_s']:.0f}" for p in b.get("prefill", []))
        fl = b.get("floor_fraction")
        floor = f" ({100 * fl:.1f} % of the floor of {b.get('bytes_per_token', 0) / 1e9:.2f} GB/token)" if fl else ""
        print(f"{what}: decode {b.get('decode_tok_per_s', 0):.1f} tok/s after {b.get('decode_prompt')}{floor}; "
              f"prefill tok/s {pf}; load {b.get('load_s')}; "
              f"mem {(b.get('mem_used_bytes') or 0) / 2**30:.2f} GiB at {b.get('context_tokens')} tokens")
    for b in bench:
        line("bench", b)
    for f, runs in quant7b.items():
        for b in runs:
            line(f"quant7b {f}", b)
    def brief(runs):
        return "; ".join(f"decode {x.get('decode_tok_per_s', 0):.1f} after {x.get('decode_prompt')}, prefill "
                         + "/".join(f"{p['tok_per_s']:.0f}" for p in x.get("prefill", []) if p["tokens"] > 1)
                         for x in runs) or "-"
    print(f"ab default (before, after): {brief(ab['default'])}")
    for name, r in ab.items():
        if name != "default":
            print(f"ab {name}: {brief(r.get('after_128', []))}" + (f" | {brief(r['after_8000'])}" if "after_8000" in r else ""))
    for f in failures:
        print("FAIL:", f)
    print("=" * 78)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
