// attention_prefill_mma.cu — causal flash attention for prefill on tensor cores (mma.sync m16n8k16),
// FlashAttention-2 style with S, P and O in registers. Post-run-4, NOT yet verified on a GPU: opt-in
// with QWEN_ATTN=mma (attention_prefill.cu, run 4's WMMA kernel, is the default).
//
// What:    for every query row t < T and head h, with p = min(*pos0 + t, cap - 1):
//            s_j   = (q[t, h] · k[j, h]) * scale                    j = 0..=p (causal, offset by pos0)
//            out[t, h] = T( Σ_j softmax(s)_j · v[j, h] )
//          Scores, running max m, row sum l and the output accumulator O are f32; the probabilities
//          P = exp(s - m) are rounded to T before the P·V product (as FlashAttention does) and l sums
//          those rounded values, so out = Σ P̃_j v_j / Σ P̃_j is an exact weighted mean of V rows up to
//          f32 rounding; O / l is rounded to T once at the end. (attention_prefill_wmma.cu computes
//          the same thing with WMMA and S / P through shared memory: QWEN_ATTN=wmma.)
// Layout:  q [T, P] T, k_cache / v_cache [cap, P] T, out [T, P] T, P = H * D, head h = columns h*D..h*D+D;
//          pos0 [1] u32 (device scalar: position of query row 0). D ∈ {16, 32, 64, 128}; another D
//          does nothing (the launcher refuses it). Every row is 16-byte aligned (P*2 % 32 == 0 and the
//          launcher checks the base pointers), so all global loads are 16-byte cp.async.
//          Cache rows > the block's last needed position (and all rows >= cap) are never read.
// Launch:  grid (H, ⌈T/64⌉), block 128 (4 warps), dynamic smem at_smem_bytes(D) = 2·64·(D+8)·2
//          (one K and one V tile; the Q tile passes through the V tile first): 34816 bytes at
//          D = 128, under the 48 KiB default. Block (h, y) owns query tile ⌈T/64⌉ - 1 - y of head h
//          (heaviest first, attention_tile.cuh); warp w owns its rows 16w..16w+15.
// Per warp (mma.sync m16n8k16, f32 accumulate; g = lane / 4 and c = lane % 4, as in the PTX ISA's
//          fragment tables): the thread holds rows g and g + 8 of every 16 x 8 accumulator tile,
//          columns 2c and 2c + 1.
//            Q  16 x D as A fragments qa[D/16][4] (ldmatrix.x4 once, kept in registers);
//            S  16 x 64 = Q · K_tileᵀ as 8 accumulator tiles s[8][4] (B fragments of K by ldmatrix.x4:
//               row-major K is Kᵀ column-major);
//            online softmax on s in registers (row max / sum over the 4 threads of a row: two xor
//               shuffles); P̃ = T(exp(s·scale - m)) packs straight into A fragments (accumulator
//               tiles 2j, 2j+1 are the A fragment of keys 16j..16j+15);
//            O  16 x D += P̃ · V_tile as o[D/8][4] (B fragments of row-major V by ldmatrix.x4.trans).
//          Key tiles past the block's last position are skipped; inside a tile a warp skips the
//          16-key blocks past its own last position (n-tiles past them are masked, not computed);
//          masking is applied only on tiles that reach past the warp's first position. K(kt+1) and
//          V(kt) are copied with cp.async while the previous step computes.
// Oracle:  backend::cpu::attention (src/backend/cpu.rs); launcher launch::attention_prefill.
#include "attention_tile.cuh"
#include "params.h"

// Internals in their own namespace (attention_prefill_wmma.cu has its own at_impl).
namespace at_mma {

// Dynamic shared memory of the kernel at head dim D (the launcher computes the same number).
__host__ __device__ constexpr int at_smem_bytes(int D) { return 2 * AT_BK * (D + 8) * 2; }

// Four 8 x 8 b16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8
// (16-byte aligned), and receives in r[i] the elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1)
// of matrix i (low half first).
__device__ __forceinline__ void at_ldmatrix_x4(uint32_t (&r)[4], const void* row) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
// The same, transposed: r[i] holds the elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4) of matrix i.
__device__ __forceinline__ void at_ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

// d (16 x 8 f32) += a (16 x 16 T, row) · b (16 x 8 T, col): one warp-wide mma.sync.
template <typename T>
__device__ __forceinline__ void at_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void at_mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void at_mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two T values as one 32-bit word (the first in the low half = the lower column).
template <typename T> __device__ __forceinline__ uint32_t at_pack2(T a, T b) {
    return (uint32_t)at_bits(a) | ((uint32_t)at_bits(b) << 16);
}

template <typename T, int D>
__device__ __forceinline__ void at_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                        const T* __restrict__ v_cache, T* __restrict__ out,
                                        const uint32_t* __restrict__ pos0_ptr, uint32_t Tn, uint32_t H, uint32_t cap,
                                        float scale) {
    constexpr int LDT = D + 8;     // T per smem row (2D+16 bytes: 16-byte aligned, conflict-free ldmatrix)
    constexpr int KS = D / 16;     // k-steps of Q·Kᵀ
    constexpr int ND = D / 8;      // 8-wide n-tiles of O
    constexpr int NS = AT_BK / 8;  // 8-key n-tiles of S (8)
    static_assert(D % 16 == 0 && ND % 2 == 0, "D must be a multiple of 16");

    extern __shared__ __align__(128) unsigned char at_mma_smem[];
    T* Ks = reinterpret_cast<T*>(at_mma_smem);  // [64, LDT]
    T* Vs = Ks + AT_BK * LDT;                    // [64, LDT]; holds the Q tile before the first V tile

    AtBlock blk;  // tile, head, warp, positions (attention_tile.cuh)
    if (!at_block(blk, pos0_ptr, Tn, H, D, cap)) return;  // block-uniform
    const int warp = blk.warp, lane = blk.lane;
    const int g = lane >> 2, c = lane & 3;  // fragment row group and column pair
    const uint32_t P = blk.P, t0 = blk.t0, kv_last = blk.kv_last;
    const size_t col = blk.col;
    const uint32_t p_row[2] = {blk.warp_pos((uint32_t)g), blk.warp_pos((uint32_t)g + 8u)};  // rows g, g + 8

    // Prologue: Q tile -> Vs (group 1), K tile 0 -> Ks (group 2).
    const uint32_t q_rows = Tn - t0;
    at_load_tile<T, D>(Vs, q + col, t0, q_rows < AT_BQ ? q_rows : AT_BQ, P);
    at_cp_commit();
    at_load_tile<T, D>(Ks, k_cache + col, 0, AtBlock::rows_upto(0, kv_last), P);
    at_cp_commit();
    at_cp_wait<1>();  // the Q group has landed (K tile 0 may still be in flight)
    __syncthreads();
    // A fragments of Q: matrix i of k-step kk = rows 8 (i & 1), columns 16 kk + 8 (i >> 1); lane l
    // points at row l & 15, column 8 (l >> 4).
    uint32_t qa[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) at_ldmatrix_x4(qa[kk], Vs + (warp * 16 + (lane & 15)) * LDT + kk * 16 + (lane >> 4) * 8);

    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY};  // running max of rows g, g + 8 (the same in the 4 threads of a row)
    float l[2] = {0.0f, 0.0f};            // this thread's part of the running Σ P̃ (its columns only)

    for (uint32_t kt = 0; kt < blk.n_tiles; ++kt) {
        const uint32_t key0 = kt * AT_BK;  // <= kv_last
        __syncthreads();  // Vs is free: Q fragments loaded (kt = 0) / previous P·V done
        at_load_tile<T, D>(Vs, v_cache + col, key0, AtBlock::rows_upto(key0, kv_last), P);
        at_cp_commit();
        at_cp_wait<1>();  // K tile kt has landed (V tile kt may still be in flight)
        __syncthreads();  // ... for every thread's copies

        // Warp-uniform: does any row of this warp see a key of this tile, and how many 16-key blocks.
        const bool active = blk.warp_valid && key0 <= blk.warp_last;
        const int nkb = !active ? 0 : (int)((AtBlock::rows_upto(key0, blk.warp_last) + 15u) / 16u);
        uint32_t pa[AT_BK / 16][4];  // P̃ as A fragments, one per 16-key block

        if (active) {
            // S = Q · K_tileᵀ (unscaled, f32) over the nkb 16-key blocks. K block j: matrix i =
            // keys 16j + 8 (i >> 1), columns 16 kk + 8 (i & 1); lane l points at key 16j + 8 (l >> 4)
            // + (l & 7), column 16 kk + 8 ((l >> 3) & 1). r[0..1] feed n-tile 2j, r[2..3] n-tile 2j + 1.
            float s[NS][4];
#pragma unroll
            for (int j = 0; j < NS; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int j = 0; j < NS / 2; ++j) {
                if (j < nkb) {
#pragma unroll
                    for (int kk = 0; kk < KS; ++kk) {
                        uint32_t b[4];
                        at_ldmatrix_x4(b, Ks + (j * 16 + (lane >> 4) * 8 + (lane & 7)) * LDT + kk * 16 +
                                              ((lane >> 3) & 1) * 8);
                        at_mma<T>(s[2 * j], qa[kk], b[0], b[1]);
                        at_mma<T>(s[2 * j + 1], qa[kk], b[2], b[3]);
                    }
                }
            }

            // Online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3). Key key0 + 8j + 2c + (e & 1)
            // is visible to the row iff it is <= the row's position; the n-tiles past nkb blocks were
            // not computed and are past warp_last, so the mask covers them. A tile that ends at or
            // before the warp's first position needs no mask (then nkb is 4).
            const bool need_mask = key0 + (uint32_t)(AT_BK - 1) > blk.warp_first;
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < NS; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const uint32_t key = key0 + (uint32_t)(8 * j + 2 * c + (e & 1));
                    const bool hidden = need_mask && key > p_row[e >> 1];
                    s[j][e] = hidden ? -INFINITY : s[j][e] * scale;  // a select: stale values never leak
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
                }
            }
            float alpha[2], m_use[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(AT_FULL, mx[i], 1));
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(AT_FULL, mx[i], 2));
                const float m_new = fmaxf(m[i], mx[i]);
                // No visible key yet (cannot happen: key 0 is in tile 0) -> keep everything at 0, no NaN.
                m_use[i] = m_new == -INFINITY ? 0.0f : m_new;
                alpha[i] = expf(m[i] - m_use[i]);  // 0 when m = -inf
                m[i] = m_new;
            }
            float sum[2] = {0.0f, 0.0f};
#pragma unroll
            for (int j = 0; j < NS; ++j) {
                T pv[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    pv[e] = from_f32<T>(expf(s[j][e] - m_use[e >> 1]));  // exp(-inf) = 0 for hidden keys
                    sum[e >> 1] += to_f32(pv[e]);                       // l sums the rounded P̃ that feeds P·V
                }
                // n-tile j is half of the A fragment of 16-key block j / 2: registers 0, 1 (even j)
                // or 2, 3 (odd j) = rows g, g + 8 at columns 2c, 2c + 1 of that half.
                pa[j / 2][2 * (j & 1)] = at_pack2(pv[0], pv[1]);
                pa[j / 2][2 * (j & 1) + 1] = at_pack2(pv[2], pv[3]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) l[i] = l[i] * alpha[i] + sum[i];
#pragma unroll
            for (int n = 0; n < ND; ++n) {
                o[n][0] *= alpha[0];
                o[n][1] *= alpha[0];
                o[n][2] *= alpha[1];
                o[n][3] *= alpha[1];
            }
        }

        __syncthreads();  // every warp is done reading Ks
        if (kt + 1 < blk.n_tiles) {
            const uint32_t nk0 = key0 + AT_BK;  // <= kv_last since tile kt + 1 exists
            at_load_tile<T, D>(Ks, k_cache + col, nk0, AtBlock::rows_upto(nk0, kv_last), P);
            at_cp_commit();
            at_cp_wait<1>();  // V tile kt has landed (K tile kt+1 may still be in flight)
        } else {
            at_cp_wait<0>();
        }
        __syncthreads();  // ... for every thread's copies

        if (active) {
            // O += P̃ · V_tile over the nkb 16-key blocks (P̃ is 0 beyond them). V block j, column
            // pair n: matrix i = keys 16j + 8 (i & 1), columns 16n + 8 (i >> 1), transposed; lane l
            // points at key 16j + 8 ((l >> 3) & 1) + (l & 7), column 16n + 8 (l >> 4). r[0..1] feed
            // n-tile 2n, r[2..3] n-tile 2n + 1.
#pragma unroll
            for (int j = 0; j < AT_BK / 16; ++j) {
                if (j < nkb) {
#pragma unroll
                    for (int n = 0; n < ND / 2; ++n) {
                        uint32_t b[4];
                        at_ldmatrix_x4_trans(b, Vs + (j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDT + n * 16 +
                                                    (lane >> 4) * 8);
                        at_mma<T>(o[2 * n], pa[j], b[0], b[1]);
                        at_mma<T>(o[2 * n + 1], pa[j], b[2], b[3]);
                    }
                }
            }
        }
    }

    if (!blk.warp_valid) return;  // no real query rows (no barrier or shuffle follows)
    // out = T(O / l): l summed over the row's 4 threads, then 4-byte stores of columns 2c, 2c + 1.
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(AT_FULL, l[i], 1);
        l[i] += __shfl_xor_sync(AT_FULL, l[i], 2);
        inv[i] = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;  // l >= 1 for a real row
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uint64_t t = (uint64_t)t0 + 16 * warp + g + 8 * i;
        if (t >= Tn) continue;
        T* row = out + t * P + col + 2 * c;
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            const T a = from_f32<T>(o[n][2 * i] * inv[i]), b = from_f32<T>(o[n][2 * i + 1] * inv[i]);
            *reinterpret_cast<uint32_t*>(row + 8 * n) = at_pack2(a, b);
        }
    }
}

// at_impl for attention_tile.cuh's head-dim switch.
struct Impl {
    template <typename T, int D>
    static __device__ __forceinline__ void run(const T* q, const T* k_cache, const T* v_cache, T* out,
                                               const uint32_t* pos0, uint32_t Tn, uint32_t H, uint32_t cap,
                                               float scale) {
        at_impl<T, D>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale);
    }
};

}  // namespace at_mma

// The entry points take AttentionPrefillParams (params.h) by value.
template <typename T>
__device__ __forceinline__ void at_mma_entry(const AttentionPrefillParams& p) {
    at_dispatch<at_mma::Impl>(static_cast<const T*>(p.q), static_cast<const T*>(p.k_cache), static_cast<const T*>(p.v_cache),
                        static_cast<T*>(p.out), p.pos0, p.T, p.H, p.D, p.cap, p.scale);
}

extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_prefill_mma_bf16(const AttentionPrefillParams p) {
    pdl_begin();
    at_mma_entry<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_prefill_mma_f16(const AttentionPrefillParams p) {
    pdl_begin();
    at_mma_entry<__half>(p);
}
