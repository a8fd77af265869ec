// sampling_fast.cu — the post-run-4 sampling kernels (NOT yet verified on a GPU; opt-in with
// QWEN_SAMPLER=block or auto, see cuda/README.md): the one-block draw with radix-search cuts
// (sample_draw_radix_f32), greedy decoding in one multi-block pass (sample_greedy_f32) and the
// multi-block top-p path (sample_prep/exp/cut/walk_f32). sampling.cu holds run 4's verified
// sample_mark_f32 / sample_process_f32 / sample_draw_f32 (bisection cuts), the default, and the mark
// kernel this path shares. Helpers here are smf_* (one translation unit with sampling.cu).
//
// What (both files): next-token choice on the GPU with Hugging Face semantics; only the id goes back.
//
// What:    the pipeline of `sampler::Sampler` (src/sampler.rs, HF order) on the f32 logits of the last
//          position:
//          0. ids >= vocab_len (embedding padding rows) → -inf; NaN → -inf;
//          1. repetition penalty over every DISTINCT context id (< 0 → × p, else ÷ p);
//          2. greedy: argmax, lowest id on ties (all -inf → 0);
//          3. temperature: x / t (IEEE division, as the CPU);
//          4. top-k: keep x >= the k-th largest (ties with it kept);
//          5. top-p: with e_i = expf(x_i - max) over the top-k survivors (0 for dropped ids) and
//             Z = Σ e, drop id i iff (Σ_{j: e_j <= e_i} e_j) / Z <= 1 - top_p (f32 compare, as the
//             CPU's `cum as f32 > threshold`). Ties in e are kept or dropped together (HF splits a
//             tie straddling the cut by id; that split is unspecified; distinct logits whose e rounds
//             equal count as a tie too). The largest is always kept;
//          6. p = e / Zk over the kept ids (Zk = Σ kept e, rounded to f32 like the CPU's sum), then
//             the first id in INCREASING id order with u < Σ_{j <= id} p_j (f64 accumulation, as the
//             CPU); none (rounding) → the last id with p > 0; nothing kept → 0.
//          Non-finite: a +inf logit (after the temperature) gives every +inf id p = 1 / n_inf and the
//          rest 0 (also with top-k / top-p: all +inf tie with the max and are kept together);
//          every logit -inf → p all 0 and id 0.
// Layout:  logits [V] f32 (sample_process_f32 rewrites it in place; sample_draw_radix_f32 only reads it),
//          ctx_ids [n_ctx] u32, flags [V] u8 workspace (all zero between calls: mark sets, process
//          clears), probs [V] f32 (out: the final distribution; greedy → one-hot; also the draw
//          kernel's scratch: x / t, then e, then p), out_id [1] u32.
// Launch:  sample_mark_f32:    grid (min(⌈n_ctx/256⌉, 1024)), block 256 (grid-stride over n_ctx).
//          sample_process_f32: grid (⌈V/256⌉), block 256, one id per thread.
//          sample_greedy_f32:  greedy decoding: process + argmax + one-hot in one pass, grid
//          (⌈V/256⌉), block 256, the last block (atomic ticket) reduces the blocks' results.
//          sample_draw_radix_f32: grid (1), block (SMF_THREADS = 1024), ~36 KB static smem. Each step
//          is a pass of the block over [V] with block-wide reductions: x / t and the max; top-k: a
//          radix search on the 32-bit order key of x, 3 bits a pass (11 counting passes, per-thread
//          bins in shared memory); e and Z; top-p: a radix search on the bits of e (10 mass passes);
//          Zk; p with the mass of each segment (32·G consecutive ids); a block scan of the segment
//          masses (f64); warp 0 walks the one segment that holds u. Layout (smf_each): warp w owns the contiguous ids [w·32·L, (w+1)·32·L),
//          L = ⌈V/1024⌉, one coalesced 128-byte row per warp load; every pass reads back only what
//          the same thread wrote, the final walk reads after a __syncthreads.
//          Cost at V = 151936: each pass reads 600 KB from L2 on one SM (~8 us on an H200). The
//          bisections of the first version (30 passes for top-p, 32 for top-k) took 290 us per token
//          with Qwen's defaults (top-p 0.8) on the H200; the radix searches need 14 passes in all for
//          top-p (predicted ~120 us, not yet measured). Without a top-k cut (Qwen's defaults)
//          launch::sample runs the multi-block path at the end of this file instead (7 launches of
//          ⌈V/1024⌉ blocks, predicted ~20-30 us; QWEN_SAMPLER=block keeps this kernel).
//          Numerics: per-thread f32 sums, combined across threads in f64 in a fixed order: the result
//          is deterministic run to run (no atomics).
// Oracle:  sampler::Sampler::probabilities (the distribution) and the walk of Sampler::sample with the
//          same u (Sampler::next_uniform); launcher launch::sample (src/backend/cuda/launch/sampling.rs).
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

// Steps 0-2 for greedy decoding in one multi-block pass (instead of sample_process_f32 +
// sample_draw_f32's one-block argmax): each thread processes its logit in place exactly as
// sample_process_f32 (and clears its flag), zeroes probs[v], and the block takes the argmax of the
// packed key (order key of x << 32 | ~v: the largest x, then the lowest id; all -inf gives id 0, as
// the draw kernel); block results go to part[block] (u64), and the last block to take a ticket from
// `counter` (zero between launches; it resets it) reduces them, writes out_id and probs[id] = 1.
// Grid (⌈V/256⌉), block 256. part [grid] u64, counter [1] u32 (sample_workspace_bytes's tail).
extern "C" __global__ void __launch_bounds__(256)
    sample_greedy_f32(float* logits, uint32_t V, uint32_t vocab_len, uint8_t* flags, float penalty, float* probs,
                      uint32_t* out_id, unsigned long long* part, uint32_t* counter) {
    pdl_begin();
    __shared__ unsigned long long red[256 / 32];
    const uint32_t tid = threadIdx.x;
    const uint32_t v = blockIdx.x * blockDim.x + tid;
    unsigned long long best = 0ull;  // below every real key (a key of -inf is 0x007FFFFF...)
    if (v < V) {
        const float x = smf_process(logits, v, vocab_len, flags, penalty);
        probs[v] = 0.0f;
        best = ((unsigned long long)smf_key(x) << 32) | (unsigned long long)(~v);
    }
    best = smf_block_reduce<256 / 32>(best, SmfMaxU64(), red);
    if (tid == 0) part[blockIdx.x] = best;
    // This block's logits / probs / flags stores and its result, then the ticket (common.cuh).
    if (!last_block_arrives(counter, gridDim.x)) return;  // block-uniform
    best = 0ull;
    for (uint32_t i = tid; i < gridDim.x; i += blockDim.x) best = SmfMaxU64()(best, __ldcg(part + i));
    best = smf_block_reduce<256 / 32>(best, SmfMaxU64(), red);
    if (tid == 0) {
        const uint32_t id = ~(uint32_t)(best & 0xFFFFFFFFull);  // < V: every block had a v < V
        *out_id = id;
        probs[id] = 1.0f;
    }
}

// Steps 2-6 in one block of SMF_THREADS threads (see the header). `u` in [0, 1) is the host's draw
// (f64, compared in f64 as the CPU does; ignored when greedy).
extern "C" __global__ void __launch_bounds__(SMF_THREADS)
    sample_draw_radix_f32(const float* logits, uint32_t V, uint32_t greedy, float temperature, uint32_t top_k,
                    float top_p, double u, float* probs, uint32_t* out_id) {
    pdl_begin();
    __shared__ double red_d[SMF_WARPS];
    __shared__ float red_f[SMF_WARPS];
    __shared__ uint32_t red_u[SMF_WARPS];
    __shared__ double walk_base;
    // Per-thread bins of the top-k / top-p search passes: bin b of thread tid at [b · SMF_THREADS +
    // tid] (consecutive threads, consecutive banks), f32 bits (top-p masses) or u32 (top-k counts);
    // each thread touches only its own bins. 32 KB.
    __shared__ uint32_t bins[SMF_BINS * SMF_THREADS];
    __shared__ double red_bd[SMF_WARPS * SMF_BINS];
    __shared__ uint32_t red_bu[SMF_WARPS * SMF_BINS];
    if (blockDim.x != SMF_THREADS || blockIdx.x != 0) return;  // the launcher never does this
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t L = (V + SMF_THREADS - 1u) / SMF_THREADS;  // rows of 32 ids per warp

    // 2. Greedy: argmax of the processed logits, lowest id on ties; a one-hot distribution.
    if (greedy != 0 || !(temperature >= SMF_MIN_TEMPERATURE)) {
        float bv = -INFINITY;
        uint32_t bi = SMF_NONE;  // stays NONE while this thread saw only -inf
        smf_each(logits, V, L, [&](uint32_t v, float x) {
            if (x > bv) {  // increasing v: the first of equal values wins
                bv = x;
                bi = v;
            }
        });
        const float m = smf_block_reduce(bv, SmfMaxF(), red_f);
        const uint32_t best = smf_block_reduce(bv == m ? bi : SMF_NONE, SmfMinU(), red_u);
        const uint32_t id = best < V ? best : 0u;  // every logit -inf (or NaN): id 0, as the CPU
        for (uint32_t v = tid; v < V; v += SMF_THREADS) probs[v] = v == id ? 1.0f : 0.0f;
        if (tid == 0) *out_id = id;
        return;
    }

    // 3. x = logit / t into the scratch (probs), its max.
    const bool scale = temperature != 1.0f;
    float mx = -INFINITY;
    smf_each(logits, V, L, [&](uint32_t v, float l) {
        const float x = scale ? l / temperature : l;
        probs[v] = x;
        mx = fmaxf(mx, x);
    });
    const float m = smf_block_reduce(mx, SmfMaxF(), red_f);

    // Mode of the final pass: 0 every logit -inf (p = 0), 1 some +inf (p = 1/n_inf on them), 2 finite max.
    uint32_t mode;
    float inv_n = 0.0f;  // mode 1
    uint32_t pcut = 0;   // mode 2: kept iff bits(e) >= pcut
    float zk = 1.0f;     // mode 2: Σ kept e (f32)
    if (m == -INFINITY) {
        mode = 0;
    } else if (m == INFINITY) {
        mode = 1;
        uint32_t n = 0;
        smf_each(probs, V, L, [&](uint32_t, float x) { n += x == INFINITY ? 1u : 0u; });
        n = smf_block_reduce(n, SmfSumU(), red_u);  // >= 1
        inv_n = 1.0f / (float)n;
    } else {
        mode = 2;
        // 4. Top-k: kcut = the largest key with count(key >= kcut) >= k, i.e. the k-th largest key.
        // Radix search from the top bit: the answer lies in [lo, lo + 2^r); a pass counts, per thread,
        // the keys at or above the range's end and the keys in each of its 8 bins of width 2^s
        // (s = r - 3), so C_b = count(key >= lo + b·2^s) for every b at once; lo moves to the largest
        // b with C_b >= k (C_0 >= k holds: count(key >= lo) >= k). 11 passes (32 = 10·3 + 2) instead
        // of a bisection's 32; the counts are exact, so kcut is the bisection's.
        uint32_t kcut = 0;  // 0: keep all
        if (top_k != 0 && top_k < V) {
            uint64_t lo = 0;
            uint32_t r = 32;
            for (;;) {  // uniform: lo and r come from block-reduced values
                const uint32_t nbits = min(r, SMF_RADIX_BITS), sh = r - nbits;
                const uint64_t end = lo + ((uint64_t)1 << r);
#pragma unroll
                for (uint32_t b = 0; b < SMF_BINS; ++b) bins[b * SMF_THREADS + tid] = 0u;
                uint32_t above = 0;
                smf_each(probs, V, L, [&](uint32_t, float x) {
                    const uint64_t k = smf_key(x);
                    if (k >= end) ++above;
                    else if (k >= lo) ++bins[(uint32_t)((k - lo) >> sh) * SMF_THREADS + tid];
                });
                uint32_t c[SMF_BINS];  // C_b of this thread's ids (bins past 2^nbits stay empty)
                uint32_t run = above;
#pragma unroll
                for (int b = SMF_BINS - 1; b >= 0; --b) {
                    run += bins[b * SMF_THREADS + tid];
                    c[b] = run;
                }
                smf_block_reduce_bins(c, SmfSumU(), red_bu);
                uint32_t hit = 0;
#pragma unroll
                for (uint32_t b = 1; b < SMF_BINS; ++b)
                    if (b < (1u << nbits) && c[b] >= top_k) hit = b;  // C_b falls with b
                lo += (uint64_t)hit << sh;
                if (sh == 0) break;
                r = sh;
            }
            kcut = (uint32_t)lo;
        }
        // e = expf(x - m) for the top-k survivors (0 otherwise) into the scratch, Z = Σ e.
        // e(max) = expf(0) = 1 exactly; every e is in [0, 1] (non-negative: bits order = value order).
        float zs = 0.0f;
        smf_each(probs, V, L, [&](uint32_t v, float x) {
            const float e = smf_key(x) >= kcut ? expf(x - m) : 0.0f;
            probs[v] = e;
            zs += e;
        });
        const double Z = smf_block_reduce((double)zs, SmfSumD(), red_d);  // >= 1 (the max)
        // 5. Top-p: pcut = the smallest bit pattern t with (Σ_{bits(e_j) <= t} e_j) / Z > thr, kept iff
        // bits(e) >= pcut. If even t = bits(1.0) fails (rounding with top_p tiny) pcut = bits(1.0): the
        // max (and its ties) survive, as HF always keeps the largest.
        // Radix search from the top: the cut lies in [lo, lo + 2^r) (r = 30 at first: every e <= 1.0
        // has bits < 2^30); a pass sums, per thread in f32, the e below lo and the e in each of the
        // range's 8 bins of width 2^s (s = r - 3), so S at every bin's upper end comes out of one
        // pass (per-thread running sums, combined in f64 in a fixed order: deterministic); lo moves to
        // the first bin whose upper end passes. 10 passes instead of a bisection's 30. S is summed in
        // a different order in each pass, so a bin found in one pass may see no passing sub-bin in the
        // next (a difference of ~1e-7 at the threshold): the cut is then the range's top, which
        // passed before. pcut is clamped to bits(1.0) so the max is always kept.
        if (top_p < 1.0f) {
            const float thr = (float)(1.0 - (double)top_p);  // as the CPU: (1 - top_p as f64) as f32
            uint32_t lo = 0, r = 30;
            for (bool first = true;; first = false) {  // uniform: lo and r come from block-reduced values
                const uint32_t nbits = min(r, SMF_RADIX_BITS), sh = r - nbits;
                const uint32_t span = 1u << r;  // r <= 30
#pragma unroll
                for (uint32_t b = 0; b < SMF_BINS; ++b) bins[b * SMF_THREADS + tid] = 0u;  // +0.0f
                float below = 0.0f;
                smf_each(probs, V, L, [&](uint32_t, float e) {
                    const uint32_t bits = __float_as_uint(e);
                    if (bits < lo) {
                        below += e;
                    } else if (bits - lo < span) {
                        uint32_t* h = &bins[((bits - lo) >> sh) * SMF_THREADS + tid];
                        *h = __float_as_uint(__uint_as_float(*h) + e);
                    }
                });
                double cum[SMF_BINS];  // this thread's S at each bin's upper end
                float run = below;
#pragma unroll
                for (uint32_t b = 0; b < SMF_BINS; ++b) {
                    run += __uint_as_float(bins[b * SMF_THREADS + tid]);
                    cum[b] = (double)run;
                }
                smf_block_reduce_bins(cum, SmfSumD(), red_bd);
                const uint32_t nb = 1u << nbits;
                uint32_t hit = nb;
#pragma unroll
                for (uint32_t b = 0; b < SMF_BINS; ++b)
                    if (b < nb && hit == nb && (float)(cum[b] / Z) > thr) hit = b;
                if (hit == nb) {  // no bin passes: bits(1.0) on the first pass, else the range's top
                    lo = first ? SMF_ONE_BITS : lo + (span - 1u);
                    break;
                }
                lo += hit << sh;
                if (sh == 0) break;
                r = sh;
            }
            pcut = min(lo, SMF_ONE_BITS);
            float ks = 0.0f;
            smf_each(probs, V, L, [&](uint32_t, float e) { ks += __float_as_uint(e) >= pcut ? e : 0.0f; });
            zk = (float)smf_block_reduce((double)ks, SmfSumD(), red_d);
        } else {
            zk = (float)Z;
        }
    }

    // 6. p into probs (same layout, in place), and the mass of each SEGMENT: G consecutive rows of a
    // warp (32·G consecutive ids), G = max(8, ⌈L/32⌉) so a warp has at most 32 segments; lane g keeps
    // the sum of its warp's segment g. Thread order (warp, lane) is then segment order, i.e. id order.
    const uint32_t G = max(8u, (L + 31u) / 32u);
    const uint32_t wbase = warp * L * 32u;
    float seg = 0.0f;  // this lane's segment mass (0 if the warp has fewer segments)
    for (uint32_t r0 = 0; r0 < L; r0 += G) {  // uniform across the block
        const uint32_t r1 = min(r0 + G, L);
        float part = 0.0f;
        for (uint32_t r = r0; r < r1; r += 8u) {
            float x[8];
#pragma unroll
            for (uint32_t j = 0; j < 8; ++j) {
                const uint32_t v = wbase + (r + j) * 32u + lane;
                x[j] = (r + j < r1 && v < V) ? probs[v] : 0.0f;
            }
#pragma unroll
            for (uint32_t j = 0; j < 8; ++j) {
                const uint32_t v = wbase + (r + j) * 32u + lane;
                if (r + j < r1 && v < V) {
                    float p;
                    if (mode == 2) p = __float_as_uint(x[j]) >= pcut ? x[j] / zk : 0.0f;
                    else if (mode == 1) p = x[j] == INFINITY ? inv_n : 0.0f;
                    else p = 0.0f;
                    probs[v] = p;
                    part += p;
                }
            }
        }
        const float total = smf_warp_sum(part);  // all lanes reach it: the loop bounds are uniform
        if (lane == r0 / G) seg = total;
    }

    // Exclusive prefix E of the segment masses in id order (f64): warp scan, then the warp totals.
    double incl = (double)seg;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(SMF_FULL, incl, o);
        if (lane >= (uint32_t)o) incl += y;
    }
    double excl = __shfl_up_sync(SMF_FULL, incl, 1);
    if (lane == 0) excl = 0.0;
    __syncthreads();  // red_d free
    if (lane == 31) red_d[warp] = incl;
    __syncthreads();
    double base = 0.0;
    for (uint32_t w = 0; w < warp; ++w) base += red_d[w];
    const double E = base + excl;

    // The segment to walk: the first with u < E + mass; if none (u past the rounded total), the last
    // segment with mass, forced to its last id with p > 0; no mass at all → id 0.
    const bool hit = seg > 0.0f && u < E + (double)seg;
    const uint32_t t_hit = smf_block_reduce(hit ? tid : SMF_NONE, SmfMinU(), red_u);
    const uint32_t t_last1 = smf_block_reduce(seg > 0.0f ? tid + 1u : 0u, SmfMaxU(), red_u);  // 0: none
    if (t_hit == SMF_NONE && t_last1 == 0) {
        if (tid == 0) *out_id = 0;
        return;
    }
    const bool forced = t_hit == SMF_NONE;
    const uint32_t walker = forced ? t_last1 - 1u : t_hit;
    if (tid == walker) walk_base = E;
    __syncthreads();  // walk_base, and every p stored above, visible to warp 0
    if (warp != 0) return;
    // Warp 0 walks the walker's segment [s0, s1) (it has mass, so a forced walk finds an id).
    const uint32_t sw = walker >> 5, sg = walker & 31;
    const uint32_t s0 = sw * L * 32u + sg * G * 32u;
    const uint32_t s1 = min(sw * L * 32u + min((sg + 1u) * G, L) * 32u, V);
    const uint32_t id = smf_walk(probs, s0, s1, walk_base, u, forced);
    if (lane == 0) *out_id = id;
}

// ---- Multi-block top-p (top_k = 0: Qwen's defaults), instead of the one-block sample_draw_f32.
// Steps 0-6 of the header in four kernels over a grid of ⌈V/1024⌉ blocks of 256 threads (thread t of
// block b takes ids b·1024 + t + 256 j, j < 4), each pass over [V] spread over the whole GPU:
//   sample_prep_f32   steps 0-1 in place (smf_process, as sample_process_f32), x = l / t into probs,
//                     the max m (block maxima, the last block by ticket) and a fresh SmfState;
//   sample_exp_f32    e = expf(x - m) into probs and Z = Σ e (mode 2), or the count of +inf (mode 1);
//   sample_cut_f32    one pass of the top-p radix search, 8 bits at a time (launched 4 times: 30 =
//                     8 + 8 + 8 + 6 bits; a pass after the search ended does nothing);
//   sample_walk_f32   p into probs, the mass of each block, and the last block (ticket) finds the
//                     block holding u (f64 prefix in block order) and walks it in id order.
// Masses in the search are fixed-point integers, e · 2^shift rounded (shift = 63 - bits(V), so Σ
// over V values of at most 1 fits a u64; one value's rounding is below 2^-(shift+1), ~1.4e-14 at
// V = 151,936): integer sums do not depend on the order of the atomics, so every pass sees exactly
// the same Z and the same sums at the same bit patterns — deterministic, and a bin found in one pass
// always holds a passing sub-bin in the next. The cut and the distribution are those of sample_draw_f32
// (same definitions; the sums differ from its f64-of-f32 sums by ~1e-9 relative).
// Workspace: SmfState (sample_prep_f32 initialises it every call), the block results (part, reused
// from sample_greedy_f32's) and the ticket counter (zero between launches, reset by each last block).

namespace {

constexpr uint32_t SMF_MB_THREADS = 256;              // block of the multi-block kernels
constexpr uint32_t SMF_MB_WARPS = SMF_MB_THREADS / 32;
constexpr uint32_t SMF_MB_IDS = 4 * SMF_MB_THREADS;   // ids per block
constexpr uint32_t SMF_CUT_BITS = 8;                  // radix digit of sample_cut_f32
constexpr uint32_t SMF_CUT_BINS = 1u << SMF_CUT_BITS;  // 256 = SMF_MB_THREADS: thread t owns bin t
static_assert(SMF_CUT_BINS == SMF_MB_THREADS, "one bin per thread in the block sums");

struct SmfState {
    float m;                       // max of x = l / t
    uint32_t mode;                 // 0 every x -inf, 1 some +inf, 2 finite max
    uint32_t n_inf;                // mode 1: ids with x = +inf
    uint32_t lo, r, done;          // the search: the cut lies in [lo, lo + 2^r); done when found
    uint32_t pad0, pad1;
    unsigned long long z;          // Σ e (fixed point)
    unsigned long long below;      // this pass: Σ e with bits(e) < lo (zeroed by the pass's last block)
    unsigned long long cut_below;  // after the search: Σ e with bits(e) < pcut
    unsigned long long hist[SMF_CUT_BINS];  // this pass's bins (zeroed by the pass's last block)
};
static_assert(sizeof(SmfState) == 2104, "launch/sampling.rs reserves STATE_BYTES = 2112 for it");

// Fixed-point scale exponent for V values in [0, 1]: 63 - bits(V) (V <= 2^31, so >= 31).
__device__ __forceinline__ uint32_t smf_shift(uint32_t V) { return 63u - (32u - (uint32_t)__clz(V)); }
__device__ __forceinline__ unsigned long long smf_fixed(float e, double scale) {
    return __double2ull_rn((double)e * scale);
}

}  // namespace

// Steps 0-1 and the temperature; m and a fresh SmfState by the last block. logits [V] f32 (in
// place), flags [V] u8 (cleared), probs [V] f32 (out: x), part [grid] f32, st, counter [1] u32.
extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS)
    sample_prep_f32(float* logits, uint32_t V, uint32_t vocab_len, uint8_t* flags, float penalty, float temperature,
                    float* probs, float* part, SmfState* st, uint32_t* counter) {
    pdl_begin();
    __shared__ float red[SMF_MB_WARPS];
    const uint32_t tid = threadIdx.x;
    const bool scale = temperature != 1.0f;
    float mx = -INFINITY;
#pragma unroll
    for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t v = blockIdx.x * SMF_MB_IDS + tid + j * SMF_MB_THREADS;
        if (v < V) {
            const float l = smf_process(logits, v, vocab_len, flags, penalty);
            const float x = scale ? l / temperature : l;
            probs[v] = x;
            mx = fmaxf(mx, x);
        }
    }
    mx = smf_block_reduce<SMF_MB_WARPS>(mx, SmfMaxF(), red);
    if (tid == 0) part[blockIdx.x] = mx;
    if (!last_block_arrives(counter, gridDim.x)) return;  // block-uniform
    float m = -INFINITY;
    for (uint32_t i = tid; i < gridDim.x; i += SMF_MB_THREADS) m = fmaxf(m, __ldcg(part + i));
    m = smf_block_reduce<SMF_MB_WARPS>(m, SmfMaxF(), red);
    st->hist[tid] = 0ull;
    if (tid == 0) {
        st->m = m;
        st->mode = m == -INFINITY ? 0u : m == INFINITY ? 1u : 2u;
        st->n_inf = 0;
        st->lo = 0;
        st->r = 30;  // every e <= 1.0 has bits < 2^30
        st->done = 0;
        st->z = 0ull;
        st->below = 0ull;
        st->cut_below = 0ull;
    }
}

// e = expf(x - m) in place and Z (mode 2), or the number of +inf (mode 1). probs [V] f32.
extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS) sample_exp_f32(float* probs, uint32_t V, SmfState* st) {
    pdl_begin();
    __shared__ unsigned long long red[SMF_MB_WARPS];
    const uint32_t mode = st->mode;
    if (mode == 0) return;  // grid-uniform
    const float m = st->m;
    const double scale = ldexp(1.0, (int)smf_shift(V));
    unsigned long long sum = 0ull;  // mode 2: Σ e (fixed point); mode 1: the +inf count
#pragma unroll
    for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t v = blockIdx.x * SMF_MB_IDS + threadIdx.x + j * SMF_MB_THREADS;
        if (v < V) {
            const float x = probs[v];
            if (mode == 2) {
                const float e = expf(x - m);  // in [0, 1]; 1 exactly at the max
                probs[v] = e;
                sum += smf_fixed(e, scale);
            } else {
                sum += x == INFINITY ? 1ull : 0ull;
            }
        }
    }
    sum = smf_block_reduce<SMF_MB_WARPS>(sum, SmfSumU64(), red);
    if (threadIdx.x == 0 && sum != 0ull) {
        if (mode == 2) atomicAdd(&st->z, sum);
        else atomicAdd(&st->n_inf, (uint32_t)sum);
    }
}

// One pass of the top-p search (step 5 of the header; thr = (1 - top_p as f64) as f32): the masses of
// the 256 sub-ranges of [lo, lo + 2^r) and of everything below lo; the last block takes the first
// bin whose upper end passes (S / Z > thr) and narrows the range to it, or ends the search. probs [V]
// f32 (e).
extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS)
    sample_cut_f32(const float* probs, uint32_t V, float thr, SmfState* st, uint32_t* counter) {
    pdl_begin();
    __shared__ unsigned long long wbins[SMF_MB_WARPS * SMF_CUT_BINS];  // per-warp bins, 16 KB
    __shared__ unsigned long long red[SMF_MB_WARPS];
    if (st->mode != 2 || st->done != 0) return;  // grid-uniform: written only by the last block of a pass
    const uint32_t tid = threadIdx.x, warp = tid >> 5;
    const uint32_t lo = st->lo, r = st->r;  // read by every block before the last block of this pass moves them
    const uint32_t nbits = min(r, SMF_CUT_BITS), sh = r - nbits, span = 1u << r;
    const double scale = ldexp(1.0, (int)smf_shift(V));
#pragma unroll
    for (uint32_t w = 0; w < SMF_MB_WARPS; ++w) wbins[w * SMF_CUT_BINS + tid] = 0ull;
    __syncthreads();
    unsigned long long below = 0ull;
#pragma unroll
    for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t v = blockIdx.x * SMF_MB_IDS + tid + j * SMF_MB_THREADS;
        if (v < V) {
            const float e = probs[v];
            const uint32_t bits = __float_as_uint(e);
            if (bits < lo) below += smf_fixed(e, scale);
            else if (bits - lo < span) atomicAdd(&wbins[warp * SMF_CUT_BINS + ((bits - lo) >> sh)], smf_fixed(e, scale));
        }
    }
    __syncthreads();
    unsigned long long h = 0ull;  // bin tid over the block's warps
#pragma unroll
    for (uint32_t w = 0; w < SMF_MB_WARPS; ++w) h += wbins[w * SMF_CUT_BINS + tid];
    if (h != 0ull) atomicAdd(&st->hist[tid], h);
    below = smf_block_reduce<SMF_MB_WARPS>(below, SmfSumU64(), red);
    if (tid == 0 && below != 0ull) atomicAdd(&st->below, below);
    if (!last_block_arrives(counter, gridDim.x)) return;  // block-uniform
    if (tid == 0) {
        const unsigned long long Z = __ldcg(&st->z);  // >= the max's e = 1 in fixed point
        const uint32_t nb = 1u << nbits;
        const bool first = lo == 0 && r == 30;
        unsigned long long cum = __ldcg(&st->below);  // S below the current bin
        unsigned long long at_one = 0ull;             // first pass: S below bits(1.0) (a bin edge)
        uint32_t hit = nb;
        for (uint32_t b = 0; b < nb; ++b) {
            if (first && b == (SMF_ONE_BITS >> sh)) at_one = cum;
            const unsigned long long hb = __ldcg(&st->hist[b]);
            if ((float)((double)(cum + hb) / (double)Z) > thr) {
                hit = b;
                break;
            }
            cum += hb;
        }
        if (hit == nb && first) {
            // Nothing passes even at bits(1.0) (top_p so small that thr rounds to 1): keep the max
            // and its ties, as sample_draw_f32.
            st->lo = SMF_ONE_BITS;
            st->cut_below = at_one;
            st->done = 1;
        } else {
            if (hit == nb) {  // not reachable with exact sums (the range's top passed before): its top bin
                hit = nb - 1u;
                cum -= __ldcg(&st->hist[hit]);
            }
            st->lo = lo + (hit << sh);
            if (sh == 0) {
                st->cut_below = cum;  // S at bits < the cut
                st->done = 1;
            } else {
                st->r = sh;
            }
        }
    }
    __syncthreads();  // thread 0 has read the bins
    st->hist[tid] = 0ull;
    if (tid == 0) st->below = 0ull;
}

// Step 6: p into probs (mode 2: e / Zk for bits(e) >= pcut = min(lo, bits(1.0)), Zk = Z - S below the
// cut, rounded to f32; mode 1: 1 / n_inf on +inf; mode 0: 0), each block's mass into part (f64), and
// the last block: the first block (in id order) with u < E + mass, E its exclusive f64 prefix (none:
// the last block with mass, forced to its last id with p > 0; no mass: id 0), walked 32 ids at a
// time by warp 0 as sample_draw_f32 walks its segment. probs [V] f32, part [grid] f64, out_id [1] u32.
extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS)
    sample_walk_f32(float* probs, uint32_t V, double u, SmfState* st, uint32_t* out_id, double* part,
                    uint32_t* counter) {
    pdl_begin();
    __shared__ double red[SMF_MB_WARPS];
    const uint32_t tid = threadIdx.x, lane = tid & 31;
    const uint32_t mode = st->mode;
    const uint32_t pcut = min(st->lo, SMF_ONE_BITS);
    const float zk = (float)((double)(st->z - st->cut_below) / ldexp(1.0, (int)smf_shift(V)));
    const float inv_n = mode == 1 ? 1.0f / (float)st->n_inf : 0.0f;
    float mass = 0.0f;
#pragma unroll
    for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t v = blockIdx.x * SMF_MB_IDS + tid + j * SMF_MB_THREADS;
        if (v < V) {
            const float x = probs[v];
            float p;
            if (mode == 2) p = __float_as_uint(x) >= pcut ? x / zk : 0.0f;
            else if (mode == 1) p = x == INFINITY ? inv_n : 0.0f;
            else p = 0.0f;
            probs[v] = p;
            mass += p;
        }
    }
    const double bm = smf_block_reduce<SMF_MB_WARPS>((double)mass, SmfSumD(), red);
    if (tid == 0) part[blockIdx.x] = bm;
    if (!last_block_arrives(counter, gridDim.x)) return;  // block-uniform
    if (tid >= 32) return;  // warp 0 finishes (no barrier below)
    // The block to walk: inclusive f64 scan of the block masses, 32 at a time.
    double acc = 0.0, walk_base = 0.0, last_base = 0.0;
    uint32_t walker = SMF_NONE, last = SMF_NONE;
    for (uint32_t b0 = 0; b0 < gridDim.x && walker == SMF_NONE; b0 += 32u) {  // uniform across the warp
        const uint32_t b = b0 + lane;
        const double bmass = b < gridDim.x ? __ldcg(part + b) : 0.0;
        double sc = bmass;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double y = __shfl_up_sync(SMF_FULL, sc, o);
            if (lane >= (uint32_t)o) sc += y;
        }
        const unsigned pos = __ballot_sync(SMF_FULL, bmass > 0.0);
        const unsigned hits = __ballot_sync(SMF_FULL, bmass > 0.0 && u < acc + sc);
        if (hits != 0) {
            const int l = __ffs(hits) - 1;
            walker = b0 + (uint32_t)l;
            walk_base = acc + __shfl_sync(SMF_FULL, sc - bmass, l);
        } else if (pos != 0) {
            const int l = 31 - __clz(pos);
            last = b0 + (uint32_t)l;
            last_base = acc + __shfl_sync(SMF_FULL, sc - bmass, l);
        }
        acc += __shfl_sync(SMF_FULL, sc, 31);
    }
    const bool forced = walker == SMF_NONE;
    if (forced) {
        if (last == SMF_NONE) {  // no mass at all
            if (lane == 0) *out_id = 0;
            return;
        }
        walker = last;
        walk_base = last_base;
    }
    // Walk the walker block's ids (it has mass, so a forced walk finds an id).
    const uint32_t s0 = walker * SMF_MB_IDS;
    const uint32_t id = smf_walk(probs, s0, min(s0 + SMF_MB_IDS, V), walk_base, u, forced);
    if (lane == 0) *out_id = id;
}
