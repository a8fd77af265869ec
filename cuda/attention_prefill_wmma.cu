// attention_prefill_wmma.cu — run 4's WMMA flash attention (attention_prefill.cu) with the
// post-run-4 longest-tile-first grid (H, tiles) and the tile code shared with attention_prefill_mma.cu
// (attention_tile.cuh). NOT yet verified on a GPU: opt-in with QWEN_ATTN=wmma (launch::attention_prefill);
// it isolates the tile order's gain from the mma.sync kernel's in an A/B run. Same contract, same oracle.
//
// What:    for every query row t < T and head h, with p = min(*pos0 + t, cap - 1):
//            s_j   = (q[t, h] · k[j, h]) * scale                    j = 0..=p (causal, offset by pos0)
//            out[t, h] = T( Σ_j softmax(s)_j · v[j, h] )
//          Scores, running max m, row sum l and the output accumulator O are f32; the probabilities
//          P = exp(s - m) are rounded to T before the P·V product (as FlashAttention does) and l sums
//          those rounded values, so out = Σ P̃_j v_j / Σ P̃_j is an exact weighted mean of V rows up to
//          f32 rounding; O / l is rounded to T once at the end.
// Layout:  q [T, P] T, k_cache / v_cache [cap, P] T, out [T, P] T, P = H * D, head h = columns h*D..h*D+D;
//          pos0 [1] u32 (device scalar: position of query row 0). D ∈ {16, 32, 64, 128}; another D
//          does nothing (the launcher refuses it). Every row is 16-byte aligned (P*2 % 32 == 0 and the
//          launcher checks the base pointers), so all global traffic is 16-byte cp.async / stores.
//          Cache rows > the block's last needed position (and all rows >= cap) are never read.
// Launch:  grid (H, ⌈T/64⌉), block 128 (4 warps), dynamic smem at_smem_bytes(D) =
//          2·64·(D+8)·2 (K and V tiles) + 64·68·4 (S/P) + 3·64·4 (m, l, α) bytes: 52992 at D = 128
//          (> 48 KiB: the launcher raises the limit). Block (h, y) owns query tile ⌈T/64⌉ - 1 - y of
//          head h (the heaviest tiles are dispatched first). A block owns 64 query rows of one head, warp w
//          rows 16w..16w+15; Q (as WMMA fragments) and O (f32 accumulator fragments) stay in registers.
//          Per 64-key tile: S = Q·Kᵀ (WMMA, f32) → per-row online softmax → O = O·α + P̃·V (WMMA, f32);
//          key tiles past the block's last position are skipped, and inside a tile each warp skips
//          the 16-key blocks past its own last position. K(kt+1) and V(kt) are copied with cp.async
//          while the previous step computes. ~240 registers at D = 128 (no spills): 2 blocks / SM.
// Oracle:  backend::cpu::attention (src/backend/cpu.rs); launcher launch::attention_prefill
//          (AttentionPrefillKernel::Wmma).
#include "attention_tile.cuh"
#include "params.h"
#include <mma.h>

// Internals in their own namespace (attention_prefill.cu has its own at_impl).
namespace at_wmma {

constexpr int AT_LDS = AT_BK + 4;    // f32 per S row: 68 (272 bytes, spreads rows over banks)
constexpr int AT_LDP = 2 * AT_LDS;   // T per P row: 136, the same 272-byte stride (P row r aliases S row r)

// Dynamic shared memory of the kernel at head dim D (the launcher computes the same number).
__host__ __device__ constexpr int at_smem_bytes(int D) {
    return 2 * AT_BK * (D + 8) * 2 + AT_BQ * AT_LDS * 4 + 3 * AT_BQ * 4;
}

// Four T values as one 8-byte word (element 0 at the lowest address).
template <typename T> __device__ __forceinline__ uint2 at_pack4(T a, T b, T c, T d) {
    uint2 u;
    u.x = (uint32_t)at_bits(a) | ((uint32_t)at_bits(b) << 16);
    u.y = (uint32_t)at_bits(c) | ((uint32_t)at_bits(d) << 16);
    return u;
}

template <typename T, int D>
__device__ __forceinline__ void at_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                        const T* __restrict__ v_cache, T* __restrict__ out,
                                        const uint32_t* __restrict__ pos0_ptr, uint32_t Tn, uint32_t H, uint32_t cap,
                                        float scale) {
    using namespace nvcuda;
    constexpr int LDT = D + 8;  // T per K/V/Q smem row (2D+16 bytes: 16-byte aligned, conflict-free ldmatrix)
    constexpr int NF = D / 16;  // 16-wide fragments along D
    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
    using FragKt = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;  // Kᵀ from row-major K
    using FragV = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
    using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    constexpr int NE = FragC::num_elements;

    extern __shared__ __align__(128) unsigned char at_smem[];
    T* Ks = reinterpret_cast<T*>(at_smem);   // [64, LDT]
    T* Vs = Ks + AT_BK * LDT;                // [64, LDT]; holds the Q tile before the first V tile
    float* Ss = reinterpret_cast<float*>(at_smem + 2 * AT_BK * LDT * sizeof(T));  // [64, AT_LDS]
    float* m_s = Ss + AT_BQ * AT_LDS;  // [64] running max per query row (f32)
    float* l_s = m_s + AT_BQ;          // [64] running sum of P̃ per query row
    float* a_s = l_s + AT_BQ;          // [64] rescale factor exp(m_old - m_new) of the current tile

    AtBlock blk;  // tile, head, warp, positions (attention_tile.cuh)
    if (!at_block(blk, pos0_ptr, Tn, H, D, cap)) return;  // block-uniform
    const int warp = blk.warp, lane = blk.lane;
    const uint32_t P = blk.P, t0 = blk.t0, kv_last = blk.kv_last, n_tiles = blk.n_tiles;
    const size_t col = blk.col;
    const bool warp_valid = blk.warp_valid;
    const uint32_t warp_last = blk.warp_last;

    // Prologue: Q tile -> Vs (group 1), K tile 0 -> Ks (group 2).
    const uint32_t q_rows = Tn - t0;
    at_load_tile<T, D>(Vs, q + col, t0, q_rows < AT_BQ ? q_rows : AT_BQ, P);
    at_cp_commit();
    at_load_tile<T, D>(Ks, k_cache + col, 0, AtBlock::rows_upto(0, kv_last), P);
    at_cp_commit();

    // This warp's 16 rows of S (f32, ldm AT_LDS) and, aliased on the same bytes, of P (T, ldm AT_LDP).
    float* Sw = Ss + warp * 16 * AT_LDS;
    T* Pw = reinterpret_cast<T*>(Sw);

    // Which row of the 16x16 tile each accumulator element holds, found through the API (layout-
    // agnostic): load M[r][c] = r as an accumulator fragment and read back x[i].
    static_assert(NE <= 8, "row ids are packed 4 bits each into one u32");
    uint32_t rowids = 0;  // element i of an accumulator fragment is in row (rowids >> 4i) & 15
    {
        for (int i = lane; i < 256; i += 32) Sw[(i / 16) * AT_LDS + i % 16] = (float)(i / 16);
        __syncwarp();
        FragC fr;
        wmma::load_matrix_sync(fr, Sw, AT_LDS, wmma::mem_row_major);
#pragma unroll
        for (int i = 0; i < NE; ++i) rowids |= (uint32_t)fr.x[i] << (4 * i);
        __syncwarp();
    }

    if (lane < 16) {  // softmax state of this warp's rows (only this warp touches them)
        m_s[16 * warp + lane] = -INFINITY;
        l_s[16 * warp + lane] = 0.0f;
        a_s[16 * warp + lane] = 1.0f;
    }
    at_cp_wait<1>();  // the Q group has landed (K tile 0 may still be in flight)
    __syncthreads();
    FragA qf[NF];
#pragma unroll
    for (int kk = 0; kk < NF; ++kk) wmma::load_matrix_sync(qf[kk], Vs + warp * 16 * LDT + kk * 16, LDT);
    FragC o[NF];
#pragma unroll
    for (int n = 0; n < NF; ++n) wmma::fill_fragment(o[n], 0.0f);

    for (uint32_t kt = 0; kt < n_tiles; ++kt) {
        const uint32_t key0 = kt * AT_BK;  // <= kv_last
        __syncthreads();  // Vs is free: Q fragments loaded (kt = 0) / previous P·V done
        at_load_tile<T, D>(Vs, v_cache + col, key0, AtBlock::rows_upto(key0, kv_last), P);
        at_cp_commit();
        at_cp_wait<1>();  // K tile kt has landed (V tile kt may still be in flight)
        __syncthreads();  // ... for every thread's copies

        // Warp-uniform: does any row of this warp see a key of this tile, and how many 16-key blocks.
        const bool active = warp_valid && key0 <= warp_last;
        const int nkb = !active ? 0 : warp_last - key0 < AT_BK ? (int)((warp_last - key0) / 16) + 1 : AT_BK / 16;

        if (active) {
            // S[16, 16*nkb] = Q_w · K_tileᵀ (unscaled, f32). Columns >= 16*nkb keep stale values; they
            // are beyond every row's position and get masked below.
            for (int n = 0; n < nkb; ++n) {
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < NF; ++kk) {
                    FragKt kf;
                    wmma::load_matrix_sync(kf, Ks + n * 16 * LDT + kk * 16, LDT);
                    wmma::mma_sync(acc, qf[kk], kf, acc);
                }
                wmma::store_matrix_sync(Sw + n * 16, acc, AT_LDS, wmma::mem_row_major);
            }
            __syncwarp();

            // Online softmax. Lane group g = lane / 8 takes row 4*it + g; lane li = lane % 8 of the
            // group owns columns 4li..4li+3 and 32+4li..32+4li+3 (each quarter-warp reads one
            // contiguous 128-byte S row segment: conflict-free). Reductions stay inside the group.
            const int g = lane / 8, li = lane % 8;
#pragma unroll
            for (int it = 0; it < 4; ++it) {
                const int r = 4 * it + g;  // row within the warp's 16
                const uint32_t p = blk.warp_pos((uint32_t)r);
                // Last visible column of this tile for row r (-1: none): key key0 + c is visible iff c <= vis.
                const int vis = p < key0 ? -1 : p - key0 < AT_BK ? (int)(p - key0) : AT_BK - 1;
                const float4 lo = *reinterpret_cast<const float4*>(Sw + r * AT_LDS + 4 * li);
                const float4 hi = *reinterpret_cast<const float4*>(Sw + r * AT_LDS + 32 + 4 * li);
                float sv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
                float mx = -INFINITY;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const int c = (k < 4 ? 0 : 32) + 4 * li + (k & 3);
                    sv[k] = c <= vis ? sv[k] * scale : -INFINITY;  // a select: stale/NaN S never leaks
                    mx = fmaxf(mx, sv[k]);
                }
#pragma unroll
                for (int off = 4; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(AT_FULL, mx, off));
                const int R = 16 * warp + r;  // row within the block
                const float m_old = m_s[R];
                const float l_old = l_s[R];
                const float m_new = fmaxf(m_old, mx);
                // No visible key yet (cannot happen: key 0 is in tile 0) -> keep everything at 0, no NaN.
                const float m_use = m_new == -INFINITY ? 0.0f : m_new;
                const float alpha = expf(m_old - m_use);  // 0 when m_old = -inf
                T pv[8];
                float sum = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    pv[k] = from_f32<T>(expf(sv[k] - m_use));  // exp(-inf) = 0 for masked columns
                    sum += to_f32(pv[k]);                     // l sums the rounded P that feeds P·V
                }
#pragma unroll
                for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(AT_FULL, sum, off);
                __syncwarp();  // all S reads and m/l reads of this step precede the P / stats writes
                T* prow = Pw + r * AT_LDP;  // P row r overlays the first half of S row r
                *reinterpret_cast<uint2*>(prow + 4 * li) = at_pack4(pv[0], pv[1], pv[2], pv[3]);
                *reinterpret_cast<uint2*>(prow + 32 + 4 * li) = at_pack4(pv[4], pv[5], pv[6], pv[7]);
                if (li == 0) {
                    m_s[R] = m_new;
                    l_s[R] = l_old * alpha + sum;
                    a_s[R] = alpha;
                }
            }
            __syncwarp();
        }

        __syncthreads();  // every warp is done reading Ks
        if (kt + 1 < n_tiles) {
            const uint32_t nk0 = key0 + AT_BK;  // <= kv_last since tile kt + 1 exists
            at_load_tile<T, D>(Ks, k_cache + col, nk0, AtBlock::rows_upto(nk0, kv_last), P);
            at_cp_commit();
            at_cp_wait<1>();  // V tile kt has landed (K tile kt+1 may still be in flight)
        } else {
            at_cp_wait<0>();
        }
        __syncthreads();  // ... for every thread's copies

        if (active) {
            // O = O * alpha(row) + P̃ · V over the nkb 16-key blocks (P̃ is 0 beyond them).
            float a[NE];
#pragma unroll
            for (int i = 0; i < NE; ++i) a[i] = a_s[16 * warp + ((rowids >> (4 * i)) & 15)];
#pragma unroll
            for (int n = 0; n < NF; ++n) {
#pragma unroll
                for (int i = 0; i < NE; ++i) o[n].x[i] *= a[i];
            }
            for (int kb = 0; kb < nkb; ++kb) {
                FragA pf;
                wmma::load_matrix_sync(pf, Pw + kb * 16, AT_LDP);
#pragma unroll
                for (int n = 0; n < NF; ++n) {
                    FragV vf;
                    wmma::load_matrix_sync(vf, Vs + kb * 16 * LDT + n * 16, LDT);
                    wmma::mma_sync(o[n], pf, vf, o[n]);
                }
            }
        }
    }

    if (!warp_valid) return;  // no real query rows (no barrier follows)
    // out = T(O / l), staged through this warp's S rows (f32) CW columns at a time, 16-byte stores.
    {
        float inv[NE];
#pragma unroll
        for (int i = 0; i < NE; ++i) {
            const float l = l_s[16 * warp + ((rowids >> (4 * i)) & 15)];  // >= 1 for a real row
            inv[i] = l > 0.0f ? 1.0f / l : 0.0f;
        }
#pragma unroll
        for (int n = 0; n < NF; ++n) {
#pragma unroll
            for (int i = 0; i < NE; ++i) o[n].x[i] *= inv[i];
        }
    }
    constexpr int CW = D < 64 ? D : 64;  // columns per pass (fits the 64 S columns of the warp's rows)
    constexpr int VPR = CW / 8;           // 16-byte output vectors per row per pass
    __syncwarp();                         // P reads of the last tile are done before Sw is overwritten
#pragma unroll
    for (int c0 = 0; c0 < D; c0 += CW) {
#pragma unroll
        for (int f = 0; f < CW / 16; ++f)
            wmma::store_matrix_sync(Sw + f * 16, o[c0 / 16 + f], AT_LDS, wmma::mem_row_major);
        __syncwarp();
        for (int v = lane; v < 16 * VPR; v += 32) {
            const int r = v / VPR, c8 = v % VPR;
            const uint64_t t = (uint64_t)t0 + 16 * warp + r;
            if (t < Tn) {
                const float* src = Sw + r * AT_LDS + c8 * 8;
                const float4 lo = *reinterpret_cast<const float4*>(src);
                const float4 hi = *reinterpret_cast<const float4*>(src + 4);
                const uint2 a = at_pack4(from_f32<T>(lo.x), from_f32<T>(lo.y), from_f32<T>(lo.z), from_f32<T>(lo.w));
                const uint2 b = at_pack4(from_f32<T>(hi.x), from_f32<T>(hi.y), from_f32<T>(hi.z), from_f32<T>(hi.w));
                *reinterpret_cast<uint4*>(out + t * P + col + c0 + c8 * 8) = make_uint4(a.x, a.y, b.x, b.y);
            }
        }
        __syncwarp();  // reads of this pass are done before the next pass overwrites Sw
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

}  // namespace at_wmma

// The entry points take AttentionPrefillParams (params.h) by value.
template <typename T>
__device__ __forceinline__ void at_wmma_entry(const AttentionPrefillParams& p) {
    at_dispatch<at_wmma::Impl>(static_cast<const T*>(p.q), static_cast<const T*>(p.k_cache), static_cast<const T*>(p.v_cache),
                        static_cast<T*>(p.out), p.pos0, p.T, p.H, p.D, p.cap, p.scale);
}

extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_prefill_wmma_bf16(const AttentionPrefillParams p) {
    pdl_begin();
    at_wmma_entry<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_prefill_wmma_f16(const AttentionPrefillParams p) {
    pdl_begin();
    at_wmma_entry<__half>(p);
}
