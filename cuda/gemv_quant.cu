// gemv_quant.cu — the decode matmul straight from quantized weights, and their dequantization to T
// for the prefill GEMM (issue 15). Formats and device layouts: cuda/quant_params.h. Emulator:
// tools/cuda_emu/h_gemv_quant.cpp. Verified on the H200 in run 5 (2026-12-04, 8be7cb9), except
// gemv_nf4_rows, gemv_int8_rows and dequant_gptq{4,8}_tile (added after it; opt-in).
//
// What:    gemv_{nf4,int8,gptq4,gptq8}_T: y[n] = sum_k w[n, k] * f32(x[k]) for n < N (one token, B = 1;
//          f32 accumulation), w the exact dequantized weight of the CPU oracle (quant::QuantMatrix::
//          decode_rows). The per-block / per-row / per-group scale multiplies a partial sum instead of
//          each weight (the same value up to f32 rounding of the sum).
//          dequant_{nf4,int8,gptq4,gptq8}_T: out[n, k] = T(w[n, k]) (round to nearest even), W [N, K]
//          in the original input order, for cuBLAS (launch::Blas::gemm).
//          dequant_gptq{4,8}_tile_T (opt-in, QWEN_GPTQ_DEQUANT=tile): dequant_gptq*'s out, the same
//          bits, written through a shared-memory tile so that stores run along k (coalesced).
// Layout:  x [K] T, y [N] f32, out [N, K] T; the weights as quant_params.h says.
// Launch:  gemv_nf4 / gemv_int8: grid (G), block 256 = 8 warps, warp g of the grid's 8 G takes rows
//          n = g, g + 8 G, ... (the launcher picks G = ceil(N / 8)). Vector path (NF4: K % 32 == 0,
//          Int8: K % 16 == 0, codes and x 16-byte aligned; uniform over the grid): lane l reads the
//          row's 16-byte chunks c = l, l + 32, ... through ld.global.nc.L1::no_allocate (32 NF4 codes
//          = one absmax block half, or 16 Int8 codes), x through __ldg (stays in L1). Scalar path
//          otherwise. NF4's codebook: a 256-entry byte -> (high, low) value table in shared memory.
//          Warp-shuffle reduction per row; lane 0 stores y[n]. gemv_nf4_rows / gemv_int8_rows
//          (opt-in): block 128, four rows a warp (their comments below).
//          gemv_gptq*: grid (ceil(N / 16)), block 256: thread t takes the 4 columns n0 = 16 b + 4 (t % 4)
//          (one 16-byte load of qweight per word row: 4 lanes read 64 contiguous bytes) and the word
//          rows r = t / 4, t / 4 + 64, ...; partial sums of the 64 row sets are added in shared memory
//          (fixed order) and threads 0..15 store y. With a permutation, x is first gathered into
//          dynamic shared memory in slot order (xs [rows * 32/bits] f32, padding slots 0; the launcher
//          passes that many bytes); without one x is read from global memory.
//          dequant_*: grid-stride over elements (NF4: code bytes, GPTQ: qweight words, n fastest).
//          dequant_gptq*_tile: block 256, grid-stride over tiles of 32 columns x 256 slots (column
//          tile fastest; the launcher picks min(tiles, 16 per SM)), 16 KB static shared memory: the
//          tile read coalesced along n, stored transposed (XOR-swizzled 16-byte chunks), written
//          along k: 16-byte stores without a permutation when K % 8 == 0 and out is 16-byte
//          aligned, else one element per thread and tile row (act-order: at k = perm[s]).
//          Every entry calls pdl_begin() before touching x, y or out (common.cuh).
// Oracle:  quant::QuantMatrix::matmul / decode_rows (src/quant/); launcher launch::gemv_quant.
#include "common.cuh"
#include "quant_params.h"

namespace {

constexpr int GQ_WARPS = 8;
constexpr int GQ_THREADS = GQ_WARPS * 32;  // launch::gemv_quant uses the same block
constexpr int GQ_GPTQ_COLS = 16;           // columns of a gemv_gptq block: 4 lanes x 4 columns
constexpr int GQ_GPTQ_ROWSETS = GQ_THREADS / 4;  // 64 word-row sets per block
constexpr float GQ_INV_127 = 7.874015718698502e-3f;  // bitsandbytes' 1/127 (quant::int8::INV_127)

// The 16 NF4 values (bitsandbytes get_4bit_type("nf4"), as f32; quant::nf4::NF4_CODE).
__device__ __forceinline__ float gq_nf4_value(uint32_t q) {
    switch (q & 15u) {
        case 0: return -1.0f;
        case 1: return -0.6961928009986877f;
        case 2: return -0.5250730514526367f;
        case 3: return -0.39491748809814453f;
        case 4: return -0.28444138169288635f;
        case 5: return -0.18477343022823334f;
        case 6: return -0.09105003625154495f;
        case 7: return 0.0f;
        case 8: return 0.07958029955625534f;
        case 9: return 0.16093020141124725f;
        case 10: return 0.24611230194568634f;
        case 11: return 0.33791524171829224f;
        case 12: return 0.44070982933044434f;
        case 13: return 0.5626170039176941f;
        case 14: return 0.7229568362236023f;
        default: return 1.0f;
    }
}

// 16-byte streaming load of weights: read-only path, no L1 allocation.
__device__ __forceinline__ uint4 gq_ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Two packed T values (low half first = lower address) to two floats, exactly.
template <typename T> __device__ __forceinline__ float2 gq_pair(uint32_t v);
template <> __device__ __forceinline__ float2 gq_pair<__nv_bfloat16>(uint32_t v) {
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
}
template <> __device__ __forceinline__ float2 gq_pair<__half>(uint32_t v) {
    __half2 h;
    memcpy(&h, &v, sizeof(h));
    return __half22float2(h);
}

// The 8 T values of a uint4 as floats, in memory order.
template <typename T> __device__ __forceinline__ void gq_unpack8(const uint4& v, float (&f)[8]) {
    const float2 a = gq_pair<T>(v.x), b = gq_pair<T>(v.y), c = gq_pair<T>(v.z), d = gq_pair<T>(v.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

__device__ __forceinline__ float gq_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ bool gq_aligned16(const void* a, const void* b) {
    return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) & 15u) == 0;
}

// The rows n0 .. n0 + R - 1 of a rows kernel's warp (gemv_nf4_rows, gemv_int8_rows), those past N
// clamped to N - 1: computed on a real row and not stored, so the loop has no branch and the R rows'
// loads issue together.
template <int R> __device__ __forceinline__ void gq_rows_clamped(uint64_t n0, uint64_t N, uint64_t (&rows)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = n0 + r < N ? n0 + r : N - 1u;
}

// ---------------------------------------------------------------- NF4
// Fill the byte -> (NF4 of the high nibble, NF4 of the low nibble) table; every thread of the block
// takes part (block of 256) before any of them may exit.
__device__ __forceinline__ void gq_nf4_table(float2* pairs) {
    pairs[threadIdx.x] = make_float2(gq_nf4_value(threadIdx.x >> 4), gq_nf4_value(threadIdx.x & 15u));
    __syncthreads();
}

template <typename T> __device__ __forceinline__ void gq_gemv_nf4(const QuantNf4Params& p) {
    __shared__ float2 gq_nf4_pairs[GQ_THREADS];
    gq_nf4_table(gq_nf4_pairs);
    pdl_begin();
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t W = (uint64_t)gridDim.x * GQ_WARPS;
    const uint64_t N = p.n, K = p.k;
    const T* x = static_cast<const T*>(p.x);
    float* y = static_cast<float*>(p.out);
    const bool vec = K % 32u == 0 && gq_aligned16(p.codes, x);
    for (uint64_t n = (uint64_t)blockIdx.x * GQ_WARPS + (threadIdx.x >> 5); n < N; n += W) {  // warp-uniform
        float acc = 0.0f;
        if (vec && K > 0) {
            // Row n = bytes n K / 2 .. (16-byte aligned: K % 32 == 0); chunk c = elements n K + 32 c ..
            // + 32, all in absmax block (n K + 32 c) / 64.
            const uint64_t C = K / 32u;
            const uint4* crow = reinterpret_cast<const uint4*>(p.codes + n * K / 2u);  // [C]
            const uint4* x4 = reinterpret_cast<const uint4*>(x);                      // [K / 8]
#pragma unroll 4
            for (uint64_t c = lane; c < C; c += 32u) {
                const uint4 q = gq_ld_stream(crow + c);
                const float am = __ldg(p.absmax + (n * K + 32u * c) / 64u);
                const uint32_t words[4] = {q.x, q.y, q.z, q.w};
                float part = 0.0f;
#pragma unroll
                for (int v = 0; v < 4; ++v) {  // word v: bytes 4v..4v+3 = elements 8v..8v+7 of the chunk
                    float xf[8];
                    gq_unpack8<T>(__ldg(x4 + 4u * c + v), xf);
#pragma unroll
                    for (int b = 0; b < 4; ++b) {
                        const float2 w = gq_nf4_pairs[(words[v] >> (8 * b)) & 0xFFu];
                        part = fmaf(w.x, xf[2 * b], part);
                        part = fmaf(w.y, xf[2 * b + 1], part);
                    }
                }
                acc = fmaf(part, am, acc);
            }
        } else {
            // Scalar path: any K, any alignment. Lane l takes k = l, l + 32, ...
            for (uint64_t k = lane; k < K; k += 32u) {
                const uint64_t e = n * K + k;
                const uint32_t byte = p.codes[e / 2u];
                const uint32_t q = (e & 1u) ? (byte & 15u) : (byte >> 4);
                const float w = gq_nf4_pairs[q << 4].x * __ldg(p.absmax + e / 64u);
                acc = fmaf(w, to_f32(x[k]), acc);
            }
        }
        const float sum = gq_warp_sum(acc);
        if (lane == 0) y[n] = sum;
    }
}

// gemv_nf4_rows (opt-in, QWEN_NF4=rows): four rows per warp, block 128 = 4 warps = 16 rows (the
// launcher picks G = ceil(N / 16)); warp g of the grid's 4 G takes rows 4 g .. 4 g + 3, then + 16 G,
// ... Against gemv_nf4 it (1) converts lane l's x chunk once for its four rows instead of once per
// row, and (2) looks codes up one nibble at a time in a 16-entry f32 table held twice, half-warp h
// reading copy h (banks 16 h .. 16 h + 15): no bank conflicts whatever the codes, where gemv_nf4's
// 256-entry float2 table conflicts on random bytes (H200 run 5: NF4 7B decode at 19 % of its floor).
// Each row's sum runs in gemv_nf4's order (same chunk order per lane, same FMA chain, same
// reduction), so the two kernels give the same bits; rows past N are computed on row N - 1 and not
// stored (no branch in the loop, so the four rows' loads issue together).
constexpr int GQ_NF4R_WARPS = 4;
constexpr int GQ_NF4R_THREADS = GQ_NF4R_WARPS * 32;  // launch::gemv_quant's NF4_ROWS_BLOCK
constexpr int GQ_NF4R_ROWS = 4;                       // rows per warp

template <typename T> __device__ __forceinline__ void gq_gemv_nf4_rows(const QuantNf4Params& p) {
    __shared__ float gq_nf4r_tab[32];  // [2][16]: copy h for half-warp h
    if (threadIdx.x < 32u) gq_nf4r_tab[threadIdx.x] = gq_nf4_value(threadIdx.x & 15u);
    __syncthreads();
    pdl_begin();
    const uint32_t lane = threadIdx.x & 31u;
    const float* tab = gq_nf4r_tab + (lane & 16u);
    const uint64_t N = p.n, K = p.k;
    const T* x = static_cast<const T*>(p.x);
    float* y = static_cast<float*>(p.out);
    const bool vec = K % 32u == 0 && gq_aligned16(p.codes, x);
    const uint64_t stride = (uint64_t)gridDim.x * GQ_NF4R_WARPS * GQ_NF4R_ROWS;
    for (uint64_t n0 = ((uint64_t)blockIdx.x * GQ_NF4R_WARPS + (threadIdx.x >> 5)) * GQ_NF4R_ROWS; n0 < N;
         n0 += stride) {  // warp-uniform
        uint64_t rows[GQ_NF4R_ROWS];
        gq_rows_clamped(n0, N, rows);
        float acc[GQ_NF4R_ROWS] = {};
        if (vec && K > 0) {
            const uint64_t C = K / 32u;
            const uint4* x4 = reinterpret_cast<const uint4*>(x);  // [K / 8]
            for (uint64_t c = lane; c < C; c += 32u) {
                uint4 q[GQ_NF4R_ROWS];
                float am[GQ_NF4R_ROWS];
#pragma unroll
                for (int r = 0; r < GQ_NF4R_ROWS; ++r) {
                    q[r] = gq_ld_stream(reinterpret_cast<const uint4*>(p.codes + rows[r] * K / 2u) + c);
                    am[r] = __ldg(p.absmax + (rows[r] * K + 32u * c) / 64u);
                }
                float xf[4][8];
#pragma unroll
                for (int v = 0; v < 4; ++v) gq_unpack8<T>(__ldg(x4 + 4u * c + v), xf[v]);
#pragma unroll
                for (int r = 0; r < GQ_NF4R_ROWS; ++r) {
                    const uint32_t words[4] = {q[r].x, q[r].y, q[r].z, q[r].w};
                    float part = 0.0f;
#pragma unroll
                    for (int v = 0; v < 4; ++v) {
#pragma unroll
                        for (int b = 0; b < 4; ++b) {
                            const uint32_t byte = (words[v] >> (8 * b)) & 0xFFu;
                            part = fmaf(tab[byte >> 4], xf[v][2 * b], part);
                            part = fmaf(tab[byte & 15u], xf[v][2 * b + 1], part);
                        }
                    }
                    acc[r] = fmaf(part, am[r], acc[r]);
                }
            }
        } else {
            // Scalar path (any K, any alignment), as gemv_nf4's: lane l takes k = l, l + 32, ...
            for (uint64_t k = lane; k < K; k += 32u) {
                const float xk = to_f32(x[k]);
#pragma unroll
                for (int r = 0; r < GQ_NF4R_ROWS; ++r) {
                    const uint64_t e = rows[r] * K + k;
                    const uint32_t byte = p.codes[e / 2u];
                    const uint32_t q = (e & 1u) ? (byte & 15u) : (byte >> 4);
                    acc[r] = fmaf(tab[q] * __ldg(p.absmax + e / 64u), xk, acc[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < GQ_NF4R_ROWS; ++r) {
            const float sum = gq_warp_sum(acc[r]);
            if (lane == 0 && n0 + r < N) y[n0 + r] = sum;
        }
    }
}

template <typename T> __device__ __forceinline__ void gq_dequant_nf4(const QuantNf4Params& p) {
    __shared__ float2 gq_nf4_dq_pairs[GQ_THREADS];
    gq_nf4_table(gq_nf4_dq_pairs);
    pdl_begin();
    const uint64_t total = (uint64_t)p.n * p.k, bytes = (total + 1u) / 2u;
    T* out = static_cast<T*>(p.out);
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += (uint64_t)gridDim.x * blockDim.x) {
        const float2 w = gq_nf4_dq_pairs[p.codes[i]];
        const uint64_t e = 2u * i;  // e and e + 1 share a block (blocks are even-sized)
        const float am = __ldg(p.absmax + e / 64u);
        out[e] = from_f32<T>(w.x * am);
        if (e + 1u < total) out[e + 1u] = from_f32<T>(w.y * am);
    }
}

// ---------------------------------------------------------------- Int8
template <typename T> __device__ __forceinline__ void gq_gemv_int8(const QuantInt8Params& p) {
    pdl_begin();
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t W = (uint64_t)gridDim.x * GQ_WARPS;
    const uint64_t N = p.n, K = p.k;
    const T* x = static_cast<const T*>(p.x);
    float* y = static_cast<float*>(p.out);
    const bool vec = K % 16u == 0 && gq_aligned16(p.codes, x);
    for (uint64_t n = (uint64_t)blockIdx.x * GQ_WARPS + (threadIdx.x >> 5); n < N; n += W) {
        float acc = 0.0f;
        if (vec && K > 0) {
            const uint64_t C = K / 16u;
            const uint4* crow = reinterpret_cast<const uint4*>(p.codes + n * K);  // [C] 16 codes each
            const uint4* x4 = reinterpret_cast<const uint4*>(x);
#pragma unroll 4
            for (uint64_t c = lane; c < C; c += 32u) {
                const uint4 q = gq_ld_stream(crow + c);
                const uint32_t words[4] = {q.x, q.y, q.z, q.w};
                float xf[2][8];
                gq_unpack8<T>(__ldg(x4 + 2u * c), xf[0]);
                gq_unpack8<T>(__ldg(x4 + 2u * c + 1u), xf[1]);
#pragma unroll
                for (int v = 0; v < 4; ++v) {
#pragma unroll
                    for (int b = 0; b < 4; ++b) {
                        const int i = 4 * v + b;  // element of the chunk
                        const float w = (float)(int8_t)((words[v] >> (8 * b)) & 0xFFu);
                        acc = fmaf(w, xf[i / 8][i % 8], acc);
                    }
                }
            }
        } else {
            for (uint64_t k = lane; k < K; k += 32u) acc = fmaf((float)p.codes[n * K + k], to_f32(x[k]), acc);
        }
        const float sum = gq_warp_sum(acc);
        if (lane == 0) y[n] = (sum * __ldg(p.scb + n)) * GQ_INV_127;
    }
}

// gemv_int8_rows (opt-in, QWEN_INT8=rows): four rows per warp, block 128 = 4 warps = 16 rows (the
// launcher picks G = ceil(N / 16)); warp g of the grid's 4 G takes rows 4 g .. 4 g + 3, then + 16 G,
// ... In gemv_int8 lane l loads 32 bytes of x (two uint4) and converts 16 values for every 16-byte
// chunk of codes, so x moves twice the weight bytes through L1 (H200 run 5: Int8 7B decode at 54.5 %
// of its bandwidth floor, 299 tok/s). Here lane l converts its x chunk once for four rows: x traffic
// per weight byte / 4, and four independent 16-byte code loads in flight per chunk. Each row's sum
// runs in gemv_int8's order (same chunks per lane in the same order, the same FMA chain straight
// into the row's accumulator, the same warp reduction and epilogue (sum * SCB[n]) / 127), so the two
// kernels give the same bits; rows past N are computed on row N - 1 and not stored (no branch in the
// loop). Vector / scalar path conditions as gemv_int8's. Block 128 as gemv_nf4_rows: 16 rows a block
// keeps the 7B's smallest matrices (N = 4096: 256 blocks) spread over every SM.
constexpr int GQ_I8R_WARPS = 4;
constexpr int GQ_I8R_THREADS = GQ_I8R_WARPS * 32;  // launch::gemv_quant's INT8_ROWS_BLOCK
constexpr int GQ_I8R_ROWS = 4;                      // rows per warp

template <typename T> __device__ __forceinline__ void gq_gemv_int8_rows(const QuantInt8Params& p) {
    pdl_begin();
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t N = p.n, K = p.k;
    const T* x = static_cast<const T*>(p.x);
    float* y = static_cast<float*>(p.out);
    const bool vec = K % 16u == 0 && gq_aligned16(p.codes, x);
    const uint64_t stride = (uint64_t)gridDim.x * GQ_I8R_WARPS * GQ_I8R_ROWS;
    for (uint64_t n0 = ((uint64_t)blockIdx.x * GQ_I8R_WARPS + (threadIdx.x >> 5)) * GQ_I8R_ROWS; n0 < N;
         n0 += stride) {  // warp-uniform
        uint64_t rows[GQ_I8R_ROWS];
        gq_rows_clamped(n0, N, rows);
        float acc[GQ_I8R_ROWS] = {};
        if (vec && K > 0) {
            const uint64_t C = K / 16u;
            const uint4* x4 = reinterpret_cast<const uint4*>(x);
#pragma unroll 2
            for (uint64_t c = lane; c < C; c += 32u) {
                uint4 q[GQ_I8R_ROWS];
#pragma unroll
                for (int r = 0; r < GQ_I8R_ROWS; ++r) q[r] = gq_ld_stream(reinterpret_cast<const uint4*>(p.codes + rows[r] * K) + c);
                float xf[2][8];
                gq_unpack8<T>(__ldg(x4 + 2u * c), xf[0]);
                gq_unpack8<T>(__ldg(x4 + 2u * c + 1u), xf[1]);
#pragma unroll
                for (int r = 0; r < GQ_I8R_ROWS; ++r) {
                    const uint32_t words[4] = {q[r].x, q[r].y, q[r].z, q[r].w};
#pragma unroll
                    for (int v = 0; v < 4; ++v) {
#pragma unroll
                        for (int b = 0; b < 4; ++b) {
                            const int i = 4 * v + b;  // element of the chunk
                            const float w = (float)(int8_t)((words[v] >> (8 * b)) & 0xFFu);
                            acc[r] = fmaf(w, xf[i / 8][i % 8], acc[r]);
                        }
                    }
                }
            }
        } else {
            // Scalar path (any K, any alignment), as gemv_int8's: lane l takes k = l, l + 32, ...
            for (uint64_t k = lane; k < K; k += 32u) {
                const float xk = to_f32(x[k]);
#pragma unroll
                for (int r = 0; r < GQ_I8R_ROWS; ++r) acc[r] = fmaf((float)p.codes[rows[r] * K + k], xk, acc[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < GQ_I8R_ROWS; ++r) {
            const float sum = gq_warp_sum(acc[r]);
            if (lane == 0 && n0 + r < N) y[n0 + r] = (sum * __ldg(p.scb + n0 + r)) * GQ_INV_127;
        }
    }
}

template <typename T> __device__ __forceinline__ void gq_dequant_int8(const QuantInt8Params& p) {
    pdl_begin();
    const uint64_t K = p.k, total = (uint64_t)p.n * K;
    T* out = static_cast<T*>(p.out);
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (uint64_t)gridDim.x * blockDim.x) {
        out[e] = from_f32<T>(((float)p.codes[e] * __ldg(p.scb + e / K)) * GQ_INV_127);
    }
}

// ---------------------------------------------------------------- GPTQ
// Field j (BITS wide, LSB first) of a word.
template <int BITS> __device__ __forceinline__ uint32_t gq_field(uint32_t w, int j) {
    return (w >> (BITS * j)) & ((1u << BITS) - 1u);
}

template <typename T, int BITS> __device__ __forceinline__ void gq_gemv_gptq(const QuantGptqParams& p) {
    constexpr int PER = 32 / BITS;  // inputs per word
    extern __shared__ float gq_gptq_xs[];  // [rows * PER] x in slot order (only with a permutation)
    __shared__ float gq_gptq_red[GQ_GPTQ_ROWSETS][GQ_GPTQ_COLS];
    pdl_begin();
    const T* x = static_cast<const T*>(p.x);
    const bool staged = p.perm != nullptr;
    const uint32_t slots = p.rows * PER;
    if (staged) {
        for (uint32_t s = threadIdx.x; s < slots; s += blockDim.x) {
            const uint32_t k = p.perm[s];
            gq_gptq_xs[s] = k < p.k ? to_f32(x[k]) : 0.0f;
        }
    }
    __syncthreads();
    const uint32_t quad = threadIdx.x % 4u, rowset = threadIdx.x / 4u;
    const uint32_t n0 = blockIdx.x * GQ_GPTQ_COLS + 4u * quad;  // N % 4 == 0: the 4 columns are all < N or none
    const bool xvec = !staged && PER == 8 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (n0 < p.n) {
        const uint64_t N = p.n;
        for (uint32_t r = rowset; r < p.rows; r += GQ_GPTQ_ROWSETS) {
            const uint4 q = gq_ld_stream(reinterpret_cast<const uint4*>(p.qweight + (uint64_t)r * N + n0));
            const uint64_t gi = (uint64_t)__ldg(p.row_group + r) * N + n0;  // [g, n0]
            const float4 sc = __ldg(reinterpret_cast<const float4*>(p.scales + gi));
            const float scale[4] = {sc.x, sc.y, sc.z, sc.w};
            float xf[PER];
            if (staged) {
#pragma unroll
                for (int j = 0; j < PER; ++j) xf[j] = gq_gptq_xs[r * PER + j];
            } else if (xvec) {
                float f8[8];
                gq_unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x) + r), f8);
#pragma unroll
                for (int j = 0; j < PER; ++j) xf[j] = f8[j];
            } else {
#pragma unroll
                for (int j = 0; j < PER; ++j) xf[j] = to_f32(x[(uint64_t)r * PER + j]);
            }
            const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const float z = (float)__ldg(p.zeros + gi + c);
                float part = 0.0f;
#pragma unroll
                for (int j = 0; j < PER; ++j) part = fmaf((float)gq_field<BITS>(words[c], j) - z, xf[j], part);
                acc[c] = fmaf(part, scale[c], acc[c]);
            }
        }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) gq_gptq_red[rowset][4u * quad + c] = acc[c];
    __syncthreads();
    if (threadIdx.x < GQ_GPTQ_COLS) {
        const uint32_t n = blockIdx.x * GQ_GPTQ_COLS + threadIdx.x;
        float sum = 0.0f;
        for (int s = 0; s < GQ_GPTQ_ROWSETS; ++s) sum += gq_gptq_red[s][threadIdx.x];
        if (n < p.n) static_cast<float*>(p.out)[n] = sum;
    }
}

template <typename T, int BITS> __device__ __forceinline__ void gq_dequant_gptq(const QuantGptqParams& p) {
    constexpr int PER = 32 / BITS;
    pdl_begin();
    const uint64_t N = p.n, K = p.k, words = (uint64_t)p.rows * N;
    T* out = static_cast<T*>(p.out);
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t r = i / N, n = i % N;  // word [r, n]
        const uint32_t w = __ldg(p.qweight + i);
        const uint64_t gi = (uint64_t)__ldg(p.row_group + r) * N + n;
        const float scale = __ldg(p.scales + gi);
        const int32_t z = __ldg(p.zeros + gi);
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const uint64_t s = r * PER + j;
            const uint64_t k = p.perm != nullptr ? p.perm[s] : s;
            if (k < K) out[n * K + k] = from_f32<T>(scale * (float)((int32_t)gq_field<BITS>(w, j) - z));
        }
    }
}


// dequant_gptq{4,8}_tile (opt-in, QWEN_GPTQ_DEQUANT=tile): dequant_gptq's out, the same bits (the same
// expression per element), with coalesced writes. dequant_gptq maps consecutive threads to
// consecutive columns n, so each store lands K elements from its neighbour's (H200 run 5: 160 GiB/s).
// Here a block takes a tile of 32 columns n0 .. n0 + 31 and 256 slots s0 = r0 PER .. s0 + 255 (r0 =
// the tile's first word row: 32 rows of gptq4, 64 of gptq8), one 16-byte chunk of 8 slots per
// (column, chunk) pair (gptq8: two word rows a chunk). Read phase: lane l takes column n0 + l (a
// warp reads 128 contiguous bytes of a word row), warp w chunks w, w + 8, ..., and stores the 8
// values into shared memory transposed, row = column, chunk q at q ^ (l % 8) (XOR swizzle: the 8
// lanes of a quarter-warp hit 8 different 16-byte bank groups on store, and so do 8 consecutive
// chunks of one row on load). Write phase: without a permutation, K % 8 == 0, slots % 8 == 0 and
// out 16-byte aligned (the vector path; uniform over the grid), warp w takes tile rows w, w + 8, ...
// and lane q stores chunk q: out[n, s0 + 8q .. + 8] as one 16-byte store, 512 contiguous bytes a
// warp. Otherwise (act-order, or a ragged K) thread t takes slot s0 + t of every tile row and
// writes out[n, perm[s0 + t]] (k >= K: a padding slot, skipped; without perm k = s, k < K): one
// 2-byte store per element, contiguous over the warp without a permutation, scattered within
// the row with one. Columns n >= N and slots >= rows PER are neither read nor written.
constexpr int GQ_DQT_COLS = 32;                    // columns of a tile: one per lane
constexpr int GQ_DQT_CHUNKS = GQ_THREADS / 8;      // 16-byte chunks (8 slots) of a tile row: 32
static_assert(GQ_DQT_CHUNKS * 8 == GQ_THREADS, "the element path gives each thread one slot of a tile row");
static_assert(GQ_DQT_COLS % GQ_WARPS == 0 && GQ_DQT_CHUNKS % GQ_WARPS == 0, "warps share rows and chunks evenly");

// The bits of a T value (for packing 8 of them into a 16-byte chunk in registers).
template <typename T> __device__ __forceinline__ uint32_t gq_bits(T v);
template <> __device__ __forceinline__ uint32_t gq_bits<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <> __device__ __forceinline__ uint32_t gq_bits<__half>(__half v) { return __half_as_ushort(v); }

template <typename T, int BITS> __device__ __forceinline__ void gq_dequant_gptq_tile(const QuantGptqParams& p) {
    constexpr int PER = 32 / BITS;                   // slots per word
    constexpr int WPC = 8 / PER;                     // word rows per chunk: 1 (gptq4) or 2 (gptq8)
    constexpr int TILE_ROWS = GQ_DQT_CHUNKS * WPC;   // word rows of a tile
    __shared__ uint4 gq_dqt_tile[GQ_DQT_COLS * GQ_DQT_CHUNKS];  // [column][chunk ^ (column % 8)], 16 KB
    pdl_begin();
    const uint64_t N = p.n, K = p.k, rows = p.rows, slots = rows * PER;
    T* out = static_cast<T*>(p.out);
    const T* tile = reinterpret_cast<const T*>(gq_dqt_tile);
    const uint32_t lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const bool vec = p.perm == nullptr && K % 8u == 0 && slots % 8u == 0 && (reinterpret_cast<uintptr_t>(out) & 15u) == 0;
    const uint64_t kend = K < slots ? K : slots;  // vector path: chunks below kend (a multiple of 8) are written
    const uint64_t col_tiles = (N + GQ_DQT_COLS - 1u) / GQ_DQT_COLS;
    const uint64_t tiles = col_tiles * ((rows + TILE_ROWS - 1u) / TILE_ROWS);
    for (uint64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // block-uniform
        const uint64_t n0 = (t % col_tiles) * GQ_DQT_COLS, r0 = (t / col_tiles) * TILE_ROWS;
        __syncthreads();  // the previous tile's reads of the shared tile are done
        const uint64_t n = n0 + lane;
        if (n < N) {
#pragma unroll
            for (int i = 0; i < GQ_DQT_CHUNKS / GQ_WARPS; ++i) {
                const uint32_t q = warp + GQ_WARPS * i;  // chunk: word rows r0 + WPC q ..
                const uint64_t rq = r0 + (uint64_t)q * WPC;
                if (rq >= rows) break;
                uint32_t v[4] = {0u, 0u, 0u, 0u};  // the chunk's 8 values, two a word (low half first)
#pragma unroll
                for (int h = 0; h < WPC; ++h) {
                    const uint64_t r = rq + h;
                    if (r < rows) {  // else (gptq8, odd rows): slots >= rows PER, left 0, never stored
                        const uint32_t w = __ldg(p.qweight + r * N + n);
                        const uint64_t gi = (uint64_t)__ldg(p.row_group + r) * N + n;
                        const float scale = __ldg(p.scales + gi);
                        const int32_t z = __ldg(p.zeros + gi);
#pragma unroll
                        for (int j = 0; j < PER; ++j) {
                            const int e = h * PER + j;
                            const T val = from_f32<T>(scale * (float)((int32_t)gq_field<BITS>(w, j) - z));
                            v[e / 2] |= gq_bits<T>(val) << (16 * (e % 2));
                        }
                    }
                }
                gq_dqt_tile[lane * GQ_DQT_CHUNKS + (q ^ (lane & 7u))] = make_uint4(v[0], v[1], v[2], v[3]);
            }
        }
        __syncthreads();
        if (vec) {
            const uint64_t k = r0 * PER + 8u * lane;  // chunk `lane` of each tile row
#pragma unroll
            for (int i = 0; i < GQ_DQT_COLS / GQ_WARPS; ++i) {
                const uint32_t c = warp + GQ_WARPS * i;
                if (n0 + c < N && k < kend) {
                    *reinterpret_cast<uint4*>(out + (n0 + c) * K + k) = gq_dqt_tile[c * GQ_DQT_CHUNKS + (lane ^ (c & 7u))];
                }
            }
        } else {
            const uint64_t s = r0 * PER + threadIdx.x;
            const uint64_t k = s < slots ? (p.perm != nullptr ? (uint64_t)__ldg(p.perm + s) : s) : K;
            if (k < K) {
                const uint32_t q = threadIdx.x >> 3, e = threadIdx.x & 7u;
                for (uint32_t c = 0; c < GQ_DQT_COLS && n0 + c < N; ++c) {
                    out[(n0 + c) * K + k] = tile[(c * GQ_DQT_CHUNKS + (q ^ (c & 7u))) * 8u + e];
                }
            }
        }
    }
}

}  // namespace

// Entry points (launch::gemv_quant); block 256 for every one but gemv_nf4_rows and gemv_int8_rows (128).
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_nf4_bf16(const QuantNf4Params p) { gq_gemv_nf4<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_nf4_f16(const QuantNf4Params p) { gq_gemv_nf4<__half>(p); }
extern "C" __global__ void __launch_bounds__(GQ_NF4R_THREADS) gemv_nf4_rows_bf16(const QuantNf4Params p) { gq_gemv_nf4_rows<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(GQ_NF4R_THREADS) gemv_nf4_rows_f16(const QuantNf4Params p) { gq_gemv_nf4_rows<__half>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_nf4_bf16(const QuantNf4Params p) { gq_dequant_nf4<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_nf4_f16(const QuantNf4Params p) { gq_dequant_nf4<__half>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_int8_bf16(const QuantInt8Params p) { gq_gemv_int8<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_int8_f16(const QuantInt8Params p) { gq_gemv_int8<__half>(p); }
extern "C" __global__ void __launch_bounds__(GQ_I8R_THREADS) gemv_int8_rows_bf16(const QuantInt8Params p) { gq_gemv_int8_rows<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(GQ_I8R_THREADS) gemv_int8_rows_f16(const QuantInt8Params p) { gq_gemv_int8_rows<__half>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_int8_bf16(const QuantInt8Params p) { gq_dequant_int8<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_int8_f16(const QuantInt8Params p) { gq_dequant_int8<__half>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_gptq4_bf16(const QuantGptqParams p) { gq_gemv_gptq<__nv_bfloat16, 4>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_gptq4_f16(const QuantGptqParams p) { gq_gemv_gptq<__half, 4>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_gptq8_bf16(const QuantGptqParams p) { gq_gemv_gptq<__nv_bfloat16, 8>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) gemv_gptq8_f16(const QuantGptqParams p) { gq_gemv_gptq<__half, 8>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq4_bf16(const QuantGptqParams p) { gq_dequant_gptq<__nv_bfloat16, 4>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq4_f16(const QuantGptqParams p) { gq_dequant_gptq<__half, 4>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq8_bf16(const QuantGptqParams p) { gq_dequant_gptq<__nv_bfloat16, 8>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq8_f16(const QuantGptqParams p) { gq_dequant_gptq<__half, 8>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq4_tile_bf16(const QuantGptqParams p) { gq_dequant_gptq_tile<__nv_bfloat16, 4>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq4_tile_f16(const QuantGptqParams p) { gq_dequant_gptq_tile<__half, 4>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq8_tile_bf16(const QuantGptqParams p) { gq_dequant_gptq_tile<__nv_bfloat16, 8>(p); }
extern "C" __global__ void __launch_bounds__(GQ_THREADS) dequant_gptq8_tile_f16(const QuantGptqParams p) { gq_dequant_gptq_tile<__half, 8>(p); }
