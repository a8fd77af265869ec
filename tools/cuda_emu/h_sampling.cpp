// h_sampling.cpp — cuda/sampling.cu (run 4's sample_mark_f32, sample_process_f32, sample_draw_f32 with
// bisection cuts), cuda/sampling_fast.cu (sample_draw_radix_f32 on every case; for greedy also
// sample_greedy_f32) and cuda/sampling_topp.cu (for top_k = 0 the multi-block sample_prep/exp/cut/walk_f32) against a
// host re-implementation of steps 0-6 of the kernel's header (HF order: NaN / ids >= vocab_len -> -inf,
// repetition penalty on context ids (ids >= V ignored), greedy argmax with lowest-id ties, temperature,
// top-k, top-p keeping ties and the max, softmax, inverse-CDF draw with the host's u): the drawn id must
// match and every probability be within 1e-6 + 1e-4 p; the flags workspace must be left zero.
#include "util.h"
#include "sampling_emu.cu"
#include "sampling_fast_emu.cu"
#include "sampling_topp_emu.cu"
#include <numeric>
// Reference of steps 0-6 from the header comment of sampling.cu (double where it does not matter).
static void reference(std::vector<float> x, uint32_t vocab_len, const std::vector<uint32_t>& ctx, float pen, bool greedy, float temp,
                      uint32_t top_k, float top_p, double u, std::vector<double>& p, uint32_t& id) {
    const size_t V = x.size();
    for (size_t v = 0; v < V; ++v) if (std::isnan(x[v]) || v >= vocab_len) x[v] = -INFINITY;
    std::vector<char> seen(V, 0); for (uint32_t c : ctx) if (c < V) seen[c] = 1;
    for (size_t v = 0; v < V; ++v) if (seen[v]) x[v] = x[v] < 0 ? x[v] * pen : x[v] / pen;
    p.assign(V, 0.0);
    if (greedy) { size_t a = 0; for (size_t v = 1; v < V; ++v) if (x[v] > x[a]) a = v; if (x[a] == -INFINITY) a = 0; id = (uint32_t)a; p[a] = 1; return; }
    for (auto& v : x) v = v / temp;
    std::vector<char> keep(V, 1);
    if (top_k > 0) { std::vector<float> s = x; std::nth_element(s.begin(), s.begin() + (top_k - 1), s.end(), std::greater<float>()); float kth = s[top_k - 1]; for (size_t v = 0; v < V; ++v) if (!(x[v] >= kth)) keep[v] = 0; }
    float mx = -INFINITY; for (size_t v = 0; v < V; ++v) if (keep[v]) mx = std::max(mx, x[v]);
    if (mx == -INFINITY) { id = 0; return; }
    std::vector<float> e(V, 0.f);
    if (mx == INFINITY) { for (size_t v = 0; v < V; ++v) e[v] = x[v] == INFINITY ? 1.f : 0.f; }
    else for (size_t v = 0; v < V; ++v) e[v] = keep[v] ? expf(x[v] - mx) : 0.f;
    if (top_p < 1.0f && mx != INFINITY) {
        double Z = 0; for (float a : e) Z += a;
        std::vector<size_t> idx(V); std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return e[a] < e[b]; });
        std::vector<char> drop(V, 0); double cum = 0; size_t i = 0;
        while (i < V) { size_t j = i; double grp = 0; while (j < V && e[idx[j]] == e[idx[i]]) grp += e[idx[j++]]; cum += grp;
            if ((float)(cum / Z) <= 1.0f - top_p) for (size_t q = i; q < j; ++q) drop[idx[q]] = 1; i = j; }
        float emax = 0; for (float a : e) emax = std::max(emax, a);
        for (size_t v = 0; v < V; ++v) if (drop[v] && e[v] != emax) e[v] = 0;
    }
    double Zk = 0; for (float a : e) Zk += a;
    for (size_t v = 0; v < V; ++v) p[v] = e[v] / Zk;
    double c = 0; id = UINT32_MAX; for (size_t v = 0; v < V; ++v) { c += p[v]; if (u < c) { id = (uint32_t)v; break; } }
    if (id == UINT32_MAX) for (size_t v = V; v-- > 0;) if (p[v] > 0) { id = (uint32_t)v; break; }
}
// quant > 0: logits rounded to multiples of 1/quant, so many ids tie (at the top-k cut, across the
// top-p cut, in the search passes' bins).
// infs: two +inf logits (every p goes to them, 1/2 each).
void run(uint32_t V, uint32_t vocab_len, int n_ctx, float pen, bool greedy, float temp, uint32_t top_k, float top_p, double u, uint64_t seed, bool spikes = false, float quant = 0, bool infs = false) {
    rng_state = seed;
    Buf<float> logits(V), probs(V); Buf<uint8_t> flags(V); Buf<uint32_t> ctx(std::max(n_ctx, 1)), out(1);
    memset(flags.p, 0, V);
    std::vector<float> xh(V); for (auto& v : xh) v = rnd(4.0f);
    if (quant > 0) for (auto& v : xh) v = std::round(v * quant) / quant;
    if (spikes) { xh[3] = NAN; xh[V / 2] = 9.0f; xh[V / 3] = 9.0f; xh[1] = -INFINITY; }
    if (infs) { xh[V / 5] = INFINITY; xh[V - 2] = INFINITY; }
    memcpy(logits.p, xh.data(), 4 * V);
    std::vector<uint32_t> ch(n_ctx); for (auto& c : ch) c = (uint32_t)((rnd(1) + 1) * 0.5f * (V + 10)); // some ids >= V
    if (n_ctx) memcpy(ctx.p, ch.data(), 4 * n_ctx);
    const bool penalise = pen != 1.0f && n_ctx > 0;
    if (penalise) emu::launch({(unsigned)std::min((n_ctx + 255) / 256, 1024), 1, 1}, 256, [&] { sample_mark_f32(ctx.p, n_ctx, flags.p, V); });
    emu::launch({(V + 255) / 256, 1, 1}, 256, [&] { sample_process_f32(logits.p, V, std::min(vocab_len, V), flags.p, penalise ? pen : 1.0f); });
    long fl = 0; for (uint32_t v = 0; v < V; ++v) fl += flags[v] != 0;
    emu::launch({1, 1, 1}, 1024, [&] { sample_draw_f32(logits.p, V, greedy, temp, top_k, top_p, u, probs.p, out.p); });
    // sample_draw_radix_f32 (sampling_fast.cu) on a copy of the same processed logits: the same id and
    // distribution as the reference (checked below with run 4's bisection draw's).
    Buf<float> probs_r(V); Buf<uint32_t> out_r(1);
    emu::launch({1, 1, 1}, 1024, [&] { sample_draw_radix_f32(SampleParams{.logits = logits.p, .V = V, .greedy = greedy, .temperature = temp, .top_k = top_k, .top_p = top_p, .u = u, .probs = probs_r.p, .out_id = out_r.p}); });
    std::vector<double> p; uint32_t id;
    reference(xh, std::min(vocab_len, V), penalise ? ch : std::vector<uint32_t>{}, pen, greedy, temp, top_k, top_p, u, p, id);
    if (greedy) {
        // sample_greedy_f32 (process + argmax + one-hot in one multi-block pass) on fresh copies, as
        // launch::sample runs it for greedy: the same id, the same processed logits, the one-hot probs,
        // flags and ticket counter left zero.
        const unsigned blocks = (V + 255) / 256;
        Buf<float> lg(V), pg(V); Buf<uint8_t> fg(V); Buf<unsigned long long> part(blocks); Buf<uint32_t> og(1), counter(1);
        memcpy(lg.p, xh.data(), 4 * V); memset(fg.p, 0, V); counter[0] = 0;
        if (penalise) emu::launch({(unsigned)std::min((n_ctx + 255) / 256, 1024), 1, 1}, 256, [&] { sample_mark_f32(ctx.p, n_ctx, fg.p, V); });
        emu::launch({blocks, 1, 1}, 256, [&] { sample_greedy_f32(SampleParams{.logits = lg.p, .V = V, .vocab_len = std::min(vocab_len, V), .flags = fg.p, .penalty = penalise ? pen : 1.0f, .probs = pg.p, .out_id = og.p, .part = part.p, .counter = counter.p}); });
        long bad = 0;
        for (uint32_t v = 0; v < V; ++v) bad += memcmp(&lg[v], &logits[v], 4) != 0 || pg[v] != (v == id ? 1.0f : 0.0f) || fg[v] != 0;
        printf("%-64s greedy kernel id %u (ref %u), %ld logits / probs / flags wrong, counter %u\n", "", og[0], id, bad, counter[0]);
        CHECK(og[0] == id && bad == 0 && counter[0] == 0, "sample_greedy_f32 V%u", V);
        CHECK(lg.guard_ok() && pg.guard_ok() && fg.guard_ok() && part.guard_ok(), "sample_greedy_f32 V%u guard", V);
    }
    if (!greedy && (top_k == 0 || top_k >= V)) {
        // The multi-block top-p path (launch::sample runs it when top_k is 0) on fresh copies: the
        // same id, the distribution within the same tolerance, flags and ticket counter left zero, the
        // search state's per-pass bins zero again.
        const unsigned blocks = (V + 1023) / 1024;
        Buf<float> lg(V), pg(V); Buf<uint8_t> fg(V); Buf<double> part(blocks); Buf<uint32_t> og(1), counter(1); Buf<SmfState> st(1);
        memcpy(lg.p, xh.data(), 4 * V); memset(fg.p, 0, V); counter[0] = 0;
        memset((void*)st.p, 0xA5, sizeof(SmfState));  // garbage: sample_prep_f32 must initialise it
        if (penalise) emu::launch({(unsigned)std::min((n_ctx + 255) / 256, 1024), 1, 1}, 256, [&] { sample_mark_f32(ctx.p, n_ctx, fg.p, V); });
        // The four kernels take the same SampleParams (params.h) by value, as launch::sample passes it.
        const float thr = (float)(1.0 - (double)top_p);
        const SampleParams sp{.logits = lg.p, .V = V, .vocab_len = std::min(vocab_len, V), .flags = fg.p, .penalty = penalise ? pen : 1.0f,
                              .temperature = temp, .thr = thr, .u = u, .probs = pg.p, .out_id = og.p, .part = part.p, .counter = counter.p, .state = st.p};
        emu::launch({blocks, 1, 1}, 256, [&] { sample_prep_f32(sp); });
        emu::launch({blocks, 1, 1}, 256, [&] { sample_exp_f32(sp); });
        if (top_p < 1.0f) for (int pass = 0; pass < 4; ++pass) emu::launch({blocks, 1, 1}, 256, [&] { sample_cut_f32(sp); });
        emu::launch({blocks, 1, 1}, 256, [&] { sample_walk_f32(sp); });
        double merr = 0; for (uint32_t v = 0; v < V; ++v) merr = std::max(merr, std::fabs(pg[v] - p[v]) / (1e-6 + 1e-4 * p[v]));
        long bad = 0; for (uint32_t v = 0; v < V; ++v) bad += memcmp(&lg[v], &logits[v], 4) != 0 || fg[v] != 0;
        long dirty = st[0].below != 0; for (uint32_t b = 0; b < 256; ++b) dirty += st[0].hist[b] != 0;
        printf("%-64s multi-block id %u (ref %u), probs worst %.3g, %ld logits / flags wrong, counter %u, search bins left %ld, done %u\n", "",
               og[0], id, merr, bad, counter[0], dirty, st[0].done);
        CHECK(og[0] == id && merr <= 1 && bad == 0 && counter[0] == 0 && dirty == 0, "multi-block top-p V%u", V);
        CHECK(lg.guard_ok() && pg.guard_ok() && fg.guard_ok() && part.guard_ok() && og.guard_ok(), "multi-block top-p V%u guard", V);
    }
    double perr = 0; for (uint32_t v = 0; v < V; ++v) perr = std::max(perr, std::fabs(probs[v] - p[v]) / (1e-6 + 1e-4 * p[v]));
    double rerr = 0; for (uint32_t v = 0; v < V; ++v) rerr = std::max(rerr, std::fabs(probs_r[v] - p[v]) / (1e-6 + 1e-4 * p[v]));
    printf("%-64s radix draw id %u (ref %u), probs worst %.3g\n", "", out_r[0], id, rerr);
    CHECK(out_r[0] == id && rerr <= 1 && probs_r.guard_ok() && out_r.guard_ok(), "sample_draw_radix_f32 V%u", V);
    char what[160]; snprintf(what, sizeof what, "sample V%u vl%u ctx%d pen%.2f greedy%d t%.2f k%u p%.3f u%.3f%s q%g", V, vocab_len, n_ctx, pen, greedy, temp, top_k, top_p, u, spikes ? " spikes" : "", quant);
    printf("%-64s id %u (ref %u), probs worst %.3g of (1e-6 + 1e-4 p), flags left %ld\n", what, out[0], id, perr, fl);
    CHECK(out[0] == id && perr <= 1 && fl == 0, "%s", what);
    CHECK(logits.guard_ok() && probs.guard_ok() && flags.guard_ok() && out.guard_ok(), "%s guard", what);
    case_done(what, perr);
}
int main(int argc, char** argv) {
    (void)mode_of(argc, argv);  // quick (1) = full (0): the whole list takes ~11 s on 2 cores
    uint64_t s = 1;
    run(1000, 1000, 50, 1.1f, true, 1.0f, 0, 1.0f, 0.3, s++);
    run(1000, 990, 50, 1.1f, false, 0.7f, 0, 1.0f, 0.3, s++);
    run(5000, 4990, 300, 1.3f, false, 0.8f, 40, 0.9f, 0.77, s++);
    run(3001, 3001, 0, 1.0f, false, 1.0f, 0, 0.8f, 0.5, s++, true);
    run(7, 7, 3, 1.2f, false, 1.0f, 3, 0.95f, 0.99, s++);
    run(1, 1, 1, 1.2f, false, 1.0f, 0, 0.5f, 0.1, s++);
    run(2049, 2000, 10, 1.0f, true, 1.0f, 0, 1.0f, 0.0, s++, true);
    run(4097, 4097, 1000, 1.05f, false, 1.5f, 1, 1.0f, 0.5, s++);
    // Greedy at the real vocabulary with the penalty, ties at the top (quantised logits), all -inf.
    run(151936, 151851, 300, 1.3f, true, 1.0f, 0, 1.0f, 0.0, s++);
    run(5000, 5000, 0, 1.0f, true, 1.0f, 0, 1.0f, 0.0, s++, false, 1.0f);
    run(600, 0, 0, 1.0f, true, 1.0f, 0, 1.0f, 0.0, s++);
    // The radix searches of top-k / top-p: Qwen's defaults at the real vocabulary, ties (quantised
    // logits) at the k-th value and across the top-p cut, top_k = V - 1, a tiny and a near-1 top_p.
    run(151936, 151851, 200, 1.1f, false, 1.0f, 0, 0.8f, 0.42, s++);
    run(6000, 6000, 0, 1.0f, false, 1.0f, 37, 1.0f, 0.6, s++, false, 2.0f);
    run(6000, 6000, 0, 1.0f, false, 0.9f, 0, 0.7f, 0.35, s++, false, 4.0f);
    run(6000, 6000, 0, 1.0f, false, 1.0f, 500, 0.9f, 0.9, s++, false, 8.0f);
    run(3000, 3000, 0, 1.0f, false, 1.0f, 2999, 0.99f, 0.7, s++);
    run(3000, 3000, 0, 1.0f, false, 1.0f, 0, 0.001f, 0.5, s++);
    run(3000, 3000, 0, 1.0f, false, 2.0f, 0, 0.999f, 0.999, s++);
    // The multi-block path's own corners: top_p so small that nothing passes (thr rounds to 1), ties
    // at the cut at the real vocabulary, pure temperature sampling (no cut), several blocks with u
    // near the end, every logit padding (-inf).
    run(3000, 3000, 0, 1.0f, false, 1.0f, 0, 1e-9f, 0.5, s++);
    run(151936, 151851, 100, 1.1f, false, 0.8f, 0, 0.8f, 0.999, s++, false, 2.0f);
    run(10000, 10000, 0, 1.0f, false, 1.3f, 0, 1.0f, 0.9999, s++);
    run(5000, 0, 0, 1.0f, false, 1.0f, 0, 0.8f, 0.5, s++);
    run(5000, 5000, 0, 1.0f, false, 1.0f, 0, 0.8f, 0.7, s++, false, 0, true);
    run(5000, 5000, 0, 1.0f, false, 1.0f, 40, 0.8f, 0.2, s++, false, 0, true);
    return finish("sampling");
}
