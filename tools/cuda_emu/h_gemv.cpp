// h_gemv.cpp — cuda/gemv.cu (gemv_*) against a double-precision y[b] = W · x[b], tolerance
// 1e-5·sqrt(K)·Σ|w·x| (f32 accumulation in any order). Batches 1..8, N not a multiple of the 8 rows
// per block, K ragged / not a multiple of 8 (scalar path), W and x 2 bytes off 16-byte alignment
// (must take the scalar path: the emulated ld.global.nc.v4 and every vector cast check alignment).
// Both stage counts, and grids from one row per warp down to 1-3 blocks (each warp then streams
// many rows, its passes crossing row ends).
#include "util.h"
#include "gemv_emu.cu"
template <class T> struct K;
template <> struct K<__nv_bfloat16> { static constexpr auto f = gemv_bf16; };
template <> struct K<__half> { static constexpr auto f = gemv_f16; };
template <class T> void run(int n, int k, int b, int shift, unsigned stages, unsigned grid, uint64_t seed) {
    rng_state = seed;
    Buf<T> wb((size_t)n * k + 1, 8), xb((size_t)b * k + 1, 8); Buf<float> y((size_t)b * n);
    T* w = wb.p + shift; T* x = xb.p + shift;
    for (size_t i = 0; i < (size_t)n * k; ++i) w[i] = hto<T>(rnd(1.0f));
    for (size_t i = 0; i < (size_t)b * k; ++i) x[i] = hto<T>(rnd(2.0f));
    emu::launch({grid, 1, 1}, 256, [&] { K<T>::f(w, x, y.p, n, k, b, stages); });
    Stat s;
    for (int bi = 0; bi < b; ++bi) for (int ni = 0; ni < n; ++ni) {
        double acc = 0, aabs = 0;
        for (int ki = 0; ki < k; ++ki) { double p = (double)hf32(w[(size_t)ni * k + ki]) * hf32(x[(size_t)bi * k + ki]); acc += p; aabs += std::fabs(p); }
        s.add((size_t)bi * n + ni, y[(size_t)bi * n + ni], (float)acc, (float)(1e-5 * std::sqrt((double)k) * aabs + 1e-30), 0.0f);
    }
    char what[128]; snprintf(what, sizeof what, "gemv %s N%d K%d B%d stages %u grid %u%s", DT<T>::name, n, k, b, stages, grid, shift ? " misaligned" : "");
    s.print(what); CHECK(s.ok(), "%s", what); CHECK(y.guard_ok() && wb.guard_ok() && xb.guard_ok(), "%s guard", what); case_done(what, s.worst);
}
int main(int argc, char** argv) {
    const int mode = mode_of(argc, argv);
    struct C { int n, k, b, shift; };
    std::vector<C> cs = {{1, 8, 1, 0}, {7, 16, 3, 0}, {9, 7, 2, 0}, {127, 127, 8, 0}, {33, 4096, 1, 0}, {17, 4096, 8, 0}, {40, 11008, 2, 0},
                         {13, 264, 5, 0}, {9, 4096, 4, 1}, {8, 520, 6, 0}, {3, 1, 7, 0}, {16, 2056, 1, 0}, {11, 256, 8, 1}};
    if (mode <= 1) cs.push_back({4096, 4096, 1, 0});  // the 7B q/k/v/o shape (~2 s)
    if (mode == 2) cs = {{4096, 4096, 1, 0}};
    uint64_t s = 1;
    for (auto& c : cs) {
        const unsigned one_row = (unsigned)((c.n + 7) / 8);
        for (unsigned stages : {1u, 2u}) {
            // One row per warp, and a grid of (at most) 1-3 blocks: warps stream several rows.
            const unsigned few = std::min(one_row, 1u + (unsigned)(s % 3));
            for (int gi = 0; gi < 2; ++gi) {
                const unsigned grid = gi ? few : one_row;
                if (gi && few == one_row) continue;  // the same launch again
                run<__nv_bfloat16>(c.n, c.k, c.b, c.shift, stages, grid, s++);
                run<__half>(c.n, c.k, c.b, c.shift, stages, grid, s++);
            }
        }
    }
    return finish("gemv");
}
