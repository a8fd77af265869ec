// attention_tile.cuh — what the two post-run-4 prefill attention kernels share (attention_prefill_mma.cu,
// mma.sync; attention_prefill_wmma.cu, WMMA; at_* names, apart from run 4's attention_prefill.cu): the block shape, the position of a query row, and
// the cp.async copy of a 64-row K / V / Q tile into shared memory.
#pragma once
#include "common.cuh"

constexpr int AT_BQ = 64;        // query rows per block
constexpr int AT_BK = 64;        // key rows per tile
constexpr int AT_THREADS = 128;  // 4 warps x 16 query rows
constexpr unsigned AT_FULL = 0xffffffffu;

__device__ __forceinline__ uint16_t at_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint16_t at_bits(__half x) { return __half_as_ushort(x); }

// 16-byte global -> shared copy; src_bytes 0 zero-fills the 16 bytes without reading `src`.
__device__ __forceinline__ void at_cp_async16(void* smem_dst, const void* src, bool valid) {
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void at_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void at_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copy rows row0 .. row0 + n_valid - 1 of a [rows, P] matrix (src already offset to the head's
// column) into a [64, D + 8] shared tile; tile rows >= n_valid are zero-filled, never read.
template <typename T, int D>
__device__ __forceinline__ void at_load_tile(T* tile, const T* src, uint32_t row0, uint32_t n_valid, uint32_t P) {
    constexpr int LDT = D + 8;
    constexpr int CPR = D / 8;  // 16-byte chunks per row
    constexpr int CHUNKS = AT_BK * CPR;
    static_assert(CHUNKS % AT_THREADS == 0, "tile chunks must split evenly over the block");
#pragma unroll
    for (int i = 0; i < CHUNKS / AT_THREADS; ++i) {
        const int c = (int)threadIdx.x + i * AT_THREADS;
        const int r = c / CPR, c8 = c % CPR;
        const bool valid = (uint32_t)r < n_valid;
        const T* g = valid ? src + (size_t)(row0 + r) * P + c8 * 8 : src;
        at_cp_async16(tile + r * LDT + c8 * 8, g, valid);
    }
}

// Who a block and a warp are. Block (h, y) owns query tile t0 = 64 (⌈T/64⌉ - 1 - y) of head h: blocks
// are dispatched in blockIdx order (x fastest) and query tile i of a causal prefill costs i + 1 key
// tiles, so every head's heaviest tile goes first and the final wave holds the short ones (longest
// job first). Warp w owns block rows 16w .. 16w + 15. Position of block row R: rows past T take row
// T-1's (computed, never written); never >= cap, so every position fits a u32 (the sum is formed in
// 64 bits: pos0 may be garbage). pos_of(16w + r) == min(warp_first + r, warp_last): both sides clamp
// t to T-1 and p to cap-1.
struct AtBlock {
    uint32_t t0, h, P, Tn, cap;
    uint64_t pos0;
    size_t col;           // the head's first column in a [*, P] row
    int warp, lane;
    uint32_t kv_last;     // last key row any row of this block sees
    uint32_t n_tiles;     // key tiles 0 .. n_tiles - 1
    bool warp_valid;      // the warp has at least one real query row
    uint32_t warp_first;  // position of the warp's row 0
    uint32_t warp_last;   // last key row this warp's rows see

    __device__ __forceinline__ uint32_t pos_of(uint32_t R) const {
        const uint64_t t = (uint64_t)t0 + R < Tn ? (uint64_t)t0 + R : (uint64_t)Tn - 1;
        const uint64_t p = pos0 + t;
        return p < cap ? (uint32_t)p : cap - 1;
    }
    // Position of the warp's row r (0..15).
    __device__ __forceinline__ uint32_t warp_pos(uint32_t r) const {
        return r <= warp_last - warp_first ? warp_first + r : warp_last;
    }
    // Rows of the [rows, P] tile starting at row0 that the block needs, at most 64.
    __device__ __forceinline__ static uint32_t rows_upto(uint32_t row0, uint32_t last) {
        return last - row0 < (uint32_t)AT_BK ? last - row0 + 1 : (uint32_t)AT_BK;
    }
};

// false: the block has nothing to do (block-uniform: return before any barrier).
__device__ __forceinline__ bool at_block(AtBlock& b, const uint32_t* pos0_ptr, uint32_t Tn, uint32_t H, uint32_t D,
                                         uint32_t cap) {
    b.t0 = (gridDim.y - 1u - blockIdx.y) * AT_BQ;
    b.h = blockIdx.x;
    if (b.t0 >= Tn || b.h >= H || cap == 0 || blockDim.x != AT_THREADS) return false;
    b.Tn = Tn;
    b.cap = cap;
    b.P = H * D;
    b.pos0 = *pos0_ptr;
    b.col = (size_t)b.h * D;
    b.warp = (int)threadIdx.x / 32;
    b.lane = (int)threadIdx.x % 32;
    b.kv_last = b.pos_of(AT_BQ - 1);
    b.n_tiles = b.kv_last / AT_BK + 1;
    b.warp_valid = (uint64_t)b.t0 + 16 * b.warp < Tn;
    b.warp_first = b.pos_of(16 * b.warp);
    b.warp_last = b.pos_of(16 * b.warp + 15);
    return true;
}

// The head-dim switch of both kernels: Impl::run<T, D>(...) (a struct wrapping the file's at_impl) for
// D ∈ {16, 32, 64, 128}; another D does nothing (the launcher refuses it before launching).
template <class Impl, typename T>
__device__ __forceinline__ void at_dispatch(const T* q, const T* k_cache, const T* v_cache, T* out, const uint32_t* pos0,
                                            uint32_t Tn, uint32_t H, uint32_t D, uint32_t cap, float scale) {
    switch (D) {
        case 16: Impl::template run<T, 16>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        case 32: Impl::template run<T, 32>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        case 64: Impl::template run<T, 64>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        case 128: Impl::template run<T, 128>(q, k_cache, v_cache, out, pos0, Tn, H, cap, scale); break;
        default: break;
    }
}
