#!/usr/bin/env python3
"""Write tests/data/quant/gptq.safetensors: linears packed by AutoGPTQ's own code (qweight, qzeros,
scales, g_idx exactly as the official Qwen-7B-Chat-Int4/-Int8 checkpoints store them) and two
independent dequantizations of each, the expected values of tests/quant.rs.

Run by hand (not in CI), from the repository root:
    python3 -m venv /tmp/gptq-venv
    BUILD_CUDA_EXT=0 /tmp/gptq-venv/bin/pip install --no-deps --no-build-isolation auto-gptq==0.7.1
    PYTHONPATH=$(echo /tmp/gptq-venv/lib/python3*/site-packages) /tmp/torchenv/bin/python tools/gen_gptq_fixtures.py
Needs: torch (CPU), numpy, safetensors, auto-gptq 0.7.1 installed without its dependencies and
without its CUDA extension (only its QuantLinear module is used, loaded from its file, so the
package's model-loading imports (accelerate, peft …) are not needed). AutoGPTQ requires N to be
a multiple of 32 (it sizes qzeros as N // 32 * bits), as every Qwen linear is.

Per case `NAME` (W = [K, N] as GPTQ stores it, i.e. the transposed nn.Linear weight):
- `NAME.qweight` i32 [K*bits/32, N], `NAME.qzeros` i32 [K/group, N*bits/32], `NAME.scales` f16
  [K/group, N], `NAME.g_idx` i32 [K]: written by auto_gptq QuantLinear.pack (symmetric:
  zero = 2^(bits-1), stored minus one);
- `NAME.dequant_autogptq` f16 [K, N]: AutoGPTQ's own CPU unpacking (QuantLinear.forward's torch
  path, fed the identity matrix, so out = W exactly in f16);
- `NAME.dequant_numpy` f32 [K, N]: numpy from the format description (spec §7.3):
  W[k, n] = scales[g, n] * (q[k, n] - (z_stored[g, n] + 1)), g = g_idx[k], in f32.
Both are checked equal (after rounding the f32 one to f16) before anything is written.
`NAME.q` u8 [K, N] are the integer codes the weights were built from (the packing must give them
back).
"""
import importlib.util
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "quant")


def load_quant_linear():
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("auto-gptq is not installed (see the docstring for the install line)")
    path = os.path.join(spec.submodule_search_locations[0], "nn_modules", "qlinear", "qlinear_cuda.py")
    mspec = importlib.util.spec_from_file_location("autogptq_qlinear_cuda", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.QuantLinear


def unpack_numpy(qweight, qzeros, scales, g_idx, bits):
    """Independent reading of the format: LSB-first fields of `bits` bits in each int32."""
    per = 32 // bits
    mask = (1 << bits) - 1
    qw = qweight.astype(np.uint32)
    k = qw.shape[0] * per
    q = np.zeros((k, qw.shape[1]), np.int64)
    for j in range(per):
        q[j::per, :] = (qw >> (bits * j)) & mask  # row k = per*r + j
    qz = qzeros.astype(np.uint32)
    z = np.zeros((qz.shape[0], qz.shape[1] * per), np.int64)
    for j in range(per):
        z[:, j::per] = (qz >> (bits * j)) & mask  # column n = per*c + j
    g = g_idx.astype(np.int64)
    s = scales.astype(np.float32)
    return (s[g, :] * (q - (z[g, :] + 1)).astype(np.float32)).astype(np.float32), q


def make_case(QuantLinear, k, n, bits, group, shuffled, seed):
    rng = np.random.default_rng(seed)
    maxq = (1 << bits) - 1
    groups = k // group
    zero = (maxq + 1) // 2  # symmetric (sym=true): the true zero is 8 / 128
    # Per-(group, out) scales like GPTQ's sym quantizer (2*max|w|/maxq), in f16.
    scales = (rng.uniform(0.002, 0.02, size=(n, groups))).astype(np.float16)
    q = rng.integers(0, maxq + 1, size=(n, k))  # [N, K] integer codes
    if shuffled:  # desc_act: the act-order permutation puts input k in group perm_pos[k] // group
        perm = rng.permutation(k)
        g_idx = np.empty(k, np.int64)
        g_idx[perm] = np.arange(k) // group
    else:
        g_idx = np.arange(k) // group
    # W on the quantization grid: w = s * (q - zero), exactly what GPTQ hands to pack().
    s32 = scales.astype(np.float32)
    w = (s32[:, g_idx] * (q - zero)).astype(np.float16)
    lin = nn.Linear(k, n, bias=False).half()
    lin.weight.data = torch.from_numpy(w)
    ql = QuantLinear(bits, group, k, n, False, weight_dtype=torch.float16)
    zeros = torch.full((n, groups), zero, dtype=torch.int32)
    ql.pack(lin, torch.from_numpy(scales), zeros, torch.from_numpy(g_idx).to(torch.int32))
    with torch.no_grad():
        deq_agptq = ql(torch.eye(k, dtype=torch.float16))  # [K, N]: x = I gives W
    qweight, qzeros = ql.qweight.numpy(), ql.qzeros.numpy()
    sc, gi = ql.scales.numpy(), ql.g_idx.numpy()
    deq_np, q_unpacked = unpack_numpy(qweight, qzeros, sc, gi, bits)
    if not np.array_equal(q_unpacked, q.T):
        sys.exit(f"bits {bits} K {k} N {n}: the packed codes do not unpack to the codes packed")
    if not np.array_equal(deq_np.astype(np.float16), deq_agptq.numpy()):
        bad = np.count_nonzero(deq_np.astype(np.float16) != deq_agptq.numpy())
        sys.exit(f"bits {bits} K {k} N {n}: numpy and AutoGPTQ dequantizations differ in {bad} values")
    return {
        "qweight": torch.from_numpy(qweight.copy()),
        "qzeros": torch.from_numpy(qzeros.copy()),
        "scales": torch.from_numpy(sc.copy()),
        "g_idx": torch.from_numpy(gi.astype(np.int32).copy()),
        "dequant_autogptq": deq_agptq.contiguous(),
        "dequant_numpy": torch.from_numpy(deq_np),
        "q": torch.from_numpy(q.T.astype(np.uint8).copy()),
    }


def main():
    QuantLinear = load_quant_linear()
    torch.manual_seed(0)
    cases = [
        ("int4_256x96", 256, 96, 4, 128, False, 1),
        ("int8_256x64", 256, 64, 8, 128, False, 2),
        ("int4_384x64_shuffled", 384, 64, 4, 128, True, 3),
        ("int8_128x32_shuffled", 128, 32, 8, 128, True, 4),
    ]
    out = {}
    for name, k, n, bits, group, shuffled, seed in cases:
        for field, t in make_case(QuantLinear, k, n, bits, group, shuffled, seed).items():
            out[f"{name}.{field}"] = t
        print(f"{name}: packed by AutoGPTQ, numpy and AutoGPTQ dequantizations agree")
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "gptq.safetensors")
    save_file(out, path, metadata={"generator": "tools/gen_gptq_fixtures.py", "auto_gptq": "0.7.1"})
    print(f"{path}: {len(out)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
