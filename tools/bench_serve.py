#!/usr/bin/env python3
"""Serving benchmark for `qwen-run serve`: time to first token (TTFT), inter-token latency (ITL)
percentiles and aggregate generated tok/s at several numbers of concurrent streams.

Starts the server itself (or uses --url), sends streamed greedy /v1/completions requests with a fixed
prompt of --prompt-tokens token ids from C concurrent clients, each doing --requests requests, and
measures on the client side: TTFT = request sent → first content chunk; ITL = gaps between content
chunks (one chunk per token, except pieces held back for UTF-8 / stop strings); tok/s = all
completion_tokens (from the usage chunk) / wall time of the level. Standard library only.

  python3 tools/bench_serve.py --model DIR --backend cpu --concurrency 1,8,32 --max-tokens 32
  python3 tools/bench_serve.py --synth 7b ...     # random 7B weights written to a temp dir first
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(url, prompt_ids, max_tokens, timeout):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = json.dumps({"prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    times, usage = [], None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        if any(c.get("text") for c in chunk.get("choices", [])):
            times.append(time.perf_counter())
    conn.close()
    ttft = times[0] - t0 if times else float("nan")
    itl = [b - a for a, b in zip(times, times[1:])]
    return ttft, itl, (usage or {}).get("completion_tokens", len(times))


def level(url, conc, requests, prompt_ids, max_tokens, timeout):
    ttfts, itls, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client():
        for _ in range(requests):
            try:
                ttft, itl, n = one_request(url, prompt_ids, max_tokens, timeout)
            except Exception as e:  # noqa: BLE001 - counted and printed
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                ttfts.append(ttft)
                itls.extend(itl)
                tokens[0] += n

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": conc, "requests": len(ttfts), "errors": len(errors), "tokens": tokens[0],
            "wall_s": wall, "tok_s": tokens[0] / wall,
            "ttft_p50_ms": 1e3 * pct(ttfts, 50), "ttft_p90_ms": 1e3 * pct(ttfts, 90), "ttft_p99_ms": 1e3 * pct(ttfts, 99),
            "itl_p50_ms": 1e3 * pct(itls, 50), "itl_p90_ms": 1e3 * pct(itls, 90), "itl_p99_ms": 1e3 * pct(itls, 99),
            "first_error": errors[0] if errors else None}


def start_server(args, model_dir):
    exe = args.qwen_run or os.path.join(ROOT, "target/release/qwen-run")
    cmd = [exe, "serve", "--port", "0", "--backend", args.backend, "--max-queue", "1024", "--timeout", "3600"]
    if model_dir:
        cmd += ["--model", model_dir]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_seq_len:
        cmd += ["--max-seq-len", str(args.max_seq_len)]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = []
    while True:
        line = p.stderr.readline()
        if not line:
            raise SystemExit("server exited: " + "".join(log))
        log.append(line)
        sys.stderr.write("  server: " + line)
        m = re.match(r"listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server (else one is started)")
    ap.add_argument("--qwen-run", help="binary (default target/release/qwen-run)")
    ap.add_argument("--model", help="model directory (default: the built-in tiny model)")
    ap.add_argument("--synth", choices=["tiny", "7b"], help="write a random-weight model of this preset first")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-seq-len", type=int, default=0)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    proc, tmp = None, None
    url = args.url
    if not url:
        model_dir = args.model
        if args.synth:
            tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
            model_dir = os.path.join(tmp.name, "model")
            exe = args.qwen_run or os.path.join(ROOT, "target/release/qwen-run")
            subprocess.run([exe, "synth", "--preset", args.synth, "--out", model_dir], check=True)
        proc, url = start_server(args, model_dir)
    try:
        # Regular BPE ids (no special tokens), the same formula as model::bench_id.
        prompt = [(i * 7919 + 13) % 151643 for i in range(args.prompt_tokens)]
        one_request(url, prompt, 2, args.timeout)  # warm-up
        rows = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            r = level(url, c, args.requests, prompt, args.max_tokens, args.timeout)
            rows.append(r)
            print(f"concurrency {c:>3}: {r['requests']} requests ({r['errors']} errors), {r['tokens']} tokens in "
                  f"{r['wall_s']:.1f} s = {r['tok_s']:.1f} tok/s; TTFT p50/p90/p99 {r['ttft_p50_ms']:.0f}/"
                  f"{r['ttft_p90_ms']:.0f}/{r['ttft_p99_ms']:.0f} ms; ITL p50/p90/p99 {r['itl_p50_ms']:.1f}/"
                  f"{r['itl_p90_ms']:.1f}/{r['itl_p99_ms']:.1f} ms", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"url": url, "args": vars(args), "levels": rows}, f, indent=1)
        if any(r["errors"] for r in rows):
            raise SystemExit("errors: " + str([r["first_error"] for r in rows if r["errors"]]))
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
