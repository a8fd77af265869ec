#!/usr/bin/env python3
"""A tiny random Qwen v1 model + reference logits of its linears quantized by bitsandbytes, for
tests/quant_model.rs (whole-model fidelity of `--quant nf4|nf4-dq|int8` on the CPU backend).

Run (from the repository root; deterministic, seeded):
    /tmp/torchenv/bin/python tools/gen_quant_model_fixtures.py
Needs what tools/gen_model_fixtures.py and tools/gen_quant_fixtures.py need (torch, transformers,
safetensors, numpy, bitsandbytes 0.50.2).

Writes tests/data/quant_model/tiny-bf16-q/:
  config.json, generation_config.json, model.safetensors   a float (bf16) checkpoint, spec §2.2 names
  reference.safetensors    f32, per mode M in none, nf4, nf4-dq, int8:
                           M.p{i}.logits [T, V] (one forward of the prompt),
                           M.p{i}.decode_logits [G-1, V] (greedy steps through the KV cache)
  reference.json           prompts, greedy ids per mode, how each reference was made.

The reference is the one of tools/gen_model_fixtures.py (transformers Qwen2ForCausalLM fp32 eager,
Qwen v1 weights mapped), with each of the five linears of every layer (attn.c_attn, attn.c_proj,
mlp.w1, mlp.w2, mlp.c_proj) replaced by bitsandbytes' quantize -> dequantize of the stored bf16
weight, exactly as transformers + bitsandbytes quantize at load:
  nf4     F.quantize_4bit(w, blocksize=64, quant_type="nf4"), dequantized in f32 by bitsandbytes'
          reference kernel (tools/gen_quant_fixtures.py: dequant_nf4);
  nf4-dq  the same with compress_statistics=True, absmax = dequantize_blockwise(absmax, state2) + offset;
  int8    Int8Params: w.to(float16) -> F.int8_vectorwise_quant -> F.int8_vectorwise_dequant (f32).
wte, lm_head, norms and the c_attn bias stay as stored (upcast to f32).
"""
import json
import os
import shutil

import torch
import bitsandbytes.functional as F
from safetensors.torch import save_file

import gen_model_fixtures as gm
import gen_quant_fixtures as gq

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "quant_model", "tiny-bf16-q")
MODEL = dict(name="tiny-bf16-q", dialect="v1.1", dtype=torch.bfloat16, sharded=False, seed=7,
             C=64, H=4, D=16, L=2, F=96, V=256, S=64, base=10000.0, eps=1e-6,
             use_dynamic_ntk=False, use_logn_attn=False, prompts=[3, 11])
LINEARS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.w1.weight", "mlp.w2.weight", "mlp.c_proj.weight")


def dequantized(w, mode, name):
    """bitsandbytes quantize -> dequantize of one stored linear weight [N, K], as f32."""
    if mode == "int8":
        cb, scb, _ = F.int8_vectorwise_quant(w.to(torch.float16))
        return F.int8_vectorwise_dequant(cb, scb).float()
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=(mode == "nf4-dq"))
    absmax = state.absmax
    if mode == "nf4-dq":
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return gq.dequant_nf4(packed, absmax.float(), w.shape, name).float()


def main():
    gq.check_version()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    m = MODEL
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    g = torch.Generator().manual_seed(1000 + m["seed"])
    tensors = gm.random_qwen_weights(m, g)
    gm.write_checkpoint(m, tensors, OUT)
    gm.LOGN["S"] = None
    prompts = [torch.randint(0, m["V"], (t,), generator=g).tolist() for t in m["prompts"]]
    out_t, modes = {}, {}
    for mode in ("none", "nf4", "nf4-dq", "int8"):
        ts = dict(tensors)
        if mode != "none":
            for k, v in tensors.items():
                if k.endswith(LINEARS):
                    ts[k] = dequantized(v, mode, k)
        model = gm.qwen2_reference(m, ts, m["base"])
        runs = []
        for i, ids in enumerate(prompts):
            logits, gen, steps, gap = gm.run_prompt(model, ids)
            out_t[f"{mode}.p{i}.logits"] = logits.contiguous()
            out_t[f"{mode}.p{i}.decode_logits"] = steps.contiguous()
            runs.append({"greedy": gen, "min_top2_gap": gap})
            print(f"{mode} p{i}: T={len(ids)} greedy={gen} min top-2 gap={gap:.4f}")
        modes[mode] = runs
    save_file(out_t, os.path.join(OUT, "reference.safetensors"))
    meta = {
        "generator": "tools/gen_quant_model_fixtures.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "bitsandbytes": __import__("bitsandbytes").__version__,
        "storage_dtype": "bfloat16",
        "greedy_tokens": gm.GREEDY_TOKENS,
        "reference": "transformers Qwen2ForCausalLM fp32 eager, v1 weights mapped; the five linears of "
                     "each layer replaced by bitsandbytes quantize -> dequantize (see the generator)",
        "prompts": prompts,
        "modes": modes,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, fn)) for fn in os.listdir(OUT))
    print(f"total fixture size: {total / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
