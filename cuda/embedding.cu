// embedding.cu — token embedding gather into the f32 residual stream.
//
// What:    out[t, :] = f32(wte[ids[t], :])   (plain lookup, no scaling; spec §2.3)
// Layout:  wte [V, C] row-major T (bf16 or fp16), ids [T] u32, out [T, C] f32.
//          An id >= V writes zeros (the host validates ids first; this is the device-side guard).
// Launch:  grid (T), block (256); 8 values (one 16-byte load) per thread-iteration when C % 8 == 0.
// Oracle:  backend::cpu::embedding (src/backend/cpu.rs); launcher launch::embedding.
#include "common.cuh"

template <typename T>
__device__ void embedding_impl(const T* __restrict__ wte, const uint32_t* __restrict__ ids,
                               float* __restrict__ out, uint32_t V, uint32_t C) {
    const uint32_t t = blockIdx.x;
    const uint32_t id = ids[t];
    float* dst = out + (size_t)t * C;
    if (id >= V) {
        for (uint32_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = 0.0f;
        return;
    }
    const T* src = wte + (size_t)id * C;
    if (C % 8 == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);  // 8 values of T
        for (uint32_t c = threadIdx.x; c < C / 8; c += blockDim.x) {
            uint4 raw = s4[c];
            const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int i = 0; i < 8; ++i) dst[c * 8 + i] = to_f32(v[i]);
        }
    } else {
        for (uint32_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = to_f32(src[c]);
    }
}

extern "C" __global__ void embedding_bf16(const __nv_bfloat16* wte, const uint32_t* ids, float* out, uint32_t V,
                                          uint32_t C) {
    pdl_begin();
    embedding_impl(wte, ids, out, V, C);
}

extern "C" __global__ void embedding_f16(const __half* wte, const uint32_t* ids, float* out, uint32_t V,
                                         uint32_t C) {
    pdl_begin();
    embedding_impl(wte, ids, out, V, C);
}
