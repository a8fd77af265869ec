// swiglu.cu — the gated activation of Qwen's MLP, from the fused [up | gate] matmul output.
//
// What:    out[t, f] = T(up * (gate / (1 + expf(-gate)))),  up = upgate[t, f], gate = upgate[t, F + f]
//          (up = w1(x), gate = w2(x); the executor stores w1 and w2 as one [2F, C] weight, so one
//          matmul gives both halves). f32 math, full-precision expf (2 ulp; no __expf), IEEE divide
//          (`swiglu_one`, pointwise.cuh; gemv_swiglu in gemv.cu fuses the same math into the matmul).
// Layout:  upgate [T, 2F] f32 (row t = up[F] ‖ gate[F]), out [T, F] T (T = bf16 / fp16).
// Launch:  grid (T · B) with B = ceil(U / SWIGLU_BLOCK) blocks per row, block (SWIGLU_BLOCK = 256);
//          U = F / 4 "units" of 4 values when F % 4 == 0 (then every up / gate row is 16-byte and
//          every out row 8-byte aligned: float4 loads, one 8-byte store), else U = F single values.
//          Block b works on row t = b / B, units (b % B)·256 + threadIdx.x. The launcher
//          (launch::swiglu, `swiglu_grid`) computes B with the same formula.
// Oracle:  backend::cpu::swiglu (src/backend/cpu.rs); launcher launch::swiglu.
#include "pointwise.cuh"

namespace {

constexpr uint32_t SWIGLU_BLOCK = 256;

template <typename T>
__device__ __forceinline__ void swiglu_impl(const float* __restrict__ upgate, T* __restrict__ out, uint32_t F,
                                            uint32_t Tn) {
    const bool vec = (F % 4 == 0);
    const uint32_t units = vec ? F / 4 : F;  // per row
    const uint32_t per_row = (units + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK;  // blocks per row (B)
    if (per_row == 0) return;  // F == 0
    const uint32_t t = blockIdx.x / per_row;
    const uint32_t u = (blockIdx.x % per_row) * SWIGLU_BLOCK + threadIdx.x;
    if (t >= Tn || u >= units) return;
    const float* up = upgate + (size_t)t * 2 * F;  // [F]
    const float* gate = up + F;                      // [F]
    T* o = out + (size_t)t * F;                      // [F]
    if (vec) {
        const float4 a = reinterpret_cast<const float4*>(up)[u];
        const float4 g = reinterpret_cast<const float4*>(gate)[u];
        uint2 raw;
        T* r = reinterpret_cast<T*>(&raw);
        r[0] = from_f32<T>(swiglu_one(a.x, g.x));
        r[1] = from_f32<T>(swiglu_one(a.y, g.y));
        r[2] = from_f32<T>(swiglu_one(a.z, g.z));
        r[3] = from_f32<T>(swiglu_one(a.w, g.w));
        reinterpret_cast<uint2*>(o)[u] = raw;
    } else {
        o[u] = from_f32<T>(swiglu_one(up[u], gate[u]));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(SWIGLU_BLOCK)
    swiglu_bf16(const float* upgate, __nv_bfloat16* out, uint32_t F, uint32_t T) {
    pdl_begin();
    swiglu_impl(upgate, out, F, T);
}

extern "C" __global__ void __launch_bounds__(SWIGLU_BLOCK)
    swiglu_f16(const float* upgate, __half* out, uint32_t F, uint32_t T) {
    pdl_begin();
    swiglu_impl(upgate, out, F, T);
}
