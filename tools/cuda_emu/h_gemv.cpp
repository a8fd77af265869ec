// h_gemv.cpp — cuda/gemv.cu (run 4's gemv_*) and cuda/gemv_fused.cu (gemv_plain_*, the same sums on the
// post-run-4 stream) against a double-precision y[b] = W · x[b], tolerance
// 1e-5·sqrt(K)·Σ|w·x| (f32 accumulation in any order). Batches 1..8, N not a multiple of the 8 rows
// per block, K ragged / not a multiple of 8 (scalar path), W and x 2 bytes off 16-byte alignment
// (must take the scalar path: the emulated ld.global.nc.v4 and every vector cast check alignment).
// Both stage counts, and grids from one row per warp down to 1-3 blocks (each warp then streams
// many rows, its passes crossing row ends).
// The fused epilogues (gemv_swiglu_*, gemv_qkv_rope_*): bit-exact against the unfused chain run on
// the same emulator (gemv, then swiglu.cu / rotary.cu, each checked against its own host reference
// in h_gemv / h_simple / h_rotary), and within tolerance of a double-precision host reference;
// every cache row not targeted keeps its pattern, a position >= cap writes nothing at all.
// gemv_residual_rmsnorm_*: x bit-exact against gemv + add_rmsnorm, a within one ulp of T of it
// (Σ x² in another order) and within tolerance of a double reference; the ticket counter back at 0;
// a stale counter zeroed at the step head (the executor's memset node) gives the right result, and
// left stale gives a wrong one (so that check can fail). The unfused chains use run 4's gemv.
#include "util.h"
#include "gemv_emu.cu"
#include "gemv_fused_emu.cu"
#include "swiglu_emu.cu"
#include "rotary_emu.cu"
#include "rmsnorm_emu.cu"
template <class T> struct K;
// gemv_fused.cu's kernels take GemvFusedParams (params.h) by value: called through these adapters
// with their former positional arguments.
template <auto F, class T> void plain_v(const T* w, const T* x, float* y, uint32_t n, uint32_t k, uint32_t b, uint32_t cfg) {
    F(GemvFusedParams{.w = w, .x = x, .K = k, .B = b, .cfg = cfg, .y = y, .N = n});
}
template <auto F, class T> void swiglu_v(const T* w, const T* x, T* out, uint32_t f, uint32_t k, uint32_t b, uint32_t cfg) {
    F(GemvFusedParams{.w = w, .x = x, .K = k, .B = b, .cfg = cfg, .F = f, .out = out});
}
template <auto F, class T>
void rope_v(const T* w, const T* x, const T* bias, const float* inv_freq, const uint32_t* pos0, T* q, T* kc, T* vc,
            uint32_t k, uint32_t b, uint32_t cfg, uint32_t h, uint32_t d, uint32_t cap, uint32_t s, uint32_t logn) {
    F(GemvFusedParams{.w = w, .x = x, .K = k, .B = b, .cfg = cfg, .bias = bias, .inv_freq = inv_freq, .pos0 = pos0,
                      .q = q, .k_cache = kc, .v_cache = vc, .H = h, .D = d, .cap = cap, .S = s, .use_logn = logn});
}
template <auto F, class T>
void resnorm_v(const T* w, const T* x_in, float* x, const T* w_ln, T* a, float* partials, uint32_t* counter, uint32_t c,
               uint32_t k, uint32_t cfg, float eps) {
    F(GemvFusedParams{.w = w, .x = x_in, .K = k, .B = 1, .cfg = cfg, .C = c, .resid = x, .w_ln = w_ln, .a = a,
                      .partials = partials, .counter = counter, .eps = eps});
}
template <> struct K<__nv_bfloat16> {
    static constexpr auto f = gemv_bf16; static constexpr auto plain = plain_v<gemv_plain_bf16, __nv_bfloat16>; static constexpr auto sw = swiglu_v<gemv_swiglu_bf16, __nv_bfloat16>;
    static constexpr auto rope = rope_v<gemv_qkv_rope_bf16, __nv_bfloat16>;
    static constexpr auto sw_alone = swiglu_bf16; static constexpr auto rope_alone = qkv_rope_append_bf16;
    static constexpr auto resnorm = resnorm_v<gemv_residual_rmsnorm_bf16, __nv_bfloat16>; static constexpr auto addnorm = add_rmsnorm_bf16;
};
template <> struct K<__half> {
    static constexpr auto f = gemv_f16; static constexpr auto plain = plain_v<gemv_plain_f16, __half>; static constexpr auto sw = swiglu_v<gemv_swiglu_f16, __half>;
    static constexpr auto rope = rope_v<gemv_qkv_rope_f16, __half>;
    static constexpr auto sw_alone = swiglu_f16; static constexpr auto rope_alone = qkv_rope_append_f16;
    static constexpr auto resnorm = resnorm_v<gemv_residual_rmsnorm_f16, __half>; static constexpr auto addnorm = add_rmsnorm_f16;
};
// Double-precision W · x[b] of row n, and the tolerance scale 1e-5 sqrt(K) Σ|w x| of its f32 sum.
template <class T> std::pair<double, double> dot_ref(const T* w, const T* x, int n, int k, int b) {
    double acc = 0, aabs = 0;
    for (int ki = 0; ki < k; ++ki) { double p = (double)hf32(w[(size_t)n * k + ki]) * hf32(x[(size_t)b * k + ki]); acc += p; aabs += std::fabs(p); }
    return {acc, 1e-5 * std::sqrt((double)k) * aabs + 1e-30};
}
template <class T> long bits_differ(const T* a, const T* b, size_t n) { long d = 0; for (size_t i = 0; i < n; ++i) d += a[i].b != b[i].b; return d; }

// gemv_swiglu: out[b, f] = T(up · silu(gate)), up / gate = rows f / F + f of w [2F, K].
template <class T> void run_swiglu(int f, int k, int b, int shift, unsigned stages, unsigned grid, uint64_t seed) {
    rng_state = seed;
    Buf<T> wb((size_t)2 * f * k + 1, 8), xb((size_t)b * k + 1, 8), out((size_t)b * f), chain((size_t)b * f); Buf<float> ug((size_t)b * 2 * f);
    T* w = wb.p + shift; T* x = xb.p + shift;
    for (size_t i = 0; i < (size_t)2 * f * k; ++i) w[i] = hto<T>(rnd(1.0f));
    for (size_t i = 0; i < (size_t)b * k; ++i) x[i] = hto<T>(rnd(2.0f));
    emu::launch({grid, 1, 1}, 256, [&] { K<T>::sw(w, x, out.p, f, k, b, stages); });
    // The unfused chain: gemv into [B, 2F] f32 (one row per warp), then swiglu.cu in launch::swiglu's shape.
    emu::launch({(unsigned)((2 * f + 7) / 8), 1, 1}, 256, [&] { K<T>::f(w, x, ug.p, 2 * f, k, b, stages); });
    const size_t units = f % 4 == 0 ? f / 4 : f, per_row = (units + 255) / 256;
    emu::launch({(unsigned)(b * per_row), 1, 1}, 256, [&] { K<T>::sw_alone(ug.p, chain.p, f, b); });
    const long differ = bits_differ(out.p, chain.p, (size_t)b * f);
    Stat s;
    for (int bi = 0; bi < b; ++bi) for (int fi = 0; fi < f; ++fi) {
        const auto [u, eu] = dot_ref(w, x, fi, k, bi);
        const auto [g, eg] = dot_ref(w, x, f + fi, k, bi);
        const double sg = g / (1.0 + std::exp(-g));
        const double atol = eu * std::fabs(sg) + eg * std::fabs(u) * 1.1 + 1e-6;  // d out = silu(g) du + u silu'(g) dg, |silu'| < 1.1
        s.add_t<T>((size_t)bi * f + fi, out[(size_t)bi * f + fi], (float)(u * sg), (float)atol, DT<T>::tol);
    }
    char what[128]; snprintf(what, sizeof what, "gemv_swiglu %s F%d K%d B%d stages %u grid %u%s", DT<T>::name, f, k, b, stages, grid, shift ? " misaligned" : "");
    s.print(what); printf("%-56s bits differing from gemv + swiglu: %ld\n", what, differ);
    CHECK(s.ok() && differ == 0, "%s", what);
    CHECK(out.guard_ok() && wb.guard_ok() && xb.guard_ok(), "%s guard", what); case_done(what, s.worst);
}

// gemv_residual_rmsnorm (B = 1): x [C] += W [C, K] · h, a = RMSNorm(x) · w_ln.
template <class T> void run_resnorm(int c, int k, int shift, unsigned stages, unsigned grid, uint64_t seed, bool stale = false, bool reset = true) {
    rng_state = seed;
    const float eps = 1e-6f;
    Buf<T> wb((size_t)c * k + 1, 8), hb((size_t)k + 1, 8), wln(c), a(c), a2(c);
    Buf<float> x(c), x2(c), y(c), ws((size_t)(c + 7) / 8 + 1);
    T* w = wb.p + shift; T* h = hb.p + shift;
    for (size_t i = 0; i < (size_t)c * k; ++i) w[i] = hto<T>(rnd(1.0f));
    for (int i = 0; i < k; ++i) h[i] = hto<T>(rnd(1.0f));
    for (int i = 0; i < c; ++i) { wln[i] = hto<T>(1.0f + rnd(0.5f)); x[i] = x2[i] = rnd(3.0f); }
    std::vector<float> x0(x.p, x.p + c);
    uint32_t* counter = (uint32_t*)(ws.p + (c + 7) / 8);
    *counter = stale ? 1u : 0u;    // stale: a ticket left over by a launch that died half-way
    if (stale && reset) *counter = 0;  // the step-head memset node
    emu::launch({grid, 1, 1}, 256, [&] { K<T>::resnorm(w, h, x.p, wln.p, a.p, ws.p, counter, c, k, stages, eps); });
    // The unfused chain: gemv into y, then add_rmsnorm (x2 += y, a2 = RMSNorm(x2) · w_ln).
    emu::launch({(unsigned)((c + 7) / 8), 1, 1}, 256, [&] { K<T>::f(w, h, y.p, c, k, 1, stages); });
    emu::launch({1, 1, 1}, 256, [&] { K<T>::addnorm(x2.p, y.p, wln.p, a2.p, c, eps); });
    long xdiff = 0, aulp = 0;
    for (int i = 0; i < c; ++i) {
        xdiff += memcmp(&x[i], &x2[i], 4) != 0;
        aulp = std::max(aulp, std::labs(ulp_key16(a[i].b) - ulp_key16(a2[i].b)));
    }
    // Double reference.
    std::vector<double> xr(c); double ss = 0;
    double sx = 0;  // tolerance scale of x
    for (int n = 0; n < c; ++n) { const auto [yy, e] = dot_ref(w, h, n, k, 0); xr[n] = x0[n] + yy; ss += xr[n] * xr[n]; sx = std::max(sx, e); }
    const double inv = 1.0 / std::sqrt(ss / c + eps);
    Stat sxs, sas;
    for (int n = 0; n < c; ++n) {
        sxs.add(n, x[n], (float)xr[n], (float)(dot_ref(w, h, n, k, 0).second + 1e-6 * std::fabs(xr[n])), 0.0f);
        sas.add_t<T>(n, a[n], (float)(xr[n] * inv * hf32(wln[n])), (float)(1e-5 + sx * inv * 2), DT<T>::tol);
    }
    char what[128]; snprintf(what, sizeof what, "gemv_residual_rmsnorm %s C%d K%d stages %u grid %u%s%s", DT<T>::name, c, k, stages, grid, shift ? " misaligned" : "", stale ? (reset ? " stale+reset" : " stale, no reset") : "");
    if (stale && !reset) {  // no block sees the last ticket: a is never written (the hazard)
        printf("%-56s without the step-head reset: %s\n", what, sas.ok() ? "right (UNEXPECTED)" : "wrong, as expected");
        CHECK(!sas.ok(), "%s: a stale counter went unnoticed: the negative control cannot fail", what);
        case_done(what, 0.0);
        return;
    }
    sxs.print(std::string(what) + " x"); sas.print(std::string(what) + " a");
    printf("%-56s x differing from gemv + add_rmsnorm: %ld, a max ulp from it: %ld, counter %u\n", what, xdiff, aulp, *counter);
    CHECK(sxs.ok() && sas.ok() && xdiff == 0 && aulp <= 1 && *counter == 0, "%s", what);
    CHECK(x.guard_ok() && a.guard_ok() && ws.guard_ok() && wb.guard_ok() && hb.guard_ok(), "%s guard", what);
    case_done(what, std::max(sxs.worst, sas.worst));
}

// gemv_qkv_rope (B = 1): q, k cache row p, v cache row p of one token at p = pos0.
template <class T> void run_rope(int h, int d, int k, int shift, uint32_t pos0, int cap, int S, bool logn, unsigned stages, unsigned grid, uint64_t seed) {
    rng_state = seed;
    const size_t P = (size_t)h * d;
    Buf<T> wb(3 * P * k + 1, 8), xb((size_t)k + 1, 8), bias(3 * P), q(P), kc(cap * P), vc(cap * P), q2(P), kc2(cap * P), vc2(cap * P);
    Buf<float> invf(d / 2), qkv(3 * P); Buf<uint32_t> pz(1);
    T* w = wb.p + shift; T* x = xb.p + shift;
    for (size_t i = 0; i < 3 * P * k; ++i) w[i] = hto<T>(rnd(1.0f));
    for (int i = 0; i < k; ++i) x[i] = hto<T>(rnd(2.0f));
    for (size_t i = 0; i < 3 * P; ++i) bias[i] = hto<T>(rnd(0.5f));
    for (int j = 0; j < d / 2; ++j) invf[j] = (float)(1.0 / std::pow(10000.0, 2.0 * j / d));
    pz[0] = pos0;
    for (size_t i = 0; i < cap * P; ++i) { kc[i].b = kc2[i].b = 0x1234; vc[i].b = vc2[i].b = 0x1234; }
    emu::launch({grid, 1, 1}, 256, [&] { K<T>::rope(w, x, bias.p, invf.p, pz.p, q.p, kc.p, vc.p, k, 1, stages, h, d, cap, S, logn); });
    emu::launch({(unsigned)((3 * P + 7) / 8), 1, 1}, 256, [&] { K<T>::f(w, x, qkv.p, 3 * P, k, 1, stages); });
    emu::launch({1, (unsigned)h, 1}, 64, [&] { K<T>::rope_alone(qkv.p, bias.p, invf.p, pz.p, q2.p, kc2.p, vc2.p, 1, h, d, cap, S, logn); });
    const long differ = bits_differ(q.p, q2.p, P) + bits_differ(kc.p, kc2.p, cap * P) + bits_differ(vc.p, vc2.p, cap * P);
    Stat st; long stray = 0;
    const uint64_t p = pos0;
    if (p >= (uint64_t)cap) {
        for (size_t c = 0; c < P; ++c) stray += q[c].b != 0xFFFF;  // q stays poison
    } else {
        const float sc = (logn && p + 1 > (uint64_t)S) ? (float)(std::log((double)p + 1.0) / std::log((double)S)) : 1.0f;
        for (int part = 0; part < 3; ++part) for (int hh = 0; hh < h; ++hh) for (int j = 0; j < d / 2; ++j) {
            const size_t c1 = part * P + hh * d + j, c2 = c1 + d / 2, o1 = hh * d + j, o2 = o1 + d / 2;
            const auto [y1, e1] = dot_ref(w, x, (int)c1, k, 0);
            const auto [y2, e2] = dot_ref(w, x, (int)c2, k, 0);
            const double x1 = y1 + hf32(bias[c1]), x2 = y2 + hf32(bias[c2]);
            const double theta = (double)(float)((float)p * invf[j]), cs = std::cos(theta), sn = std::sin(theta);
            const double r1 = part == 2 ? x1 : x1 * cs - x2 * sn, r2 = part == 2 ? x2 : x2 * cs + x1 * sn;
            const double m = part == 0 ? sc : 1.0;
            const T* o = part == 0 ? q.p : (part == 1 ? kc.p : vc.p) + p * P;
            const float atol = (float)((e1 + e2) * m + 1e-5);
            st.add_t<T>(part * P + o1, o[o1], (float)(r1 * m), atol, DT<T>::tol);
            st.add_t<T>(part * P + o2, o[o2], (float)(r2 * m), atol, DT<T>::tol);
        }
    }
    for (size_t r = 0; r < (size_t)cap; ++r) {
        if (r == p) continue;
        for (size_t c = 0; c < P; ++c) stray += kc[r * P + c].b != 0x1234 || vc[r * P + c].b != 0x1234;
    }
    char what[160]; snprintf(what, sizeof what, "gemv_qkv_rope %s H%d D%d K%d pos0 %u cap %d S%d logn%d stages %u grid %u%s", DT<T>::name, h, d, k, pos0, cap, S, logn, stages, grid, shift ? " misaligned" : "");
    st.print(what); printf("%-56s bits differing from gemv + qkv_rope_append: %ld, stray writes %ld\n", what, differ, stray);
    CHECK(st.ok() && differ == 0 && stray == 0, "%s", what);
    CHECK(q.guard_ok() && kc.guard_ok() && vc.guard_ok() && wb.guard_ok() && xb.guard_ok(), "%s guard", what); case_done(what, st.worst);
}
template <class T> void run(int n, int k, int b, int shift, unsigned stages, unsigned grid, uint64_t seed, bool plain) {
    rng_state = seed;
    Buf<T> wb((size_t)n * k + 1, 8), xb((size_t)b * k + 1, 8); Buf<float> y((size_t)b * n);
    T* w = wb.p + shift; T* x = xb.p + shift;
    for (size_t i = 0; i < (size_t)n * k; ++i) w[i] = hto<T>(rnd(1.0f));
    for (size_t i = 0; i < (size_t)b * k; ++i) x[i] = hto<T>(rnd(2.0f));
    // stages >> 8: the L2-prefetch field of the cfg word (cache hints only; must not change y).
    if (plain) emu::launch({grid, 1, 1}, 256, [&] { K<T>::plain(w, x, y.p, n, k, b, stages); });
    else emu::launch({grid, 1, 1}, 256, [&] { K<T>::f(w, x, y.p, n, k, b, stages); });
    Stat s;
    for (int bi = 0; bi < b; ++bi) for (int ni = 0; ni < n; ++ni) {
        double acc = 0, aabs = 0;
        for (int ki = 0; ki < k; ++ki) { double p = (double)hf32(w[(size_t)ni * k + ki]) * hf32(x[(size_t)bi * k + ki]); acc += p; aabs += std::fabs(p); }
        s.add((size_t)bi * n + ni, y[(size_t)bi * n + ni], (float)acc, (float)(1e-5 * std::sqrt((double)k) * aabs + 1e-30), 0.0f);
    }
    char what[128]; snprintf(what, sizeof what, "%s %s N%d K%d B%d stages %u pf %u grid %u%s", plain ? "gemv_plain" : "gemv", DT<T>::name, n, k, b, stages & 0xFF, stages >> 8, grid, shift ? " misaligned" : "");
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
        for (bool plain : {false, true})
        for (unsigned stages : {1u, 2u, 2u | (3u << 8)}) {
            if (!plain && (stages >> 8) != 0) continue;  // run 4's gemv has no prefetch field
            // One row per warp, and a grid of (at most) 1-3 blocks: warps stream several rows.
            const unsigned few = std::min(one_row, 1u + (unsigned)(s % 3));
            for (int gi = 0; gi < 2; ++gi) {
                const unsigned grid = gi ? few : one_row;
                if (gi && few == one_row) continue;  // the same launch again
                run<__nv_bfloat16>(c.n, c.k, c.b, c.shift, stages, grid, s++, plain);
                run<__half>(c.n, c.k, c.b, c.shift, stages, grid, s++, plain);
            }
        }
    }
    // Fused epilogues: one item per warp, and 1-3 blocks (warps stream several items, R = 2 rows each).
    struct SW { int f, k, b, shift; };
    std::vector<SW> sws = {{5, 16, 1, 0}, {13, 264, 3, 0}, {9, 7, 2, 0}, {17, 520, 1, 1}, {3, 8, 8, 0}, {40, 4096, 1, 0}};
    struct RP { int h, d, k, shift; uint32_t pos0; int cap, S; bool logn; };
    std::vector<RP> rps = {{2, 16, 64, 0, 0, 4, 8, true}, {3, 6, 40, 0, 9, 12, 4, true}, {4, 128, 256, 0, 7, 8, 8192, true},
                           {1, 256, 72, 0, 30, 40, 8, true}, {2, 16, 33, 1, 2, 4, 2, false}, {2, 16, 64, 0, 4, 4, 8, true},
                           {2, 8, 16, 0, 0xFFFFFFFFu, 4, 8, true}};
    struct RN { int c, k, shift; };
    std::vector<RN> rns = {{8, 16, 0}, {37, 264, 0}, {300, 129, 0}, {64, 520, 1}, {1000, 64, 0}};
    if (mode == 2) { sws = {{11008 / 16, 4096, 1, 0}}; rps = {{32, 128, 4096, 0, 100, 128, 8192, true}}; rns = {{4096, 4096, 0}}; }
    for (unsigned stages : {1u, 2u}) {
        for (auto& c : sws) {
            const unsigned one = (unsigned)((c.f + 7) / 8), few = std::min(one, 1u + (unsigned)(s % 3));
            run_swiglu<__nv_bfloat16>(c.f, c.k, c.b, c.shift, stages, one, s++); run_swiglu<__half>(c.f, c.k, c.b, c.shift, stages, one, s++);
            if (few != one) { run_swiglu<__nv_bfloat16>(c.f, c.k, c.b, c.shift, stages, few, s++); run_swiglu<__half>(c.f, c.k, c.b, c.shift, stages, few, s++); }
        }
        for (auto& c : rns) {
            const unsigned one = (unsigned)((c.c + 7) / 8), few = std::min(one, 1u + (unsigned)(s % 3));
            run_resnorm<__nv_bfloat16>(c.c, c.k, c.shift, stages, one, s++); run_resnorm<__half>(c.c, c.k, c.shift, stages, one, s++);
            if (few != one) { run_resnorm<__nv_bfloat16>(c.c, c.k, c.shift, stages, few, s++); run_resnorm<__half>(c.c, c.k, c.shift, stages, few, s++); }
        }
        for (auto& c : rps) {
            const unsigned one = (unsigned)((3 * c.h * c.d / 2 + 7) / 8), few = std::min(one, 1u + (unsigned)(s % 3));
            for (unsigned grid : {one, few}) {
                if (grid == few && few == one) continue;
                run_rope<__nv_bfloat16>(c.h, c.d, c.k, c.shift, c.pos0, c.cap, c.S, c.logn, stages, grid, s++);
                run_rope<__half>(c.h, c.d, c.k, c.shift, c.pos0, c.cap, c.S, c.logn, stages, grid, s++);
            }
        }
    }
    if (mode != 2)  // stale tickets (issue 13 §2a): reset at the step head, and the negative control
        for (bool reset : {true, false}) { run_resnorm<__nv_bfloat16>(300, 129, 0, 2, 3, s++, true, reset); run_resnorm<__half>(64, 520, 0, 2, 8, s++, true, reset); }
    return finish("gemv");
}
