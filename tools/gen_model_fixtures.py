#!/usr/bin/env python3
"""Tiny random Qwen v1 models + reference logits for tests/model_parity.rs.

Run (from the repository root; deterministic, seeded):
    /tmp/torchenv/bin/python tools/gen_model_fixtures.py [NAME ...]   (no NAME: every model)
Needs: torch (CPU, tested 2.15), transformers (tested 5.24), safetensors (0.8), numpy (2.x).

What it writes, per model, into tests/data/models/<name>/:
  config.json, generation_config.json       the REAL Qwen v1 formats (v1.1 keys or the Aug-2023 keys)
  model.safetensors | model.safetensors.index.json + 2 shards (a layer straddles them)
                                             tensors named as spec §2.2 (transformer.h.N.attn.c_attn.weight …)
  reference.safetensors                      f32 logits: p{i}.logits [T, V] (every position, one forward),
                                             p{i}.decode_logits [G-1, V] (greedy decode steps through the KV
                                             cache), p{i}.inv_freq [D/2] (the reference rotary inv_freq)
  reference.json                             prompts, greedy ids, alpha / rope base per prompt, which
                                             reference produced what, and spec §3.1/§3.2 table values.
No qwen.tiktoken is written: the checkpoint loader must not need it.

tiny-eps-1e-2 has layer_norm_epsilon 1e-2: build() checks that eps 1e-6 would move its logits by
more than 10x the parity tolerance, so a runtime ignoring the config's eps fails on it.

tiny-long-aug (build_long) is the long-context fixture: the REAL Aug-2023 config.json and
generation_config.json (tests/data/qwen/Qwen-7B-Chat-2023-08, seq_length 2048) with tiny shapes, a
4080-token prompt prefilled in chunks [2100, 1000, 980] through the reference's KV cache, then 32
greedy decode steps that pass 2S = 4096. The NTK alpha of every forward is chosen as modeling_qwen
does (qwen_v1_alpha: derived only when the whole KV is the forward's input, else the cached one), so
the first chunk fixes alpha 3 for everything after it. It stores only what tests/model_parity.rs
compares (logits of the `keep` prompt positions and of every decode step, the greedy ids) and
checks that re-deriving alpha past 2S, dropping logN or dropping NTK would each fail that test.

The reference is INDEPENDENT of the Rust code: Hugging Face transformers `Qwen2ForCausalLM` in float32
(eager attention) with the Qwen v1 weights mapped onto it:
  q/k/v_proj = rows 0..P, P..2P, 2P..3P of attn.c_attn (+ bias), o_proj = attn.c_proj,
  gate_proj = mlp.w2, up_proj = mlp.w1, down_proj = mlp.c_proj, input_layernorm = ln_1,
  post_attention_layernorm = ln_2, norm = ln_f, embed_tokens = wte, lm_head = lm_head.
Qwen2 has no dynamic NTK and no logN. For prompts longer than seq_length (S) the reference follows the
spec formulas here, in Python:
  * dynamic NTK: alpha = max(1, 2^ceil(log(L/S, 2) + 1) - 1) from the PROMPT length L (fixed at prefill,
    kept for every decode step), and Qwen2 is built with rope_theta = base * alpha^(D/(D-2)) -- valid
    because Qwen v1 applies the scaled base to all positions;
  * logN: a registered attention function multiplies the post-RoPE query at absolute position p by
    math.log(p+1, S) when p+1 > S, then runs transformers' own eager attention.
Weights stored as bf16/f16 are rounded first and the reference runs on the rounded values upcast to f32.
"""
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AttentionInterface, Qwen2Config, Qwen2ForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

from qwen_v1_map import v1_to_qwen2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "models")
GREEDY_TOKENS = 8
# tests/model_parity.rs: max relative error per logits row allowed against this reference.
REL_TOL = 1e-4
REAL_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "qwen")

# ---------------------------------------------------------------------------------------------
# logN attention: the query of absolute position p is scaled by log_S(p+1) for p+1 > S (spec §3.2).
# ---------------------------------------------------------------------------------------------
LOGN = {"S": None}  # the seq_length of the model being run, or None when use_logn_attn is false


def logn_factor(pos, s):
    i = pos + 1
    return math.log(i, s) if i > s else 1.0


def logn_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # query [B, H, Tq, D] after RoPE; key [B, H, Tk, D] (cache included): query t is at Tk - Tq + t.
    s = LOGN["S"]
    if s is not None:
        tq, tk = query.shape[2], key.shape[2]
        f = torch.tensor([logn_factor(tk - tq + t, s) for t in range(tq)], dtype=torch.float32)
        query = query * f.view(1, 1, tq, 1)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


AttentionInterface.register("qwen_logn_eager", logn_eager_attention)
AttentionMaskInterface.register("qwen_logn_eager", eager_mask)


def ntk_alpha(cfg, L):
    """spec §3.1 with the reference code's math.log(x, 2)."""
    if not cfg["use_dynamic_ntk"] or L <= cfg["S"]:
        return 1.0
    cv = math.log(L / cfg["S"], 2) + 1
    assert math.ceil(cv) == math.ceil(math.log2(L / cfg["S"]) + 1)
    return float(max(1, 2 ** math.ceil(cv) - 1))


def rope_base(cfg, alpha):
    d = cfg["D"]
    return cfg["base"] * alpha ** (d / (d - 2))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
MODELS = [
    # v1.1 config keys, bf16 weights, one model.safetensors, S = 16 (NTK + logN on).
    dict(name="tiny-bf16", dialect="v1.1", dtype=torch.bfloat16, sharded=False, seed=1,
         C=64, H=4, D=16, L=2, F=96, V=512, S=16, base=10000.0, eps=1e-6,
         use_dynamic_ntk=True, use_logn_attn=True,
         prompts=[1, 5, 13, 16, 17, 35]),
    # Aug-2023 config keys, f16 weights, index + 2 shards (layer 1 straddles them), S = 32, eps 1e-5.
    dict(name="tiny-aug-f16-sharded", dialect="aug", dtype=torch.float16, sharded=True, seed=2,
         C=96, H=3, D=32, L=3, F=160, V=384, S=32, base=10000.0, eps=1e-5,
         use_dynamic_ntk=True, use_logn_attn=True,
         prompts=[1, 5, 32, 41, 70]),
    # v1.1 keys, f32 weights, NTK and logN switched off, another rotary base, S = 8.
    dict(name="tiny-f32-nontk", dialect="v1.1", dtype=torch.float32, sharded=False, seed=3,
         C=32, H=2, D=16, L=1, F=48, V=256, S=8, base=50000.0, eps=1e-6,
         use_dynamic_ntk=False, use_logn_attn=False,
         prompts=[1, 5, 8, 21]),
    # v1.1 keys, bf16 weights, a LARGE layer_norm_epsilon (1e-2): the eps the config gives moves the
    # logits by ~1e-2 relative here (1e-6 vs 1e-5 moves them by ~1e-5, below the 1e-4 tolerance), so
    # a runtime that ignored `layer_norm_epsilon` fails on this model. build() asserts that margin.
    dict(name="tiny-eps-1e-2", dialect="v1.1", dtype=torch.bfloat16, sharded=False, seed=4,
         C=32, H=2, D=16, L=2, F=48, V=256, S=16, base=10000.0, eps=1e-2,
         use_dynamic_ntk=True, use_logn_attn=True,
         prompts=[1, 6, 20], eps_check=1e-6),
    # v1.1 keys, f16 weights with OUTLIERS like Qwen's massive activations (add_outliers): the
    # residual stream and the MLP's intermediate values go beyond the f16 range (65504) while every
    # stored weight is a finite f16. The CPU (f32) must match the reference; the GPU with --dtype f16
    # must either stay finite or fail with a clear error (tests/kernels/model.rs).
    dict(name="tiny-outlier-f16", dialect="v1.1", dtype=torch.float16, sharded=False, seed=6,
         C=64, H=4, D=16, L=2, F=96, V=512, S=32, base=10000.0, eps=1e-6,
         use_dynamic_ntk=True, use_logn_attn=True,
         prompts=[1, 7, 40], outliers=dict(ids=[3, 7], channel=5, value=30000.0, mlp=120.0, rows=4)),
]

DTYPE_NAME = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def qwen_config_json(m):
    common = {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "bf16": False, "fp16": False, "fp32": False,
        "initializer_range": 0.02, "kv_channels": m["D"], "layer_norm_epsilon": m["eps"],
        "model_type": "qwen", "no_bias": True, "onnx_safe": None,
        "rotary_emb_base": m["base"], "rotary_pct": 1.0, "scale_attn_weights": True,
        "seq_length": m["S"], "tie_word_embeddings": False, "use_cache": True,
        "use_dynamic_ntk": m["use_dynamic_ntk"], "use_flash_attn": "auto", "use_logn_attn": m["use_logn_attn"],
    }
    if m["dialect"] == "v1.1":
        return {**common, "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0,
                "hidden_size": m["C"], "intermediate_size": 2 * m["F"], "max_position_embeddings": 4 * m["S"],
                "num_attention_heads": m["H"], "num_hidden_layers": m["L"],
                "tokenizer_class": "QWenTokenizer", "transformers_version": "4.32.0", "vocab_size": m["V"]}
    return {**common, "activation": "swiglu", "apply_residual_connection_post_layernorm": False,
            "attn_pdrop": 0.0, "bias_dropout_fusion": True, "bos_token_id": 151643, "embd_pdrop": 0.0,
            "eos_token_id": 151643, "ffn_hidden_size": 2 * m["F"], "n_embd": m["C"], "n_head": m["H"],
            "n_layer": m["L"], "n_positions": 3 * m["S"], "padded_vocab_size": m["V"],
            "params_dtype": "torch.bfloat16", "pos_emb": "rotary", "resid_pdrop": 0.1,
            "tokenizer_type": "QWenTokenizer", "transformers_version": "4.31.0", "vocab_size": m["V"]}


GENERATION_CONFIG = {"chat_format": "raw", "eos_token_id": 151643, "pad_token_id": 151643,
                     "stop_words_ids": [[151643]], "max_new_tokens": 512, "do_sample": True,
                     "top_k": 0, "top_p": 0.8, "transformers_version": "4.31.0"}


def random_qwen_weights(m, g):
    """Qwen v1 tensors (spec §2.2), rounded to the storage dtype. Scales keep activations O(1) and the
    logits spread out (std ~3) so greedy picks are not near-ties."""
    C, H, D, L, F, V = m["C"], m["H"], m["D"], m["L"], m["F"], m["V"]
    P = H * D

    def rnd(*shape, std=1.0, mean=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean).to(m["dtype"])

    t = {"transformer.wte.weight": rnd(V, C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        t[p + "ln_1.weight"] = rnd(C, std=0.1, mean=1.0)
        t[p + "attn.c_attn.weight"] = rnd(3 * P, C, std=1.5 / math.sqrt(C))
        t[p + "attn.c_attn.bias"] = rnd(3 * P, std=0.2)
        t[p + "attn.c_proj.weight"] = rnd(C, P, std=1.0 / math.sqrt(P))
        t[p + "ln_2.weight"] = rnd(C, std=0.1, mean=1.0)
        t[p + "mlp.w1.weight"] = rnd(F, C, std=1.0 / math.sqrt(C))
        t[p + "mlp.w2.weight"] = rnd(F, C, std=1.0 / math.sqrt(C))
        t[p + "mlp.c_proj.weight"] = rnd(C, F, std=1.0 / math.sqrt(F))
    t["transformer.ln_f.weight"] = rnd(C, std=0.1, mean=1.0)
    t["lm_head.weight"] = rnd(V, C, std=3.0 / math.sqrt(C))
    return t


def add_outliers(m, t):
    """Qwen-like outliers, in place: wte rows `ids` carry `value` in one channel (a massive
    activation of the residual stream), and layer 0's MLP reads that channel with weight `mlp` in the
    first `rows` rows of w1 (up) and w2 (gate), so those tokens' SwiGLU values reach ~(8 * mlp)^2
    (after RMSNorm the outlier channel is ~sqrt(C) = 8), far past 65504, and the MLP output pushes
    the residual past it too. All stored values stay finite in f16."""
    o = m["outliers"]
    c, r, dt = o["channel"], o["rows"], m["dtype"]
    for i in o["ids"]:
        t["transformer.wte.weight"][i, c] = torch.tensor(o["value"], dtype=dt)
    for w in ("mlp.w1.weight", "mlp.w2.weight"):
        t["transformer.h.0." + w][:r, c] = torch.tensor(o["mlp"], dtype=dt)
    assert all(torch.isfinite(v.float()).all() for v in t.values())


def write_checkpoint(m, tensors, out):
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(qwen_config_json(m), f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    if not m["sharded"]:
        save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return
    # Shard 1: wte, layer 0, the attention half of layer 1; shard 2: the rest (layer 1 straddles).
    names = list(tensors)
    cut = names.index("transformer.h.1.ln_2.weight")
    shards = [names[:cut], names[cut:]]
    weight_map = {}
    for k, part in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(out, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def qwen2_reference(m, tensors, rope_theta):
    """Qwen2ForCausalLM fp32 with the v1 weights mapped (see the module doc)."""
    C, H, D, L, F, V = m["C"], m["H"], m["D"], m["L"], m["F"], m["V"]
    P = H * D
    cfg = Qwen2Config(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=H, head_dim=D, max_position_embeddings=32768,
                      rms_norm_eps=m["eps"], rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                      use_sliding_window=False, tie_word_embeddings=False, hidden_act="silu")
    cfg._attn_implementation = "qwen_logn_eager"
    model = Qwen2ForCausalLM(cfg).float().eval()
    sd = {n: t for k, v in tensors.items() for n, t in v1_to_qwen2(k, v.float(), P)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    assert model.config._attn_implementation == "qwen_logn_eager"
    return model


@torch.no_grad()
def run_prompt(model, ids):
    """(logits of every position from one forward [T, V], greedy ids, decode-step logits [G-1, V],
    smallest top-1/top-2 gap seen while choosing the greedy ids)."""
    x = torch.tensor([ids])
    out = model(x, use_cache=True)
    logits = out.logits[0].float()
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    nxt = int(torch.argmax(logits[-1]))
    gen, steps, gaps = [nxt], [], [top2_gap(logits[-1])]
    for _ in range(GREEDY_TOKENS - 1):  # token by token through the KV cache
        out = model(torch.tensor([[nxt]]), cache=cache, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        step = out.logits[0, -1].float()
        steps.append(step)
        gaps.append(top2_gap(step))
        nxt = int(torch.argmax(step))
        gen.append(nxt)
    return logits, gen, torch.stack(steps), min(gaps)


@torch.no_grad()
def outlier_magnitudes(model, ids):
    """max |value| of the residual stream (every layer's output) and of the SwiGLU products."""
    seen = {"swiglu": 0.0}

    def hook(_mod, inp, _out):
        seen["swiglu"] = max(seen["swiglu"], float(inp[0].abs().max()))

    hs = [layer.mlp.down_proj.register_forward_hook(hook) for layer in model.model.layers]
    out = model(torch.tensor([ids]), output_hidden_states=True)
    for h in hs:
        h.remove()
    return {"residual": max(float(h.abs().max()) for h in out.hidden_states[:-1]), **seen}


def top2_gap(row):
    v = torch.topk(row, 2).values
    return float(v[0] - v[1])


def tables(cfg):
    """spec §3.1 / §3.2 values from Python's math, for model::ntk_alpha / rope_base / logn_scale."""
    S = cfg["S"]
    lens = [1, S, S + 1, 2 * S, 2 * S + 1, 4 * S, 4 * S + 1, 8 * S + 1]
    pos = [0, S - 2, S - 1, S, S + 1, 2 * S - 1, 4 * S - 1, 32766]
    return {
        "alpha": [[L, ntk_alpha(cfg, L)] for L in lens],
        "rope_base": [[L, rope_base(cfg, ntk_alpha(cfg, L))] for L in lens],
        "logn": [[p, logn_factor(p, S) if cfg["use_logn_attn"] else 1.0] for p in pos],
    }


def table_config(name, S, D, base, ntk, logn):
    """A minimal v1.1 config.json text for the table checks + the values python computes for it."""
    cfg = {"S": S, "D": D, "base": base, "use_dynamic_ntk": ntk, "use_logn_attn": logn}
    j = {"model_type": "qwen", "hidden_size": D * 2, "num_attention_heads": 2, "kv_channels": D,
         "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 16, "seq_length": S,
         "rotary_emb_base": base, "use_dynamic_ntk": ntk, "use_logn_attn": logn}
    return {"name": name, "config_json": json.dumps(j), **tables(cfg)}


def real_table(name, sub):
    """The table values for a real Qwen config.json (tests/data/qwen/SUB), which the test loads."""
    with open(os.path.join(REAL_CONFIGS, sub, "config.json")) as f:
        j = json.load(f)
    cfg = {"S": j["seq_length"], "D": j["kv_channels"], "base": float(j["rotary_emb_base"]),
           "use_dynamic_ntk": j["use_dynamic_ntk"], "use_logn_attn": j["use_logn_attn"]}
    return {"name": name, "config_file": f"tests/data/qwen/{sub}/config.json", **tables(cfg)}


def build(m):
    out = os.path.join(ROOT, m["name"])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    g = torch.Generator().manual_seed(1000 + m["seed"])
    tensors = random_qwen_weights(m, g)
    if "outliers" in m:
        add_outliers(m, tensors)
    write_checkpoint(m, tensors, out)
    cfg = {"S": m["S"], "D": m["D"], "base": m["base"],
           "use_dynamic_ntk": m["use_dynamic_ntk"], "use_logn_attn": m["use_logn_attn"]}
    LOGN["S"] = m["S"] if m["use_logn_attn"] else None

    # Self-check of the reference plumbing: with logN off, our registered attention must equal stock eager.
    ref1 = qwen2_reference(m, tensors, m["base"])
    probe = torch.randint(0, m["V"], (1, min(m["S"], 12)), generator=g)
    stock = qwen2_reference(m, tensors, m["base"])
    stock.config._attn_implementation = "eager"
    with torch.no_grad():
        a, b = ref1(probe).logits, stock(probe).logits
    assert torch.equal(a, b), "registered attention differs from eager below S"

    out_t, prompts = {}, []
    for i, T in enumerate(m["prompts"]):
        ids = torch.randint(0, m["V"], (T,), generator=g).tolist()
        if "outliers" in m:  # an outlier token first (like Qwen's first-token spikes) and mid-prompt
            oi = m["outliers"]["ids"]
            ids[0] = oi[0]
            if T > 2:
                ids[T // 2] = oi[1]
        alpha = ntk_alpha(cfg, T)
        theta = rope_base(cfg, alpha)
        model = ref1 if alpha == 1.0 else qwen2_reference(m, tensors, theta)
        logits, gen, steps, gap = run_prompt(model, ids)
        out_t[f"p{i}.logits"] = logits.contiguous()
        out_t[f"p{i}.decode_logits"] = steps.contiguous()
        out_t[f"p{i}.inv_freq"] = model.model.rotary_emb.inv_freq.float().clone().contiguous()
        crosses = T + GREEDY_TOKENS - 1 > m["S"]
        ref = "transformers Qwen2ForCausalLM fp32 eager, v1 weights mapped"
        if alpha != 1.0:
            ref += f"; dynamic NTK: rope_theta = {m['base']} * {alpha}^(D/(D-2)) = {theta!r} (python)"
        if m["use_logn_attn"] and crosses:
            ref += "; logN: query at p scaled by math.log(p+1, S) for p+1 > S (attention hook)"
        prompts.append({"ids": ids, "alpha": alpha, "rope_base": theta, "greedy": gen,
                        "min_top2_gap": gap, "reference": ref})
        print(f"{m['name']} p{i}: T={T} alpha={alpha} greedy={gen} min top-2 gap={gap:.4f}")
    if "eps_check" in m:
        # The fixture must be able to fail: the same prompts with another eps move the logits far
        # beyond the parity test's tolerance (tests/model_parity.rs REL_TOL = 1e-4).
        other = dict(m, eps=m["eps_check"])
        worst = 0.0
        for i, p in enumerate(prompts):
            alt = qwen2_reference(other, tensors, p["rope_base"])
            with torch.no_grad():
                b = alt(torch.tensor([p["ids"]])).logits[0].float()
            a = out_t[f"p{i}.logits"]
            worst = max(worst, float(((a - b).abs().amax(-1) / a.abs().amax(-1)).max()))
        print(f"{m['name']}: eps {m['eps']} vs {m['eps_check']}: logits differ by {worst:.3e} (relative)")
        assert worst > 10 * REL_TOL, "the eps fixture cannot tell the two eps apart"
    if "outliers" in m:
        # The fixture really goes past the f16 range where the CPU keeps f32: the largest residual
        # and SwiGLU values of the reference on the longest prompt.
        p = max(prompts, key=lambda p: len(p["ids"]))
        big = outlier_magnitudes(qwen2_reference(m, tensors, p["rope_base"]), p["ids"])
        print(f"{m['name']}: largest |residual| {big['residual']:.3e}, |SwiGLU| {big['swiglu']:.3e} (f16 max 65504)")
        assert big["residual"] > 65504 and big["swiglu"] > 65504, big
    save_file(out_t, os.path.join(out, "reference.safetensors"))
    meta = {
        "generator": "tools/gen_model_fixtures.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "storage_dtype": DTYPE_NAME[m["dtype"]],
        "dialect": m["dialect"],
        "sharded": m["sharded"],
        "greedy_tokens": GREEDY_TOKENS,
        "decode_logits": "p{i}.decode_logits[k] = logits after feeding greedy[k] (k < greedy_tokens-1) "
                         "on top of the prompt and greedy[..k]; greedy[k+1] = argmax of it",
        "prompts": prompts,
        "tables": tables(cfg),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


# ---------------------------------------------------------------------------------------------
# Long context: a chunked prefill past 2S, then decode across a further NTK boundary.
# ---------------------------------------------------------------------------------------------
# The REAL Aug-2023 config.json (tests/data/qwen/Qwen-7B-Chat-2023-08: seq_length 2048, eps 1e-6,
# NTK + logN on) with only the shape keys made tiny. Prompt of 4080 tokens prefilled in chunks of
# 2100 (> S: alpha 3), 1000 and 980; then 32 greedy decode steps, positions 4080..4111: the length
# passes 2S = 4096 at step 16, where a fresh prefill would get alpha 7 -- Qwen v1 keeps 3.
LONG = dict(name="tiny-long-aug", dtype=torch.bfloat16, seed=5,
            C=64, H=4, D=16, L=2, F=96, V=512, base=10000.0,
            chunks=[2100, 1000, 980], decode_steps=32,
            # prompt positions whose logits are stored: chunk edges, both sides of S, the last one
            keep=[0, 1000, 2046, 2047, 2048, 2099, 2100, 2101, 3099, 3100, 4079])


def qwen_v1_alpha(cfg, kv_len, q_len, cached):
    """The NTK alpha of one forward as modeling_qwen.QWenModel.forward picks it (Aug and Dec code;
    spec §3.1): derived from kv_len only when the whole KV is this forward's input (kv_len == q_len,
    i.e. no cache: the first chunk of a prefill); otherwise the alpha cached by the previous forward
    (`rotary_emb._ntk_alpha_cached_list`) is reused -- for later prefill chunks and for every decode
    step, even past the next threshold."""
    if not cfg["use_dynamic_ntk"]:
        return 1.0
    if kv_len != q_len:
        return cached
    return ntk_alpha(cfg, kv_len)


def long_config_json(m):
    with open(os.path.join(REAL_CONFIGS, "Qwen-7B-Chat-2023-08", "config.json")) as f:
        j = json.load(f)
    shape = {"n_embd": m["C"], "n_head": m["H"], "n_layer": m["L"], "kv_channels": m["D"],
             "ffn_hidden_size": 2 * m["F"], "padded_vocab_size": m["V"], "vocab_size": m["V"]}
    assert set(shape) <= set(j), "the Aug-2023 config lost a shape key"
    j.update(shape)
    return j


@torch.no_grad()
def run_long(model, ids, chunks, steps, greedy=None):
    """Chunked prefill through the KV cache, then `steps` decode steps feeding `greedy` (or the
    argmax when None). Returns (prefill logits [T, V], greedy ids [steps+1], decode logits
    [steps, V], min top-2 gap of the greedy choices, the cache after every decode step)."""
    cache, rows, pos = None, [], 0
    for n in chunks:
        out = model(torch.tensor([ids[pos:pos + n]]), cache=cache, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        rows.append(out.logits[0].float())
        pos += n
    logits = torch.cat(rows)
    gen = [int(torch.argmax(logits[-1]))] if greedy is None else [greedy[0]]
    gaps, steps_out = [top2_gap(logits[-1])], []
    for k in range(steps):
        out = model(torch.tensor([[gen[k]]]), cache=cache, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        step = out.logits[0, -1].float()
        steps_out.append(step)
        gaps.append(top2_gap(step))
        gen.append(int(torch.argmax(step)) if greedy is None else greedy[k + 1])
    return logits, gen, torch.stack(steps_out), min(gaps)


def rel_rows(a, b):
    """max over rows of max|a-b| / max|b|."""
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def build_long(m):
    out = os.path.join(ROOT, m["name"])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg_json = long_config_json(m)
    S = cfg_json["seq_length"]
    eps = cfg_json["layer_norm_epsilon"]
    cfg = {"S": S, "D": m["D"], "base": float(cfg_json["rotary_emb_base"]),
           "use_dynamic_ntk": cfg_json["use_dynamic_ntk"], "use_logn_attn": cfg_json["use_logn_attn"]}
    assert S == 2048 and cfg["use_dynamic_ntk"] and cfg["use_logn_attn"], "not the real Aug-2023 config"
    mm = dict(m, S=S, eps=eps)
    g = torch.Generator().manual_seed(1000 + m["seed"])
    tensors = random_qwen_weights(mm, g)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    shutil.copy(os.path.join(REAL_CONFIGS, "Qwen-7B-Chat-2023-08", "generation_config.json"), out)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    T = sum(m["chunks"])
    ids = torch.randint(0, m["V"], (T,), generator=g).tolist()
    # The alpha of every forward, as Qwen v1 picks it.
    alpha, kv, per_forward = None, 0, []
    for n in m["chunks"] + [1] * m["decode_steps"]:
        kv += n
        alpha = qwen_v1_alpha(cfg, kv, n, alpha)
        per_forward.append(alpha)
    assert len(set(per_forward)) == 1, per_forward  # fixed by the first chunk: one rope_theta serves all
    alpha = per_forward[0]
    assert alpha > 1 and ntk_alpha(cfg, kv) > alpha, "the decode must cross a further NTK boundary"
    theta = rope_base(cfg, alpha)
    LOGN["S"] = S
    model = qwen2_reference(mm, tensors, theta)
    logits, gen, steps, gap = run_long(model, ids, m["chunks"], m["decode_steps"])
    assert torch.equal(logits.argmax(-1)[-1], torch.tensor(gen[0]))

    # The fixture must be able to fail: each of these wrong semantics moves the compared rows by far
    # more than the test's tolerance.
    keep = torch.tensor(m["keep"])
    checks = {}
    cross = next(k for k in range(m["decode_steps"]) if T + k + 1 > 2 * S)  # first step at length 2S+1
    # (a) alpha re-derived from the length once it passes 2S (7 instead of the cached 3), decode only:
    alt = qwen2_reference(mm, tensors, rope_base(cfg, ntk_alpha(cfg, T + cross + 1)))
    _, _, alt_steps, _ = run_long(alt, ids, m["chunks"], m["decode_steps"], greedy=gen)
    checks["decode past 2S with a re-derived alpha"] = rel_rows(alt_steps[cross:], steps[cross:])
    # (b) logN ignored, (c) NTK ignored (alpha 1):
    LOGN["S"] = None
    no_logn, _, no_logn_steps, _ = run_long(model, ids, m["chunks"], m["decode_steps"], greedy=gen)
    checks["logN off"] = rel_rows(torch.cat([no_logn[keep], no_logn_steps]), torch.cat([logits[keep], steps]))
    LOGN["S"] = S
    no_ntk = qwen2_reference(mm, tensors, cfg["base"])
    l1, _, s1, _ = run_long(no_ntk, ids, m["chunks"], m["decode_steps"], greedy=gen)
    checks["NTK off"] = rel_rows(torch.cat([l1[keep], s1]), torch.cat([logits[keep], steps]))
    for what, d in checks.items():
        print(f"{m['name']}: {what}: compared rows differ by {d:.3e} (relative)")
        assert d > 10 * REL_TOL, f"the long fixture cannot detect: {what}"

    save_file({"prompt_logits": logits[keep].contiguous(), "decode_logits": steps.contiguous()},
              os.path.join(out, "reference.safetensors"))
    meta = {
        "generator": "tools/gen_model_fixtures.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "storage_dtype": DTYPE_NAME[m["dtype"]],
        "reference": "transformers Qwen2ForCausalLM fp32 eager, v1 weights mapped, run through its KV "
                     "cache in the same chunks; dynamic NTK as modeling_qwen picks alpha per forward "
                     f"(derived only by the first chunk: alpha {alpha}, rope_theta = {theta!r}); logN: "
                     "query at p scaled by math.log(p+1, S) for p+1 > S (attention hook)",
        "ids": ids,
        "chunks": m["chunks"],
        "keep": m["keep"],
        "prompt_logits": "prompt_logits[i] = logits of prompt position keep[i] (from its chunk's forward)",
        "decode_logits": "decode_logits[k] = logits after feeding greedy[k] at position T+k; "
                         "greedy[k+1] = argmax of it",
        "greedy": gen,
        "alpha": alpha,
        "alpha_of_a_fresh_prefill_at_the_end": ntk_alpha(cfg, kv),
        "rope_base": theta,
        "first_decode_step_past_2S": cross,
        "min_top2_gap": gap,
        "detects": checks,
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f)
    print(f"{m['name']}: T={T} in chunks {m['chunks']}, alpha {alpha}, greedy {gen}, min top-2 gap {gap:.4f}")


def main():
    """Builds every model, or only those named on the command line (the others stay as they are)."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(ROOT, exist_ok=True)
    wanted = set(sys.argv[1:])
    known = {m["name"] for m in MODELS} | {LONG["name"]}
    assert wanted <= known, f"unknown model(s) {wanted - known}; known: {sorted(known)}"
    for m in MODELS:
        if not wanted or m["name"] in wanted:
            build(m)
    if not wanted or LONG["name"] in wanted:
        build_long(LONG)
    # Table checks on the real configurations (spec §1.1 / §1.2) beyond the tiny models.
    extra = [real_table("qwen-7b-v1.1", "Qwen-7B-v1.1"),
             real_table("qwen-7b-aug", "Qwen-7B-Chat-2023-08"),
             table_config("no-ntk-no-logn", 2048, 128, 10000.0, False, False)]
    with open(os.path.join(ROOT, "tables.json"), "w") as f:
        json.dump(extra, f, indent=1)
    total = sum(os.path.getsize(os.path.join(d, fn)) for d, _, fs in os.walk(ROOT) for fn in fs)
    print(f"total fixture size: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
