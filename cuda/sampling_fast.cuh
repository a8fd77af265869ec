// sampling_fast.cuh — the smf_* helpers shared by the post-run-4 sampling kernels: sampling_fast.cu
// (sample_greedy_f32, sample_draw_radix_f32) and sampling_topp.cu (the multi-block top-p path).
// Block reductions, the id-order walk, the order key and steps 0-1 of the pipeline (smf_process);
// the pipeline's semantics are in sampling_fast.cu's header.
#pragma once
#include "common.cuh"

namespace {

constexpr uint32_t SMF_THREADS = 1024;             // sample_draw_f32 block size (one block)
constexpr uint32_t SMF_WARPS = SMF_THREADS / 32;  // 32
constexpr unsigned SMF_FULL = 0xffffffffu;
constexpr uint32_t SMF_NONE = 0xffffffffu;
constexpr float SMF_MIN_TEMPERATURE = 1e-5f;  // below: greedy (sampler.rs MIN_TEMPERATURE)
constexpr uint32_t SMF_ONE_BITS = 0x3f800000u;  // bits of 1.0f, the largest e
constexpr uint32_t SMF_RADIX_BITS = 3;           // a search pass splits its range into 8 bins
constexpr uint32_t SMF_BINS = 1u << SMF_RADIX_BITS;

// Order key of a logit: ascending u32 order = ascending float order, -0.0 == +0.0 (as torch compares).
// x + 0.0f turns -0.0 into +0.0 (kept by the compiler: no fast-math).
__device__ __forceinline__ uint32_t smf_key(float x) {
    const uint32_t b = __float_as_uint(x + 0.0f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct SmfSumD {
    __device__ double operator()(double a, double b) const { return a + b; }
};
struct SmfSumU {
    __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a + b; }
};
struct SmfMaxF {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SmfMinU {
    __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a < b ? a : b; }
};
struct SmfMaxU {
    __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a > b ? a : b; }
};
struct SmfMaxU64 {
    __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a > b ? a : b; }
};
struct SmfSumU64 {
    __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a + b; }
};

// Reduce `v` over the NW · 32 threads of the block (default SMF_THREADS) with the commutative `op`; every thread gets
// the same bits (xor butterfly inside a warp — commutative, so all lanes agree — then the 32 warp
// values combined in warp order by every thread). `red` [NW] shared; the leading
// __syncthreads lets the previous reduction's readers finish before it is overwritten. Must be
// called by every thread of the block (uniform control flow).
template <uint32_t NW = SMF_WARPS, typename T, typename Op>
__device__ __forceinline__ T smf_block_reduce(T v, Op op, T* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(SMF_FULL, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = red[0];
#pragma unroll 8
    for (uint32_t w = 1; w < NW; ++w) r = op(r, red[w]);
    return r;
}

// smf_block_reduce for SMF_BINS values at once (one pair of barriers): v[b] becomes the reduction of
// every thread's v[b], the same bits in every thread. red [SMF_WARPS · SMF_BINS] shared.
template <typename T, typename Op>
__device__ __forceinline__ void smf_block_reduce_bins(T (&v)[SMF_BINS], Op op, T* red) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (uint32_t b = 0; b < SMF_BINS; ++b) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v[b] = op(v[b], __shfl_xor_sync(SMF_FULL, v[b], o));
    }
    __syncthreads();
    if (lane == 0) {
#pragma unroll
        for (uint32_t b = 0; b < SMF_BINS; ++b) red[warp * SMF_BINS + b] = v[b];
    }
    __syncthreads();
#pragma unroll
    for (uint32_t b = 0; b < SMF_BINS; ++b) {
        T r = red[b];
        for (uint32_t w = 1; w < SMF_WARPS; ++w) r = op(r, red[w * SMF_BINS + b]);
        v[b] = r;
    }
}

// The draw kernel's layout: warp w owns the CONTIGUOUS id range [w·32·L, (w+1)·32·L) ∩ [0, V),
// L = ⌈V/1024⌉ rows of 32 ids; lane l owns ids w·32·L + 32·i + l (row i). Every load / store of a warp
// instruction is one contiguous 128-byte row (coalesced), and each thread reads back only what it
// wrote itself (the walk at the end reads other warps' values after a __syncthreads).
// Calls f(v, a[v]) for the ids this thread owns, in increasing v, with up to 8 loads in flight
// (memory-level parallelism for the ~35 passes over L2). f may store to index v of an array aliasing
// `a`: every index of a batch is loaded before f runs on it, and only by its owner thread.
template <typename F>
__device__ __forceinline__ void smf_each(const float* a, uint32_t V, uint32_t L, F f) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t base = warp * L * 32u;          // <= 1023·L <= V + 1023: no overflow for V <= 2^31
    const uint32_t stop = min(base + L * 32u, V);  // end of this warp's range
    uint32_t v = base + lane;
    for (; v + 7u * 32u < stop; v += 8u * 32u) {
        float x[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) x[j] = a[v + 32u * j];
#pragma unroll
        for (int j = 0; j < 8; ++j) f(v + 32u * j, x[j]);
    }
    for (; v < stop; v += 32u) f(v, a[v]);
}

__device__ __forceinline__ float smf_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SMF_FULL, v, o);
    return v;
}


// Warp 0's walk over the ids [s0, s1) in increasing order from the cumulative `base` (f64), 32 ids a
// step with an inclusive f64 scan of p: the first id with p > 0 and u < base + Σ p up to it; forced
// (u is past the rounded total): the last id with p > 0; none at all: 0. Every lane of the warp calls
// it (uniform loop) and gets the same id. p is read through L2 (__ldcg): other blocks may have
// written it.
__device__ __forceinline__ uint32_t smf_walk(const float* probs, uint32_t s0, uint32_t s1, double base, double u,
                                             bool forced) {
    const uint32_t lane = threadIdx.x & 31;
    double acc = base;
    uint32_t last = SMF_NONE;
    for (uint32_t v0 = s0; v0 < s1; v0 += 32u) {  // uniform across the warp
        const uint32_t v = v0 + lane;
        const float p = v < s1 ? __ldcg(probs + v) : 0.0f;
        double sc = (double)p;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double y = __shfl_up_sync(SMF_FULL, sc, o);
            if (lane >= (uint32_t)o) sc += y;
        }
        const unsigned pos = __ballot_sync(SMF_FULL, p > 0.0f);
        const unsigned hits = __ballot_sync(SMF_FULL, p > 0.0f && !forced && u < acc + sc);
        if (hits != 0) return v0 + (uint32_t)(__ffs(hits) - 1);
        if (pos != 0) last = v0 + 31u - (uint32_t)__clz(pos);
        acc += __shfl_sync(SMF_FULL, sc, 31);
    }
    return last != SMF_NONE ? last : 0u;
}
}  // namespace

// Steps 0-1 for id v < V, in place: NaN and ids >= vocab_len → -inf, then the penalty where
// flags[v] != 0 (and the flag cleared, leaving the workspace zero for the next call). Returns the
// processed logit.
__device__ __forceinline__ float smf_process(float* logits, uint32_t v, uint32_t vocab_len, uint8_t* flags,
                                             float penalty) {
    float x = logits[v];
    if (isnan(x) || v >= vocab_len) x = -INFINITY;
    if (flags[v] != 0) {
        flags[v] = 0;
        x = x < 0.0f ? x * penalty : x / penalty;
    }
    logits[v] = x;
    return x;
}
