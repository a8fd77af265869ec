// common.cuh — shared helpers for every qwen-rt kernel.
// Dimension vocabulary (same as the Rust side): B batch, T tokens, C hidden, H heads, D head dim,
// F mlp width, L layers, V vocab, S config seq_length.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Programmatic dependent launch (PDL; sm_90+, used when Gpu::launch sets the launch attribute, see
// backend/cuda/device.rs). A kernel launched with it may start while the previous kernel in its
// stream is still running: pdl_wait() blocks until that kernel has completed and its writes are
// visible, so every kernel calls it before touching any activation: pdl_begin() first thing, or,
// in gemv, right after issuing its first loads of the weights (which no kernel writes).
// pdl_launch_dependents() lets the next kernel start launching (its blocks then wait in their own
// pdl_wait()). Without the attribute, or below sm_90, both are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_begin() {
    pdl_wait();
    pdl_launch_dependents();
}

// Conversions to/from fp32 for the two compute dtypes.
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
