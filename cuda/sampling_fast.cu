// sampling_fast.cu — the post-run-4 sampling kernels (NOT yet verified on a GPU; opt-in with
// QWEN_SAMPLER=block or auto, see cuda/README.md): the one-block draw with radix-search cuts
// (sample_draw_radix_f32) and greedy decoding in one multi-block pass (sample_greedy_f32);
// sampling_topp.cu holds the multi-block top-p path (sample_prep/exp/cut/walk_f32). sampling.cu holds
// run 4's verified sample_mark_f32 / sample_process_f32 / sample_draw_f32 (bisection cuts), the
// default, and the mark kernel these paths share. Helpers are smf_* (sampling_fast.cuh; one
// translation unit with sampling.cu).
//
// What (all three files): next-token choice on the GPU with Hugging Face semantics; only the id goes back.
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
//          launch::sample runs the multi-block path of sampling_topp.cu instead (7 launches of
//          ⌈V/1024⌉ blocks, predicted ~20-30 us; QWEN_SAMPLER=block keeps this kernel).
//          Numerics: per-thread f32 sums, combined across threads in f64 in a fixed order: the result
//          is deterministic run to run (no atomics).
// Oracle:  sampler::Sampler::probabilities (the distribution) and the walk of Sampler::sample with the
//          same u (Sampler::next_uniform); launcher launch::sample (src/backend/cuda/launch/sampling.rs).
#include "params.h"
#include "sampling_fast.cuh"

// Steps 0-2 for greedy decoding in one multi-block pass (instead of sample_process_f32 +
// sample_draw_f32's one-block argmax): each thread processes its logit in place exactly as
// sample_process_f32 (and clears its flag), zeroes probs[v], and the block takes the argmax of the
// packed key (order key of x << 32 | ~v: the largest x, then the lowest id; all -inf gives id 0, as
// the draw kernel); block results go to part[block] (u64), and the last block to take a ticket from
// `counter` (zero between launches; it resets it) reduces them, writes out_id and probs[id] = 1.
// Grid (⌈V/256⌉), block 256. part [grid] u64, counter [1] u32 (sample_workspace_bytes's tail).
__device__ __forceinline__ void smf_greedy_body(float* logits, uint32_t V, uint32_t vocab_len, uint8_t* flags, float penalty, float* probs,
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
__device__ __forceinline__ void smf_draw_radix_body(const float* logits, uint32_t V, uint32_t greedy, float temperature, uint32_t top_k,
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

// The entry points take SampleParams (params.h) by value.
extern "C" __global__ void __launch_bounds__(256) sample_greedy_f32(const SampleParams p) {
    smf_greedy_body(p.logits, p.V, p.vocab_len, p.flags, p.penalty, p.probs, p.out_id, static_cast<unsigned long long*>(p.part), p.counter);
}

extern "C" __global__ void __launch_bounds__(SMF_THREADS) sample_draw_radix_f32(const SampleParams p) {
    smf_draw_radix_body(p.logits, p.V, p.greedy, p.temperature, p.top_k, p.top_p, p.u, p.probs, p.out_id);
}
