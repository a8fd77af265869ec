// sampling_topp.cu — the multi-block top-p path of the post-run-4 sampler (NOT yet verified on a GPU;
// opt-in with QWEN_SAMPLER=auto, see cuda/README.md): sample_prep_f32, sample_exp_f32, sample_cut_f32,
// sample_walk_f32. Pipeline semantics (steps 0-6): sampling_fast.cu's header; helpers (smf_*):
// sampling_fast.cuh. launch::sample runs it for a draw without a top-k cut (Qwen's defaults).
#include "params.h"
#include "sampling_fast.cuh"

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
__device__ __forceinline__ void smf_prep_body(float* logits, uint32_t V, uint32_t vocab_len, uint8_t* flags, float penalty, float temperature,
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
__device__ __forceinline__ void smf_exp_body(float* probs, uint32_t V, SmfState* st) {
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
__device__ __forceinline__ void smf_cut_body(const float* probs, uint32_t V, float thr, SmfState* st, uint32_t* counter) {
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
__device__ __forceinline__ void smf_walk_body(float* probs, uint32_t V, double u, SmfState* st, uint32_t* out_id, double* part,
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

// The entry points take SampleParams (params.h) by value.
extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS) sample_prep_f32(const SampleParams p) {
    smf_prep_body(p.logits, p.V, p.vocab_len, p.flags, p.penalty, p.temperature, p.probs, static_cast<float*>(p.part), static_cast<SmfState*>(p.state), p.counter);
}

extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS) sample_exp_f32(const SampleParams p) {
    smf_exp_body(p.probs, p.V, static_cast<SmfState*>(p.state));
}

extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS) sample_cut_f32(const SampleParams p) {
    smf_cut_body(p.probs, p.V, p.thr, static_cast<SmfState*>(p.state), p.counter);
}

extern "C" __global__ void __launch_bounds__(SMF_MB_THREADS) sample_walk_f32(const SampleParams p) {
    smf_walk_body(p.probs, p.V, p.u, static_cast<SmfState*>(p.state), p.out_id, static_cast<double*>(p.part), p.counter);
}
