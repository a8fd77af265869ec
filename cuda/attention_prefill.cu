// attention_prefill.cu — causal flash attention for prefill on tensor cores (WMMA), FlashAttention-2 style.
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
// Launch:  grid (⌈T/64⌉, H), block 128 (4 warps), dynamic smem ap_smem_bytes(D) =
//          2·64·(D+8)·2 (K and V tiles) + 64·68·4 (S/P) + 3·64·4 (m, l, α) bytes: 52992 at D = 128
//          (> 48 KiB: the launcher raises the limit). A block owns 64 query rows of one head, warp w
//          rows 16w..16w+15; Q (as WMMA fragments) and O (f32 accumulator fragments) stay in registers.
//          Per 64-key tile: S = Q·Kᵀ (WMMA, f32) → per-row online softmax → O = O·α + P̃·V (WMMA, f32);
//          key tiles past the block's last position are skipped, and inside a tile each warp skips
//          the 16-key blocks past its own last position. K(kt+1) and V(kt) are copied with cp.async
//          while the previous step computes. ~240 registers at D = 128 (no spills): 2 blocks / SM.
// Oracle:  backend::cpu::attention (src/backend/cpu.rs); launcher launch::attention_prefill.
#include "common.cuh"
#include <mma.h>

constexpr int AP_BQ = 64;            // query rows per block
constexpr int AP_BK = 64;            // key rows per tile
constexpr int AP_THREADS = 128;      // 4 warps x 16 query rows
constexpr int AP_LDS = AP_BK + 4;    // f32 per S row: 68 (272 bytes, spreads rows over banks)
constexpr int AP_LDP = 2 * AP_LDS;   // T per P row: 136, the same 272-byte stride (P row r aliases S row r)
constexpr unsigned AP_FULL = 0xffffffffu;

// Dynamic shared memory of the kernel at head dim D (the launcher computes the same number).
__host__ __device__ constexpr int ap_smem_bytes(int D) {
    return 2 * AP_BK * (D + 8) * 2 + AP_BQ * AP_LDS * 4 + 3 * AP_BQ * 4;
}

__device__ __forceinline__ uint16_t ap_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint16_t ap_bits(__half x) { return __half_as_ushort(x); }

// Four T values as one 8-byte word (element 0 at the lowest address).
template <typename T> __device__ __forceinline__ uint2 ap_pack4(T a, T b, T c, T d) {
    uint2 u;
    u.x = (uint32_t)ap_bits(a) | ((uint32_t)ap_bits(b) << 16);
    u.y = (uint32_t)ap_bits(c) | ((uint32_t)ap_bits(d) << 16);
    return u;
}

// 16-byte global -> shared copy; src_bytes 0 zero-fills the 16 bytes without reading `src`.
__device__ __forceinline__ void ap_cp_async16(void* smem_dst, const void* src, bool valid) {
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void ap_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void ap_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copy rows row0 .. row0 + n_valid - 1 of a [rows, P] matrix (src already offset to the head's
// column) into a [64, D + 8] shared tile; tile rows >= n_valid are zero-filled, never read.
template <typename T, int D>
__device__ __forceinline__ void ap_load_tile(T* tile, const T* src, uint32_t row0, uint32_t n_valid, uint32_t P) {
    constexpr int LDT = D + 8;
    constexpr int CPR = D / 8;  // 16-byte chunks per row
    constexpr int CHUNKS = AP_BK * CPR;
    static_assert(CHUNKS % AP_THREADS == 0, "tile chunks must split evenly over the block");
#pragma unroll
    for (int i = 0; i < CHUNKS / AP_THREADS; ++i) {
        const int c = (int)threadIdx.x + i * AP_THREADS;
        const int r = c / CPR, c8 = c % CPR;
        const bool valid = (uint32_t)r < n_valid;
        const T* g = valid ? src + (size_t)(row0 + r) * P + c8 * 8 : src;
        ap_cp_async16(tile + r * LDT + c8 * 8, g, valid);
    }
}

template <typename T, int D>
__device__ __forceinline__ void ap_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
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

    extern __shared__ __align__(128) unsigned char ap_smem[];
    T* Ks = reinterpret_cast<T*>(ap_smem);   // [64, LDT]
    T* Vs = Ks + AP_BK * LDT;                // [64, LDT]; holds the Q tile before the first V tile
    float* Ss = reinterpret_cast<float*>(ap_smem + 2 * AP_BK * LDT * sizeof(T));  // [64, AP_LDS]
    float* m_s = Ss + AP_BQ * AP_LDS;  // [64] running max per query row (f32)
    float* l_s = m_s + AP_BQ;          // [64] running sum of P̃ per query row
    float* a_s = l_s + AP_BQ;          // [64] rescale factor exp(m_old - m_new) of the current tile

    const uint32_t t0 = blockIdx.x * AP_BQ;
    const uint32_t h = blockIdx.y;
    if (t0 >= Tn || h >= H || cap == 0 || blockDim.x != AP_THREADS) return;  // block-uniform
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const uint32_t P = H * D;
    const uint64_t pos0 = *pos0_ptr;
    const size_t col = (size_t)h * D;

    // Position of block row R (0..63): rows past T take row T-1's (computed, never written); never >= cap,
    // so every position fits a u32 (the sum is formed in 64 bits: pos0 may be garbage).
    auto pos_of = [&](uint32_t R) -> uint32_t {
        const uint64_t t = (uint64_t)t0 + R < Tn ? (uint64_t)t0 + R : (uint64_t)Tn - 1;
        const uint64_t p = pos0 + t;
        return p < cap ? (uint32_t)p : cap - 1;
    };
    const uint32_t kv_last = pos_of(AP_BQ - 1);  // last key row any row of this block sees
    const uint32_t n_tiles = kv_last / AP_BK + 1;
    const bool warp_valid = (uint64_t)t0 + 16 * warp < Tn;  // warp has at least one real query row
    const uint32_t warp_first = pos_of(16 * warp);          // position of the warp's row 0
    const uint32_t warp_last = pos_of(16 * warp + 15);      // last key row this warp's rows see
    // pos_of(16w + r) == min(warp_first + r, warp_last): both sides clamp t to T-1 and p to cap-1.

    // Prologue: Q tile -> Vs (group 1), K tile 0 -> Ks (group 2).
    const uint32_t q_rows = Tn - t0;
    ap_load_tile<T, D>(Vs, q + col, t0, q_rows < AP_BQ ? q_rows : AP_BQ, P);
    ap_cp_commit();
    ap_load_tile<T, D>(Ks, k_cache + col, 0, kv_last < AP_BK ? kv_last + 1 : AP_BK, P);
    ap_cp_commit();

    // This warp's 16 rows of S (f32, ldm AP_LDS) and, aliased on the same bytes, of P (T, ldm AP_LDP).
    float* Sw = Ss + warp * 16 * AP_LDS;
    T* Pw = reinterpret_cast<T*>(Sw);

    // Which row of the 16x16 tile each accumulator element holds, found through the API (layout-
    // agnostic): load M[r][c] = r as an accumulator fragment and read back x[i].
    static_assert(NE <= 8, "row ids are packed 4 bits each into one u32");
    uint32_t rowids = 0;  // element i of an accumulator fragment is in row (rowids >> 4i) & 15
    {
        for (int i = lane; i < 256; i += 32) Sw[(i / 16) * AP_LDS + i % 16] = (float)(i / 16);
        __syncwarp();
        FragC fr;
        wmma::load_matrix_sync(fr, Sw, AP_LDS, wmma::mem_row_major);
#pragma unroll
        for (int i = 0; i < NE; ++i) rowids |= (uint32_t)fr.x[i] << (4 * i);
        __syncwarp();
    }

    if (lane < 16) {  // softmax state of this warp's rows (only this warp touches them)
        m_s[16 * warp + lane] = -INFINITY;
        l_s[16 * warp + lane] = 0.0f;
        a_s[16 * warp + lane] = 1.0f;
    }
    ap_cp_wait<1>();  // the Q group has landed (K tile 0 may still be in flight)
    __syncthreads();
    FragA qf[NF];
#pragma unroll
    for (int kk = 0; kk < NF; ++kk) wmma::load_matrix_sync(qf[kk], Vs + warp * 16 * LDT + kk * 16, LDT);
    FragC o[NF];
#pragma unroll
    for (int n = 0; n < NF; ++n) wmma::fill_fragment(o[n], 0.0f);

    for (uint32_t kt = 0; kt < n_tiles; ++kt) {
        const uint32_t key0 = kt * AP_BK;  // <= kv_last
        __syncthreads();  // Vs is free: Q fragments loaded (kt = 0) / previous P·V done
        ap_load_tile<T, D>(Vs, v_cache + col, key0, kv_last - key0 < AP_BK ? kv_last - key0 + 1 : AP_BK, P);
        ap_cp_commit();
        ap_cp_wait<1>();  // K tile kt has landed (V tile kt may still be in flight)
        __syncthreads();  // ... for every thread's copies

        // Warp-uniform: does any row of this warp see a key of this tile, and how many 16-key blocks.
        const bool active = warp_valid && key0 <= warp_last;
        const int nkb = !active ? 0 : warp_last - key0 < AP_BK ? (int)((warp_last - key0) / 16) + 1 : AP_BK / 16;

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
                wmma::store_matrix_sync(Sw + n * 16, acc, AP_LDS, wmma::mem_row_major);
            }
            __syncwarp();

            // Online softmax. Lane group g = lane / 8 takes row 4*it + g; lane li = lane % 8 of the
            // group owns columns 4li..4li+3 and 32+4li..32+4li+3 (each quarter-warp reads one
            // contiguous 128-byte S row segment: conflict-free). Reductions stay inside the group.
            const int g = lane / 8, li = lane % 8;
#pragma unroll
            for (int it = 0; it < 4; ++it) {
                const int r = 4 * it + g;  // row within the warp's 16
                const uint32_t p = (uint32_t)r <= warp_last - warp_first ? warp_first + r : warp_last;
                // Last visible column of this tile for row r (-1: none): key key0 + c is visible iff c <= vis.
                const int vis = p < key0 ? -1 : p - key0 < AP_BK ? (int)(p - key0) : AP_BK - 1;
                const float4 lo = *reinterpret_cast<const float4*>(Sw + r * AP_LDS + 4 * li);
                const float4 hi = *reinterpret_cast<const float4*>(Sw + r * AP_LDS + 32 + 4 * li);
                float sv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
                float mx = -INFINITY;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const int c = (k < 4 ? 0 : 32) + 4 * li + (k & 3);
                    sv[k] = c <= vis ? sv[k] * scale : -INFINITY;  // a select: stale/NaN S never leaks
                    mx = fmaxf(mx, sv[k]);
                }
#pragma unroll
                for (int off = 4; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(AP_FULL, mx, off));
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
                for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(AP_FULL, sum, off);
                __syncwarp();  // all S reads and m/l reads of this step precede the P / stats writes
                T* prow = Pw + r * AP_LDP;  // P row r overlays the first half of S row r
                *reinterpret_cast<uint2*>(prow + 4 * li) = ap_pack4(pv[0], pv[1], pv[2], pv[3]);
                *reinterpret_cast<uint2*>(prow + 32 + 4 * li) = ap_pack4(pv[4], pv[5], pv[6], pv[7]);
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
            const uint32_t nk0 = key0 + AP_BK;  // <= kv_last since tile kt + 1 exists
            ap_load_tile<T, D>(Ks, k_cache + col, nk0, kv_last - nk0 < AP_BK ? kv_last - nk0 + 1 : AP_BK, P);
            ap_cp_commit();
            ap_cp_wait<1>();  // V tile kt has landed (K tile kt+1 may still be in flight)
        } else {
            ap_cp_wait<0>();
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
                wmma::load_matrix_sync(pf, Pw + kb * 16, AP_LDP);
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
            wmma::store_matrix_sync(Sw + f * 16, o[c0 / 16 + f], AP_LDS, wmma::mem_row_major);
        __syncwarp();
        for (int v = lane; v < 16 * VPR; v += 32) {
            const int r = v / VPR, c8 = v % VPR;
            const uint64_t t = (uint64_t)t0 + 16 * warp + r;
            if (t < Tn) {
                const float* src = Sw + r * AP_LDS + c8 * 8;
                const float4 lo = *reinterpret_cast<const float4*>(src);
                const float4 hi = *reinterpret_cast<const float4*>(src + 4);
                const uint2 a = ap_pack4(from_f32<T>(lo.x), from_f32<T>(lo.y), from_f32<T>(lo.z), from_f32<T>(lo.w));
                const uint2 b = ap_pack4(from_f32<T>(hi.x), from_f32<T>(hi.y), from_f32<T>(hi.z), from_f32<T>(hi.w));
                *reinterpret_cast<uint4*>(out + t * P + col + c0 + c8 * 8) = make_uint4(a.x, a.y, b.x, b.y);
            }
        }
        __syncwarp();  // reads of this pass are done before the next pass overwrites Sw
    }
}

template <typename T>
__device__ __forceinline__ void ap_dispatch(const T* q, const T* k_cache, const T* v_cache, T* out,
                                            const uint32_t* pos0, uint32_t Tn, uint32_t H, uint32_t D, uint32_t cap,
                                            float scale) {
    switch (D) {
        case 16: ap_impl<T, 16>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        case 32: ap_impl<T, 32>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        case 64: ap_impl<T, 64>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        case 128: ap_impl<T, 128>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        default: break;  // unsupported head dim: the launcher refuses it before launching
    }
}

extern "C" __global__ void __launch_bounds__(AP_THREADS)
    attention_prefill_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                           __nv_bfloat16* out, const uint32_t* pos0, uint32_t T, uint32_t H, uint32_t D, uint32_t cap,
                           float scale) {
    pdl_begin();
    ap_dispatch(q, k_cache, v_cache, out, pos0, T, H, D, cap, scale);
}

extern "C" __global__ void __launch_bounds__(AP_THREADS)
    attention_prefill_f16(const __half* q, const __half* k_cache, const __half* v_cache, __half* out,
                          const uint32_t* pos0, uint32_t T, uint32_t H, uint32_t D, uint32_t cap, float scale) {
    pdl_begin();
    ap_dispatch(q, k_cache, v_cache, out, pos0, T, H, D, cap, scale);
}
