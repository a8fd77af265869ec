#!/usr/bin/env python3
"""Per-kernel summary of an Nsight Compute CSV (`ncu --csv --page raw --metrics ...`), for the decode
profile step of tools/gpu_check.sh.

Groups kernels by (name, grid size) -- a GEMV's grid tells its weight matrix apart -- and prints, per
group: launches, mean duration, mean DRAM bytes read + written, and the DRAM rate (bytes / duration).
Usage: python3 tools/ncu_summary.py ncu.csv [--copy-gbps 4266]
"""
import argparse
import csv
import sys
from collections import defaultdict


def num(s):
    try:
        return float(s.replace(",", ""))
    except (ValueError, AttributeError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--copy-gbps", type=float, help="device copy bandwidth (GB/s) for a %% column")
    a = ap.parse_args()
    # ncu prints log lines before the CSV: start at the header row.
    lines = open(a.csv, encoding="utf-8", errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"{a.csv}: no ncu CSV header (\"ID\",...) found")
    rows = list(csv.DictReader(lines[start:]))
    units = rows[0] if rows and not num(rows[0].get("ID", "")) and rows[0].get("ID", "") == "" else {}
    rows = [r for r in rows if num(r.get("ID", "")) is not None]
    dur_col = "gpu__time_duration.sum"
    scale = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0}.get(units.get(dur_col, "nsecond"), 1e-9)
    byte_scale = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    groups = defaultdict(list)
    for r in rows:
        t = num(r.get(dur_col, ""))
        if t is None:
            continue
        b = 0.0
        for col in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            v = num(r.get(col, ""))
            if v is not None:
                b += v * byte_scale.get(units.get(col, "byte"), 1)
        groups[(r.get("Kernel Name", "?"), r.get("launch__grid_size", "?"))].append((t * scale, b))
    total = sum(t for g in groups.values() for t, _ in g)
    print(f"{len(rows)} kernels, {total * 1e3:.3f} ms in all")
    hdr = f"{'kernel':<34} {'grid':>7} {'n':>5} {'mean us':>9} {'MB':>8} {'GB/s':>8}"
    print(hdr + ("   % copy" if a.copy_gbps else ""))
    for (name, grid), g in sorted(groups.items(), key=lambda kv: -sum(t for t, _ in kv[1])):
        t = sum(x for x, _ in g) / len(g)
        b = sum(y for _, y in g) / len(g)
        rate = b / t / 1e9 if t > 0 else 0.0
        line = f"{name[:34]:<34} {grid:>7} {len(g):>5} {t * 1e6:>9.2f} {b / 1e6:>8.2f} {rate:>8.0f}"
        if a.copy_gbps:
            line += f" {100 * rate / a.copy_gbps:>8.1f}"
        print(line)


if __name__ == "__main__":
    main()
