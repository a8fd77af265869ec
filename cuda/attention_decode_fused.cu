// attention_decode_fused.cu — the split-K decode attention with the combine folded into its last
// block (post-run-4, NOT yet verified on a GPU; opt-in with QWEN_FUSE=1, see cuda/README.md).
// attention_decode.cu holds run 4's verified split kernel + attention_decode_combine, the default.
//
// What:    as attention_decode.cu: query t at pos0 + t attends keys 0..n_keys-1, n_keys =
//          min(*pos0 + t + 1, cap); block (split i, head h, query t) takes keys [i·split_len,
//          min((i+1)·split_len, n_keys)) and writes the UNNORMALISED partial (m, l, o) in fp32.
//          Then (counters != null, the only way the executor launches it) splits without keys exit
//          at once (nothing reads them), each other block writes its partial and takes a ticket from
//          counters[t·H + h] (last_block_arrives, common.cuh); the block drawing the last of the
//          `used` = ceil(n_keys / split_len) tickets resets the counter to 0 and merges the partials
//          (read through L2) into out with attention_decode_combine's arithmetic (adf_combine) on its
//          256 threads. One launch instead of two. With counters == null it behaves like run 4's
//          split kernel (empty splits write the neutral partial) and leaves the combine to
//          attention_decode.cu's attention_decode_combine.
//          The counters must be zero when a launch starts: the last block resets its counter, and
//          the executor also zeroes them at the head of every decode step (a memset node of the
//          captured graph), so a launch that died half-way cannot leave a stale ticket behind.
// Layout:  q [T, P] T, k_cache / v_cache [cap, P] T (P = H·D), part_o [T, H, n_splits, D] f32,
//          part_ml [T, H, n_splits, 2] f32 (m, l), out [T, P] T, pos0 [1] u32 (device scalar),
//          counters [T, H] u32.
// Launch:  grid (n_splits, H, T), block ADF_THREADS = 256, no dynamic smem; the split's inner loop is
//          attention_decode.cu's (helpers renamed adf_* for the one translation unit).
//          Requirements (checked by launch::attention_decode): 1 <= D <= 256, cap >= 1,
//          split_len >= 1, n_splits · split_len >= cap, cap < 2^31.
// Oracle:  backend::cpu::attention (src/backend/cpu.rs); launcher launch::attention_decode.
#include "common.cuh"
#include "params.h"

constexpr uint32_t ADF_THREADS = 256;  // threads of an attention_decode block (8 warps)

// Lanes per subgroup: the smallest power of two G with 8·G >= D (1..32 for D <= 256).
__device__ __forceinline__ uint32_t adf_group(uint32_t D) {
    uint32_t g = 1;
    while (8 * g < D && g < 32) g *= 2;
    return g;
}

// Column (0..8G-1) of slot i (0..7) of lane lg in a subgroup of G lanes. VEC = 8: the lane owns the
// 8 consecutive columns of its 16-byte chunk. VEC = 1: columns lg, lg + G, lg + 2G, ... (the
// subgroup's lanes read neighbouring 2-byte elements together).
template <int VEC>
__device__ __forceinline__ uint32_t adf_col(uint32_t lg, uint32_t G, int i) {
    return VEC == 8 ? lg * 8 + (uint32_t)i : lg + G * (uint32_t)i;
}

// The lane's 8 values of a head row (`row` points at column 0 of the head), as raw T bits packed in
// a uint4; columns >= D and rows with ok == false read as +0.0 (all-zero bits in bf16 and fp16).
template <typename T, int VEC>
__device__ __forceinline__ uint4 adf_load(const T* __restrict__ row, uint32_t lg, uint32_t G, uint32_t D, bool ok) {
    uint4 raw = make_uint4(0u, 0u, 0u, 0u);
    if (VEC == 8) {
        // D % 8 == 0 and the row start is 16-byte aligned (checked by the caller): the chunk
        // lg·8 .. lg·8+7 is either wholly inside the head (lg·8 < D) or wholly outside.
        if (ok && lg * 8 < D) raw = *reinterpret_cast<const uint4*>(row + lg * 8);
    } else {
        uint16_t e[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t c = adf_col<1>(lg, G, i);
            e[i] = (ok && c < D) ? reinterpret_cast<const uint16_t*>(row)[c] : (uint16_t)0;
        }
        raw.x = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
        raw.y = (uint32_t)e[2] | ((uint32_t)e[3] << 16);
        raw.z = (uint32_t)e[4] | ((uint32_t)e[5] << 16);
        raw.w = (uint32_t)e[6] | ((uint32_t)e[7] << 16);
    }
    return raw;
}

// f32 value of T bits.
template <typename T> __device__ __forceinline__ float adf_bits_f32(unsigned short b);
template <> __device__ __forceinline__ float adf_bits_f32<__nv_bfloat16>(unsigned short b) {
    return __bfloat162float(__ushort_as_bfloat16(b));
}
template <> __device__ __forceinline__ float adf_bits_f32<__half>(unsigned short b) {
    return __half2float(__ushort_as_half(b));
}

// Widen 8 packed T values (slot i = element i of the uint4, little endian) to f32.
template <typename T>
__device__ __forceinline__ void adf_widen(const uint4& raw, float (&f)[8]) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = adf_bits_f32<T>((unsigned short)(w[i] & 0xFFFFu));
        f[2 * i + 1] = adf_bits_f32<T>((unsigned short)(w[i] >> 16));
    }
}

// Shared memory of one attention_decode block: the per-subgroup online-softmax states.
struct AdfShared {
    float o[ADF_THREADS * 8];  // [nsub, 8G] (nsub · 8G = 8 · ADF_THREADS): o of subgroup g at g·8G
    float m[ADF_THREADS];      // [nsub] running max of each subgroup (-INFINITY: it saw no key)
    float l[ADF_THREADS];      // [nsub] running sum of exp(s - m)
    float w[ADF_THREADS];      // [nsub] merge weights exp(m_g - M)
};

// Keys begin..end-1 (begin < end <= cap) of head h for one query: writes the partial (m, l, o[D])
// to pml / po. q_row: the query's head columns; k_head / v_head: column h·D of cache row 0.
template <typename T, int VEC, int UNROLL>
__device__ void adf_split(const T* __restrict__ q_row, const T* __restrict__ k_head, const T* __restrict__ v_head,
                           float* __restrict__ po, float* __restrict__ pml, uint32_t begin, uint32_t end,
                           uint32_t P, uint32_t D, float scale, AdfShared& sh) {
    const uint32_t tid = threadIdx.x;
    const uint32_t G = adf_group(D);
    const uint32_t lg = tid & (G - 1);     // lane within the subgroup
    const uint32_t sg = tid / G;           // subgroup within the block
    const uint32_t nsub = ADF_THREADS / G;

    float qf[8];
    adf_widen<T>(adf_load<T, VEC>(q_row, lg, G, D, true), qf);

    float m = -INFINITY, l = 0.0f;
    float o[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = 0.0f;

    // Block-uniform loop (base depends only on begin/end/nsub), so every lane of every warp runs
    // the same shuffles; rows past `end` are masked (no load, score -inf, v = 0).
    // No overflow: end <= cap < 2^31 and base < end, step <= 1024.
    const uint32_t step = nsub * UNROLL;
    for (uint32_t base = begin; base < end; base += step) {
        uint4 kr[UNROLL], vr[UNROLL];
        bool ok[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const uint32_t j = base + (uint32_t)u * nsub + sg;  // key row of this subgroup
            ok[u] = j < end;
            kr[u] = adf_load<T, VEC>(k_head + (size_t)j * P, lg, G, D, ok[u]);
            vr[u] = adf_load<T, VEC>(v_head + (size_t)j * P, lg, G, D, ok[u]);
        }
        float s[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            float kf[8];
            adf_widen<T>(kr[u], kf);
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) d = fmaf(qf[i], kf[i], d);
            // Butterfly all-reduce over the G lanes of the subgroup: every lane ends with the same
            // (bitwise) sum, so m and l stay identical across the subgroup.
            for (uint32_t off = G / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xFFFFFFFFu, d, off);
            s[u] = ok[u] ? d * scale : -INFINITY;
        }
        float mb = s[0];
#pragma unroll
        for (int u = 1; u < UNROLL; ++u) mb = fmaxf(mb, s[u]);
        const float m_new = fmaxf(m, mb);
        // -inf only while this subgroup has had no key yet (then there is nothing to add, and
        // exp(-inf - -inf) would be NaN). Uniform within the subgroup; no shuffle below.
        if (m_new != -INFINITY) {
            const float alpha = expf(m - m_new);  // m = -inf → 0 (o and l are 0 then anyway)
            l *= alpha;
#pragma unroll
            for (int i = 0; i < 8; ++i) o[i] *= alpha;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const float p = expf(s[u] - m_new);  // masked row: exp(-inf) = 0, and v = 0
                l += p;
                float vf[8];
                adf_widen<T>(vr[u], vf);
#pragma unroll
                for (int i = 0; i < 8; ++i) o[i] = fmaf(p, vf[i], o[i]);
            }
            m = m_new;
        }
    }

    // Merge the subgroups: M = max_g m_g, w_g = exp(m_g - M), o = Σ_g w_g o_g, l = Σ_g w_g l_g.
    const uint32_t width = 8 * G;  // columns per subgroup slice of sh.o (>= D)
    if (lg == 0) {
        sh.m[sg] = m;
        sh.l[sg] = l;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sh.o[sg * width + adf_col<VEC>(lg, G, i)] = o[i];
    __syncthreads();
    // The split has at least one key, so some subgroup has a finite m and M is finite.
    float M = -INFINITY;
    for (uint32_t g = 0; g < nsub; ++g) M = fmaxf(M, sh.m[g]);
    for (uint32_t g = tid; g < nsub; g += ADF_THREADS) sh.w[g] = expf(sh.m[g] - M);  // empty subgroup → 0
    __syncthreads();
    for (uint32_t c = tid; c < D; c += ADF_THREADS) {
        float acc = 0.0f;
        for (uint32_t g = 0; g < nsub; ++g) acc = fmaf(sh.w[g], sh.o[g * width + c], acc);
        po[c] = acc;
    }
    if (tid == 0) {
        float L = 0.0f;
        for (uint32_t g = 0; g < nsub; ++g) L = fmaf(sh.w[g], sh.l[g], L);
        pml[0] = M;
        pml[1] = L;
    }
}

// Keys of query t: min(pos0 + t + 1, cap), computed without u32 overflow.
__device__ __forceinline__ uint32_t adf_n_keys(const uint32_t* pos0, uint32_t t, uint32_t cap) {
    const uint64_t p = (uint64_t)(*pos0) + t + 1;
    return p < (uint64_t)cap ? (uint32_t)p : cap;
}

// Block-wide max (MAX) or sum of v over the NT threads of the block; every thread gets the same
// result (fixed order: xor butterfly in each warp, then the warps in index order). red: [NT/32] shared.
template <bool MAX, uint32_t NT>
__device__ __forceinline__ float adf_block_reduce(float v, float* red) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (uint32_t off = 16; off > 0; off /= 2) {
        const float o = __shfl_xor_sync(0xFFFFFFFFu, v, off);
        v = MAX ? fmaxf(v, o) : v + o;
    }
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (uint32_t w = 1; w < NT / 32; ++w) r = MAX ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();  // red may be reused right after
    return r;
}

// Merge the `used` (>= 1) split partials of one (query, head) with the NT threads of the block:
// ml [n_splits, 2] (m, l) and po [n_splits, D] f32 of that (query, head), dst [D] T (its head
// columns of the output row). red [NT/32], colsum [NT] shared. The partials are read through L2
// (__ldcg): in the fused path other blocks wrote them during this kernel, and this SM's L1 may
// hold lines of them from an earlier launch.
template <typename T, uint32_t NT>
__device__ void adf_combine(const float* __restrict__ po, const float* __restrict__ ml, T* __restrict__ dst,
                             uint32_t used, uint32_t D, float* red, float* colsum) {
    const uint32_t tid = threadIdx.x;
    // M = max_i m_i (finite: split 0 has keys), L = Σ_i exp(m_i - M) l_i (>= 1: the split holding
    // the max has weight 1 and l >= 1).
    float mx = -INFINITY;
    for (uint32_t i = tid; i < used; i += NT) mx = fmaxf(mx, __ldcg(ml + 2 * i));
    const float M = adf_block_reduce<true, NT>(mx, red);
    float ls = 0.0f;
    for (uint32_t i = tid; i < used; i += NT) ls = fmaf(expf(__ldcg(ml + 2 * i) - M), __ldcg(ml + 2 * i + 1), ls);
    const float L = adf_block_reduce<false, NT>(ls, red);

    // Σ_i exp(m_i - M) o_i[c]: R = NT / D rows of D threads; thread (r, c) takes splits r, r + R, ...
    // (coalesced along c), then the R row sums are added in order.
    const uint32_t R = NT / D;  // >= 1 (D <= 256 <= NT)
    if (tid < R * D) {
        const uint32_t r = tid / D, c = tid % D;
        float acc = 0.0f;
#pragma unroll 4
        for (uint32_t i = r; i < used; i += R) acc = fmaf(expf(__ldcg(ml + 2 * i) - M), __ldcg(po + (size_t)i * D + c), acc);
        colsum[tid] = acc;
    }
    __syncthreads();
    for (uint32_t c = tid; c < D; c += NT) {
        float acc = 0.0f;
        for (uint32_t r = 0; r < R; ++r) acc += colsum[r * D + c];
        dst[c] = from_f32<T>(acc / L);
    }
}

// Splits of query t that hold keys: min(ceil(n_keys / split_len), n_splits), >= 1.
__device__ __forceinline__ uint32_t adf_used(uint32_t n_keys, uint32_t split_len, uint32_t n_splits) {
    const uint64_t used64 = ((uint64_t)n_keys + split_len - 1) / split_len;
    return used64 < n_splits ? (uint32_t)used64 : n_splits;
}

template <typename T>
__device__ void adf_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                      const T* __restrict__ v_cache, float* __restrict__ part_o,
                                      float* __restrict__ part_ml, const uint32_t* __restrict__ pos0, uint32_t H,
                                      uint32_t D, uint32_t cap, uint32_t split_len, uint32_t n_splits, float scale,
                                      T* __restrict__ out, uint32_t* __restrict__ counters) {
    __shared__ AdfShared sh;
    __shared__ float red[ADF_THREADS / 32];
    const uint32_t split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const uint32_t P = H * D;
    const uint32_t n_keys = adf_n_keys(pos0, t, cap);
    const uint32_t used = adf_used(n_keys, split_len, n_splits);
    const size_t part0 = ((size_t)t * H + h) * n_splits;  // [T, H, n_splits] index of split 0
    const size_t part = part0 + split;
    float* po = part_o + part * D;    // [D]
    float* pml = part_ml + part * 2;  // [2]
    if (split >= used) {  // empty split (block-uniform)
        if (counters != nullptr) return;  // fused: nothing reads it
        // Separate combine: write the neutral partial, so nothing stale is ever read.
        for (uint32_t c = threadIdx.x; c < D; c += ADF_THREADS) po[c] = 0.0f;
        if (threadIdx.x == 0) {
            pml[0] = -INFINITY;
            pml[1] = 0.0f;
        }
        return;
    }
    const uint64_t begin = (uint64_t)split * split_len;  // < n_keys
    const uint64_t end64 = begin + split_len;
    const uint32_t end = end64 < n_keys ? (uint32_t)end64 : n_keys;
    const T* q_row = q + (size_t)t * P + (size_t)h * D;
    const T* k_head = k_cache + (size_t)h * D;
    const T* v_head = v_cache + (size_t)h * D;
    // 16-byte path: every head row start is then a multiple of 8 elements from an aligned base.
    const bool vec = D % 8 == 0 && (((uintptr_t)q | (uintptr_t)k_cache | (uintptr_t)v_cache) & 15) == 0;
    if (vec)
        adf_split<T, 8, 4>(q_row, k_head, v_head, po, pml, (uint32_t)begin, end, P, D, scale, sh);
    else
        adf_split<T, 1, 2>(q_row, k_head, v_head, po, pml, (uint32_t)begin, end, P, D, scale, sh);
    if (counters == nullptr) return;

    // Fused combine: the block that takes the last of the `used` tickets of (t, h) merges all the
    // partials (last_block_arrives' barriers also let adf_split's readers of sh finish: the combine
    // reuses sh.o).
    if (!last_block_arrives(counters + (size_t)t * H + h, used)) return;  // block-uniform
    adf_combine<T, ADF_THREADS>(part_o + part0 * D, part_ml + part0 * 2, out + (size_t)t * P + (size_t)h * D, used, D,
                                  red, sh.o);
}

// The entry points take AttentionDecodeParams (params.h) by value.
template <typename T>
__device__ __forceinline__ void adf_entry(const AttentionDecodeParams& p) {
    adf_impl(static_cast<const T*>(p.q), static_cast<const T*>(p.k_cache), static_cast<const T*>(p.v_cache), p.part_o,
             p.part_ml, p.pos0, p.H, p.D, p.cap, p.split_len, p.n_splits, p.scale, static_cast<T*>(p.out), p.counters);
}

extern "C" __global__ void __launch_bounds__(ADF_THREADS) attention_decode_fused_bf16(const AttentionDecodeParams p) {
    pdl_begin();
    adf_entry<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(ADF_THREADS) attention_decode_fused_f16(const AttentionDecodeParams p) {
    pdl_begin();
    adf_entry<__half>(p);
}
