#!/usr/bin/env python3
"""Write tests/data/quant/bnb_*.safetensors: NF4, NF4 with double quantization and Int8 weight
codes exactly as the real bitsandbytes computes them on the CPU (the expected values of
tests/quant.rs; src/quant/ must reproduce them bit for bit).

Run by hand (not in CI), from the repository root:
    /tmp/torchenv/bin/python tools/gen_quant_fixtures.py
Needs: torch (CPU), safetensors, numpy, and bitsandbytes == 0.50.2 (pinned: its CPU path is what
the fixtures record, see below). Deterministic (fixed seeds): rerunning rewrites the same tensors (the header's metadata order may change).

What bitsandbytes 0.50.2 computes on the CPU (the behaviour src/quant/ copies; checked here too):
- quantize_4bit(A, blocksize=64, quant_type="nf4") runs the "default" torch kernel: blocks of 64
  over the flattened tensor; absmax = max|x| per block (the last, partial block's absmax is
  clamped to >= 1e-38); full blocks scale by x * (1 / max(absmax, 1e-38)), the partial block by
  x / absmax; clamp to [-1, 1]; code = bucketize against the f32 midpoints of the NF4 table
  (a value equal to a midpoint takes the lower code); two codes per byte, first in the high
  nibble; an odd element count is padded with the code of 0.0 (7).
- compress_statistics=True: offset = mean(absmax) (torch's f32 sum / n), then
  quantize_blockwise(absmax - offset, blocksize=256) with the signed dynamic 8-bit map, which on
  the CPU is the C++ LUT path: absmax2 = max|x| per 256 block, v = x * (1/absmax2), clamped,
  index = trunc(((v + 1) * 0.5) * 65535 + 0.5), code = lut[index] where lut[i] is the first
  code whose midpoint 0.5*(c[j]+c[j+1]) is not below -1 + 2i/65535 (all f32).
- int8_vectorwise_quant(A): per row absmax (f32), codes = round_half_even(A * (127 / absmax)),
  where torch evaluates the scalar division 127 / absmax as (1 / absmax) * 127 in f32.
  Int8Params (load_in_8bit) converts the weight to float16 first; so do we for bf16/f32 input.

Each file holds, per case `NAME`: `NAME.input` (the weight in its stored dtype), and the
bitsandbytes outputs under `NAME.<field>`; `NAME.dequant` is bitsandbytes' own dequantization
(f32; for NF4 its reference torch kernel, see `dequant_nf4`). `bnb_nf4_serialized.safetensors` is one Linear4bit weight in the layout transformers
saves it (state dict of bitsandbytes.nn.Params4bit: packed weight + quant_state tensors).
"""
import json
import os
import sys

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import save_file

PINNED = "0.50.2"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "quant")


def check_version():
    if bnb.__version__ != PINNED:
        sys.exit(f"bitsandbytes {bnb.__version__} found, the fixtures record {PINNED}: pip install bitsandbytes=={PINNED}")


def weight(shape, dtype, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def dequant_nf4(packed, absmax, shape, name):
    """bitsandbytes' reference dequantization (its torch "default" kernel, f32). The CPU C++ kernel
    of 0.50.2 disagrees with it (and with its own quantizer) on some shapes, e.g. [2, 160], where it
    applies a neighbouring block's absmax; reported here, not recorded."""
    code = F.get_4bit_type("nf4", device="cpu")
    ref = _dequantize_4bit_compute(packed.reshape(-1), absmax, code, 64, list(shape), torch.float32)
    state = F.QuantState(absmax=absmax, shape=shape, code=code, blocksize=64, quant_type="nf4", dtype=torch.float32)
    cpu = F.dequantize_4bit(packed, state, quant_type="nf4")
    bad = int((cpu != ref).sum())
    if bad:
        print(f"note: {name}: bitsandbytes' CPU dequantize_4bit differs from its reference in {bad} values")
    return ref.contiguous()


def nf4_cases():
    """(name, tensor): rows not a multiple of 64, a last partial block, an odd element count, a zero
    block, an outlier, all three input dtypes."""
    cases = [
        ("f32_3x100", weight((3, 100), torch.float32, 1)),  # 300 = 4 blocks + 44
        ("bf16_64x129", weight((64, 129), torch.bfloat16, 2)),  # rows of 129: blocks cross rows
        ("f16_5x33", weight((5, 33), torch.float16, 3)),  # 165 elements: odd, padded nibble
        ("f32_32x64", weight((32, 64), torch.float32, 4)),  # exact blocks, one per row
        ("bf16_48x200", weight((48, 200), torch.bfloat16, 5)),
    ]
    z = weight((4, 95), torch.float32, 6)  # 380 = 5 blocks + 60
    z.view(-1)[:64] = 0.0  # an all-zero full block
    z.view(-1)[320:] = 0.0  # the partial last block all zero
    cases.append(("f32_zero_blocks_4x95", z))
    o = weight((2, 160), torch.float32, 7)
    o[1, 7] = 40.0  # an outlier: its block's other codes collapse towards 0
    cases.append(("f32_outlier_2x160", o))
    return cases


def gen_nf4():
    out = {}
    for name, a in nf4_cases():
        packed, state = F.quantize_4bit(a, blocksize=64, quant_type="nf4")
        deq = dequant_nf4(packed, state.absmax, a.shape, name)
        out[f"{name}.input"] = a.contiguous()
        out[f"{name}.codes"] = packed.reshape(-1).contiguous()
        out[f"{name}.absmax"] = state.absmax.contiguous()
        out[f"{name}.dequant"] = deq.contiguous()
    out["nf4_code"] = F.get_4bit_type("nf4", device="cpu").float().contiguous()
    return out


def gen_nf4_dq():
    out = {}
    cases = [
        ("f32_64x300", weight((64, 300), torch.float32, 11, 0.02)),  # 300 absmax: 256 + 44
        ("bf16_40x500", weight((40, 500), torch.bfloat16, 12, 0.03)),  # 313 absmax (rows cross blocks)
    ]
    for name, a in cases:
        packed, state = F.quantize_4bit(a, blocksize=64, quant_type="nf4", compress_statistics=True)
        _, plain = F.quantize_4bit(a, blocksize=64, quant_type="nf4")
        # bitsandbytes' own dequantization of the statistics (f32): code8[q] * absmax2 + offset
        absmax_dq = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        deq = dequant_nf4(packed, absmax_dq, a.shape, name)
        out[f"{name}.input"] = a.contiguous()
        out[f"{name}.codes"] = packed.reshape(-1).contiguous()
        out[f"{name}.absmax"] = plain.absmax.contiguous()  # before double quantization
        out[f"{name}.qabsmax"] = state.absmax.contiguous()  # u8 codes of absmax - offset
        out[f"{name}.offset"] = state.offset.reshape(1).float().contiguous()
        out[f"{name}.nested_absmax"] = state.state2.absmax.contiguous()
        out[f"{name}.dequant"] = deq.contiguous()
        out[f"{name}.absmax_dequant"] = absmax_dq.float().contiguous()
    out["dynamic_map"] = F.create_dynamic_map(signed=True).float().contiguous()
    # The 8-bit CPU quantizer alone on statistics-like data with several 256-blocks and a tail.
    g = torch.Generator().manual_seed(13)
    x = (torch.rand(2000, generator=g) * 0.1 - 0.03).float()
    q, am = torch.ops.bitsandbytes.quantize_blockwise(x, out["dynamic_map"].clone(), 256)
    out["blockwise8.input"] = x
    out["blockwise8.codes"] = q.contiguous()
    out["blockwise8.absmax"] = am.contiguous()
    return out


def gen_int8():
    out = {}
    ties = torch.tensor([[254.0, 1.0, 3.0, 5.0, -1.0, -3.0, -5.0, 7.0]], dtype=torch.float16)  # x*127/254 = k + 0.5
    cases = [
        ("f16_9x77", weight((9, 77), torch.float16, 21)),
        ("bf16_64x128", weight((64, 128), torch.bfloat16, 22)),
        ("f32_17x50", weight((17, 50), torch.float32, 23)),
        ("f16_ties_1x8", ties),
    ]
    for name, a in cases:
        a16 = a.to(torch.float16)  # Int8Params._quantize: B.to(float16) before int8_vectorwise_quant
        cb, scb, _ = F.int8_vectorwise_quant(a16)
        deq = F.int8_vectorwise_dequant(cb, scb).float()
        out[f"{name}.input"] = a.contiguous()
        out[f"{name}.codes"] = cb.contiguous()
        out[f"{name}.scb"] = scb.float().contiguous()
        out[f"{name}.dequant"] = deq.contiguous()
    return out


def gen_serialized():
    """One Params4bit as transformers saves it: `weight` + `weight.<quant_state key>` tensors."""
    a = weight((24, 128), torch.bfloat16, 31)
    out = {}
    for dq in (False, True):
        packed, state = F.quantize_4bit(a, blocksize=64, quant_type="nf4", compress_statistics=dq)
        pre = "dq." if dq else "plain."
        out[pre + "weight"] = packed.contiguous()
        for k, v in state.as_dict(packed=True).items():
            out[pre + "weight." + k] = v.contiguous()
    out["input"] = a.contiguous()
    return out


def main():
    check_version()
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    meta = {"generator": "tools/gen_quant_fixtures.py", "bitsandbytes": bnb.__version__, "torch": torch.__version__}
    for fname, tensors in [
        ("bnb_nf4.safetensors", gen_nf4()),
        ("bnb_nf4_dq.safetensors", gen_nf4_dq()),
        ("bnb_int8.safetensors", gen_int8()),
        ("bnb_nf4_serialized.safetensors", gen_serialized()),
    ]:
        path = os.path.join(OUT, fname)
        save_file(tensors, path, metadata=meta)
        print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")
    # The serialized quant_state JSON, readable, for the loader's documentation/tests.
    with open(os.path.join(OUT, "bnb_nf4_serialized.json"), "w") as f:
        t = gen_serialized()
        states = {k: bytes(v.tolist()).decode() for k, v in t.items() if "quant_state." in k}
        json.dump(states, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
