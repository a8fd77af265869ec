#!/usr/bin/env python3
"""Fit the `gemv_ramp` kernel bench (benches/kernels/gemv.rs): time = fixed + bytes / rate over N.

Reads criterion's text output (the bench-kernels.log of tools/gpu_check.sh), takes the middle time
estimate of every `gemv_ramp/bf16_N{N}_K{K}` benchmark, and prints a least-squares line through
(bytes, time): the fixed cost per launch (launch, ramp and tail) and the streaming rate, then each
point's time, its bytes at that rate, and what is left over. With --copy-gbps the rate is also given as
% of the device copy bandwidth.
Usage: python3 tools/gemv_ramp_fit.py bench-kernels.log [--copy-gbps 4266]
"""
import argparse
import re
import sys

UNITS = {"ps": 1e-6, "ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}  # to microseconds


def parse(text):
    """{(n, k): microseconds} from criterion's `name\\n  time: [lo mid hi]` (the name may share the line)."""
    out = {}
    name = None
    for line in text.splitlines():
        m = re.search(r"gemv_ramp/bf16_N(\d+)_K(\d+)", line)
        if m:
            name = (int(m.group(1)), int(m.group(2)))
        t = re.search(r"time:\s*\[\s*[\d.]+\s*\S+\s+([\d.]+)\s*(\S+)", line)
        if t and name is not None:
            out[name] = float(t.group(1)) * UNITS[t.group(2)]
            name = None
    return out


def fit(points):
    """Least squares time = a + b * bytes over [(bytes, time)]: (a us, b us per byte)."""
    n = len(points)
    sx = sum(x for x, _ in points)
    sy = sum(y for _, y in points)
    sxx = sum(x * x for x, _ in points)
    sxy = sum(x * y for x, y in points)
    den = n * sxx - sx * sx
    b = (n * sxy - sx * sy) / den
    return (sy - b * sx) / n, b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--copy-gbps", type=float, help="device copy bandwidth (GB/s) for a %% column")
    a = ap.parse_args()
    times = parse(open(a.log, encoding="utf-8", errors="replace").read())
    if len(times) < 2:
        sys.exit(f"gemv_ramp_fit: {len(times)} gemv_ramp results in {a.log}; need at least 2")
    # The bytes the bench's throughput counts: W, x and y.
    pts = sorted((n * k * 2 + k * 2 + n * 4, t, n, k) for (n, k), t in times.items())
    fixed, per_byte = fit([(x, t) for x, t, _, _ in pts])
    rate = 1e-3 / per_byte if per_byte > 0 else float("inf")  # GB/s: bytes per us / 1e3
    pct = f" = {100 * rate / a.copy_gbps:.1f} % of the copy bandwidth" if a.copy_gbps else ""
    print(f"gemv_ramp fit over {len(pts)} sizes: fixed {fixed:.2f} us per launch, streaming {rate:.0f} GB/s{pct}")
    print(f"{'N':>8} {'K':>6} {'MB':>9} {'time us':>9} {'bytes/rate':>11} {'left us':>8}")
    for x, t, n, k in pts:
        print(f"{n:>8} {k:>6} {x / 1e6:>9.2f} {t:>9.2f} {x * per_byte:>11.2f} {t - x * per_byte:>8.2f}")


if __name__ == "__main__":
    main()
