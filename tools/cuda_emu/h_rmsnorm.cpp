// h_rmsnorm.cpp — cuda/rmsnorm.cu (rmsnorm_*, add_rmsnorm_*) against a host reference written from the
// kernel's header: x' = x + y (f32, stored back bit-exact), ss in double, inv = 1 / sqrtf(ss / C + eps),
// out = T((x' * inv) * w). Vector (C % 4 == 0) and scalar paths, rows with different scales, C = 1,
// all-zero rows, guard tails on x / y / out; one block of 256 threads per row.
#include "util.h"
#include "rmsnorm_emu.cu"
template <class T> struct K;
template <> struct K<__nv_bfloat16> { static constexpr auto plain = rmsnorm_bf16; static constexpr auto add = add_rmsnorm_bf16; };
template <> struct K<__half> { static constexpr auto plain = rmsnorm_f16; static constexpr auto add = add_rmsnorm_f16; };

template <class T> void run(int t, int c, bool add, uint64_t seed, bool zero = false) {
    const float eps = 1e-6f;
    rng_state = seed;
    Buf<float> x(t * c), y(t * c); Buf<T> w(c), out(t * c);
    std::vector<float> xh(t * c), yh(t * c), wh(c);
    for (int r = 0; r < t; ++r) for (int i = 0; i < c; ++i) { float s = std::ldexp(1.0f, r % 5 - 2); xh[r * c + i] = zero ? 0.f : rnd(3.0f) * s; }
    for (auto& v : yh) v = rnd(2.0f);
    for (int i = 0; i < c; ++i) { w[i] = hto<T>(rnd(1.5f)); wh[i] = hf32(w[i]); }
    memcpy(x.p, xh.data(), 4 * t * c); memcpy(y.p, yh.data(), 4 * t * c);
    emu::launch({(unsigned)t, 1, 1}, 256, [&] {
        if (add) K<T>::add(x.p, y.p, w.p, out.p, c, eps); else K<T>::plain(x.p, w.p, out.p, c, eps);
    });
    // reference (documented semantics): x' = x + y (f32), ss exact (double) then f32, inv = 1/sqrtf(ss/C + eps)
    Stat so, sx;
    for (int r = 0; r < t; ++r) {
        double ss = 0; std::vector<float> xr(c);
        for (int i = 0; i < c; ++i) { xr[i] = add ? xh[r * c + i] + yh[r * c + i] : xh[r * c + i]; ss += (double)xr[i] * xr[i]; }
        const float inv = 1.0f / sqrtf((float)ss / (float)c + eps);
        for (int i = 0; i < c; ++i) {
            so.add_t<T>(r * c + i, out[r * c + i], (xr[i] * inv) * wh[i], 1e-6f, DT<T>::tol);
            sx.add(r * c + i, x[r * c + i], xr[i], 0, 0);
        }
    }
    char what[128]; snprintf(what, sizeof what, "%s %s T%d C%d%s", add ? "add_rmsnorm" : "rmsnorm", DT<T>::name, t, c, zero ? " zero" : "");
    so.print(what);
    CHECK(so.ok(), "%s out", what);
    CHECK(sx.ok(), "%s x (want bit-exact; %ld differ)", what, sx.bad);
    CHECK(out.guard_ok() && x.guard_ok() && y.guard_ok(), "%s guard written", what);
    case_done(what, so.worst);
}
int main(int argc, char** argv) {
    const bool quick = mode_of(argc, argv) == 1;
    std::vector<std::pair<int, int>> shapes = {{1, 4096}, {7, 4096}, {3, 8192}, {3, 1}, {5, 7}, {2, 127}, {2, 4097}, {4, 4}, {3, 12}, {2, 11008}, {2, 1028}, {127, 4096}};
    if (quick) shapes.pop_back();  // all but T127 C4096 (3 s)
    uint64_t s = 1;
    for (auto [t, c] : shapes) for (int add = 0; add < 2; ++add) { run<__nv_bfloat16>(t, c, add, s++); run<__half>(t, c, add, s++); }
    if (!quick) { run<__nv_bfloat16>(2, 4096, false, 99, true); run<__half>(2, 4096, true, 98, true); }
    return finish("rmsnorm");
}
