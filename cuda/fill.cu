// fill.cu — deterministic random weights on the GPU (`qwen-run bench --synth 7b` without a file).
//
// What:    out[i] = T(offset + scale * u(key, i)), u uniform in [-1, 1): the same formula as
//          `synth::value` (splitmix64 of key ^ i * 0xD6E8FEB86659FD93, top 24 bits), so a GPU-filled
//          model equals the safetensors file `synth_model` writes (bf16, round to nearest even).
// Layout:  out [n] T, n < 2^64.
// Launch:  grid (min(ceil(n/256), 65535·8)), block 256, grid-stride loop.
// Oracle:  synth::value / synth_model (src/synth.rs); launcher launch::fill_uniform.
#include "common.cuh"

__device__ __forceinline__ uint64_t fill_splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ void fill_uniform_impl(T* __restrict__ out, uint64_t n, uint64_t key, float offset, float scale) {
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint64_t bits = fill_splitmix64(key ^ (i * 0xD6E8FEB86659FD93ull));
        // (bits >> 40) as f32 * (2 / 2^24) - 1, each step rounded in f32 exactly as the Rust code.
        const float u = __fsub_rn(__fmul_rn((float)(bits >> 40), 2.0f / 16777216.0f), 1.0f);
        out[i] = from_f32<T>(__fadd_rn(offset, __fmul_rn(scale, u)));
    }
}

extern "C" __global__ void fill_uniform_bf16(__nv_bfloat16* out, uint64_t n, uint64_t key, float offset, float scale) {
    pdl_begin();
    fill_uniform_impl(out, n, key, offset, scale);
}

extern "C" __global__ void fill_uniform_f16(__half* out, uint64_t n, uint64_t key, float offset, float scale) {
    pdl_begin();
    fill_uniform_impl(out, n, key, offset, scale);
}
