// sampling.cu — next-token choice on the GPU with Hugging Face semantics; only the id goes back.
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
// Layout:  logits [V] f32 (sample_process_f32 rewrites it in place; sample_draw_f32 only reads it),
//          ctx_ids [n_ctx] u32, flags [V] u8 workspace (all zero between calls: mark sets, process
//          clears), probs [V] f32 (out: the final distribution; greedy → one-hot; also the draw
//          kernel's scratch: x / t, then e, then p), out_id [1] u32.
// Launch:  sample_mark_f32:    grid (min(⌈n_ctx/256⌉, 1024)), block 256 (grid-stride over n_ctx).
//          sample_process_f32: grid (⌈V/256⌉), block 256, one id per thread.
//          sample_draw_f32:    grid (1), block (SMP_THREADS = 1024), 520 B static smem. Each step
//          is a pass of the block over [V] with block-wide reductions: x / t and the max; top-k: a
//          bisection on the 32-bit order key of x (32 counting passes); e and Z; top-p: a bisection
//          on the bits of e (<= 30 mass passes); Zk; p with the mass of each segment (32·G
//          consecutive ids); a block scan of the segment masses (f64); warp 0 walks the one segment
//          that holds u. Layout (smp_each): warp w owns the contiguous ids [w·32·L, (w+1)·32·L),
//          L = ⌈V/1024⌉, one coalesced 128-byte row per warp load; every pass reads back only what
//          the same thread wrote, the final walk reads after a __syncthreads.
//          Cost at V = 151936: ~35 passes over 600 KB from L2 by one SM (~150-250 us on an H100 with
//          top-p; +32 passes with top-k). Later optimisation: radix select / candidate compaction
//          into shared memory, or a multi-block first pass.
//          Numerics: per-thread f32 sums, combined across threads in f64 in a fixed order: the result
//          is deterministic run to run (no atomics).
// Oracle:  sampler::Sampler::probabilities (the distribution) and the walk of Sampler::sample with the
//          same u (Sampler::next_uniform); launcher launch::sample (src/backend/cuda/launch/sampling.rs).
#include "common.cuh"

namespace {

constexpr uint32_t SMP_THREADS = 1024;             // sample_draw_f32 block size (one block)
constexpr uint32_t SMP_WARPS = SMP_THREADS / 32;  // 32
constexpr unsigned SMP_FULL = 0xffffffffu;
constexpr uint32_t SMP_NONE = 0xffffffffu;
constexpr float SMP_MIN_TEMPERATURE = 1e-5f;  // below: greedy (sampler.rs MIN_TEMPERATURE)
constexpr uint32_t SMP_ONE_BITS = 0x3f800000u;  // bits of 1.0f, the largest e

// Order key of a logit: ascending u32 order = ascending float order, -0.0 == +0.0 (as torch compares).
// x + 0.0f turns -0.0 into +0.0 (kept by the compiler: no fast-math).
__device__ __forceinline__ uint32_t smp_key(float x) {
    const uint32_t b = __float_as_uint(x + 0.0f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct SmpSumD {
    __device__ double operator()(double a, double b) const { return a + b; }
};
struct SmpSumU {
    __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a + b; }
};
struct SmpMaxF {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SmpMinU {
    __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a < b ? a : b; }
};
struct SmpMaxU {
    __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a > b ? a : b; }
};

// Reduce `v` over the SMP_THREADS threads of the block with the commutative `op`; every thread gets
// the same bits (xor butterfly inside a warp — commutative, so all lanes agree — then the 32 warp
// values combined in warp order by every thread). `red` [SMP_WARPS] shared; the leading
// __syncthreads lets the previous reduction's readers finish before it is overwritten. Must be
// called by every thread of the block (uniform control flow).
template <typename T, typename Op>
__device__ __forceinline__ T smp_block_reduce(T v, Op op, T* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(SMP_FULL, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = red[0];
#pragma unroll 8
    for (uint32_t w = 1; w < SMP_WARPS; ++w) r = op(r, red[w]);
    return r;
}

// The draw kernel's layout: warp w owns the CONTIGUOUS id range [w·32·L, (w+1)·32·L) ∩ [0, V),
// L = ⌈V/1024⌉ rows of 32 ids; lane l owns ids w·32·L + 32·i + l (row i). Every load / store of a warp
// instruction is one contiguous 128-byte row (coalesced), and each thread reads back only what it
// wrote itself (the walk at the end reads other warps' values after a __syncthreads).
// Calls f(v, a[v]) for the ids this thread owns, in increasing v, with up to 8 loads in flight
// (memory-level parallelism for the ~35 passes over L2). f may store to index v of an array aliasing
// `a`: every index of a batch is loaded before f runs on it, and only by its owner thread.
template <typename F>
__device__ __forceinline__ void smp_each(const float* a, uint32_t V, uint32_t L, F f) {
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

__device__ __forceinline__ float smp_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SMP_FULL, v, o);
    return v;
}

}  // namespace

// flags[id] = 1 for every context id < V (duplicates write the same byte: benign).
extern "C" __global__ void sample_mark_f32(const uint32_t* ctx_ids, uint32_t n_ctx, uint8_t* flags, uint32_t V) {
    pdl_begin();
    const uint32_t stride = gridDim.x * blockDim.x;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n_ctx; i += stride) {
        const uint32_t id = ctx_ids[i];
        if (id < V) flags[id] = 1;
    }
}

// Steps 0-1 in place: NaN and ids >= vocab_len → -inf, then the penalty where flags[v] != 0 (and the
// flag cleared, leaving the workspace zero for the next call).
extern "C" __global__ void sample_process_f32(float* logits, uint32_t V, uint32_t vocab_len, uint8_t* flags,
                                              float penalty) {
    pdl_begin();
    const uint32_t v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= V) return;
    float x = logits[v];
    if (isnan(x) || v >= vocab_len) x = -INFINITY;
    if (flags[v] != 0) {
        flags[v] = 0;
        x = x < 0.0f ? x * penalty : x / penalty;
    }
    logits[v] = x;
}

// Steps 2-6 in one block of SMP_THREADS threads (see the header). `u` in [0, 1) is the host's draw
// (f64, compared in f64 as the CPU does; ignored when greedy).
extern "C" __global__ void __launch_bounds__(SMP_THREADS)
    sample_draw_f32(const float* logits, uint32_t V, uint32_t greedy, float temperature, uint32_t top_k,
                    float top_p, double u, float* probs, uint32_t* out_id) {
    pdl_begin();
    __shared__ double red_d[SMP_WARPS];
    __shared__ float red_f[SMP_WARPS];
    __shared__ uint32_t red_u[SMP_WARPS];
    __shared__ double walk_base;
    if (blockDim.x != SMP_THREADS || blockIdx.x != 0) return;  // the launcher never does this
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t L = (V + SMP_THREADS - 1u) / SMP_THREADS;  // rows of 32 ids per warp

    // 2. Greedy: argmax of the processed logits, lowest id on ties; a one-hot distribution.
    if (greedy != 0 || !(temperature >= SMP_MIN_TEMPERATURE)) {
        float bv = -INFINITY;
        uint32_t bi = SMP_NONE;  // stays NONE while this thread saw only -inf
        smp_each(logits, V, L, [&](uint32_t v, float x) {
            if (x > bv) {  // increasing v: the first of equal values wins
                bv = x;
                bi = v;
            }
        });
        const float m = smp_block_reduce(bv, SmpMaxF(), red_f);
        const uint32_t best = smp_block_reduce(bv == m ? bi : SMP_NONE, SmpMinU(), red_u);
        const uint32_t id = best < V ? best : 0u;  // every logit -inf (or NaN): id 0, as the CPU
        for (uint32_t v = tid; v < V; v += SMP_THREADS) probs[v] = v == id ? 1.0f : 0.0f;
        if (tid == 0) *out_id = id;
        return;
    }

    // 3. x = logit / t into the scratch (probs), its max.
    const bool scale = temperature != 1.0f;
    float mx = -INFINITY;
    smp_each(logits, V, L, [&](uint32_t v, float l) {
        const float x = scale ? l / temperature : l;
        probs[v] = x;
        mx = fmaxf(mx, x);
    });
    const float m = smp_block_reduce(mx, SmpMaxF(), red_f);

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
        smp_each(probs, V, L, [&](uint32_t, float x) { n += x == INFINITY ? 1u : 0u; });
        n = smp_block_reduce(n, SmpSumU(), red_u);  // >= 1
        inv_n = 1.0f / (float)n;
    } else {
        mode = 2;
        // 4. Top-k: kcut = the largest key with count(key >= kcut) >= k, i.e. the k-th largest key.
        uint32_t kcut = 0;  // 0: keep all
        if (top_k != 0 && top_k < V) {
            uint32_t lo = 0, hi = 0xffffffffu;  // count(key >= lo) >= k holds (lo = 0: V >= k)
            while (lo < hi) {                   // uniform: lo / hi are block-reduced values; 32 rounds
                const uint32_t mid = (uint32_t)(((uint64_t)lo + (uint64_t)hi + 1u) >> 1);
                uint32_t c = 0;
                smp_each(probs, V, L, [&](uint32_t, float x) { c += smp_key(x) >= mid ? 1u : 0u; });
                c = smp_block_reduce(c, SmpSumU(), red_u);
                if (c >= top_k) lo = mid;
                else hi = mid - 1u;
            }
            kcut = lo;
        }
        // e = expf(x - m) for the top-k survivors (0 otherwise) into the scratch, Z = Σ e.
        // e(max) = expf(0) = 1 exactly; every e is in [0, 1] (non-negative: bits order = value order).
        float zs = 0.0f;
        smp_each(probs, V, L, [&](uint32_t v, float x) {
            const float e = smp_key(x) >= kcut ? expf(x - m) : 0.0f;
            probs[v] = e;
            zs += e;
        });
        const double Z = smp_block_reduce((double)zs, SmpSumD(), red_d);  // >= 1 (the max)
        // 5. Top-p: pcut = the smallest bit pattern t with (Σ_{bits(e_j) <= t} e_j) / Z > thr, kept iff
        // bits(e) >= pcut. If even t = bits(1.0) fails (rounding with top_p tiny) pcut = bits(1.0): the
        // max (and its ties) survive, as HF always keeps the largest.
        if (top_p < 1.0f) {
            const float thr = (float)(1.0 - (double)top_p);  // as the CPU: (1 - top_p as f64) as f32
            uint32_t lo = 0, hi = SMP_ONE_BITS;
            while (lo < hi) {  // uniform, <= 30 rounds
                const uint32_t mid = lo + ((hi - lo) >> 1);
                float s = 0.0f;
                smp_each(probs, V, L, [&](uint32_t, float e) { s += __float_as_uint(e) <= mid ? e : 0.0f; });
                const double S = smp_block_reduce((double)s, SmpSumD(), red_d);
                if ((float)(S / Z) > thr) hi = mid;
                else lo = mid + 1u;
            }
            pcut = lo;
            float ks = 0.0f;
            smp_each(probs, V, L, [&](uint32_t, float e) { ks += __float_as_uint(e) >= pcut ? e : 0.0f; });
            zk = (float)smp_block_reduce((double)ks, SmpSumD(), red_d);
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
        const float total = smp_warp_sum(part);  // all lanes reach it: the loop bounds are uniform
        if (lane == r0 / G) seg = total;
    }

    // Exclusive prefix E of the segment masses in id order (f64): warp scan, then the warp totals.
    double incl = (double)seg;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(SMP_FULL, incl, o);
        if (lane >= (uint32_t)o) incl += y;
    }
    double excl = __shfl_up_sync(SMP_FULL, incl, 1);
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
    const uint32_t t_hit = smp_block_reduce(hit ? tid : SMP_NONE, SmpMinU(), red_u);
    const uint32_t t_last1 = smp_block_reduce(seg > 0.0f ? tid + 1u : 0u, SmpMaxU(), red_u);  // 0: none
    if (t_hit == SMP_NONE && t_last1 == 0) {
        if (tid == 0) *out_id = 0;
        return;
    }
    const bool forced = t_hit == SMP_NONE;
    const uint32_t walker = forced ? t_last1 - 1u : t_hit;
    if (tid == walker) walk_base = E;
    __syncthreads();  // walk_base, and every p stored above, visible to warp 0
    if (warp != 0) return;
    // Warp 0 walks the walker's segment [s0, s1) 32 ids at a time: inclusive f64 scan of p, the first
    // lane with p > 0 and u < acc wins. The segment has mass, so `last` is set when nothing hits.
    const uint32_t sw = walker >> 5, sg = walker & 31;
    const uint32_t s0 = sw * L * 32u + sg * G * 32u;
    const uint32_t s1 = min(sw * L * 32u + min((sg + 1u) * G, L) * 32u, V);
    double acc = walk_base;
    uint32_t id = SMP_NONE, last = SMP_NONE;
    for (uint32_t v0 = s0; v0 < s1; v0 += 32u) {  // uniform across the warp
        const uint32_t v = v0 + lane;
        const float p = v < s1 ? probs[v] : 0.0f;
        double sc = (double)p;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double y = __shfl_up_sync(SMP_FULL, sc, o);
            if (lane >= (uint32_t)o) sc += y;
        }
        const unsigned pos = __ballot_sync(SMP_FULL, p > 0.0f);
        const unsigned hits = __ballot_sync(SMP_FULL, p > 0.0f && !forced && u < acc + sc);
        if (hits != 0) {
            id = v0 + (uint32_t)(__ffs(hits) - 1);
            break;
        }
        if (pos != 0) last = v0 + 31u - (uint32_t)__clz(pos);
        acc += __shfl_sync(SMP_FULL, sc, 31);
    }
    if (lane == 0) *out_id = id != SMP_NONE ? id : (last != SMP_NONE ? last : 0u);
}
