// pointwise.cuh — Qwen's elementwise math, shared by the standalone kernels (swiglu.cu, rotary.cu,
// rmsnorm.cu) and the GEMV epilogues that fuse them (gemv.cu), so a fused and an unfused step give
// the same bits (RMSNorm: the same expression; its sum of squares is taken in another order).
// Every product and sum that the CPU oracle rounds separately is written with __fmul_rn / __fadd_rn /
// __fsub_rn (nvcc may not contract them into FMAs); expf / cosf / sinf are the full-precision CUDA
// functions (max 2 ulp), not the __ intrinsics.
#pragma once
#include "common.cuh"

// SwiGLU of one unit: up * silu(gate), exactly the CPU's expression u * (g / (1 + exp(-g))).
// Large negative g: expf -> inf, g / inf = -0.
__device__ __forceinline__ float swiglu_one(float u, float g) { return u * (g / (1.0f + expf(-g))); }

// cos and sin of the rotary angle of pair j at position p: theta = (float)p * inv_freq[j] (one f32
// multiply, as the CPU), .x = cosf(theta), .y = sinf(theta).
__device__ __forceinline__ float2 rope_cos_sin(float pos_f, float inv_freq_j) {
    const float theta = __fmul_rn(pos_f, inv_freq_j);
    return make_float2(cosf(theta), sinf(theta));
}

// Rotate-half RoPE of the pair (x1 = x[j], x2 = x[j + D/2]) by cs = rope_cos_sin(...):
// .x = x1·c - x2·s (new x[j]), .y = x2·c + x1·s (new x[j + D/2]).
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, float2 cs) {
    return make_float2(__fsub_rn(__fmul_rn(x1, cs.x), __fmul_rn(x2, cs.y)),
                       __fadd_rn(__fmul_rn(x2, cs.x), __fmul_rn(x1, cs.y)));
}

// Qwen's logN query scale at absolute position p64: log(p + 1) / log(S) in double, rounded to f32,
// when use_logn and p + 1 > S; else 1 (model::logn_scale).
__device__ __forceinline__ float logn_factor(uint64_t p64, uint32_t S, uint32_t use_logn) {
    if (use_logn != 0 && p64 + 1 > (uint64_t)S) return (float)(log((double)p64 + 1.0) / log((double)S));
    return 1.0f;
}

// RMSNorm's inverse scale from the sum of squares of a row of C values: IEEE 1 / sqrtf (no rsqrtf),
// as the CPU.
__device__ __forceinline__ float rms_inv(float sum_sq, uint32_t C, float eps) {
    return 1.0f / sqrtf(sum_sq / (float)C + eps);
}

// One normalised element: T((x · inv) · w).
template <typename T> __device__ __forceinline__ T rms_apply(float x, float inv, T w) {
    return from_f32<T>((x * inv) * to_f32(w));
}
