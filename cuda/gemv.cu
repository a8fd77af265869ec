// gemv.cu — the decode matmul: y[b, :] = W · x[b, :] for a small batch of B rows (B <= 8).
//
// What:    y[b, n] = sum_k f32(w[n, k]) * f32(x[b, k]), fp32 accumulation, for n < N, b < B.
//          (nn.Linear without bias; the bias of c_attn is added by the next kernel.)
// Layout:  w [N, K] row-major T (bf16 or fp16), x [B, K] row-major T, y [B, N] row-major f32.
//          B in 1..=8 (the launcher rejects anything else; here B outside 1..=8 writes nothing).
// Launch:  grid (G), block (256) = 8 warps; warp g of the grid's W = 8 G warps takes rows
//          n = g, g + W, g + 2W, ... (the launcher picks G: ceil(N / 8) gives one row per warp, fewer
//          blocks make each warp stream several rows). Vector path (K % 8 == 0 and w, x 16-byte
//          aligned; decided in-kernel, uniform over the grid): a row is read in passes of U
//          16-byte loads per lane (lane l, load u of pass p: uint4 k8 = 32 U p + 32 u + l), via
//          ld.global.nc.L1::no_allocate so the streamed weights do not evict x from L1; x is read
//          as uint4 through the read-only path (small, re-read by every warp, stays in L1).
//          `stages` = 2: the warp's passes over all its rows form one stream, and the loads of the
//          next pass are issued before the current pass is multiplied (double buffering, so loads
//          stay in flight while the warp computes and across row ends); U = 4 / 2 / 1 for
//          B <= 2 / 4 / 8. `stages` = 1: load a pass, then multiply it; U = 8 / 4 / 2. (U is sized
//          so the B accumulators and the loads fit 64 registers without spills.) Scalar path
//          otherwise (ragged K such as 7 or 127, or a misaligned sub-slice). fp32 partial sums per
//          lane, reduced with a butterfly of warp shuffles at each row's end; lane b stores y[b, n].
//          No shared memory, no __syncthreads; warps without a row exit before any load. With PDL
//          (common.cuh) a warp requests its first pass of W before waiting for the previous kernel.
// Oracle:  backend::cpu::matmul (src/backend/cpu.rs); launcher launch::gemv.
#include "common.cuh"

namespace {

constexpr int GEMV_WARPS = 8;                    // warps per block
constexpr int GEMV_THREADS = GEMV_WARPS * 32;    // 256; launch::gemv uses the same block
constexpr int GEMV_MAX_B = 8;

// 16-byte loads of W per lane per pass with one stage, for a batch of B (two stages: half as many per
// pass, two passes in flight): fewer for larger B so the B accumulators, the loads and the
// converted values fit 64 registers without spills (the kernel's register count is the maximum over
// all B and both stage counts, so the B = 1 decode path must not pay for B = 8).
__device__ constexpr int gemv_loads_in_flight(int B) { return B <= 2 ? 8 : B <= 4 ? 4 : 2; }

// 16-byte streaming load of weights: read-only (non-coherent) path, no L1 allocation.
__device__ __forceinline__ uint4 gemv_ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Two packed T values (low half first = lower address) to two floats, exactly.
template <typename T> __device__ __forceinline__ float2 gemv_pair(uint32_t v);
template <> __device__ __forceinline__ float2 gemv_pair<__nv_bfloat16>(uint32_t v) {
    // bf16 -> f32 is the bf16 bits in the high half of the f32.
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
}
template <> __device__ __forceinline__ float2 gemv_pair<__half>(uint32_t v) {
    __half2 h;
    memcpy(&h, &v, sizeof(h));
    return __half22float2(h);
}

// The 8 values of a uint4 as floats, in memory order.
template <typename T> __device__ __forceinline__ void gemv_unpack8(const uint4& v, float (&f)[8]) {
    const float2 a = gemv_pair<T>(v.x), b = gemv_pair<T>(v.y), c = gemv_pair<T>(v.z), d = gemv_pair<T>(v.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

__device__ __forceinline__ float gemv_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;  // every lane holds the full sum
}

// One pass of warp-row stream step `step` (row = g + (step / P) W, pass = step % P): issue its U
// loads. Past the row end (k8 >= K8, only in a row's last pass) the index is clamped to the row's
// last uint4 (K8 >= 1 here): an in-bounds, branch-free load whose value is never used.
template <int U>
__device__ __forceinline__ void gemv_issue(const uint4* w4, uint4 (&wv)[U], uint32_t step, uint32_t P, uint64_t g,
                                           uint64_t W, uint32_t K8, uint32_t lane) {
    const uint64_t row = g + (uint64_t)(step / P) * W;
    const uint32_t base = (step % P) * 32u * U;
    const uint4* wrow = w4 + row * K8;  // [K8]
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const uint32_t k8 = base + 32u * u + lane;
        wv[u] = gemv_ld_stream(wrow + (k8 < K8 ? k8 : K8 - 1u));
    }
}

// Multiply the loads of stream step `step` into acc; at the row's last pass reduce over the warp,
// store y[b, row] from lane b and clear acc for the next row.
template <typename T, int B, int U>
__device__ __forceinline__ void gemv_consume(const uint4 (&wv)[U], float (&acc)[B], const uint4* x4, float* y,
                                             uint32_t step, uint32_t P, uint64_t g, uint64_t W, uint32_t N,
                                             uint32_t K8, uint32_t lane) {
    const uint32_t pass = step % P;
    const uint32_t base = pass * 32u * U;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const uint32_t k8 = base + 32u * u + lane;
        if (k8 < K8) {
            float wf[8];
            gemv_unpack8<T>(wv[u], wf);
#pragma unroll
            for (int b = 0; b < B; ++b) {
                float xf[8];
                gemv_unpack8<T>(__ldg(x4 + (size_t)b * K8 + k8), xf);  // x[b, 8 k8 .. 8 k8 + 8)
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[b] = fmaf(wf[i], xf[i], acc[b]);
            }
        }
    }
    if (pass == P - 1u) {  // warp-uniform
        const uint64_t row = g + (uint64_t)(step / P) * W;
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const float sum = gemv_warp_sum(acc[b]);  // all 32 lanes of the warp take part
            if (lane == (uint32_t)b) y[(size_t)b * N + row] = sum;  // y[b, n]
            acc[b] = 0.0f;
        }
    }
}

// Vector path of one warp: `steps` = rows of this warp x P passes, as one stream.
template <typename T, int B, int U, bool PIPE>
__device__ __forceinline__ void gemv_stream(const uint4* w4, const uint4* x4, float* y, uint32_t N, uint32_t K8,
                                            uint64_t g, uint64_t W, uint32_t rows, uint32_t lane) {
    const uint32_t P = (K8 + 32u * U - 1u) / (32u * U);  // passes per row (>= 1)
    const uint32_t steps = rows * P;                     // rows <= N / W + 1, P <= K8: fits u32 (checked by the launcher)
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    uint4 a[U], c[U];
    // The first pass's weights are requested before waiting for the previous kernel (PDL): W is
    // never written by a kernel, x and y are touched only after pdl_begin().
    gemv_issue<U>(w4, a, 0, P, g, W, K8, lane);
    pdl_begin();
    if (!PIPE) {
        for (uint32_t s = 0; s < steps; ++s) {
            if (s > 0) gemv_issue<U>(w4, a, s, P, g, W, K8, lane);
            gemv_consume<T, B, U>(a, acc, x4, y, s, P, g, W, N, K8, lane);
        }
        return;
    }
    // Two buffers: a holds even steps, c odd ones; step s + 1 is in flight while s is multiplied.
    for (uint32_t s = 0; s < steps; s += 2u) {
        if (s + 1u < steps) gemv_issue<U>(w4, c, s + 1u, P, g, W, K8, lane);
        gemv_consume<T, B, U>(a, acc, x4, y, s, P, g, W, N, K8, lane);
        if (s + 1u < steps) {
            if (s + 2u < steps) gemv_issue<U>(w4, a, s + 2u, P, g, W, K8, lane);
            gemv_consume<T, B, U>(c, acc, x4, y, s + 1u, P, g, W, N, K8, lane);
        }
    }
}

template <typename T, int B>
__device__ __forceinline__ void gemv_impl(const T* __restrict__ w, const T* __restrict__ x, float* __restrict__ y,
                                          uint32_t N, uint32_t K, uint32_t stages) {
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t g = (uint64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);  // 64-bit: no wrap near 2^32
    const uint64_t W = (uint64_t)gridDim.x * GEMV_WARPS;                        // warps in the grid
    if (g >= N) return;  // the whole warp leaves together (g is warp-uniform)
    const uint32_t rows = (uint32_t)((N - 1u - g) / W + 1u);  // rows g, g + W, ... < N

    const bool vec = (K % 8u == 0) && ((reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) & 15u) == 0;
    if (vec && K > 0) {
        // Every row of w and of x starts 16-byte aligned: base aligned and K * 2 bytes % 16 == 0.
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        const uint4* x4 = reinterpret_cast<const uint4*>(x);
        if (stages >= 2) {
            gemv_stream<T, B, gemv_loads_in_flight(B) / 2, true>(w4, x4, y, N, K / 8u, g, W, rows, lane);
        } else {
            gemv_stream<T, B, gemv_loads_in_flight(B), false>(w4, x4, y, N, K / 8u, g, W, rows, lane);
        }
        return;
    }
    // Scalar path: any K, any 2-byte alignment. Lane l takes k = l, l + 32, ...
    pdl_begin();
    for (uint64_t n = g; n < N; n += W) {
        const T* wrow = w + n * K;  // [K]
        float acc[B];
#pragma unroll
        for (int b = 0; b < B; ++b) acc[b] = 0.0f;
        for (uint32_t k = lane; k < K; k += 32u) {
            const float wf = to_f32(wrow[k]);
#pragma unroll
            for (int b = 0; b < B; ++b) acc[b] = fmaf(wf, to_f32(x[(size_t)b * K + k]), acc[b]);
        }
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const float sum = gemv_warp_sum(acc[b]);
            if (lane == (uint32_t)b) y[(size_t)b * N + n] = sum;
        }
    }
}

template <typename T>
__device__ __forceinline__ void gemv_dispatch(const T* w, const T* x, float* y, uint32_t N, uint32_t K, uint32_t B,
                                              uint32_t stages) {
    static_assert(GEMV_MAX_B <= 32, "lane b stores y[b, n]");
    switch (B) {
        case 1: gemv_impl<T, 1>(w, x, y, N, K, stages); break;
        case 2: gemv_impl<T, 2>(w, x, y, N, K, stages); break;
        case 3: gemv_impl<T, 3>(w, x, y, N, K, stages); break;
        case 4: gemv_impl<T, 4>(w, x, y, N, K, stages); break;
        case 5: gemv_impl<T, 5>(w, x, y, N, K, stages); break;
        case 6: gemv_impl<T, 6>(w, x, y, N, K, stages); break;
        case 7: gemv_impl<T, 7>(w, x, y, N, K, stages); break;
        case 8: gemv_impl<T, 8>(w, x, y, N, K, stages); break;
        default: break;  // rejected by the launcher
    }
}

}  // namespace

// __launch_bounds__(256, 4): at most 64 registers, so 4 blocks (32 warps) fit per SM for every B.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 4)
    gemv_bf16(const __nv_bfloat16* w, const __nv_bfloat16* x, float* y, uint32_t N, uint32_t K, uint32_t B,
              uint32_t stages) {
    gemv_dispatch(w, x, y, N, K, B, stages);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 4)
    gemv_f16(const __half* w, const __half* x, float* y, uint32_t N, uint32_t K, uint32_t B, uint32_t stages) {
    gemv_dispatch(w, x, y, N, K, B, stages);
}
