#!/usr/bin/env python3
"""Tiny random Qwen v1 models + reference logits for tests/model_parity.rs.

Run (from the repository root; deterministic, seeded):
    /tmp/torchenv/bin/python tools/gen_model_fixtures.py
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

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AttentionInterface, Qwen2Config, Qwen2ForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

from qwen_v1_map import v1_to_qwen2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "models")
GREEDY_TOKENS = 8

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
                      num_attention_heads=H, num_key_value_heads=H, head_dim=D, max_position_embeddings=4096,
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


def build(m):
    out = os.path.join(ROOT, m["name"])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    g = torch.Generator().manual_seed(1000 + m["seed"])
    tensors = random_qwen_weights(m, g)
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


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(ROOT, exist_ok=True)
    for m in MODELS:
        build(m)
    # Table checks on the real configurations (spec §1.1 / §1.2) beyond the tiny models.
    extra = [table_config("qwen-7b-v1.1", 8192, 128, 10000.0, True, True),
             table_config("qwen-7b-aug", 2048, 128, 10000.0, True, True),
             table_config("no-ntk-no-logn", 2048, 128, 10000.0, False, False)]
    with open(os.path.join(ROOT, "tables.json"), "w") as f:
        json.dump(extra, f, indent=1)
    total = sum(os.path.getsize(os.path.join(d, fn)) for d, _, fs in os.walk(ROOT) for fn in fs)
    print(f"total fixture size: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
