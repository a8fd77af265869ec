// attention_decode.cu — split-K causal decode attention (FlashDecoding): partial softmax per key split,
// then a combine across splits.
//
// What:    query t of the call sits at absolute position pos0 + t and attends keys 0..n_keys-1 with
//          n_keys = min(*pos0 + t + 1, cap) (a pos0 past the cache clamps to all cap rows; never a
//          read past row cap - 1). Scores s_j = (q·k_j) · scale in fp32 (scale = 1/sqrt(D) from the
//          launcher). The key range is cut into splits of split_len keys.
//          attention_decode: block (split i, head h, query t) takes keys [i·split_len,
//            min((i+1)·split_len, n_keys)) and writes the UNNORMALISED partial
//              m = max_j s_j,  l = Σ_j exp(s_j - m),  o = Σ_j exp(s_j - m) · v_j   (fp32)
//            A split with no keys writes m = -INFINITY, l = 0, o = 0 (always written, so nothing
//            stale is ever read) and exits.
//          attention_decode_combine: block (h, t) merges the splits that have keys
//            (i < ceil(n_keys / split_len)): M = max_i m_i, w_i = exp(m_i - M),
//            out = T( Σ_i w_i o_i / Σ_i w_i l_i ).
// Layout:  q [T, P] T, k_cache / v_cache [cap, P] T (head h = columns h·D .. h·D+D of a row, P = H·D),
//          part_o [T, H, n_splits, D] f32, part_ml [T, H, n_splits, 2] f32 (m, l), out [T, P] T,
//          pos0 [1] u32 (device scalar: the step is captured once in a CUDA graph and replayed).
// Launch:  attention_decode grid (n_splits, H, T), block ADEC_THREADS = 256, no dynamic smem.
//            The block is cut into subgroups of G = next_pow2(ceil(D / 8)) lanes (G | 32, so a
//            subgroup never straddles a warp); each lane owns 8 of the D columns. A subgroup takes
//            one key row at a time, keys interleaved over the 256 / G subgroups, with 4 K rows and
//            4 V rows in flight per lane (2 + 2 on the scalar path). It reads its K and V chunks
//            with one 16-byte load each when D % 8 == 0 and q/k/v are 16-byte aligned (2-byte
//            loads otherwise; any D works there), reduces the dot product with xor shuffles inside
//            the subgroup and keeps an online-softmax state (m, l, o[8]) in registers. The
//            subgroup states are merged through shared memory at the end.
//          attention_decode_combine grid (H, T), block ADEC_COMBINE_THREADS = 512: block reductions
//            for M and L, then 512 / D rows of D threads sum the weighted o_i (split i to row i mod R).
//          Requirements (checked by launch::attention_decode): 1 <= D <= 256, cap >= 1,
//          split_len >= 1, n_splits · split_len >= cap, cap < 2^31.
// Oracle:  backend::cpu::attention (src/backend/cpu.rs); launcher launch::attention_decode.
#include "common.cuh"

constexpr uint32_t ADEC_THREADS = 256;  // threads of an attention_decode block (8 warps)
constexpr uint32_t ADEC_COMBINE_THREADS = 512;  // attention_decode_combine block (16 warps)

// Lanes per subgroup: the smallest power of two G with 8·G >= D (1..32 for D <= 256).
__device__ __forceinline__ uint32_t adec_group(uint32_t D) {
    uint32_t g = 1;
    while (8 * g < D && g < 32) g *= 2;
    return g;
}

// Column (0..8G-1) of slot i (0..7) of lane lg in a subgroup of G lanes. VEC = 8: the lane owns the
// 8 consecutive columns of its 16-byte chunk. VEC = 1: columns lg, lg + G, lg + 2G, ... (the
// subgroup's lanes read neighbouring 2-byte elements together).
template <int VEC>
__device__ __forceinline__ uint32_t adec_col(uint32_t lg, uint32_t G, int i) {
    return VEC == 8 ? lg * 8 + (uint32_t)i : lg + G * (uint32_t)i;
}

// The lane's 8 values of a head row (`row` points at column 0 of the head), as raw T bits packed in
// a uint4; columns >= D and rows with ok == false read as +0.0 (all-zero bits in bf16 and fp16).
template <typename T, int VEC>
__device__ __forceinline__ uint4 adec_load(const T* __restrict__ row, uint32_t lg, uint32_t G, uint32_t D, bool ok) {
    uint4 raw = make_uint4(0u, 0u, 0u, 0u);
    if (VEC == 8) {
        // D % 8 == 0 and the row start is 16-byte aligned (checked by the caller): the chunk
        // lg·8 .. lg·8+7 is either wholly inside the head (lg·8 < D) or wholly outside.
        if (ok && lg * 8 < D) raw = *reinterpret_cast<const uint4*>(row + lg * 8);
    } else {
        uint16_t e[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t c = adec_col<1>(lg, G, i);
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
template <typename T> __device__ __forceinline__ float adec_bits_f32(unsigned short b);
template <> __device__ __forceinline__ float adec_bits_f32<__nv_bfloat16>(unsigned short b) {
    return __bfloat162float(__ushort_as_bfloat16(b));
}
template <> __device__ __forceinline__ float adec_bits_f32<__half>(unsigned short b) {
    return __half2float(__ushort_as_half(b));
}

// Widen 8 packed T values (slot i = element i of the uint4, little endian) to f32.
template <typename T>
__device__ __forceinline__ void adec_widen(const uint4& raw, float (&f)[8]) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = adec_bits_f32<T>((unsigned short)(w[i] & 0xFFFFu));
        f[2 * i + 1] = adec_bits_f32<T>((unsigned short)(w[i] >> 16));
    }
}

// Shared memory of one attention_decode block: the per-subgroup online-softmax states.
struct AdecShared {
    float o[ADEC_THREADS * 8];  // [nsub, 8G] (nsub · 8G = 8 · ADEC_THREADS): o of subgroup g at g·8G
    float m[ADEC_THREADS];      // [nsub] running max of each subgroup (-INFINITY: it saw no key)
    float l[ADEC_THREADS];      // [nsub] running sum of exp(s - m)
    float w[ADEC_THREADS];      // [nsub] merge weights exp(m_g - M)
};

// Keys begin..end-1 (begin < end <= cap) of head h for one query: writes the partial (m, l, o[D])
// to pml / po. q_row: the query's head columns; k_head / v_head: column h·D of cache row 0.
template <typename T, int VEC, int UNROLL>
__device__ void adec_split(const T* __restrict__ q_row, const T* __restrict__ k_head, const T* __restrict__ v_head,
                           float* __restrict__ po, float* __restrict__ pml, uint32_t begin, uint32_t end,
                           uint32_t P, uint32_t D, float scale, AdecShared& sh) {
    const uint32_t tid = threadIdx.x;
    const uint32_t G = adec_group(D);
    const uint32_t lg = tid & (G - 1);     // lane within the subgroup
    const uint32_t sg = tid / G;           // subgroup within the block
    const uint32_t nsub = ADEC_THREADS / G;

    float qf[8];
    adec_widen<T>(adec_load<T, VEC>(q_row, lg, G, D, true), qf);

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
            kr[u] = adec_load<T, VEC>(k_head + (size_t)j * P, lg, G, D, ok[u]);
            vr[u] = adec_load<T, VEC>(v_head + (size_t)j * P, lg, G, D, ok[u]);
        }
        float s[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            float kf[8];
            adec_widen<T>(kr[u], kf);
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
                adec_widen<T>(vr[u], vf);
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
    for (int i = 0; i < 8; ++i) sh.o[sg * width + adec_col<VEC>(lg, G, i)] = o[i];
    __syncthreads();
    // The split has at least one key, so some subgroup has a finite m and M is finite.
    float M = -INFINITY;
    for (uint32_t g = 0; g < nsub; ++g) M = fmaxf(M, sh.m[g]);
    for (uint32_t g = tid; g < nsub; g += ADEC_THREADS) sh.w[g] = expf(sh.m[g] - M);  // empty subgroup → 0
    __syncthreads();
    for (uint32_t c = tid; c < D; c += ADEC_THREADS) {
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
__device__ __forceinline__ uint32_t adec_n_keys(const uint32_t* pos0, uint32_t t, uint32_t cap) {
    const uint64_t p = (uint64_t)(*pos0) + t + 1;
    return p < (uint64_t)cap ? (uint32_t)p : cap;
}

template <typename T>
__device__ void attention_decode_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                      const T* __restrict__ v_cache, float* __restrict__ part_o,
                                      float* __restrict__ part_ml, const uint32_t* __restrict__ pos0, uint32_t H,
                                      uint32_t D, uint32_t cap, uint32_t split_len, uint32_t n_splits, float scale) {
    __shared__ AdecShared sh;
    const uint32_t split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const uint32_t P = H * D;
    const uint32_t n_keys = adec_n_keys(pos0, t, cap);
    const size_t part = ((size_t)t * H + h) * n_splits + split;  // [T, H, n_splits] index
    float* po = part_o + part * D;                               // [D]
    float* pml = part_ml + part * 2;                             // [2]
    const uint64_t begin = (uint64_t)split * split_len;
    if (begin >= n_keys) {  // empty split (block-uniform): write the neutral partial and leave
        for (uint32_t c = threadIdx.x; c < D; c += ADEC_THREADS) po[c] = 0.0f;
        if (threadIdx.x == 0) {
            pml[0] = -INFINITY;
            pml[1] = 0.0f;
        }
        return;
    }
    const uint64_t end64 = begin + split_len;
    const uint32_t end = end64 < n_keys ? (uint32_t)end64 : n_keys;
    const T* q_row = q + (size_t)t * P + (size_t)h * D;
    const T* k_head = k_cache + (size_t)h * D;
    const T* v_head = v_cache + (size_t)h * D;
    // 16-byte path: every head row start is then a multiple of 8 elements from an aligned base.
    const bool vec = D % 8 == 0 && (((uintptr_t)q | (uintptr_t)k_cache | (uintptr_t)v_cache) & 15) == 0;
    if (vec)
        adec_split<T, 8, 4>(q_row, k_head, v_head, po, pml, (uint32_t)begin, end, P, D, scale, sh);
    else
        adec_split<T, 1, 2>(q_row, k_head, v_head, po, pml, (uint32_t)begin, end, P, D, scale, sh);
}

// Block-wide max (MAX) or sum of v over ADEC_COMBINE_THREADS threads; every thread gets the same
// result (fixed order: xor butterfly in each warp, then the warps in index order). red: [32] shared.
template <bool MAX>
__device__ __forceinline__ float adec_block_reduce(float v, float* red) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (uint32_t off = 16; off > 0; off /= 2) {
        const float o = __shfl_xor_sync(0xFFFFFFFFu, v, off);
        v = MAX ? fmaxf(v, o) : v + o;
    }
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (uint32_t w = 1; w < ADEC_COMBINE_THREADS / 32; ++w) r = MAX ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();  // red may be reused right after
    return r;
}

template <typename T>
__device__ void attention_decode_combine_impl(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                              T* __restrict__ out, const uint32_t* __restrict__ pos0, uint32_t H,
                                              uint32_t D, uint32_t cap, uint32_t split_len, uint32_t n_splits) {
    __shared__ float red[32];
    __shared__ float colsum[ADEC_COMBINE_THREADS];  // [R, D] partial column sums
    const uint32_t tid = threadIdx.x;
    const uint32_t h = blockIdx.x, t = blockIdx.y;
    const uint32_t n_keys = adec_n_keys(pos0, t, cap);  // >= 1 (cap >= 1)
    const uint64_t used64 = ((uint64_t)n_keys + split_len - 1) / split_len;
    const uint32_t used = used64 < n_splits ? (uint32_t)used64 : n_splits;  // splits with keys, >= 1
    const size_t part = ((size_t)t * H + h) * n_splits;
    const float* ml = part_ml + part * 2;  // [n_splits, 2] (m, l)
    const float* po = part_o + part * D;   // [n_splits, D]

    // M = max_i m_i (finite: split 0 has keys), L = Σ_i exp(m_i - M) l_i (>= 1: the split holding
    // the max has weight 1 and l >= 1).
    float mx = -INFINITY;
    for (uint32_t i = tid; i < used; i += ADEC_COMBINE_THREADS) mx = fmaxf(mx, ml[2 * i]);
    const float M = adec_block_reduce<true>(mx, red);
    float ls = 0.0f;
    for (uint32_t i = tid; i < used; i += ADEC_COMBINE_THREADS) ls = fmaf(expf(ml[2 * i] - M), ml[2 * i + 1], ls);
    const float L = adec_block_reduce<false>(ls, red);

    // Σ_i exp(m_i - M) o_i[c]: R = ADEC_COMBINE_THREADS / D rows of D threads; thread (r, c) takes
    // splits r, r + R, ... (coalesced along c), then the R row sums are added in order.
    const uint32_t R = ADEC_COMBINE_THREADS / D;  // >= 2 (D <= 256)
    if (tid < R * D) {
        const uint32_t r = tid / D, c = tid % D;
        float acc = 0.0f;
#pragma unroll 4
        for (uint32_t i = r; i < used; i += R) acc = fmaf(expf(ml[2 * i] - M), po[(size_t)i * D + c], acc);
        colsum[tid] = acc;
    }
    __syncthreads();
    T* dst = out + (size_t)t * H * D + (size_t)h * D;  // row t of [T, P], head h
    for (uint32_t c = tid; c < D; c += ADEC_COMBINE_THREADS) {
        float acc = 0.0f;
        for (uint32_t r = 0; r < R; ++r) acc += colsum[r * D + c];
        dst[c] = from_f32<T>(acc / L);
    }
}

extern "C" __global__ void __launch_bounds__(ADEC_THREADS)
attention_decode_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                      float* part_o, float* part_ml, const uint32_t* pos0, uint32_t H, uint32_t D, uint32_t cap,
                      uint32_t split_len, uint32_t n_splits, float scale) {
    pdl_begin();
    attention_decode_impl(q, k_cache, v_cache, part_o, part_ml, pos0, H, D, cap, split_len, n_splits, scale);
}

extern "C" __global__ void __launch_bounds__(ADEC_THREADS)
attention_decode_f16(const __half* q, const __half* k_cache, const __half* v_cache, float* part_o,
                     float* part_ml, const uint32_t* pos0, uint32_t H, uint32_t D, uint32_t cap, uint32_t split_len,
                     uint32_t n_splits, float scale) {
    pdl_begin();
    attention_decode_impl(q, k_cache, v_cache, part_o, part_ml, pos0, H, D, cap, split_len, n_splits, scale);
}

extern "C" __global__ void __launch_bounds__(ADEC_COMBINE_THREADS)
attention_decode_combine_bf16(const float* part_o, const float* part_ml, __nv_bfloat16* out, const uint32_t* pos0,
                              uint32_t H, uint32_t D, uint32_t cap, uint32_t split_len, uint32_t n_splits) {
    pdl_begin();
    attention_decode_combine_impl(part_o, part_ml, out, pos0, H, D, cap, split_len, n_splits);
}

extern "C" __global__ void __launch_bounds__(ADEC_COMBINE_THREADS)
attention_decode_combine_f16(const float* part_o, const float* part_ml, __half* out, const uint32_t* pos0,
                             uint32_t H, uint32_t D, uint32_t cap, uint32_t split_len, uint32_t n_splits) {
    pdl_begin();
    attention_decode_combine_impl(part_o, part_ml, out, pos0, H, D, cap, split_len, n_splits);
}
