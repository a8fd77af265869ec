// embedding.cu — token embedding gather.
//
// What:    out[t, :] = wte[ids[t], :]   (plain lookup, no scaling; spec §2.3)
// Layout:  wte [V, C] row-major, ids [T] u32, out [T, C]; same dtype for wte and out (bf16 or fp16).
//          An id >= V writes zeros (the host validates ids first; this is the device-side guard).
// Launch:  grid (T), block (256); each thread copies C/256 elements, 16-byte vectors when C % 8 == 0.
// Oracle:  backend::cpu::embedding (src/backend/cpu.rs).
// Status:  compiled in CI with nvcc 13.0; not yet run on a GPU (issue 3 brings the launcher + test).
#include "common.cuh"

template <typename T>
__device__ void embedding_impl(const T* __restrict__ wte, const uint32_t* __restrict__ ids,
                               T* __restrict__ out, uint32_t V, uint32_t C) {
    const uint32_t t = blockIdx.x;
    const uint32_t id = ids[t];
    T* dst = out + (size_t)t * C;
    if (id >= V) {
        for (uint32_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = from_f32<T>(0.0f);
        return;
    }
    const T* src = wte + (size_t)id * C;
    if (C % 8 == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (uint32_t c = threadIdx.x; c < C / 8; c += blockDim.x) d4[c] = s4[c];
    } else {
        for (uint32_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
    }
}

extern "C" __global__ void embedding_bf16(const __nv_bfloat16* wte, const uint32_t* ids, __nv_bfloat16* out,
                                          uint32_t V, uint32_t C) {
    embedding_impl(wte, ids, out, V, C);
}

extern "C" __global__ void embedding_f16(const __half* wte, const uint32_t* ids, __half* out, uint32_t V,
                                         uint32_t C) {
    embedding_impl(wte, ids, out, V, C);
}
