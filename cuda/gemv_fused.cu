// gemv_fused.cu — the post-run-4 GEMV family (NOT yet verified on a GPU; opt-in, see cuda/README.md):
// the decode matmul y[b, :] = W · x[b, :] for a small batch of B rows (B <= 8), plain (gemv_plain) or
// with the next pointwise kernel fused into its epilogue. gemv.cu holds run 4's verified gemv, the
// default; this file is its successor (same bits, two passes in flight before the PDL wait, the
// optional L2 prefetch, the epilogues). Its helpers are named gf_* so that both files live in the one
// translation unit build.rs compiles.
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
//          No shared memory, no __syncthreads (except gemv_residual_rmsnorm's finalisation, below);
//          warps without a row exit before any load. With PDL (common.cuh) a warp requests its
//          first pass of W (two with `stages` = 2) before waiting for the previous kernel;
//          optionally (GemvConfig::prefetch_mb, off by default, an experiment) the grid's first
//          warps also ask for the rest of their first item in L2 then. The stage count and the
//          number of prefetching warps travel in one `cfg` word (bits 0-7, 8-31).
// Fused:   the same stream walks ITEMS of R weight rows instead of single rows (warp g takes items
//          g, g + W, ...; an item's R rows follow each other in the warp's stream, so the double
//          buffering crosses from one to the next), and at the item's end lane b applies the
//          epilogue to the item's R row sums of batch row b. The sums are the plain kernel's bits
//          (same passes, same butterfly), and the epilogues are pointwise.cuh's math, so a fused
//          launch stores exactly what the plain gemv + the standalone kernel would (the RMSNorm one:
//          up to its sum of squares' order).
//            gemv_plain  R 1, item n:  y[b, n] = sum (f32) — the same bits as gemv.cu's gemv.
//            gemv_swiglu R 2: rows (f, F + f) of w = [w1; w2] (2F x K), item f < F:
//                        out[b, f] = T(swiglu_one(up, gate)) — swiglu.cu without the [B, 2F] f32 trip.
//            gemv_qkv_rope R 2: rows (c, c + D/2) of w = c_attn (3P x K), item i < 3P/2 over the
//                        (part, head, j < D/2) pairs of q, k and v: bias add, RoPE of q and k at
//                        p = *pos0 + b (logN on q), stores q[b] and cache rows p of k and v —
//                        rotary.cu's qkv_rope_append without the [B, 3P] f32 trip; p >= cap writes
//                        nothing (as rotary.cu).
//            gemv_residual_rmsnorm R 1, B = 1: x[n] += sum (the residual stream, f32), then the last
//                        block (atomic ticket) turns the new x into a = RMSNorm(x) · w_ln —
//                        add_rmsnorm.cu without its launch and the [C] f32 y trip; x has the same
//                        bits, a may differ by an ulp of T (Σ x² in another order).
// Oracle:  backend::cpu::matmul (src/backend/cpu.rs), then cpu::swiglu / cpu::rope + logn_scale /
//          cpu::add + cpu::rmsnorm; launchers launch::gemv (GemvKernel::Stream), launch::gemv_swiglu, launch::gemv_qkv_rope,
//          launch::gemv_residual_rmsnorm.
#include "params.h"
#include "pointwise.cuh"

namespace {

constexpr int GF_WARPS = 8;                    // warps per block
constexpr int GF_THREADS = GF_WARPS * 32;    // 256; launch::gemv uses the same block
constexpr int GF_MAX_B = 8;

// 16-byte loads of W per lane per pass with one stage, for a batch of B (two stages: half as many per
// pass, two passes in flight): fewer for larger B so the B accumulators, the loads and the
// converted values fit 64 registers without spills (the kernel's register count is the maximum over
// all B and both stage counts, so the B = 1 decode path must not pay for B = 8).
__device__ constexpr int gf_loads_in_flight(int B) { return B <= 2 ? 8 : B <= 4 ? 4 : 2; }

// 16-byte streaming load of weights: read-only (non-coherent) path, no L1 allocation.
__device__ __forceinline__ uint4 gf_ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Ask for one 128-byte line of W into L2 (no register, no completion to wait for).
__device__ __forceinline__ void gf_prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Two packed T values (low half first = lower address) to two floats, exactly.
template <typename T> __device__ __forceinline__ float2 gf_pair(uint32_t v);
template <> __device__ __forceinline__ float2 gf_pair<__nv_bfloat16>(uint32_t v) {
    // bf16 -> f32 is the bf16 bits in the high half of the f32.
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
}
template <> __device__ __forceinline__ float2 gf_pair<__half>(uint32_t v) {
    __half2 h;
    memcpy(&h, &v, sizeof(h));
    return __half22float2(h);
}

// The 8 values of a uint4 as floats, in memory order.
template <typename T> __device__ __forceinline__ void gf_unpack8(const uint4& v, float (&f)[8]) {
    const float2 a = gf_pair<T>(v.x), b = gf_pair<T>(v.y), c = gf_pair<T>(v.z), d = gf_pair<T>(v.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

__device__ __forceinline__ float gf_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;  // every lane holds the full sum
}

// Epilogues. Each names R (weight rows per item), n_items(), row(item, r) (the weight row of the
// item's r-th sum; reads only kernel parameters, so it may run before pdl_wait), and
// store(item, b, s0, s1): run by lane b < B after pdl_wait with the item's row sums of batch row b
// (R = 1: s0 = s1). FINALIZE: every thread of every block (warps without items too) then calls
// finalize() once the block's stream is done (block-wide work: barriers allowed there).

// Plain: y[b, n] = sum. y [B, N] f32.
struct GemvPlain {
    static constexpr int R = 1;
    static constexpr bool FINALIZE = false;
    float* y;
    uint32_t N;
    __device__ __forceinline__ uint64_t n_items() const { return N; }
    __device__ __forceinline__ uint64_t row(uint64_t item, uint32_t) const { return item; }
    __device__ __forceinline__ void store(uint64_t item, uint32_t b, float s0, float) const {
        y[(size_t)b * N + item] = s0;
    }
};

// Residual add + RMSNorm (B = 1): x[n] += sum (f32, stored: add_rmsnorm's add, the same bits), then
// the last block to finish normalises the whole new x into a = rms_apply(x, inv, w_ln) (rmsnorm.cu's
// expression) with inv = rms_inv(Σ x², C, eps). Σ x² is summed per warp (lane 0, over its rows in
// stream order), per block (warp order) into partials[block], then by the last block over the
// blocks in block order (deterministic; rmsnorm.cu sums in another order, so a may differ from
// add_rmsnorm's by an ulp of T). The last block is found with an atomic ticket in `counter` (zero
// between launches; reset by the last block), as the fused attention combine does.
// x [C] f32, w_ln [C] T, a [C] T, partials [gridDim.x] f32, counter [1] u32.
template <typename T> struct GemvResidualNorm {
    static constexpr int R = 1;
    static constexpr bool FINALIZE = true;
    float* x;
    const T* w_ln;
    T* a;
    float* partials;
    uint32_t* counter;
    uint32_t C;
    float eps;
    float ss;  // lane 0 of each warp: Σ of its new x² so far
    __device__ __forceinline__ uint64_t n_items() const { return C; }
    __device__ __forceinline__ uint64_t row(uint64_t item, uint32_t) const { return item; }
    __device__ __forceinline__ void store(uint64_t item, uint32_t, float s0, float) {
        const float v = x[item] + s0;
        x[item] = v;
        ss = fmaf(v, v, ss);
    }
    __device__ void finalize() {
        __shared__ float warp_ss[GF_WARPS];
        __shared__ float inv_s;
        const uint32_t tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
        pdl_begin();  // warps without items have not waited yet; below x is read
        if (lane == 0) warp_ss[warp] = ss;
        __syncthreads();
        if (tid == 0) {
            float bs = 0.0f;
            for (uint32_t w = 0; w < GF_WARPS; ++w) bs += warp_ss[w];
            partials[blockIdx.x] = bs;
        }
        // The x stores of this block's rows and its partial, then the ticket (common.cuh).
        if (!last_block_arrives(counter, gridDim.x)) return;  // block-uniform
        // Σ over the blocks: thread i takes blocks i, i + 256, ... in order, then a fixed tree.
        float s = 0.0f;
        for (uint32_t i = tid; i < gridDim.x; i += GF_THREADS) s += __ldcg(partials + i);
        s = gf_warp_sum(s);
        if (lane == 0) warp_ss[warp] = s;
        __syncthreads();
        if (tid == 0) {
            float tot = 0.0f;
            for (uint32_t w = 0; w < GF_WARPS; ++w) tot += warp_ss[w];
            inv_s = rms_inv(tot, C, eps);
        }
        __syncthreads();
        const float inv = inv_s;
        // The normalisation is on the critical path (the whole GPU waits for this block): 4 values
        // per thread and step with 16-byte x loads when C % 4 == 0 and the rows are aligned.
        const bool vec = C % 4u == 0 &&
                         ((reinterpret_cast<uintptr_t>(x) & 15u) | (reinterpret_cast<uintptr_t>(w_ln) & 7u) |
                          (reinterpret_cast<uintptr_t>(a) & 7u)) == 0;
        if (vec) {
            const float4* x4 = reinterpret_cast<const float4*>(x);
            const uint2* w4 = reinterpret_cast<const uint2*>(w_ln);  // 4 values of T
            uint2* a4 = reinterpret_cast<uint2*>(a);
            for (uint32_t i = tid; i < C / 4u; i += GF_THREADS) {
                const float4 v = __ldcg(x4 + i);
                const uint2 wr = w4[i];
                const T* wv = reinterpret_cast<const T*>(&wr);
                uint2 out;
                T* ov = reinterpret_cast<T*>(&out);
                ov[0] = rms_apply(v.x, inv, wv[0]);
                ov[1] = rms_apply(v.y, inv, wv[1]);
                ov[2] = rms_apply(v.z, inv, wv[2]);
                ov[3] = rms_apply(v.w, inv, wv[3]);
                a4[i] = out;
            }
        } else {
            for (uint32_t c = tid; c < C; c += GF_THREADS) a[c] = rms_apply(__ldcg(x + c), inv, w_ln[c]);
        }
    }
};

// SwiGLU: rows f (w1: up) and F + f (w2: gate); out [B, F] T.
template <typename T> struct GemvSwiglu {
    static constexpr int R = 2;
    static constexpr bool FINALIZE = false;
    T* out;
    uint32_t F;
    __device__ __forceinline__ uint64_t n_items() const { return F; }
    __device__ __forceinline__ uint64_t row(uint64_t item, uint32_t r) const { return item + (r ? (uint64_t)F : 0u); }
    __device__ __forceinline__ void store(uint64_t item, uint32_t b, float up, float gate) const {
        out[(size_t)b * F + item] = from_f32<T>(swiglu_one(up, gate));
    }
};

// QKV + RoPE + append: item i = pair j of head h of part s (0 q, 1 k, 2 v), j fastest: i = (s·H + h)·D/2 + j,
// rows c = (s·H + h)·D + j and c + D/2. bias [3P] T, inv_freq [D/2] f32, pos0 [1] u32, q [B, P] T,
// k_cache / v_cache [cap, P] T. Lane b's token sits at p = *pos0 + b.
template <typename T> struct GemvQkvRope {
    static constexpr int R = 2;
    static constexpr bool FINALIZE = false;
    const T* bias;
    const float* inv_freq;
    const uint32_t* pos0;
    T* q;
    T* k_cache;
    T* v_cache;
    uint32_t H, D, cap, S, use_logn;
    __device__ __forceinline__ uint64_t n_items() const { return (uint64_t)3 * H * (D / 2); }
    __device__ __forceinline__ uint64_t row(uint64_t item, uint32_t r) const {
        const uint32_t half = D / 2;
        return (item / half) * D + item % half + (r ? half : 0u);
    }
    // The position is read here, per item, rather than kept in registers across the stream (the
    // streaming loop has none to spare at 64); a warp stores only a few items.
    __device__ __forceinline__ void store(uint64_t item, uint32_t b, float s0, float s1) const {
        const uint64_t p64 = (uint64_t)(*pos0) + b;  // 64-bit: a garbage pos0 cannot wrap
        if (p64 >= cap) return;                       // nothing at all, as qkv_rope_append
        const uint32_t p = (uint32_t)p64;
        const uint32_t half = D / 2;
        const uint32_t sh = (uint32_t)(item / half), j = (uint32_t)(item % half);  // sh = s·H + h
        const uint32_t part = sh / H;
        const size_t P = (size_t)H * D;
        const size_t col = (size_t)(sh - part * H) * D + j;  // column of x[j] inside the part
        const size_t c = (size_t)sh * D + j;                 // the same column in the [3P] row
        const float x1 = __fadd_rn(s0, to_f32(bias[c])), x2 = __fadd_rn(s1, to_f32(bias[c + half]));
        if (part == 2) {
            T* v_out = v_cache + (size_t)p * P + col;
            v_out[0] = from_f32<T>(x1);
            v_out[half] = from_f32<T>(x2);
            return;
        }
        const float2 r = rope_rotate(x1, x2, rope_cos_sin((float)p, inv_freq[j]));
        if (part == 0) {
            T* q_out = q + (size_t)b * P + col;
            const float scale = logn_factor(p64, S, use_logn);
            q_out[0] = from_f32<T>(__fmul_rn(r.x, scale));
            q_out[half] = from_f32<T>(__fmul_rn(r.y, scale));
        } else {
            T* k_out = k_cache + (size_t)p * P + col;
            k_out[0] = from_f32<T>(r.x);
            k_out[half] = from_f32<T>(r.y);
        }
    }
};

// A warp's stream: step s is pass s % P of the (s / P)-th weight row of the warp, which is row r =
// (s / P) % R of its (s / (R P))-th item, item g + (s / (R P)) W.
template <class E>
__device__ __forceinline__ uint64_t gf_row_of(const E& e, uint32_t step, uint32_t P, uint64_t g, uint64_t W) {
    const uint32_t q = step / P;  // weight row of this warp's stream
    return e.row(g + (uint64_t)(q / E::R) * W, q % E::R);
}

// One pass of stream step `step`: issue its U loads. Past the row end (k8 >= K8, only in a row's
// last pass) the index is clamped to the row's last uint4 (K8 >= 1 here): an in-bounds,
// branch-free load whose value is never used.
template <int U, class E>
__device__ __forceinline__ void gf_issue(const E& e, const uint4* w4, uint4 (&wv)[U], uint32_t step, uint32_t P,
                                           uint64_t g, uint64_t W, uint32_t K8, uint32_t lane) {
    const uint32_t base = (step % P) * 32u * U;
    const uint4* wrow = w4 + gf_row_of(e, step, P, g, W) * K8;  // [K8]
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const uint32_t k8 = base + 32u * u + lane;
        wv[u] = gf_ld_stream(wrow + (k8 < K8 ? k8 : K8 - 1u));
    }
}

// The end of one weight row of an item: reduce each batch row's sum over the warp (lane b keeps
// batch row b's) and clear acc; after the item's last row, lane b < B runs the epilogue with the
// item's sums (`first` holds row 0's when R = 2).
template <int B, class E>
__device__ __forceinline__ void gf_row_end(E& e, float (&acc)[B], float& first, uint64_t item, uint32_t r,
                                             uint32_t lane) {
    float mine = 0.0f;
#pragma unroll
    for (int b = 0; b < B; ++b) {
        const float sum = gf_warp_sum(acc[b]);  // all 32 lanes of the warp take part
        if (lane == (uint32_t)b) mine = sum;
        acc[b] = 0.0f;
    }
    if (r + 1u < (uint32_t)E::R) {
        first = mine;
    } else if (lane < (uint32_t)B) {
        e.store(item, lane, E::R == 1 ? mine : first, mine);
    }
}

// Multiply the loads of stream step `step` into acc; at a row's last pass, gf_row_end.
template <typename T, int B, int U, class E>
__device__ __forceinline__ void gf_consume(E& e, const uint4 (&wv)[U], float (&acc)[B], float& first,
                                             const uint4* x4, uint32_t step, uint32_t P, uint64_t g, uint64_t W,
                                             uint32_t K8, uint32_t lane) {
    const uint32_t pass = step % P;
    const uint32_t base = pass * 32u * U;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const uint32_t k8 = base + 32u * u + lane;
        if (k8 < K8) {
            float wf[8];
            gf_unpack8<T>(wv[u], wf);
#pragma unroll
            for (int b = 0; b < B; ++b) {
                float xf[8];
                gf_unpack8<T>(__ldg(x4 + (size_t)b * K8 + k8), xf);  // x[b, 8 k8 .. 8 k8 + 8)
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[b] = fmaf(wf[i], xf[i], acc[b]);
            }
        }
    }
    if (pass == P - 1u) {  // warp-uniform
        const uint32_t q = step / P;
        gf_row_end<B>(e, acc, first, g + (uint64_t)(q / E::R) * W, q % E::R, lane);
    }
}

// Vector path of one warp: `steps` = items of this warp x R rows x P passes, as one stream.
template <typename T, int B, int U, bool PIPE, class E>
__device__ __forceinline__ void gf_stream(E& e, const uint4* w4, const uint4* x4, uint32_t K8, uint64_t g,
                                            uint64_t W, uint32_t items, uint32_t lane, bool prefetch) {
    const uint32_t P = (K8 + 32u * U - 1u) / (32u * U);  // passes per row (>= 1)
    const uint32_t steps = items * (uint32_t)E::R * P;   // fits u32 (checked by the launcher)
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.0f;
    float first = 0.0f;
    uint4 a[U], c[U];
    // The first passes' weights are requested before waiting for the previous kernel (PDL): W is
    // never written by a kernel; x, the outputs and the epilogue's inputs are touched only after
    // pdl_begin(). (row() reads only kernel parameters.)
    gf_issue<U>(e, w4, a, 0, P, g, W, K8, lane);
    if (prefetch) {  // the rest of the warp's first item into L2 while the previous kernel drains
#pragma unroll 1
        for (uint32_t r = 0; r < (uint32_t)E::R; ++r) {
            const char* row = reinterpret_cast<const char*>(w4 + e.row(g, r) * K8);  // [K8 · 16 bytes]
            for (uint32_t off = lane * 128u; off < K8 * 16u; off += 32u * 128u) gf_prefetch_l2(row + off);
        }
    }
    if constexpr (!PIPE) {
        pdl_begin();
        for (uint32_t s = 0; s < steps; ++s) {
            if (s > 0) gf_issue<U>(e, w4, a, s, P, g, W, K8, lane);
            gf_consume<T, B, U>(e, a, acc, first, x4, s, P, g, W, K8, lane);
        }
    } else {
        // Two buffers: a holds even steps, c odd ones; step s + 1 is in flight while s is
        // multiplied. Both are filled before the wait, so two passes stream in while the previous
        // kernel drains. (Issue and multiply order: i0 i1 | m0 i2 m1 i3 m2 i4 ...)
        if (1u < steps) gf_issue<U>(e, w4, c, 1u, P, g, W, K8, lane);
        pdl_begin();
        for (uint32_t s = 0; s < steps; s += 2u) {
            gf_consume<T, B, U>(e, a, acc, first, x4, s, P, g, W, K8, lane);
            if (s + 2u < steps) gf_issue<U>(e, w4, a, s + 2u, P, g, W, K8, lane);
            if (s + 1u < steps) {
                gf_consume<T, B, U>(e, c, acc, first, x4, s + 1u, P, g, W, K8, lane);
                if (s + 3u < steps) gf_issue<U>(e, w4, c, s + 3u, P, g, W, K8, lane);
            }
        }
    }
}

// The stream of one warp: items g, g + W, ... < n_items.
template <typename T, int B, class E>
__device__ __forceinline__ void gf_warp(E& e, const T* __restrict__ w, const T* __restrict__ x, uint32_t K,
                                          uint32_t cfg, uint64_t g, uint64_t W, uint64_t n_items, uint32_t lane) {
    const uint32_t stages = cfg & 0xFFu;
    const bool prefetch = g < (cfg >> 8);  // the first cfg >> 8 warps of the grid prefetch
    const uint32_t items = (uint32_t)((n_items - 1u - g) / W + 1u);  // items g, g + W, ... < n_items

    const bool vec = (K % 8u == 0) && ((reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(x)) & 15u) == 0;
    if (vec && K > 0) {
        // Every row of w and of x starts 16-byte aligned: base aligned and K * 2 bytes % 16 == 0.
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        const uint4* x4 = reinterpret_cast<const uint4*>(x);
        if (stages >= 2) {
            gf_stream<T, B, gf_loads_in_flight(B) / 2, true>(e, w4, x4, K / 8u, g, W, items, lane, prefetch);
        } else {
            gf_stream<T, B, gf_loads_in_flight(B), false>(e, w4, x4, K / 8u, g, W, items, lane, prefetch);
        }
        return;
    }
    // Scalar path: any K, any 2-byte alignment. Lane l takes k = l, l + 32, ...
    pdl_begin();
    float first = 0.0f;
    for (uint64_t item = g; item < n_items; item += W) {
        for (uint32_t r = 0; r < (uint32_t)E::R; ++r) {
            const T* wrow = w + e.row(item, r) * K;  // [K]
            float acc[B];
#pragma unroll
            for (int b = 0; b < B; ++b) acc[b] = 0.0f;
            for (uint32_t k = lane; k < K; k += 32u) {
                const float wf = to_f32(wrow[k]);
#pragma unroll
                for (int b = 0; b < B; ++b) acc[b] = fmaf(wf, to_f32(x[(size_t)b * K + k]), acc[b]);
            }
            gf_row_end<B>(e, acc, first, item, r, lane);
        }
    }
}

template <typename T, int B, class E>
__device__ __forceinline__ void gf_impl(E& e, const T* __restrict__ w, const T* __restrict__ x, uint32_t K,
                                          uint32_t cfg) {
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t g = (uint64_t)blockIdx.x * GF_WARPS + (threadIdx.x >> 5);  // 64-bit: no wrap near 2^32
    const uint64_t W = (uint64_t)gridDim.x * GF_WARPS;                        // warps in the grid
    const uint64_t n_items = e.n_items();
    if (g < n_items) gf_warp<T, B>(e, w, x, K, cfg, g, W, n_items, lane);
    // Without FINALIZE a warp without items simply leaves (g is warp-uniform).
    if constexpr (E::FINALIZE) e.finalize();
}

// B in 1..=MAX_B (the launcher rejects anything else; other B write nothing). The QKV + RoPE epilogue
// instantiates only B = 1 (decode): with all eight B in one kernel ptxas spills ~90 bytes at 64
// registers, with B = 1 alone none in the streaming loop.
template <int MAX_B, typename T, class E>
__device__ __forceinline__ void gf_dispatch(E e, const T* w, const T* x, uint32_t K, uint32_t B, uint32_t cfg) {
    static_assert(MAX_B >= 1 && MAX_B <= GF_MAX_B && GF_MAX_B <= 32, "lane b stores batch row b");
    switch (B) {
        case 1: gf_impl<T, 1>(e, w, x, K, cfg); break;
        case 2: if constexpr (MAX_B >= 2) gf_impl<T, 2>(e, w, x, K, cfg); break;
        case 3: if constexpr (MAX_B >= 3) gf_impl<T, 3>(e, w, x, K, cfg); break;
        case 4: if constexpr (MAX_B >= 4) gf_impl<T, 4>(e, w, x, K, cfg); break;
        case 5: if constexpr (MAX_B >= 5) gf_impl<T, 5>(e, w, x, K, cfg); break;
        case 6: if constexpr (MAX_B >= 6) gf_impl<T, 6>(e, w, x, K, cfg); break;
        case 7: if constexpr (MAX_B >= 7) gf_impl<T, 7>(e, w, x, K, cfg); break;
        case 8: if constexpr (MAX_B >= 8) gf_impl<T, 8>(e, w, x, K, cfg); break;
        default: break;
    }
}

}  // namespace

// __launch_bounds__(256, 4): at most 64 registers, so 4 blocks (32 warps) fit per SM for every B.
// cfg: bits 0-7 the stage count (1 or 2), bits 8-31 how many leading warps of the grid prefetch their
// first item's rows into L2 before waiting for the previous kernel (0: none; GemvConfig::word).
// The entry points take GemvFusedParams (params.h) by value: the common fields w, x, K, B, cfg and
// their own group.
template <typename T> __device__ __forceinline__ const T* gf_in(const void* p) { return static_cast<const T*>(p); }

// y [B, N] f32 = x · wᵀ, w [N, K].
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_plain_bf16(const GemvFusedParams p) {
    gf_dispatch<GF_MAX_B>(GemvPlain{p.y, p.N}, gf_in<__nv_bfloat16>(p.w), gf_in<__nv_bfloat16>(p.x), p.K, p.B, p.cfg);
}

extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_plain_f16(const GemvFusedParams p) {
    gf_dispatch<GF_MAX_B>(GemvPlain{p.y, p.N}, gf_in<__half>(p.w), gf_in<__half>(p.x), p.K, p.B, p.cfg);
}

// out [B, F] T = swiglu(x · w[0:F]ᵀ, x · w[F:2F]ᵀ), w [2F, K].
template <typename T> __device__ __forceinline__ void gf_swiglu_entry(const GemvFusedParams& p) {
    gf_dispatch<GF_MAX_B>(GemvSwiglu<T>{static_cast<T*>(p.out), p.F}, gf_in<T>(p.w), gf_in<T>(p.x), p.K, p.B, p.cfg);
}
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_swiglu_bf16(const GemvFusedParams p) {
    gf_swiglu_entry<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_swiglu_f16(const GemvFusedParams p) {
    gf_swiglu_entry<__half>(p);
}

// q [B, P] T, k_cache / v_cache rows *pos0 + b = qkv_rope_append(x · wᵀ), w [3P, K], P = H·D; B = 1 only.
template <typename T> __device__ __forceinline__ void gf_qkv_rope_entry(const GemvFusedParams& p) {
    gf_dispatch<1>(GemvQkvRope<T>{gf_in<T>(p.bias), p.inv_freq, p.pos0, static_cast<T*>(p.q), static_cast<T*>(p.k_cache),
                                  static_cast<T*>(p.v_cache), p.H, p.D, p.cap, p.S, p.use_logn},
                   gf_in<T>(p.w), gf_in<T>(p.x), p.K, p.B, p.cfg);
}
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_qkv_rope_bf16(const GemvFusedParams p) {
    gf_qkv_rope_entry<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_qkv_rope_f16(const GemvFusedParams p) {
    gf_qkv_rope_entry<__half>(p);
}

// resid [C] f32 += x [1, K] · wᵀ (w [C, K]), then a [C] T = RMSNorm(resid) · w_ln by the last block;
// partials [grid] f32 and counter [1] u32 (zero) are its workspace. B = 1 only.
template <typename T> __device__ __forceinline__ void gf_residual_rmsnorm_entry(const GemvFusedParams& p) {
    gf_dispatch<1>(GemvResidualNorm<T>{p.resid, gf_in<T>(p.w_ln), static_cast<T*>(p.a), p.partials, p.counter, p.C,
                                       p.eps, 0.0f},
                   gf_in<T>(p.w), gf_in<T>(p.x), p.K, 1u, p.cfg);
}
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_residual_rmsnorm_bf16(const GemvFusedParams p) {
    gf_residual_rmsnorm_entry<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(GF_THREADS, 4) gemv_residual_rmsnorm_f16(const GemvFusedParams p) {
    gf_residual_rmsnorm_entry<__half>(p);
}
