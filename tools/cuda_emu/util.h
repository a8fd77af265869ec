// tools/cuda_emu/util.h — shared pieces of the emulator harnesses (h_*.cpp).
// Device-like buffers (256-byte aligned, poisoned, guard tail), a seeded rng, the host reference's
// own T <-> f32 conversions (independent of cuda/common.cuh), the repo-style tolerance statistic, and
// the per-harness tally that run.sh reads (one "SUMMARY" line).
#pragma once
#include "emu.h"
#include <algorithm>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// Device-like buffer: 256-byte aligned start, n elements + `tail` guard elements, all poisoned 0xFF.
template <class E> struct Buf {
    E* p = nullptr; size_t n = 0, tail = 0;
    Buf() = default;
    explicit Buf(size_t n_, size_t tail_ = 64) : n(n_), tail(tail_) {
        const size_t bytes = std::max<size_t>(1, (n + tail) * sizeof(E));
        if (posix_memalign((void**)&p, 256, bytes)) abort();
        memset(p, 0xFF, bytes);
    }
    Buf(const Buf&) = delete; Buf& operator=(const Buf&) = delete;
    Buf(Buf&& o) noexcept { *this = std::move(o); }
    Buf& operator=(Buf&& o) noexcept { std::swap(p, o.p); std::swap(n, o.n); std::swap(tail, o.tail); return *this; }
    ~Buf() { free(p); }
    E& operator[](size_t i) { return p[i]; }
    bool guard_ok() const {
        const unsigned char* b = (const unsigned char*)(p + n);
        for (size_t i = 0; i < tail * sizeof(E); ++i) if (b[i] != 0xFF) return false;
        return true;
    }
};

inline uint64_t rng_state;
inline float rnd(float scale) {  // splitmix64 -> uniform in [-scale, scale)
    rng_state += 0x9E3779B97F4A7C15ull;
    uint64_t z = rng_state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 40) / (float)(1u << 24) * 2.0f - 1.0f) * scale;
}

// The reference's conversions (written here, not taken from cuda/common.cuh): exact widening, and
// round-to-nearest-even narrowing (NaN -> a quiet NaN).
inline float hf32(__nv_bfloat16 x) { const uint32_t u = (uint32_t)x.b << 16; float f; memcpy(&f, &u, 4); return f; }
inline float hf32(__half x) { _Float16 h; memcpy(&h, &x.b, 2); return (float)h; }
template <class T> T hto(float f);
template <> inline __nv_bfloat16 hto<__nv_bfloat16>(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if (f != f) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40)};
    u += 0x7fff + ((u >> 16) & 1);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
template <> inline __half hto<__half>(float f) { const _Float16 h = (_Float16)f; __half r; memcpy(&r.b, &h, 2); return r; }

template <class T> struct DT;
template <> struct DT<__nv_bfloat16> { static constexpr const char* name = "bf16"; static constexpr float tol = 1.6e-2f; };
template <> struct DT<__half> { static constexpr const char* name = "f16"; static constexpr float tol = 2e-3f; };

// ulp distance between two 16-bit float patterns (same-sign ordering)
inline long ulp_key16(uint16_t b) { return (b & 0x8000) ? -(long)(b & 0x7fff) : (long)b; }

// Worst ratio err / (atol + rtol |want|) over a case (repo-style tolerance), plus ulp stats for T.
struct Stat {
    double worst = 0; long bad = 0, nan = 0, n = 0, maxulp = 0, ulp_over1 = 0; size_t wi = 0; float wg = 0, ww = 0;
    void add(size_t i, float g, float w, float atol, float rtol) {
        ++n;
        double r;
        if (std::isnan(g) || std::isnan(w)) { r = INFINITY; ++nan; }
        else { const float e = std::fabs(g - w); r = e == 0 ? 0.0 : e / (atol + rtol * std::fabs(w)); }
        if (!(r <= 1.0)) ++bad;
        if (!(r <= worst)) { worst = r; wi = i; wg = g; ww = w; }
    }
    template <class T> void add_t(size_t i, T g, float w, float atol, float rtol) {
        add(i, hf32(g), w, atol, rtol);
        const long u = std::labs(ulp_key16(g.b) - ulp_key16(hto<T>(w).b));
        maxulp = std::max(maxulp, u);
        if (u > 1) ++ulp_over1;
    }
    bool ok() const { return bad == 0; }
    void print(const std::string& what) const {
        printf("%-56s n=%ld worst %.3g of tol at [%zu] (got %.8g want %.8g), %ld over, %ld NaN, max ulp(T) vs T(ref) %ld (%ld >1)\n",
               what.c_str(), n, worst, wi, wg, ww, bad, nan, maxulp, ulp_over1);
    }
};

// ---- per-harness tally
inline int g_fail = 0;
inline long g_cases = 0;
inline double g_worst = 0;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); ++g_fail; } } while (0)
// End of one case: its worst ratio to tolerance (0 for bit-exact checks that passed) and the
// emulator's flags since the previous case (misaligned access, barrier after exit, ...: a failure).
inline std::chrono::steady_clock::time_point g_case_t0 = std::chrono::steady_clock::now();
inline void case_done(const std::string& what, double worst) {
    ++g_cases;
    const auto now = std::chrono::steady_clock::now();
    printf("  %.0f ms  %s\n", std::chrono::duration<double, std::milli>(now - g_case_t0).count(), what.c_str());
    g_case_t0 = now;
    if (!(worst <= g_worst)) g_worst = worst;
    const long f = emu::take_flags(what.c_str());
    CHECK(f == 0, "%s: emulator flags (see EMU lines)", what.c_str());
}
inline int finish(const char* harness) {
    printf("SUMMARY %s cases=%ld worst=%.3g fails=%d\n", harness, g_cases, g_worst, g_fail);
    printf(g_fail ? "FAILURES %d\n" : "ALL OK\n", g_fail);
    return g_fail != 0;
}
// argv[1]: 0 = full case list (default), 1 = quick (CI), 2 = the 7B shapes where a harness has them.
inline int mode_of(int argc, char** argv) { return argc > 1 ? atoi(argv[1]) : 0; }
