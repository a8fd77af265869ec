/* quant_params.h — the parameters of the quantized-weight kernels (cuda/gemv_quant.cu), one struct per
 * weight format, passed BY VALUE as the kernel's only parameter. Plain C (stdint.h only) so that bindgen
 * and the host-side emulator read it as it is; the Rust mirror is src/backend/cuda/launch/gemv_quant.rs
 * (`#[repr(C)]`, each `T*` field a `DevPtr`, an 8-byte device address: same size, alignment and offsets
 * on 64-bit targets; tests/kernel_params.rs checks them against bindgen's layout of this file).
 *
 * One struct serves both entries of its format: the decode GEMV (`gemv_*`: x [K] T in, y [N] f32 out)
 * and the prefill dequantization (`dequant_*`: x unused, out = W [N, K] T). W is the nn.Linear weight
 * [N outputs, K inputs]; every field's layout is the device layout the upload writes
 * (src/backend/cuda/upload_quant.rs). */
#pragma once
#include <stdint.h>

/* NF4 (bitsandbytes, blocks of 64 over the flattened W, blocks cross rows when K % 64 != 0): element
 * e = n K + k has code (codes[e / 2] >> 4) for even e, (codes[e / 2] & 15) for odd e, and
 * w = NF4_CODE[code] * absmax[e / 64] (f32). nf4-dq's double-quantized absmax is decoded to these f32
 * values at upload (exactly the values the CPU oracle uses). */
typedef struct QuantNf4Params {
    const uint8_t* codes; /* [ceil(N K / 2)] */
    const float* absmax;  /* [ceil(N K / 64)] */
    const void* x;        /* gemv: [K] T; dequant: unused */
    void* out;            /* gemv: y [N] f32; dequant: W [N, K] T */
    uint32_t n;
    uint32_t k;
} QuantNf4Params;

/* Int8 (bitsandbytes int8_vectorwise_quant): w[n, k] = (codes[n, k] * scb[n]) * (1/127 as f32). */
typedef struct QuantInt8Params {
    const int8_t* codes; /* [N, K] */
    const float* scb;    /* [N] row absmax */
    const void* x;       /* gemv: [K] T */
    void* out;           /* gemv: y [N] f32; dequant: W [N, K] T */
    uint32_t n;
    uint32_t k;
} QuantInt8Params;

/* GPTQ (AutoGPTQ, symmetric; bits 4: gemv_gptq4 / dequant_gptq4, bits 8: the *_gptq8 entries), in the
 * upload's K-permuted layout: input slot s (0 <= s < rows * 32/bits) stands for input perm[s] (perm
 * NULL: s itself; perm[s] >= K: a padding slot, weight 0). Slots are the inputs sorted by group
 * (g_idx, stable), each group padded to whole words, so every qweight row r is in one group
 * row_group[r]. qweight [rows, N]: slot s = (32/bits) r + j is bits bits*j.. of word [r, n] (LSB first).
 * w[n, perm[s]] = scales[g, n] * (q - zeros[g, n]), g = row_group[r]; zeros are the true zeros (the
 * checkpoint's stored zeros plus one, 1..2^bits). N % 4 == 0. */
typedef struct QuantGptqParams {
    const uint32_t* qweight;   /* [rows, N] */
    const uint32_t* row_group; /* [rows] */
    const uint32_t* perm;      /* [rows * 32/bits], or NULL (identity, rows * 32/bits == K) */
    const float* scales;       /* [groups, N] */
    const uint16_t* zeros;     /* [groups, N] */
    const void* x;             /* gemv: [K] T */
    void* out;                 /* gemv: y [N] f32; dequant: W [N, K] T */
    uint32_t n;
    uint32_t k;
    uint32_t rows;
    uint32_t groups;
} QuantGptqParams;
