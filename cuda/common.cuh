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

// The hand-off of the kernels where the last block to finish completes the job (the decode
// attention's fused combine, gemv_residual_rmsnorm, sample_greedy_f32; CUDA's threadFenceReduction
// pattern). Call from every thread of the block (it has barriers) once the block's results are
// stored: each thread makes its stores visible device-wide, thread 0 takes a ticket from *counter,
// and the block that takes the last of `n` tickets resets the counter to 0 (zero between launches)
// and gets true in every thread, after a fence that orders its later reads after every other
// block's stores (read those through L2: __ldcg). The other blocks get false.
__device__ __forceinline__ bool last_block_arrives(uint32_t* counter, uint32_t n) {
    __shared__ uint32_t last_block_flag;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        const uint32_t last = atomicAdd(counter, 1u) + 1u == n ? 1u : 0u;
        if (last != 0u) *counter = 0u;  // every other block has counted
        last_block_flag = last;
    }
    __syncthreads();
    const bool last = last_block_flag != 0u;
    if (last) __threadfence();
    return last;
}

// Conversions to/from fp32 for the two compute dtypes.
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
