// tools/cuda_emu/emu.h — host emulation of the CUDA subset used by qwen-rt's cuda/*.cu (CI check only).
//
// Included (through the transformed common.cuh / *.cu that make_emu.py writes to the build dir) in
// place of <cuda_bf16.h>, <cuda_fp16.h> and <mma.h>. One mechanism for every kernel:
//   * emu::launch: a pool of blockDim std::threads walks the grid block by block (blocks run one after
//     another, so inter-block races are invisible). threadIdx / blockIdx are thread_local.
//   * __syncthreads / __syncwarp: mutex + condvar barriers (a real happens-before edge for TSan) that
//     tolerate exited threads and count a barrier reached after some thread of the block exited.
//   * warp collectives (__shfl_*_sync, __ballot_sync, wmma::mma_sync): every lane publishes its value
//     into a per-(warp, lane) ring with relaxed atomics and reads the partner's slot, so they carry
//     NO happens-before edge: shared-memory traffic between lanes must be ordered by __syncwarp /
//     __syncthreads exactly as on the GPU, or ThreadSanitizer reports it.
//   * __shared__ statics (rewritten to registered statics) and the dynamic shared-memory arena are
//     poisoned with 0xFF (NaN for f32 / bf16 / f16) before every block; the arena past the launch's
//     dynamic size must still be poison after the block.
//   * reinterpret_cast -> emu::cast: every cast to a pointer type checks the pointee's alignment.
//   * inline PTX is rewritten by make_emu.py into emu::ptx_* calls: cp.async (immediate, or deferred
//     to the wait_group when emu::cp_deferred = 1; src-size 0 zero-fills), commit / wait_group,
//     ld.global(.nc).v{1,2,4} (alignment checked). __cvta_generic_to_shared checks the pointer really
//     is shared memory.
//   * nvcuda::wmma 16x16x16 fragments with a deliberately scrambled (seeded-shuffle) element layout,
//     so a kernel that assumes a fragment layout fails; pointer / ldm alignment checked.
//   * ldmatrix (.x1/.x2/.x4, .trans) and mma.sync m16n8k16 (bf16 / f16 in, f32 accumulate) with the
//     PTX ISA's documented fragment layouts (a kernel must assume them: they are the contract);
//     ldmatrix row addresses travel as a collective, its reads are real shared-memory reads.
// Problems that are not wrong numbers (misaligned cast, barrier after exit, cp.async left pending at
// exit, smem written past the dynamic size) are counted in emu::flags; harnesses fail on them.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cassert>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>
#include <math.h>
#include <stdint.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__

struct emu_dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---- vector types
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { uint32_t x, y; };
struct alignas(16) uint4 { uint32_t x, y, z, w; };
struct alignas(8) int2 { int32_t x, y; };
struct alignas(16) int4 { int32_t x, y, z, w; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return uint4{a, b, c, d}; }
inline uint2 make_uint2(uint32_t a, uint32_t b) { return uint2{a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

// ---- 16-bit float types: storage only; arithmetic goes through the intrinsics below.
struct __nv_bfloat16 { uint16_t b; };
struct __half { uint16_t b; };
struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __bfloat162float(__nv_bfloat16 x) { uint32_t u = (uint32_t)x.b << 16; float f; memcpy(&f, &u, 4); return f; }
inline float __half2float(__half x) { _Float16 h; memcpy(&h, &x.b, 2); return (float)h; }
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even; NaN -> 0x7fff as cuda_bf16.hpp
    uint32_t u; memcpy(&u, &f, 4);
    if (std::isnan(f)) return __nv_bfloat16{0x7fff};
    u += 0x7fff + ((u >> 16) & 1);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline __half __float2half(float f) { _Float16 h = (_Float16)f; __half r; memcpy(&r.b, &h, 2); return r; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 x) { return x.b; }
inline uint16_t __half_as_ushort(__half x) { return x.b; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16{b}; }
inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }

// ---- scalar intrinsics (host libm: results may differ from CUDA's by the documented ulps)
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned long long __double2ull_rn(double x) { return (unsigned long long)nearbyint(x); }  // default mode: to nearest even
inline double __longlong_as_double(long long u) { double f; memcpy(&f, &u, 8); return f; }
inline long long __double_as_longlong(double f) { long long u; memcpy(&u, &f, 8); return u; }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
// Device-scope atomics and fences. Blocks run one after another here, so these only order the
// threads of one block (inter-block ordering is not checked: see the README).
inline uint32_t atomicAdd(uint32_t* p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline int __popc(uint32_t x) { return __builtin_popcount(x); }
inline int __popcll(uint64_t x) { return __builtin_popcountll(x); }
inline int __clz(uint32_t x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(uint32_t x) { return __builtin_ffs(x); }
// CUDA's same-type min / max overloads (a mixed-type call is ambiguous here: a compile error, not a silent
// signed/unsigned change).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline uint32_t min(uint32_t a, uint32_t b) { return a < b ? a : b; }
inline uint32_t max(uint32_t a, uint32_t b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

namespace emu {
// ---- problem counters (harnesses fail when any is non-zero)
struct Flags {
    std::atomic<long> misaligned{0}, sync_after_exit{0}, cp_pending{0}, smem_overrun{0}, partial_mask{0};
};
inline Flags flags;
inline void complain(std::atomic<long>& c, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline void complain(std::atomic<long>& c, const char* fmt, ...) {
    if (c.fetch_add(1) < 5) {  // the first few of each kind per case, one write each (threads interleave)
        char msg[320];
        va_list ap; va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fprintf(stderr, "EMU: %s [block (%u,%u,%u) thread %u]\n", msg, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
    }
}
inline std::atomic<uint64_t> progress{0};  // bumped by every barrier / collective / block: the hang watchdog
[[noreturn]] inline void fatal(const char* msg) {
    fprintf(stderr, "EMU FATAL: %s [block (%u,%u,%u) thread %u]\n", msg, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
    abort();
}

// ---- alignment-checked reinterpret_cast
template <class To, class From> inline To cast(From p) {
    if constexpr (std::is_pointer_v<To> && std::is_pointer_v<From>) {
        using E = std::remove_cv_t<std::remove_pointer_t<To>>;
        if constexpr (!std::is_void_v<E>) {
            if ((uintptr_t)p % alignof(E)) complain(flags.misaligned, "misaligned cast to a %zu-byte-aligned type (ptr %p)", alignof(E), (const void*)p);
        }
    }
    return reinterpret_cast<To>(p);
}

// ---- shared memory: registered statics + one dynamic arena
constexpr size_t ARENA = 256 * 1024;  // > the 227 KiB an sm_90 block can opt into
alignas(256) inline unsigned char arena[ARENA];
inline size_t dyn_bytes = 0;  // of the current launch
struct Reg { void* p; size_t n; };
inline std::mutex reg_m;
inline std::vector<Reg> regs;
inline bool reg_shared(void* p, size_t n) { std::lock_guard<std::mutex> g(reg_m); memset(p, 0xFF, n); regs.push_back({p, n}); return true; }
inline void poison_shared() {
    std::lock_guard<std::mutex> g(reg_m);
    for (auto& r : regs) memset(r.p, 0xFF, r.n);
    memset(arena, 0xFF, ARENA);
}
inline unsigned char* dyn_smem(size_t align) {
    if ((uintptr_t)arena % align) fatal("dynamic smem alignment");
    return arena;
}
// Shared-window address: arena at [0, ARENA), registered statics after it (16-byte aligned slots).
inline size_t to_shared(const void* p) {
    const uintptr_t a = (uintptr_t)p;
    if (a >= (uintptr_t)arena && a < (uintptr_t)arena + ARENA) return a - (uintptr_t)arena;
    std::lock_guard<std::mutex> g(reg_m);
    size_t base = ARENA;
    for (auto& r : regs) {
        if (a >= (uintptr_t)r.p && a < (uintptr_t)r.p + r.n) return base + (a - (uintptr_t)r.p);
        base += (r.n + 15) & ~(size_t)15;
    }
    fatal("__cvta_generic_to_shared of a pointer that is not shared memory");
}
inline void* from_shared(uint64_t s) {
    if (s < ARENA) return arena + s;
    std::lock_guard<std::mutex> g(reg_m);
    size_t base = ARENA;
    for (auto& r : regs) {
        if (s >= base && s < base + r.n) return (unsigned char*)r.p + (s - base);
        base += (r.n + 15) & ~(size_t)15;
    }
    fatal("shared-window address outside shared memory");
}

// ---- block / warp barrier tolerant of exited threads
struct BlockBar {
    std::mutex m; std::condition_variable cv; int live = 0, count = 0; uint64_t phase = 0; bool exited_any = false;
    void reset(int n) { live = n; count = 0; exited_any = false; }
    void wait() {
        std::unique_lock<std::mutex> l(m);
        if (exited_any) flags.sync_after_exit++;
        progress.fetch_add(1, std::memory_order_relaxed);
        const uint64_t ph = phase;
        if (++count == live) { count = 0; ++phase; cv.notify_all(); return; }
        if (!cv.wait_for(l, std::chrono::seconds(120), [&] { return phase != ph; })) fatal("__syncthreads / __syncwarp hang (not every live thread arrived)");
    }
    void drop() {
        std::unique_lock<std::mutex> l(m);
        --live; exited_any = true;
        if (count > 0 && count == live) { flags.sync_after_exit++; count = 0; ++phase; cv.notify_all(); }
    }
};
inline BlockBar bar;
inline std::vector<BlockBar*> warp_bars;

// ---- warp collectives: ring of slots per (warp, lane); relaxed atomics, no happens-before
constexpr int RING = 64, MAXW = 32, SLOT_WORDS = 12;  // 96 bytes: an mma_sync lane publishes 24 floats
struct Slot { std::atomic<uint32_t> tag{0}; std::atomic<uint64_t> v[SLOT_WORDS]; };
inline Slot ring[MAXW][32][RING];
inline thread_local uint32_t gen = 0;
inline int lane() { return threadIdx.x % 32; }
inline int warp() { return threadIdx.x / 32; }
inline uint32_t publish_bytes(const void* p, size_t n) {
    if (n > sizeof(uint64_t) * SLOT_WORDS) fatal("collective payload too large");
    uint64_t w[SLOT_WORDS] = {};
    memcpy(w, p, n);
    const uint32_t g = gen++;
    progress.fetch_add(1, std::memory_order_relaxed);
    Slot& s = ring[warp()][lane()][g % RING];
    for (size_t k = 0; k < (n + 7) / 8; ++k) s.v[k].store(w[k], std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    s.tag.store(g + 1, std::memory_order_relaxed);
    s.tag.notify_all();
    return g;
}
inline void fetch_bytes(uint32_t g, int from, void* out, size_t n) {
    Slot& s = ring[warp()][from][g % RING];
    int spins = 0;
    for (;;) {
        const uint32_t t = s.tag.load(std::memory_order_relaxed);
        if (t == g + 1) break;
        if (t > g + 1) fatal("warp collective ring overrun (lanes diverged by > 64 collectives)");
        if (++spins < 64) std::this_thread::yield(); else s.tag.wait(t, std::memory_order_relaxed);
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    uint64_t w[SLOT_WORDS];
    for (size_t k = 0; k < (n + 7) / 8; ++k) w[k] = s.v[k].load(std::memory_order_relaxed);
    memcpy(out, w, n);
}
template <class V> inline uint32_t publish(V val) { static_assert(sizeof(V) <= 8); return publish_bytes(&val, sizeof(V)); }
template <class V> inline V fetch(uint32_t g, int from) { V r; fetch_bytes(g, from, &r, sizeof(V)); return r; }
inline void check_mask(unsigned mask) { if (mask != 0xffffffffu) flags.partial_mask++; }

// ---- cp.async: per-thread groups; copies land at issue (cp_deferred = 0) or at the wait (1)
inline int cp_deferred = 0;
struct Copy { void* dst; const void* src; int cp, src_n; };
inline thread_local std::vector<std::vector<Copy>> cp_groups;
inline thread_local std::vector<Copy> cp_open;
inline void do_copy(const Copy& c) {
    if (c.src_n) memcpy(c.dst, c.src, c.src_n);
    if (c.src_n < c.cp) memset((unsigned char*)c.dst + c.src_n, 0, c.cp - c.src_n);
}
}  // namespace emu

inline size_t __cvta_generic_to_shared(const void* p) { return emu::to_shared(p); }

namespace emu {
inline void ptx_cp_async(uint64_t dst_shared, const void* src, int cp_size, int src_size) {
    if (cp_size != 4 && cp_size != 8 && cp_size != 16) fatal("cp.async cp-size must be 4, 8 or 16");
    if (src_size < 0 || src_size > cp_size) fatal("cp.async src-size out of range");
    void* dst = from_shared(dst_shared);
    if (dst_shared % cp_size) complain(flags.misaligned, "cp.async shared dst %p not %d-byte aligned", dst, cp_size);
    if (src_size && (uintptr_t)src % cp_size) complain(flags.misaligned, "cp.async global src %p not %d-byte aligned", src, cp_size);
    Copy c{dst, src, cp_size, src_size};
    if (cp_deferred) cp_open.push_back(c);
    else { do_copy(c); cp_open.push_back(Copy{nullptr, nullptr, 0, 0}); }
}
inline void ptx_cp_commit() { cp_groups.push_back(std::move(cp_open)); cp_open.clear(); }
inline void ptx_cp_wait(int n) {
    while ((int)cp_groups.size() > n) {
        for (auto& c : cp_groups.front()) if (c.dst) do_copy(c);
        cp_groups.erase(cp_groups.begin());
    }
}
// cp.async.wait_all = commit_group + wait_group 0
inline void ptx_cp_wait_all() { ptx_cp_commit(); ptx_cp_wait(0); }
// ld.global[.nc][...].v{1,2,4}.{u32,s32,b32,f32}: N 4-byte words from p (aligned to 4N).
template <class... O> inline void ptx_ld_global(const void* p, O&... outs) {
    constexpr size_t N = sizeof...(O);
    static_assert(((sizeof(O) == 4) && ...), "32-bit destinations only");
    if ((uintptr_t)p % (4 * N)) complain(flags.misaligned, "ld.global.v%zu at %p not %zu-byte aligned", N, p, 4 * N);
    const unsigned char* b = (const unsigned char*)p;
    size_t i = 0;
    ((memcpy(&outs, b + 4 * i++, 4)), ...);
}
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: lane 8i + r gives the shared address of row r
// of matrix i (16-byte aligned, 8 b16 values); lane l receives in its i-th register the elements
// (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix i, or with .trans (2 (l % 4), l / 4) and
// (2 (l % 4) + 1, l / 4), the first in the low half (PTX ISA, "Warp-level matrix load instruction").
// A collective: the addresses travel like shuffles (no happens-before), the reads are real shared-
// memory reads, so a missing barrier before them is a TSan report.
template <class... O> inline void ptx_ldmatrix(bool trans, uint64_t addr, O&... outs) {
    constexpr int N = (int)sizeof...(O);
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix .x1, .x2 or .x4");
    static_assert(((sizeof(O) == 4) && ...), "32-bit destinations only");
    if (addr % 16) complain(flags.misaligned, "ldmatrix row address %#llx not 16-byte aligned", (unsigned long long)addr);
    const uint32_t g = publish(addr);
    const int l = lane();
    uint32_t r[4] = {};
    for (int i = 0; i < N; ++i) {
        uint16_t e[2];
        for (int h = 0; h < 2; ++h) {
            const int row = trans ? 2 * (l % 4) + h : l / 4, colm = trans ? l / 4 : 2 * (l % 4) + h;
            const uint64_t a = fetch<uint64_t>(g, 8 * i + row);
            memcpy(&e[h], from_shared(a + 2 * colm), 2);
        }
        r[i] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
    int i = 0;
    ((memcpy(&outs, &r[i++], 4)), ...);
}
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: D (16x8 f32) = A (16x16) · B (16x8) + C with the
// PTX ISA's fragment layout (g = lane / 4, c = lane % 4): A registers r = 0..3 hold rows g + 8 (r & 1),
// columns 2c, 2c + 1 (+ 8 when r >= 2); B registers r = 0, 1 hold rows (k) 2c, 2c + 1 (+ 8 r), column
// g; C / D element e = 0..3 is row g + 8 (e >> 1), column 2c + (e & 1). Every lane publishes its
// operands, gathers the matrices and computes its own four outputs (f32, k in order from C).
inline float b16_to_f32(uint16_t v, bool bf16) {
    return bf16 ? __bfloat162float(__nv_bfloat16{v}) : __half2float(__half{v});
}
template <bool BF16>
inline void ptx_mma_m16n8k16(float& d0, float& d1, float& d2, float& d3, uint32_t a0, uint32_t a1, uint32_t a2,
                             uint32_t a3, uint32_t b0, uint32_t b1, float c0, float c1, float c2, float c3) {
    uint32_t mine[10] = {a0, a1, a2, a3, b0, b1};
    memcpy(&mine[6], &c0, 4); memcpy(&mine[7], &c1, 4); memcpy(&mine[8], &c2, 4); memcpy(&mine[9], &c3, 4);
    const uint32_t g = publish_bytes(mine, sizeof mine);
    float A[16][16], B[16][8], C[16][8];
    for (int L = 0; L < 32; ++L) {
        uint32_t th[10];
        fetch_bytes(g, L, th, sizeof th);
        const int gr = L / 4, cc = L % 4;
        for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h)
                A[gr + 8 * (r & 1)][2 * cc + h + 8 * (r >> 1)] = b16_to_f32((uint16_t)(th[r] >> (16 * h)), BF16);
        for (int r = 0; r < 2; ++r)
            for (int h = 0; h < 2; ++h) B[2 * cc + h + 8 * r][gr] = b16_to_f32((uint16_t)(th[4 + r] >> (16 * h)), BF16);
        for (int e = 0; e < 4; ++e) memcpy(&C[gr + 8 * (e >> 1)][2 * cc + (e & 1)], &th[6 + e], 4);
    }
    const int gr = lane() / 4, cc = lane() % 4;
    float* d[4] = {&d0, &d1, &d2, &d3};
    for (int e = 0; e < 4; ++e) {
        const int row = gr + 8 * (e >> 1), cn = 2 * cc + (e & 1);
        float s = C[row][cn];
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][cn];
        *d[e] = s;
    }
}
}  // namespace emu

inline void __syncthreads() { emu::bar.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_bars[emu::warp()]->wait(); }
template <class V> inline V __shfl_xor_sync(unsigned mask, V v, int off, int width = 32) {
    emu::check_mask(mask); const uint32_t g = emu::publish(v);
    const int l = emu::lane();
    int src = l ^ off;
    if ((src & ~(width - 1)) != (l & ~(width - 1))) src = l;
    return emu::fetch<V>(g, src);
}
template <class V> inline V __shfl_down_sync(unsigned mask, V v, unsigned off, int width = 32) {
    emu::check_mask(mask); const uint32_t g = emu::publish(v);
    const int l = emu::lane();
    int src = l + (int)off;
    if (src / width != l / width || src >= 32) src = l;
    return emu::fetch<V>(g, src);
}
template <class V> inline V __shfl_up_sync(unsigned mask, V v, unsigned off, int width = 32) {
    emu::check_mask(mask); const uint32_t g = emu::publish(v);
    const int l = emu::lane();
    int src = l - (int)off;
    if (src < 0 || src / width != l / width) src = l;
    return emu::fetch<V>(g, src);
}
template <class V> inline V __shfl_sync(unsigned mask, V v, int srcl, int width = 32) {
    emu::check_mask(mask); const uint32_t g = emu::publish(v);
    const int src = (emu::lane() / width) * width + (srcl % width);
    return emu::fetch<V>(g, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu::check_mask(mask); const uint32_t g = emu::publish((uint32_t)(pred != 0));
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= emu::fetch<uint32_t>(g, i) << i;
    return r;
}
inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0; }
inline int __all_sync(unsigned m, int p) { return __ballot_sync(m, p) == 0xffffffffu; }

#define EMU_SHARED_REG(n) static const bool emu_reg_##n = emu::reg_shared((void*)&n, sizeof(n)); (void)emu_reg_##n

// ---- nvcuda::wmma (16x16x16), scrambled element layout
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {}; struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
struct EmuPerm {
    int p[3][256];
    EmuPerm() { for (int k = 0; k < 3; ++k) { for (int i = 0; i < 256; ++i) p[k][i] = i; std::mt19937 r(1234 + k); std::shuffle(p[k], p[k] + 256, r); } }
};
inline EmuPerm emu_perm;
// kind 0 = a, 1 = b, 2 = accumulator: (row, col) of the logical 16x16 matrix held by lane's element i.
inline void emu_map(int kind, int lane, int i, int& r, int& c) { const int idx = emu_perm.p[kind][lane * 8 + i]; r = idx / 16; c = idx % 16; }
template <typename Use, int M, int N, int K, typename T, typename L = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emu: only 16x16x16 fragments");
    enum { num_elements = 8 };
    T x[8];
};
inline float emu_f(float x) { return x; }
inline float emu_f(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float emu_f(__half x) { return __half2float(x); }
template <typename T> inline T emu_to(float v) {
    if constexpr (std::is_same_v<T, float>) return v;
    else if constexpr (std::is_same_v<T, __half>) return __float2half(v);
    else return __float2bfloat16(v);
}
template <typename U, typename T, typename L> inline void fill_fragment(fragment<U, 16, 16, 16, T, L>& f, float v) { for (auto& e : f.x) e = emu_to<T>(v); }
inline void emu_check(const void* p, unsigned ldm, int esz) {
    if ((uintptr_t)p % 32) emu::complain(emu::flags.misaligned, "wmma pointer %p not 32-byte aligned", p);
    if (ldm % (esz == 2 ? 8 : 4)) emu::complain(emu::flags.misaligned, "wmma ldm %u not a multiple of %d", ldm, esz == 2 ? 8 : 4);
}
template <typename T> inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
    emu_check(p, ldm, sizeof(T)); const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) { int r, c; emu_map(0, lane, i, r, c); f.x[i] = p[r * ldm + c]; }
}
template <typename T> inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
    emu_check(p, ldm, sizeof(T)); const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) { int r, c; emu_map(0, lane, i, r, c); f.x[i] = p[c * ldm + r]; }
}
template <typename T> inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
    emu_check(p, ldm, sizeof(T)); const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) { int k, n; emu_map(1, lane, i, k, n); f.x[i] = p[k * ldm + n]; }
}
template <typename T> inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
    emu_check(p, ldm, sizeof(T)); const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) { int k, n; emu_map(1, lane, i, k, n); f.x[i] = p[n * ldm + k]; }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
    emu_check(p, ldm, 4); const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) { int r, c; emu_map(2, lane, i, r, c); f.x[i] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]; }
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
    emu_check(p, ldm, 4); const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) { int r, c; emu_map(2, lane, i, r, c); (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i]; }
}
// D = A·B + C over the warp: every lane publishes its 24 elements, gathers the three matrices, and
// computes its own 8 outputs (f32 accumulation in k order).
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    float mine[24];
    for (int i = 0; i < 8; ++i) { mine[i] = emu_f(a.x[i]); mine[8 + i] = emu_f(b.x[i]); mine[16 + i] = c.x[i]; }
    const uint32_t g = emu::publish_bytes(mine, sizeof mine);
    float A[256], B[256], C[256];
    for (int l = 0; l < 32; ++l) {
        float th[24];
        emu::fetch_bytes(g, l, th, sizeof th);
        for (int i = 0; i < 8; ++i) {
            int r, cc;
            emu_map(0, l, i, r, cc); A[r * 16 + cc] = th[i];
            emu_map(1, l, i, r, cc); B[r * 16 + cc] = th[8 + i];
            emu_map(2, l, i, r, cc); C[r * 16 + cc] = th[16 + i];
        }
    }
    const int lane = threadIdx.x % 32;
    for (int i = 0; i < 8; ++i) {
        int r, cc; emu_map(2, lane, i, r, cc);
        float s = C[r * 16 + cc];
        for (int k = 0; k < 16; ++k) s += A[r * 16 + k] * B[k * 16 + cc];
        d.x[i] = s;
    }
}
}}  // namespace nvcuda::wmma

namespace emu {
// Run `body` (one kernel call) over grid with `threads` threads per block and `smem_bytes` of dynamic
// shared memory. Blocks run one after another on a persistent pool of `threads` std::threads.
inline void launch(emu_dim3 grid, unsigned threads, const std::function<void()>& body, size_t smem_bytes = 0) {
    if (grid.x == 0) grid.x = 1;
    if (grid.y == 0) grid.y = 1;
    if (grid.z == 0) grid.z = 1;
    if (threads == 0 || threads > 1024) fatal("block size out of range");
    if (smem_bytes > ARENA) fatal("dynamic shared memory larger than the emulator's arena");
    gridDim = grid; blockDim = emu_dim3{threads, 1, 1}; dyn_bytes = smem_bytes;
    const unsigned nw = (threads + 31) / 32;
    std::vector<BlockBar> wb(nw);
    warp_bars.clear();
    for (auto& b : wb) warp_bars.push_back(&b);
    std::barrier<> pool(threads);
    auto reset = [&] {
        poison_shared();
        for (unsigned w = 0; w < nw; ++w) for (auto& l : ring[w]) for (auto& s : l) s.tag.store(0, std::memory_order_relaxed);
        bar.reset((int)threads);
        for (unsigned w = 0; w < nw; ++w) wb[w].reset((int)std::min(32u, threads - 32 * w));
    };
    auto after = [&] {
        for (size_t i = smem_bytes; i < ARENA; ++i)
            if (arena[i] != 0xFF) { complain(flags.smem_overrun, "shared memory written at byte %zu, past the %zu dynamic bytes of the launch", i, smem_bytes); break; }
    };
    // Watchdog: a lane waiting on a collective its partner never reaches (exited, or diverged) would
    // otherwise hang forever; no progress anywhere for QWEN_EMU_HANG_S (default 120) seconds aborts.
    std::mutex wd_m; std::condition_variable wd_cv; bool done = false;
    std::thread watchdog([&] {
        const char* e = getenv("QWEN_EMU_HANG_S");
        const int limit = e ? atoi(e) : 120;
        uint64_t last = progress.load(); int idle = 0;
        std::unique_lock<std::mutex> l(wd_m);
        while (!wd_cv.wait_for(l, std::chrono::seconds(1), [&] { return done; })) {
            const uint64_t now = progress.load();
            idle = now == last ? idle + 1 : 0;
            last = now;
            if (idle >= limit) {
                fprintf(stderr, "EMU FATAL: no barrier / collective progress for %d s in a launch of grid (%u,%u,%u) x %u threads: "
                                "a warp collective or barrier some lanes never reach (exited or diverged), or an endless loop\n",
                        limit, grid.x, grid.y, grid.z, threads);
                abort();
            }
        }
    });
    std::vector<std::thread> th;
    th.reserve(threads);
    for (unsigned tid = 0; tid < threads; ++tid)
        th.emplace_back([&, tid] {
            threadIdx = emu_dim3{tid, 0, 0};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        if (tid == 0) reset();
                        pool.arrive_and_wait();
                        blockIdx = emu_dim3{x, y, z};
                        gen = 0;
                        progress.fetch_add(1, std::memory_order_relaxed);
                        cp_groups.clear(); cp_open.clear();
                        body();
                        if (!cp_groups.empty() || !cp_open.empty()) complain(flags.cp_pending, "thread exited with cp.async groups not waited for");
                        bar.drop();
                        warp_bars[tid / 32]->drop();
                        pool.arrive_and_wait();
                        if (tid == 0) after();
                    }
        });
    for (auto& t : th) t.join();
    { std::lock_guard<std::mutex> g(wd_m); done = true; }
    wd_cv.notify_all();
    watchdog.join();
}
// Flags since the last call (and reset); prints them when any.
inline long take_flags(const char* what) {
    const long a = flags.sync_after_exit.exchange(0), b = flags.misaligned.exchange(0), c = flags.cp_pending.exchange(0),
               d = flags.smem_overrun.exchange(0), e = flags.partial_mask.exchange(0);
    if (a || b || c || d || e)
        printf("EMU FLAGS %s: barrier-after-exit %ld, misaligned %ld, cp.async-pending %ld, smem-overrun %ld (failures); "
               "partial-shuffle-mask %ld (info)\n", what, a, b, c, d, e);
    return a + b + c + d;
}
}  // namespace emu
