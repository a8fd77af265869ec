#!/usr/bin/env python3
"""transformers + bitsandbytes load what `qwen-run quantize` writes, and give our CPU logits.

For each mode (nf4, nf4-dq, int8): `qwen-run quantize --to MODE` of the tiny bf16 model
tests/data/quant_model/tiny-bf16-q, then `from_pretrained` of the output with transformers'
bitsandbytes integration on the CPU (pre-quantized load: the five linears of every layer become
bnb.nn.Linear4bit / Linear8bitLt filled from our tensors by bitsandbytes' own deserialization, lm_head
stays nn.Linear), and one forward of a prompt. The model class is `QwenV1ForCausalLM` below: Qwen v1
(spec §3) with the original module names, fp32, no NTK / logN (the tiny model has them off); it is
first checked against the committed Qwen2ForCausalLM reference of tools/gen_model_fixtures.py (float
weights, relative error <= 1e-5).

Writes tests/data/quant_writer/ (read by tests/quant_writer.rs, which has no torch):
  bnb_load.safetensors  MODE.bnb_dequant, f32 [T, V]: the logits of the model transformers loaded,
                 with each bitsandbytes layer's weight dequantized by bitsandbytes (see
                 `dequantized_copy`), forward in fp32;
  bnb_load.json  the prompt, per mode the FNV-1a 64 of the model.safetensors and config.json that were
                 loaded (the Rust test checks it writes these exact bytes), the module types seen,
                 relative errors (max over rows of max|a-b| / max|b|): ours vs bnb_dequant; ours vs
                 bitsandbytes' own layers' forward on the CPU (informative only: Linear4bit's CPU C++
                 dequantize_4bit is wrong when K % 64 != 0, here mlp.c_proj [64, 96], and
                 Linear8bitLt is LLM.int8 with activations quantized to 8 bits, not weight-only Int8);
                 bnb_dequant vs the quant_model reference (bitsandbytes quantize -> dequantize of the
                 float weights, tools/gen_quant_model_fixtures.py) and vs the float model.

Run by hand from the repository root (not in CI), after `cargo build --bin qwen-run`:
    PYTHONPATH=/tmp/quantio15-venv/site /tmp/torchenv/bin/python tools/check_quantize_bnb.py [--qwen-run target/debug/qwen-run]
Needs torch (CPU), transformers (5.x), bitsandbytes 0.50.2, safetensors, numpy, and `accelerate` +
`psutil` (transformers' bitsandbytes loader imports them: `pip install --target DIR accelerate psutil`).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn
import bitsandbytes as bnb
import bitsandbytes.functional as F
import transformers
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import load_file, save_file
from transformers import PretrainedConfig, PreTrainedModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(ROOT, "tests", "data", "quant_model", "tiny-bf16-q")
OUT = os.path.join(ROOT, "tests", "data", "quant_writer")
PROMPT = [63, 23, 183, 66, 252, 150, 100, 104, 60, 150, 227]  # prompt 1 of TINY/reference.json
MODES = ("nf4", "nf4-dq", "int8")


class QwenV1Config(PretrainedConfig):
    model_type = "qwen"


class RMSNorm(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class Attn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.h, self.d = cfg.num_attention_heads, cfg.kv_channels
        p = self.h * self.d
        self.c_attn = nn.Linear(cfg.hidden_size, 3 * p, bias=True)
        self.c_proj = nn.Linear(p, cfg.hidden_size, bias=False)
        self.base = float(cfg.rotary_emb_base)

    def forward(self, x):
        t = x.shape[0]
        q, k, v = self.c_attn(x).float().split(self.h * self.d, dim=-1)
        q, k, v = (z.view(t, self.h, self.d).transpose(0, 1) for z in (q, k, v))  # [H, T, D]
        inv = 1.0 / (self.base ** (torch.arange(0, self.d, 2, dtype=torch.float32) / self.d))
        f = torch.outer(torch.arange(t, dtype=torch.float32), inv)
        emb = torch.cat([f, f], dim=-1)
        cos, sin = emb.cos(), emb.sin()

        def rot(z):
            z1, z2 = z[..., : self.d // 2], z[..., self.d // 2:]
            return z * cos + torch.cat([-z2, z1], dim=-1) * sin

        q, k = rot(q), rot(k)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.d)
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        o = torch.softmax(s, dim=-1) @ v  # [H, T, D]
        return self.c_proj(o.transpose(0, 1).reshape(t, self.h * self.d)).float()


class Mlp(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        f = cfg.intermediate_size // 2
        self.w1 = nn.Linear(cfg.hidden_size, f, bias=False)
        self.w2 = nn.Linear(cfg.hidden_size, f, bias=False)
        self.c_proj = nn.Linear(f, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.c_proj(self.w1(x).float() * Fn.silu(self.w2(x).float())).float()


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.attn = Attn(cfg)
        self.ln_2 = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mlp = Mlp(cfg)

    def forward(self, h):
        h = h + self.attn(self.ln_1(h))
        return h + self.mlp(self.ln_2(h))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.num_hidden_layers)])
        self.ln_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class QwenV1ForCausalLM(PreTrainedModel):
    """Qwen v1 with its checkpoint's module names, fp32, one sequence, no KV cache, no NTK / logN."""
    config_class = QwenV1Config
    base_model_prefix = "transformer"

    def __init__(self, cfg):
        super().__init__(cfg)
        assert not cfg.use_dynamic_ntk and not cfg.use_logn_attn, "NTK / logN are not modelled here"
        self.transformer = Transformer(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    @torch.no_grad()
    def logits(self, ids):
        h = self.transformer.wte(torch.tensor(ids)).float()
        for b in self.transformer.h:
            h = b(h)
        return self.lm_head(self.transformer.ln_f(h)).float()


def rel(a, b):
    """Max over rows of max|a-b| / max|b|."""
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def fnv1a64(path):
    h = 0xCBF29CE484222325
    data = open(path, "rb").read()
    arr = np.frombuffer(data, dtype=np.uint8)
    for byte in arr.tolist():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def dequantized_copy(model):
    """The model with every bitsandbytes layer replaced by nn.Linear holding bitsandbytes'
    dequantization of the weight it loaded: its reference torch kernel for NF4 (the CPU C++
    `dequantize_4bit` of 0.50.2 applies a neighbouring block's absmax when K % 64 != 0, see
    tools/gen_quant_fixtures.py: mlp.c_proj [64, 96] here), `int8_vectorwise_dequant` for Int8."""
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                qs = child.weight.quant_state
                absmax = qs.absmax
                if qs.nested:
                    absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
                w = _dequantize_4bit_compute(child.weight.data.reshape(-1), absmax.float(), qs.code, qs.blocksize,
                                             list(qs.shape), torch.float32)
            elif isinstance(child, bnb.nn.Linear8bitLt):
                scb = child.weight.SCB if getattr(child.weight, "SCB", None) is not None else child.state.SCB
                w = F.int8_vectorwise_dequant(child.weight.data, scb).float()
            else:
                continue
            lin = nn.Linear(w.shape[1], w.shape[0], bias=child.bias is not None)
            lin.weight.data = w
            if child.bias is not None:
                lin.bias.data = child.bias.data.float()
            setattr(mod, cname, lin)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwen-run", default=os.path.join(ROOT, "target", "debug", "qwen-run"))
    args = ap.parse_args()
    if bnb.__version__ != "0.50.2":
        sys.exit(f"bitsandbytes {bnb.__version__}: the fixture records 0.50.2")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ref = load_file(os.path.join(TINY, "reference.safetensors"))

    # The Python model against the committed Qwen2 reference, float weights.
    fl = QwenV1ForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    e = rel(fl.logits(PROMPT), ref["none.p1.logits"])
    print(f"QwenV1ForCausalLM float vs the Qwen2 reference: {e:.2e}")
    assert e <= 1e-5, e

    os.makedirs(OUT, exist_ok=True)
    tensors, meta = {}, {"generator": "tools/check_quantize_bnb.py", "prompt": PROMPT, "modes": {},
                         "torch": torch.__version__, "transformers": transformers.__version__,
                         "bitsandbytes": bnb.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            out = os.path.join(tmp, mode)
            subprocess.run([args.qwen_run, "quantize", "--to", mode, TINY, out], check=True)
            npy = os.path.join(tmp, f"{mode}.npy")
            subprocess.run([args.qwen_run, "logits", "--backend", "cpu", "--model", out, "--ids",
                            ",".join(map(str, PROMPT)), "--out", npy], check=True, capture_output=True)
            ours = torch.from_numpy(np.load(npy))
            m = QwenV1ForCausalLM.from_pretrained(out, dtype=torch.float32)
            kinds = sorted({f"{n.split('.', 3)[-1]}: {type(x).__name__}" for n, x in m.named_modules()
                            if isinstance(x, nn.Linear) and n.startswith("transformer.h.0.")} |
                           {f"lm_head: {type(m.lm_head).__name__}"})
            want = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
            for i, b in enumerate(m.transformer.h):
                for lin in (b.attn.c_attn, b.attn.c_proj, b.mlp.w1, b.mlp.w2, b.mlp.c_proj):
                    assert isinstance(lin, want), (mode, i, type(lin))
            assert type(m.lm_head) is nn.Linear
            for p in m.parameters():  # float tensors kept in the stored bf16: upcast (exact)
                if p.dtype == torch.bfloat16:
                    p.data = p.data.float()
            # bitsandbytes 0.50.2's AVX512-BF16 CPU path repacks the weight assuming K % 64 == 0
            # (`_convert_weight_packed_for_cpu`: "shape '[64, 1]' is invalid for input of size 96"
            # for mlp.c_proj [64, 96]); its generic path handles any K.
            for x in m.modules():
                if isinstance(x, bnb.nn.Linear4bit):
                    x.support_avx512bf16_for_cpu = False
            fwd = m.logits(PROMPT)
            deq = dequantized_copy(m).logits(PROMPT)
            r = {"model.safetensors_fnv1a64": fnv1a64(os.path.join(out, "model.safetensors")),
                 "config.json_fnv1a64": fnv1a64(os.path.join(out, "config.json")),
                 "modules_layer0": kinds,
                 "rel_ours_vs_bnb_dequant": rel(ours, deq), "rel_ours_vs_bnb_forward": rel(ours, fwd),
                 "rel_bnb_dequant_vs_quant_model_reference": rel(deq, ref[f"{mode}.p1.logits"]),
                 "rel_bnb_dequant_vs_float": rel(deq, ref["none.p1.logits"])}
            print(mode, json.dumps(r, indent=1))
            meta["modes"][mode] = r
            tensors[f"{mode}.bnb_dequant"] = deq.contiguous()
    save_file(tensors, os.path.join(OUT, "bnb_load.safetensors"), metadata={"generator": meta["generator"]})
    with open(os.path.join(OUT, "bnb_load.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
