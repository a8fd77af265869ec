// h_simple.cpp — cuda/swiglu.cu, cuda/embedding.cu, cuda/fill.cu against host references:
//   swiglu:    out = T(up * silu(gate)) with silu in double, rounded once; the launch shape of
//              launch::swiglu (T * ceil(U / 256) blocks, U = F / 4 when F % 4 == 0 else F), vector and
//              scalar paths, extreme gates (+-200, -88, -0, 1e30).
//   embedding: out[t] = f32(wte[ids[t]]) bit-exact, ids >= V (V itself, 0xffffffff) give zeros,
//              special values (-0, denormal, inf), ragged C.
//   fill:      the synth::value generator re-derived from src/synth.rs, bit-exact after rounding to T,
//              grid-stride loops with fewer blocks than elements need.
#include "util.h"
#include "swiglu_emu.cu"
#include "embedding_emu.cu"
#include "fill_emu.cu"
template <class T> struct K;
template <> struct K<__nv_bfloat16> { static constexpr auto sw = swiglu_bf16; static constexpr auto emb = embedding_bf16; static constexpr auto fill = fill_uniform_bf16; };
template <> struct K<__half> { static constexpr auto sw = swiglu_f16; static constexpr auto emb = embedding_f16; static constexpr auto fill = fill_uniform_f16; };

template <class T> void swiglu(int t, int f, uint64_t seed) {
    rng_state = seed;
    Buf<float> ug(t * 2 * f); Buf<T> out(t * f);
    for (int i = 0; i < t * 2 * f; ++i) ug[i] = rnd(8.0f);
    if (t * 2 * f > 8) { ug[f] = -200.f; ug[f + 1] = 200.f; ug[f + 2] = -88.f; ug[f + 3] = -0.f; ug[0] = 1e30f; ug[1] = -3.f; }
    // launch shape as launch::swiglu_launch
    size_t units = f % 4 == 0 ? f / 4 : f, per_row = (units + 255) / 256;
    emu::launch({(unsigned)(t * per_row), 1, 1}, 256, [&] { K<T>::sw(ug.p, out.p, f, t); });
    Stat s;
    for (int r = 0; r < t; ++r) for (int i = 0; i < f; ++i) {
        double u = ug[r * 2 * f + i], g = ug[r * 2 * f + f + i];
        float want = (float)(u * (g / (1.0 + std::exp(-g))));  // double-precision silu, rounded once
        s.add_t<T>(r * f + i, out[r * f + i], want, 1e-6f, DT<T>::tol);
    }
    char what[96]; snprintf(what, sizeof what, "swiglu %s T%d F%d", DT<T>::name, t, f);
    s.print(what); CHECK(s.ok(), "%s", what); CHECK(out.guard_ok() && ug.guard_ok(), "%s guard", what); case_done(what, s.worst);
}
template <class T> void embedding(int t, int v, int c, uint64_t seed) {
    rng_state = seed;
    Buf<T> wte((size_t)v * c); Buf<uint32_t> ids(t); Buf<float> out((size_t)t * c);
    for (size_t i = 0; i < (size_t)v * c; ++i) wte[i] = hto<T>(rnd(2.0f));
    if (v * c > 4) { wte[0].b = 0x8000; wte[1].b = 0x0001; wte[2].b = 0x7c00; }
    for (int i = 0; i < t; ++i) ids[i] = (uint32_t)((rng_state >> 7) % v), rnd(1);
    if (t > 2) { ids[0] = 0; ids[1] = v; ids[2] = 0xffffffffu; ids[t - 1] = v - 1; }
    emu::launch({(unsigned)t, 1, 1}, 256, [&] { K<T>::emb(wte.p, ids.p, out.p, v, c); });
    long bad = 0;
    for (int r = 0; r < t; ++r) for (int i = 0; i < c; ++i) {
        float want = ids[r] < (uint32_t)v ? hf32(wte[(size_t)ids[r] * c + i]) : 0.0f;
        float got = out[(size_t)r * c + i];
        if (memcmp(&got, &want, 4) != 0 && !(std::isnan(want) && std::isnan(got))) ++bad;
    }
    char what[96]; snprintf(what, sizeof what, "embedding %s T%d V%d C%d", DT<T>::name, t, v, c);
    printf("%-48s %ld values not bit-exact\n", what, bad);
    CHECK(bad == 0, "%s", what); CHECK(out.guard_ok() && wte.guard_ok(), "%s guard", what); case_done(what, bad ? INFINITY : 0.0);
}
// synth::value equivalent, written from fill.cu's header / src/synth.rs
static float synth_value(uint64_t key, uint64_t i, float offset, float scale) {
    uint64_t z = key ^ (i * 0xD6E8FEB86659FD93ull);
    z += 0x9E3779B97F4A7C15ull; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; z = (z ^ (z >> 27)) * 0x94D049BB133111EBull; z ^= z >> 31;
    float u = (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
    return offset + scale * u;
}
template <class T> void fill(size_t n, uint64_t key, float off, float sc, unsigned max_blocks) {
    Buf<T> out(n);
    unsigned blocks = (unsigned)std::min<size_t>((n + 255) / 256, max_blocks);
    emu::launch({blocks, 1, 1}, 256, [&] { K<T>::fill(out.p, n, key, off, sc); });
    long bad = 0;
    for (size_t i = 0; i < n; ++i) if (out[i].b != hto<T>(synth_value(key, i, off, sc)).b) ++bad;
    char what[96]; snprintf(what, sizeof what, "fill %s n%zu blocks%u", DT<T>::name, n, blocks);
    printf("%-48s %ld values not bit-exact\n", what, bad);
    CHECK(bad == 0, "%s", what); CHECK(out.guard_ok(), "%s guard", what); case_done(what, bad ? INFINITY : 0.0);
}
int main(int argc, char** argv) {
    const bool quick = mode_of(argc, argv) == 1;
    uint64_t s = 1;
    std::vector<std::pair<int, int>> sw = {{1, 11008}, {7, 11008}, {3, 1}, {5, 7}, {2, 127}, {2, 1028}, {3, 4}, {2, 4097}, {1, 1024}, {2, 1025}, {127, 44}};
    for (auto [t, f] : sw) { swiglu<__nv_bfloat16>(t, f, s++); swiglu<__half>(t, f, s++); }
    std::vector<std::tuple<int, int, int>> em = {{7, 50, 4096}, {1, 3, 8}, {5, 9, 7}, {4, 4, 127}, {3, 11, 1}, {127, 300, 24}, {3, 5, 4100}};
    for (auto [t, v, c] : em) { embedding<__nv_bfloat16>(t, v, c, s++); embedding<__half>(t, v, c, s++); }
    std::vector<std::pair<size_t, unsigned>> fl = {{1, 8}, {7, 8}, {257, 8}, {4096 * 3 + 5, 8}, {100000, 7}, {100000, 65535 * 8}};
    if (quick) fl.pop_back();  // quick: everything but the 391-block fill
    for (auto [n, mb] : fl) { fill<__nv_bfloat16>(n, 0x1234 + n, 0.5f, 0.02f, mb); fill<__half>(n, 77 + n, -1.0f, 3.0f, mb); }
    return finish("simple");
}
