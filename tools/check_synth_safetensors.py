#!/usr/bin/env python3
"""Check that a model directory written by `qwen-run synth` (src/synth.rs) is readable by the
reference `safetensors` library and consistent with its config and index.

Run by hand (not in CI):
    /tmp/torchenv/bin/python tools/check_synth_safetensors.py DIR [DIR ...]
Needs: torch (CPU), safetensors >= 0.4 (tested with torch 2.x, safetensors 0.8.0).

Checks, per directory: every shard loads with safetensors.torch.load_file; the index's weight_map
names exactly the tensors each shard holds; every tensor of spec §2.2 is present with the shape
config.json implies; prints mean/std of a few tensors. Exits 1 on the first failure.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def expected_shapes(cfg):
    c = cfg["hidden_size"]
    p = cfg["num_attention_heads"] * cfg["kv_channels"]
    f = cfg["intermediate_size"] // 2
    v = cfg["vocab_size"]
    out = {"transformer.wte.weight": (v, c), "transformer.ln_f.weight": (c,), "lm_head.weight": (v, c)}
    for i in range(cfg["num_hidden_layers"]):
        h = f"transformer.h.{i}."
        out.update({
            h + "ln_1.weight": (c,), h + "attn.c_attn.weight": (3 * p, c), h + "attn.c_attn.bias": (3 * p,),
            h + "attn.c_proj.weight": (c, p), h + "ln_2.weight": (c,), h + "mlp.w1.weight": (f, c),
            h + "mlp.w2.weight": (f, c), h + "mlp.c_proj.weight": (c, f),
        })
    return out


def check(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    idx_path = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx_path):
        wm = json.load(open(idx_path))["weight_map"]
        shards = sorted(set(wm.values()))
    else:
        wm, shards = None, ["model.safetensors"]
    tensors = {}
    for s in shards:
        t = load_file(os.path.join(d, s))
        with safe_open(os.path.join(d, s), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}, (s, f.metadata())
        if wm is not None:
            listed = {k for k, v in wm.items() if v == s}
            assert listed == set(t), f"{s}: index lists {sorted(listed ^ set(t))[:5]} differently"
        for k, v in t.items():
            assert k not in tensors, f"{k} duplicated"
            tensors[k] = v
    want = expected_shapes(cfg)
    assert set(want) == set(tensors), sorted(set(want) ^ set(tensors))[:5]
    for k, shape in want.items():
        assert tuple(tensors[k].shape) == shape, (k, tuple(tensors[k].shape), shape)
    for k in ["transformer.wte.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"]:
        x = tensors[k].float()
        print(f"  {k}: {tensors[k].dtype} {tuple(x.shape)} mean {x.mean():.5f} std {x.std():.5f}")
    print(f"OK {d}: {len(tensors)} tensors in {len(shards)} shard(s)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for d in sys.argv[1:]:
        check(d)
