// h_attention_decode.cpp — cuda/attention_decode.cu (run 4's attention_decode_* then
// attention_decode_combine_*) and cuda/attention_decode_fused.cu (attention_decode_fused_*, the combine
// in the last block, counters checked back at zero; stale counters zeroed at the step head as the
// executor's memset node does, and without that reset the output is shown to be wrong)
// against a double-precision softmax attention over keys 0..min(pos0 + t, cap - 1); the per-split
// partials (m, l, o) are checked against their definition too, and splits past the last key must be
// exactly (-inf, 0, 0). Split lengths as launch::attention_decode picks them and forced odd ones,
// head dims 1..256 (vector / scalar loads), q 2 bytes off 16-byte alignment, pos0 past cap and
// 0xffffffff, guard tails on every output and on the caches.
#include "util.h"
#include "attention_decode_emu.cu"
#include "attention_decode_fused_emu.cu"
template <class T> struct K;
// attention_decode_fused takes AttentionDecodeParams (params.h) by value: called through this adapter
// with the positional arguments of run 4's split kernel plus out and the counters.
template <auto F, typename T>
void fused_by_value(const T* q, const T* k, const T* v, float* po, float* pml, const uint32_t* pos0, uint32_t h,
                    uint32_t d, uint32_t cap, uint32_t split_len, uint32_t n_splits, float scale, T* out,
                    uint32_t* counters) {
    F(AttentionDecodeParams{.q = q, .k_cache = k, .v_cache = v, .part_o = po, .part_ml = pml, .pos0 = pos0, .H = h,
                            .D = d, .cap = cap, .split_len = split_len, .n_splits = n_splits, .scale = scale,
                            .out = out, .counters = counters});
}
template <> struct K<__nv_bfloat16> { static constexpr auto dec = attention_decode_bf16; static constexpr auto comb = attention_decode_combine_bf16; static constexpr auto fused = fused_by_value<attention_decode_fused_bf16, __nv_bfloat16>; };
template <> struct K<__half> { static constexpr auto dec = attention_decode_f16; static constexpr auto comb = attention_decode_combine_f16; static constexpr auto fused = fused_by_value<attention_decode_fused_f16, __half>; };
static int split_len_for(int cap) { return cap <= 1024 ? 64 : cap <= 16384 ? 128 : 256; }
// fused: attention_decode_fused (counters [T, H], zero before, checked zero after); else run 4's
// split kernel and the separate combine kernel. stale (fused only): the counters hold a left-over
// ticket count before the step; reset = zero them first, as the executor's memset node at the head of
// every decode step does (the result must then be right); without the reset the result must be wrong
// (the hazard the memset removes), and that case returns after checking so.
template <class T> void run(int t, int h, int d, uint32_t pos0, int cap, bool shift_q, uint64_t seed, int split_len = 0, int n_splits = 0, bool fused = false, bool stale = false, bool reset = true) {
    rng_state = seed;
    const size_t P = (size_t)h * d;
    if (!split_len) { split_len = split_len_for(cap); n_splits = std::max(1, (cap + split_len - 1) / split_len); }
    Buf<T> qb(t * P + 1, 8), kc(cap * P, 4 * P), vc(cap * P, 4 * P), out(t * P);
    Buf<float> po((size_t)t * h * n_splits * d), pml((size_t)t * h * n_splits * 2); Buf<uint32_t> pz(1);
    T* q = qb.p + (shift_q ? 1 : 0);
    for (size_t i = 0; i < t * P; ++i) q[i] = hto<T>(rnd(6.0f));
    for (size_t i = 0; i < cap * P; ++i) kc[i] = hto<T>(rnd(1.0f) / std::sqrt(d / 16.0f + 1e-9f) );
    for (size_t i = 0; i < cap * P; ++i) vc[i] = hto<T>(rnd(1.0f));
    pz[0] = pos0;
    const float scale = (float)(1.0 / std::sqrt((double)d));
    Buf<uint32_t> counters((size_t)t * h);
    for (size_t i = 0; i < (size_t)t * h; ++i) counters[i] = stale ? 3u + (uint32_t)i : 0u;
    if (stale && reset) memset((void*)counters.p, 0, (size_t)t * h * sizeof(uint32_t));  // the step-head memset node
    if (fused)
        emu::launch({(unsigned)n_splits, (unsigned)h, (unsigned)t}, 256, [&] { K<T>::fused(q, kc.p, vc.p, po.p, pml.p, pz.p, h, d, cap, split_len, n_splits, scale, out.p, counters.p); });
    else
        emu::launch({(unsigned)n_splits, (unsigned)h, (unsigned)t}, 256, [&] { K<T>::dec(q, kc.p, vc.p, po.p, pml.p, pz.p, h, d, cap, split_len, n_splits, scale); });
    char what[160]; snprintf(what, sizeof what, "adec %s T%d H%d D%d pos0 %u cap %d split %dx%d%s%s%s", DT<T>::name, t, h, d, pos0, cap, n_splits, split_len, shift_q ? " q+2B" : "", fused ? " fused" : "", stale ? (reset ? " stale+reset" : " stale, no reset") : "");
    long fl = emu::take_flags((std::string(what) + " decode").c_str());
    if (!fused) {
        emu::launch({(unsigned)h, (unsigned)t, 1}, 512, [&] { K<T>::comb(po.p, pml.p, out.p, pz.p, h, d, cap, split_len, n_splits); });
        fl += emu::take_flags((std::string(what) + " combine").c_str());
    }
    CHECK(fl == 0, "%s: emulator flags (see EMU lines)", what);
    long cbad = 0;
    for (size_t i = 0; i < (size_t)t * h; ++i) cbad += counters[i] != 0;
    if (!(stale && !reset)) CHECK(cbad == 0 && counters.guard_ok(), "%s: %ld counters not left at zero", what, cbad);
    float maxv = 0; for (size_t i = 0; i < cap * P; ++i) maxv = std::max(maxv, std::fabs(hf32(vc[i])));
    Stat so; long pbad = 0; double pworst = 0;
    for (int ti = 0; ti < t; ++ti)
        for (int hh = 0; hh < h; ++hh) {
            const uint64_t nk = std::min<uint64_t>((uint64_t)pos0 + ti + 1, cap);
            std::vector<double> s(nk);
            for (uint64_t j = 0; j < nk; ++j) {
                double acc = 0;
                for (int e = 0; e < d; ++e) acc += (double)hf32(q[ti * P + hh * d + e]) * hf32(kc[j * P + hh * d + e]);
                s[j] = acc * scale;
            }
            double mx = -INFINITY; for (double x : s) mx = std::max(mx, x);
            double sum = 0; for (double x : s) sum += std::exp(x - mx);
            for (int e = 0; e < d; ++e) {
                double o = 0; for (uint64_t j = 0; j < nk; ++j) o += std::exp(s[j] - mx) * hf32(vc[j * P + hh * d + e]);
                so.add_t<T>(ti * P + hh * d + e, out[ti * P + hh * d + e], (float)(o / sum), 2e-4f * maxv, DT<T>::tol);
            }
            // partials vs their definition
            for (int sp = 0; sp < n_splits; ++sp) {
                const size_t part = ((size_t)ti * h + hh) * n_splits + sp;
                const uint64_t b = (uint64_t)sp * split_len, e_ = std::min<uint64_t>(b + split_len, nk);
                const float gm = pml[part * 2], gl = pml[part * 2 + 1];
                if (b >= nk) {
                    if (fused) continue;  // not written: nothing reads it
                    bool ok = gm == -INFINITY && gl == 0.0f;
                    for (int c = 0; c < d; ++c) ok &= po[part * d + c] == 0.0f;
                    if (!ok) ++pbad;
                    continue;
                }
                double m = -INFINITY; for (uint64_t j = b; j < e_; ++j) m = std::max(m, s[j]);
                double l = 0; for (uint64_t j = b; j < e_; ++j) l += std::exp(s[j] - m);
                double r = std::fabs(gm - m) / (1e-5 * (1 + std::fabs(m)));
                r = std::max(r, std::fabs(gl - l) / (1e-4 * l));
                for (int c = 0; c < d; ++c) {
                    double o = 0; for (uint64_t j = b; j < e_; ++j) o += std::exp(s[j] - m) * hf32(vc[j * P + hh * d + c]);
                    r = std::max(r, std::fabs(po[part * d + c] - o) / (1e-4 * l * maxv));
                }
                if (!(r <= 1)) ++pbad;
                if (!(r <= pworst)) pworst = r;
            }
        }
    if (stale && !reset) {  // the hazard: no block sees the last ticket, nothing is combined
        printf("%-48s without the step-head reset: %s\n", what, so.ok() ? "right (UNEXPECTED)" : "wrong, as expected");
        CHECK(!so.ok(), "%s: a stale counter went unnoticed: the negative control cannot fail", what);
        case_done(what, 0.0);
        return;
    }
    so.print(what);
    printf("%-48s partials: %ld bad, worst %.3g of (m 1e-5, l 1e-4, o 1e-4·l·max|v|)\n", what, pbad, pworst);
    CHECK(so.ok() && pbad == 0, "%s", what);
    CHECK(out.guard_ok() && po.guard_ok() && pml.guard_ok() && kc.guard_ok() && vc.guard_ok(), "%s guard", what);
    case_done(what, std::max(so.worst, pworst));
}
int main(int argc, char** argv) {
    const int mode = mode_of(argc, argv);
    struct C { int t, h, d; uint32_t pos0; int cap; bool shift; int sl = 0, ns = 0; };
    std::vector<C> cs = {
        {1, 2, 128, 0, 200, false}, {1, 2, 128, 63, 200, false}, {1, 2, 128, 64, 200, true}, {3, 2, 128, 150, 200, false},
        {7, 1, 128, 120, 130, false}, {2, 2, 128, 500, 130, false}, {2, 1, 64, 0xFFFFFFFFu, 70, false},
        {2, 2, 16, 99, 300, false}, {1, 1, 8, 10, 64, false}, {2, 2, 96, 77, 100, false}, {1, 2, 96, 77, 100, true},
        {2, 1, 100, 77, 100, false}, {1, 1, 1, 40, 50, false}, {2, 1, 3, 40, 50, false}, {1, 1, 130, 140, 200, false},
        {2, 1, 200, 66, 128, false}, {1, 1, 256, 200, 300, false}, {1, 1, 256, 200, 300, true},
        {1, 2, 128, 1000, 1024, false}, {1, 1, 128, 3000, 4096, false},
        {2, 2, 128, 37, 200, false, 7, 29}, {1, 1, 64, 12, 13, false, 1, 13}, {1, 1, 128, 299, 300, false, 300, 1},
    };
    // quick (1) = the whole list (~9 s on 2 cores); the 7B shape (2) takes ~40 s
    if (mode == 2) cs = {{1, 32, 128, 8191, 8192, false}};
    uint64_t s = 1;
    for (bool fused : {false, true})
        for (auto& c : cs) {
            run<__nv_bfloat16>(c.t, c.h, c.d, c.pos0, c.cap, c.shift, s++, c.sl, c.ns, fused);
            run<__half>(c.t, c.h, c.d, c.pos0, c.cap, c.shift, s++, c.sl, c.ns, fused);
        }
    if (mode != 2) {
        // Stale tickets (issue 13 §2a): zeroed at the step head the fused kernel is right; without the
        // reset it is wrong (so this check can fail).
        for (bool reset : {true, false}) {
            run<__nv_bfloat16>(1, 2, 128, 300, 400, false, s++, 0, 0, true, true, reset);
            run<__half>(2, 2, 64, 90, 200, false, s++, 0, 0, true, true, reset);
        }
        // Grid by length (issue 13 §2b): a chat-size cache (cap 32767) and a short context, the grid
        // sized for the length bucket (launch::adec_bucket_splits: the next power of two of the
        // keys' splits), not for cap: both kernels must be right with the small grid.
        for (bool fused : {false, true})
            for (uint32_t p0 : {0u, 9u, 255u, 1000u}) {
                const int sl = 256, used = (int)((p0 + 1 + sl - 1) / sl);
                int ns = 1; while (ns < used) ns *= 2;
                run<__nv_bfloat16>(1, 2, 128, p0, 32767, false, s++, sl, ns, fused);
            }
    }
    return finish("attention_decode");
}
