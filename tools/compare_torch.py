#!/usr/bin/env python3
"""Side by side, same machine, same run: qwen-rt against Hugging Face transformers on one Qwen v1 model.

Run on the GPU machine, from the repository root (after `qwen-run synth --preset 7b --out /tmp/q7b`):
    python3 tools/compare_torch.py --model /tmp/q7b --qwen-run gpu-carry/qwen-run --out $OUT/compare.json
Without a GPU (tiny model, both sides in f32 on the CPU; ours vs torch must agree to ~1e-5 relative):
    python3 tools/compare_torch.py --model /tmp/ct-tiny --qwen-run target/release/qwen-run \
        --device cpu --dtype float32 --backend cpu --prefill 8,16 --decode 8 --decode-prompt 8 --check-len 12
Needs torch, transformers (5.x), safetensors, numpy; no internet, no tokenizer.

The torch side is `transformers.Qwen2ForCausalLM` (--dtype, sdpa attention) with the Qwen v1 weights mapped
onto it by tools/qwen_v1_map.py (as for the fixtures of tools/gen_model_fixtures.py): q/k/v_proj = rows 0..P, P..2P, 2P..3P of attn.c_attn
(+ bias), o_proj = attn.c_proj, gate_proj = mlp.w2, up_proj = mlp.w1, down_proj = mlp.c_proj,
input/post_attention_layernorm = ln_1/ln_2, norm = ln_f, embed_tokens = wte, lm_head = lm_head;
rope_theta = rotary_emb_base, rms_norm_eps = layer_norm_epsilon, intermediate_size = config's // 2.
Qwen2 has no dynamic NTK / logN, which is exact while prompts stay <= seq_length (checked). The model is
built directly on the device in the target dtype and filled tensor by tensor from safe_open(device=...),
so host RAM never holds the whole model.

Order: ours first (subprocesses, before this process touches the GPU), then torch. Each phase is
wrapped: a failure is printed and recorded under "errors", and the JSON is still written.
Prompt ids everywhere: ids(n) = [(i*7919 + 13) % min(V, 151643) for i in range(n)] (as `qwen-run bench`).

The numbers:
  load s           ours: `qwen-run bench` load (file streamed to the device); torch: build + fill from the
                   safetensors (page cache warm after our run).
  prefill tok/s    n / time of one forward of an n-token prompt into a fresh cache (torch: logits_to_keep=1,
                   like ours, which computes the last position's logits only). One untimed warm-up first;
                   on a GPU also an untimed pass at each length and the median of 3 timed ones (both).
  decode tok/s     after a --decode-prompt prompt, --decode greedy steps (1-token forward through the
                   cache, argmax on the device), only the steps timed.
  memory GiB       ours: device memory in use (total - free) after the bench; torch: max_memory_allocated
                   over the benchmark (weights included), and device in use (total - free) after it.
  logits           on a --check-len prompt, every position: ours (`qwen-run logits`, --ours-dtype),
                   torch in --dtype, and an fp32 reference (the same torch model upcast, eager attention).
                   Per pair a vs b (b the reference): max_abs = max|a-b|; max_rel_row = worst row of
                   max|a-b| / max|b|; top1 = rows whose argmax agrees. Ours vs fp32 should be about
                   torch-bf16 vs fp32.
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

from qwen_v1_map import v1_to_qwen2

GIB = float(1 << 30)
PREFILL_REPS = 3  # timed prefill passes per length on a GPU (qwen-run bench: GPU_PREFILL_REPS)


def log(*a):
    print(*a, flush=True)


def ids_for(n, vocab):
    return [(i * 7919 + 13) % min(vocab, 151643) for i in range(n)]


def qwen_v1_config(model_dir):
    """The shapes of a Qwen v1 config.json (v1.1 keys or the Aug-2023 keys)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)

    def get(*keys):
        return next(c[k] for k in keys if c.get(k) is not None)

    C, H, L = get("hidden_size", "n_embd"), get("num_attention_heads", "n_head"), get("num_hidden_layers", "n_layer")
    return dict(C=C, H=H, L=L, D=c.get("kv_channels") or C // H,
                F=get("intermediate_size", "ffn_hidden_size") // 2, V=get("padded_vocab_size", "vocab_size"),
                S=c.get("seq_length", 2048), base=float(c.get("rotary_emb_base", 10000.0)),
                eps=float(c.get("layer_norm_epsilon", 1e-6)), rotary_pct=c.get("rotary_pct", 1.0))


def shard_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


@torch.no_grad()
def build_qwen2(model_dir, cfg, dtype, device):
    """Qwen2ForCausalLM in `dtype` on `device`, every parameter copied from the v1 safetensors."""
    from safetensors import safe_open
    from transformers import Qwen2Config, Qwen2ForCausalLM
    C, H, D, L, F, V = (cfg[k] for k in "CHDLFV")
    qc = Qwen2Config(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                     num_key_value_heads=H, head_dim=D, max_position_embeddings=max(32768, cfg["S"]),
                     rms_norm_eps=cfg["eps"], rope_parameters={"rope_type": "default", "rope_theta": cfg["base"]},
                     use_sliding_window=False, tie_word_embeddings=False, hidden_act="silu",
                     attn_implementation="sdpa")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(qc)
    finally:
        torch.set_default_dtype(old)
    params = dict(model.named_parameters())
    filled = set()
    for fname in shard_files(model_dir):
        with safe_open(os.path.join(model_dir, fname), framework="pt", device=str(device)) as sf:
            for k in sf.keys():
                for n, t in v1_to_qwen2(k, sf.get_tensor(k), H * D):
                    params[n].copy_(t)
                    filled.add(n)
    missing = sorted(set(params) - filled)
    assert not missing, f"not filled from the checkpoint: {missing[:5]}"
    want = 1.0 / (cfg["base"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    inv = model.model.rotary_emb.inv_freq
    assert inv.dtype == torch.float32 and torch.allclose(inv.cpu().double(), want, rtol=1e-6), "rotary inv_freq"
    assert all(p.dtype == dtype for p in model.parameters())
    return model.eval()


def cache_kw(model):
    return "past_key_values" if "past_key_values" in inspect.signature(type(model).forward).parameters else "cache"


def out_cache(out):
    c = getattr(out, "cache", None)  # transformers >= 5.2x; older ones: past_key_values
    return c if c is not None else getattr(out, "past_key_values", None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def torch_bench(model, device, vocab, prefill, decode, decode_prompt):
    kw = cache_kw(model)
    tensor = lambda ids: torch.tensor([ids], device=device)  # noqa: E731

    def prompt(n):
        return model(input_ids=tensor(ids_for(n, vocab)), use_cache=True, logits_to_keep=1)

    def steps(out, n):
        cache, nxt = out_cache(out), out.logits[:, -1:].argmax(-1)
        for _ in range(n):
            out = model(input_ids=nxt, use_cache=True, **{kw: cache})
            cache, nxt = out_cache(out), out.logits[:, -1:].argmax(-1)
        return nxt

    steps(prompt(min(prefill or [decode_prompt])), 4)  # warm-up, untimed: prefill + a few decode steps
    sync(device)
    r = {"prefill": []}
    # As `qwen-run bench`: on a GPU each length gets an untimed pass of its own, then the median of
    # PREFILL_REPS timed passes; on the CPU one timed pass.
    reps = PREFILL_REPS if str(device).startswith("cuda") else 1
    for n in prefill:
        if reps > 1:
            prompt(n)
        rates = []
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            prompt(n)
            sync(device)
            rates.append(n / (time.perf_counter() - t))
        r["prefill"].append({"tokens": n, "tok_per_s": statistics.median(rates)})
        log(f"  torch prefill {n}: {r['prefill'][-1]['tok_per_s']:.1f} tok/s")
    if decode > 0:
        out = prompt(decode_prompt)
        sync(device)
        t = time.perf_counter()
        steps(out, decode)
        sync(device)
        r["decode_tok_per_s"] = decode / (time.perf_counter() - t)
        log(f"  torch decode {decode} after {decode_prompt}: {r['decode_tok_per_s']:.2f} tok/s")
    return r


@torch.no_grad()
def torch_compiled_bench(model, device, dtype, vocab, decode, decode_prompt):
    """The strongest peer that runs on the GPU machine: the gpt-fast recipe in transformers — a static
    KV cache (StaticCache) and the one-token decode step under torch.compile(mode="reduce-overhead",
    fullgraph=True), i.e. inductor kernels replayed as a CUDA graph. The prompt goes through the same
    model uncompiled (gpt-fast compiles prefill separately; only decode is compared for this peer).
    Compilation (first calls) is untimed: 3 warm-up steps, then `decode` greedy steps timed."""
    from transformers import StaticCache
    L = decode_prompt + decode + 8
    want = dict(config=model.config, max_batch_size=1, max_cache_len=L, device=device, dtype=dtype)
    params = inspect.signature(StaticCache.__init__).parameters
    cache = StaticCache(**{k: v for k, v in want.items() if k in params})
    tensor = lambda ids: torch.tensor([ids], device=device)  # noqa: E731

    def step(ids, pos):
        return model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

    step_c = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    ids = ids_for(decode_prompt, vocab)
    logits = model(input_ids=tensor(ids), past_key_values=cache, use_cache=True,
                   cache_position=torch.arange(decode_prompt, device=device)).logits
    nxt = logits[:, -1:].argmax(-1)
    pos = decode_prompt
    t0 = time.perf_counter()
    for _ in range(3):  # compile + graph capture, untimed
        nxt = step_c(nxt, torch.tensor([pos], device=device))[:, -1:].argmax(-1).clone()
        pos += 1
    sync(device)
    r = {"peer": "transformers Qwen2ForCausalLM + StaticCache + torch.compile(mode='reduce-overhead', fullgraph=True)",
         "compile_s": time.perf_counter() - t0}
    steps = min(decode, L - pos - 1)
    t = time.perf_counter()
    for _ in range(steps):
        nxt = step_c(nxt, torch.tensor([pos], device=device))[:, -1:].argmax(-1).clone()
        pos += 1
    sync(device)
    r["decode_tok_per_s"] = steps / (time.perf_counter() - t)
    log(f"  torch compiled decode {steps} after {decode_prompt}: {r['decode_tok_per_s']:.2f} tok/s "
        f"(compile {r['compile_s']:.1f} s)")
    return r


@torch.no_grad()
def torch_logits(model, device, ids):
    return model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float().cpu().numpy()


def compare(a, b):
    """a against the reference b, both [T, V]."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    rel = d.max(1) / np.maximum(np.abs(b).max(1), 1e-30)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "max_rel_row": float(rel.max()),
            "worst_row": int(rel.argmax()), "top1": int((a.argmax(1) == b.argmax(1)).sum()), "rows": int(a.shape[0])}


def run_ours(args, sub, *extra):
    cmd = [args.qwen_run, sub, "--model", args.model, "--backend", args.backend, "--dtype", args.ours_dtype, *extra]
    log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)  # stderr passes through
    sys.stdout.write(p.stdout)
    sys.stdout.flush()
    if p.returncode != 0:
        raise RuntimeError(f"{sub} exited with {p.returncode}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Qwen v1 model directory (HF layout)")
    ap.add_argument("--qwen-run", default="target/release/qwen-run")
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--device", default="cuda", help="torch device (cuda or cpu)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="torch dtype")
    ap.add_argument("--backend", default="cuda", help="qwen-run --backend")
    ap.add_argument("--ours-dtype", help="qwen-run --dtype [bf16 for --dtype bfloat16, f32 for float32]")
    ap.add_argument("--prefill", default="128,512,2048")
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--decode-prompt", type=int, default=128)
    ap.add_argument("--check-len", type=int, default=64)
    ap.add_argument("--fp32-ref", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--skip-ours", action="store_true", help="skip `qwen-run bench` (the logits still run)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per qwen-run call")
    ap.add_argument("--peers", default="eager,compiled",
                    help="torch peers: eager (transformers, dynamic cache, no compile) and/or compiled "
                         "(static cache + torch.compile reduce-overhead, the gpt-fast recipe)")
    args = ap.parse_args()
    args.ours_dtype = args.ours_dtype or {"bfloat16": "bf16", "float32": "f32"}[args.dtype]
    prefill = [int(x) for x in args.prefill.split(",") if x]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    import transformers
    res = {"args": vars(args), "torch_version": torch.__version__, "transformers_version": transformers.__version__,
           "ours": None, "torch": {"peer": "transformers Qwen2ForCausalLM, eager, dynamic cache, sdpa"},
           "torch_compiled": None, "logits": {}, "errors": []}

    def phase(name, fn):
        log(f"== {name}")
        t = time.perf_counter()
        try:
            return fn()
        except BaseException as e:  # noqa: BLE001 -- keep going, report at the end
            if isinstance(e, KeyboardInterrupt):
                raise
            traceback.print_exc()
            sys.stderr.flush()
            res["errors"].append(f"{name}: {type(e).__name__}: {e}")
            return None
        finally:
            log(f"   ({name}: {time.perf_counter() - t:.1f} s)")

    try:
        cfg = qwen_v1_config(args.model)
        res["config"] = cfg
        log(f"model {args.model}: {cfg}")
        longest = max(prefill + [args.decode_prompt + args.decode + 1, args.check_len])
        if longest > cfg["S"] or cfg["rotary_pct"] != 1.0:
            res["errors"].append(f"warning: {longest} tokens > seq_length {cfg['S']} (NTK/logN differ) "
                                 "or rotary_pct != 1")
        check_ids = ids_for(args.check_len, cfg["V"])
        logits = {}

        # --- ours first, while this process has not touched the GPU
        if not args.skip_ours:
            def ours_bench():
                out = run_ours(args, "bench", "--prefill", args.prefill, "--decode", str(args.decode),
                               "--decode-prompt", str(args.decode_prompt))
                return json.loads(out.strip().splitlines()[-1])
            res["ours"] = phase("qwen-rt bench", ours_bench)

        def ours_logits():
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "ours.npy")
                run_ours(args, "logits", "--ids", ",".join(map(str, check_ids)), "--out", path)
                return np.load(path).astype(np.float32)
        logits["ours"] = phase("qwen-rt logits", ours_logits)

        # --- torch
        def load():
            t = time.perf_counter()
            m = build_qwen2(args.model, cfg, dtype, device)
            sync(device)
            res["torch"]["load_s"] = time.perf_counter() - t
            res["torch"]["attn"] = m.config._attn_implementation
            if device.type == "cuda":
                res["torch"]["gpu"] = torch.cuda.get_device_name(device)
                res["torch"]["weights_gib"] = torch.cuda.memory_allocated(device) / GIB
            log(f"  torch load {res['torch']['load_s']:.2f} s")
            return m
        model = phase("torch load", load)

        if model is not None:
            def bench():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                res["torch"].update(torch_bench(model, device, cfg["V"], prefill, args.decode, args.decode_prompt))
                if device.type == "cuda":
                    free, total = torch.cuda.mem_get_info(device)
                    res["torch"]["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
                    res["torch"]["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
                    res["torch"]["device_used_gib"] = (total - free) / GIB
            peers = set(args.peers.split(","))
            if "eager" in peers:
                phase("torch bench", bench)
            if "compiled" in peers and args.decode > 0:
                def compiled():
                    res["torch_compiled"] = torch_compiled_bench(model, device, dtype, cfg["V"], args.decode,
                                                                 args.decode_prompt)
                phase("torch compiled bench", compiled)
            logits["torch"] = phase(f"torch logits ({args.dtype})", lambda: torch_logits(model, device, check_ids))

            if args.dtype == "float32":
                logits["fp32"] = logits["torch"]  # the torch model already is the fp32 reference
            elif args.fp32_ref:
                def fp32():
                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.allow_tf32 = False
                    model.float()  # bf16 -> fp32 is exact: the same weights as the safetensors, upcast
                    try:
                        model.set_attn_implementation("eager")
                    except Exception as e:  # noqa: BLE001
                        log(f"  (eager attention not set, keeping {model.config._attn_implementation}: {e})")
                    res["logits"]["fp32_attn"] = model.config._attn_implementation
                    return torch_logits(model, device, check_ids)
                logits["fp32"] = phase("fp32 reference logits", fp32)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

        def diffs():
            pairs = [("ours", "torch"), ("ours", "fp32")] + ([("torch", "fp32")] if args.dtype != "float32" else [])
            for a, b in pairs:
                if logits.get(a) is not None and logits.get(b) is not None:
                    res["logits"][f"{a}_vs_{b}"] = compare(logits[a], logits[b])
        phase("compare logits", diffs)
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        res["errors"].append(f"main: {type(e).__name__}: {e}")
    finally:
        print_table(res)
        text = json.dumps(res)
        if args.out:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "w") as f:
                    f.write(text + "\n")
            except OSError as e:
                log(f"cannot write {args.out}: {e}")
        log(text)


def print_table(res):
    o, t, tc = res.get("ours") or {}, res.get("torch") or {}, res.get("torch_compiled") or {}
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [("load s", o.get("load_s"), t.get("load_s"), ".2f")]
    op = {p["tokens"]: p["tok_per_s"] for p in o.get("prefill", [])}
    tp = {p["tokens"]: p["tok_per_s"] for p in t.get("prefill", [])}
    rows += [(f"prefill {n} tok/s", op.get(n), tp.get(n), ".1f") for n in sorted(set(op) | set(tp))]
    rows.append(("decode tok/s", o.get("decode_tok_per_s"), t.get("decode_tok_per_s"), ".2f"))
    rows.append(("decode tok/s, compiled peer", o.get("decode_tok_per_s"), tc.get("decode_tok_per_s"), ".2f"))
    mem = o.get("mem_used_bytes")
    rows.append(("device memory in use GiB", None if mem is None else mem / GIB, t.get("device_used_gib"), ".2f"))
    rows.append(("torch peak allocated GiB", None, t.get("peak_allocated_gib"), ".2f"))
    log("")
    log(f"{'measure':<28} {'qwen-rt':>12} {'torch':>12}")
    for name, a, b, spec in rows:
        log(f"{name:<28} {fmt(a, spec):>12} {fmt(b, spec):>12}")
    # Both ratios, each naming its peer.
    ratios = {}
    for key, peer in (("eager", t), ("compiled", tc)):
        a, b = o.get("decode_tok_per_s"), peer.get("decode_tok_per_s")
        if a and b:
            ratios[key] = a / b
            log(f"decode ratio qwen-rt / {peer.get('peer', key)}: {a / b:.2f}x")
    res["decode_ratio"] = ratios
    if res.get("logits"):
        log(f"\n{'logits (a vs reference b)':<28} {'max_abs':>10} {'max_rel_row':>12} {'top1':>8}")
        for k, v in res["logits"].items():
            if isinstance(v, dict):
                log(f"{k:<28} {v['max_abs']:>10.3e} {v['max_rel_row']:>12.3e} {v['top1']:>4}/{v['rows']}")
    for e in res.get("errors", []):
        log(f"ERROR {e}")


if __name__ == "__main__":
    main()
