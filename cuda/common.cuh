// common.cuh — shared helpers for every qwen-rt kernel.
// Dimension vocabulary (same as the Rust side): B batch, T tokens, C hidden, H heads, D head dim,
// F mlp width, L layers, V vocab, S config seq_length.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Conversions to/from fp32 for the two compute dtypes.
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
