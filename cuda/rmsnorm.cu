// rmsnorm.cu — RMSNorm of the f32 residual stream into the compute dtype; plain and fused with the
// residual add that precedes it.
//
// What:    rmsnorm:      out[t, :] = T((x[t, :] * inv) * w),  inv = 1 / sqrtf(sum_c x[t, c]^2 / C + eps)
//          add_rmsnorm:  x[t, :] += y[t, :] (stored back to x, f32), then rmsnorm of the new x[t, :].
//          Statistics in f32: per-thread partial sums, warp shuffles, then one value per warp in
//          shared memory. inv is IEEE (no rsqrtf): `1.0f / sqrtf(mean + eps)` like the CPU.
// Layout:  x [T, C] f32, y [T, C] f32, w [C] T, out [T, C] T (T = bf16 / fp16).
// Launch:  grid (T), block (RMS_BLOCK = 256), no dynamic smem. One block per row, any C >= 1.
//          When C % 4 == 0 every row of x / y / out is 16 / 16 / 8-byte aligned (buffers start
//          256-byte aligned): x, y are read as float4, w read and out written 4 values (8 bytes) at
//          a time; otherwise everything is scalar. Pass 2 re-reads the row (L1/L2 resident; in
//          add_rmsnorm each thread re-reads exactly the elements it stored in pass 1, so no race).
// Oracle:  backend::cpu::rmsnorm (add_rmsnorm: cpu::add then cpu::rmsnorm); launchers
//          launch::rmsnorm / launch::add_rmsnorm (src/backend/cuda/launch/rmsnorm.rs).
#include "common.cuh"

namespace {

constexpr uint32_t RMS_BLOCK = 256;
constexpr uint32_t RMS_UNROLL = 4;  // float4 units per thread and step (vector path)

__device__ __forceinline__ float rms_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over the block; every thread gets the total. blockDim.x must be a multiple of 32 and
// at most 1024. Called once per block (its shared slots are not reused).
__device__ __forceinline__ float rms_block_sum(float v) {
    __shared__ float warp_sums[32];  // one per warp
    __shared__ float total;
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = rms_warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nwarps ? warp_sums[lane] : 0.0f;
        s = rms_warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// ADD: x += y first (stored back). x is not __restrict__: pass 2 reads what pass 1 stored.
// Vector path: each thread takes RMS_UNROLL float4 units per step (i, i + blockDim, ...), all
// loads of a step issued before any use, so a thread waits for one memory latency per step, not
// per unit (C = 4096: one step of 4 units per thread). Units past the row are skipped by `ok`.
template <typename T, bool ADD>
__device__ __forceinline__ void rms_impl(float* x, const float* y, const T* __restrict__ w, T* __restrict__ out,
                                         uint32_t C, float eps) {
    const size_t row = (size_t)blockIdx.x * C;
    float* xr = x + row;  // [C]
    T* orow = out + row;  // [C]
    const uint32_t n4 = C / 4;
    const uint32_t stride = blockDim.x;
    float ss = 0.0f;
    if (C % 4 == 0) {
        float4* x4 = reinterpret_cast<float4*>(xr);
        const float4* y4 = reinterpret_cast<const float4*>(y + row);  // dereferenced only when ADD
        for (uint32_t base = threadIdx.x; base < n4; base += stride * RMS_UNROLL) {
            float4 v[RMS_UNROLL];
#pragma unroll
            for (uint32_t u = 0; u < RMS_UNROLL; ++u) {
                const uint32_t i = base + u * stride;
                v[u] = i < n4 ? x4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
            if constexpr (ADD) {
                float4 a[RMS_UNROLL];
#pragma unroll
                for (uint32_t u = 0; u < RMS_UNROLL; ++u) {
                    const uint32_t i = base + u * stride;
                    a[u] = i < n4 ? y4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (uint32_t u = 0; u < RMS_UNROLL; ++u) {
                    const uint32_t i = base + u * stride;
                    v[u].x += a[u].x;
                    v[u].y += a[u].y;
                    v[u].z += a[u].z;
                    v[u].w += a[u].w;
                    if (i < n4) x4[i] = v[u];
                }
            }
#pragma unroll
            for (uint32_t u = 0; u < RMS_UNROLL; ++u) {
                ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;  // 0 past the row
            }
        }
    } else {
        for (uint32_t c = threadIdx.x; c < C; c += stride) {
            float v = xr[c];
            if constexpr (ADD) {
                v += y[row + c];
                xr[c] = v;
            }
            ss += v * v;
        }
    }
    ss = rms_block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)C + eps);
    if (C % 4 == 0) {
        const float4* x4 = reinterpret_cast<const float4*>(xr);
        const uint2* w4 = reinterpret_cast<const uint2*>(w);  // 4 values of T
        uint2* o4 = reinterpret_cast<uint2*>(orow);
        for (uint32_t base = threadIdx.x; base < n4; base += stride * RMS_UNROLL) {
            float4 v[RMS_UNROLL];
            uint2 wraw[RMS_UNROLL];
#pragma unroll
            for (uint32_t u = 0; u < RMS_UNROLL; ++u) {
                const uint32_t i = base + u * stride;
                if (i < n4) {
                    v[u] = x4[i];
                    wraw[u] = w4[i];
                }
            }
#pragma unroll
            for (uint32_t u = 0; u < RMS_UNROLL; ++u) {
                const uint32_t i = base + u * stride;
                if (i < n4) {
                    const T* wv = reinterpret_cast<const T*>(&wraw[u]);
                    uint2 oraw;
                    T* ov = reinterpret_cast<T*>(&oraw);
                    ov[0] = from_f32<T>((v[u].x * inv) * to_f32(wv[0]));
                    ov[1] = from_f32<T>((v[u].y * inv) * to_f32(wv[1]));
                    ov[2] = from_f32<T>((v[u].z * inv) * to_f32(wv[2]));
                    ov[3] = from_f32<T>((v[u].w * inv) * to_f32(wv[3]));
                    o4[i] = oraw;
                }
            }
        }
    } else {
        for (uint32_t c = threadIdx.x; c < C; c += stride) {
            orow[c] = from_f32<T>((xr[c] * inv) * to_f32(w[c]));
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(RMS_BLOCK)
    rmsnorm_bf16(const float* x, const __nv_bfloat16* w, __nv_bfloat16* out, uint32_t C, float eps) {
    pdl_begin();
    // ADD = false never writes x.
    rms_impl<__nv_bfloat16, false>(const_cast<float*>(x), nullptr, w, out, C, eps);
}

extern "C" __global__ void __launch_bounds__(RMS_BLOCK)
    rmsnorm_f16(const float* x, const __half* w, __half* out, uint32_t C, float eps) {
    pdl_begin();
    rms_impl<__half, false>(const_cast<float*>(x), nullptr, w, out, C, eps);
}

extern "C" __global__ void __launch_bounds__(RMS_BLOCK)
    add_rmsnorm_bf16(float* x, const float* y, const __nv_bfloat16* w, __nv_bfloat16* out, uint32_t C, float eps) {
    pdl_begin();
    rms_impl<__nv_bfloat16, true>(x, y, w, out, C, eps);
}

extern "C" __global__ void __launch_bounds__(RMS_BLOCK)
    add_rmsnorm_f16(float* x, const float* y, const __half* w, __half* out, uint32_t C, float eps) {
    pdl_begin();
    rms_impl<__half, true>(x, y, w, out, C, eps);
}
