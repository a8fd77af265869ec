// h_attention_prefill.cpp — cuda/attention_prefill.cu (attention_prefill_*: run 4's WMMA kernel, grid
// (tiles, H)), cuda/attention_prefill_mma.cu (attention_prefill_mma_*: mma.sync + ldmatrix + cp.async
// flash attention) and cuda/attention_prefill_wmma.cu (attention_prefill_wmma_*: WMMA, longest tile
// first) against an f32 causal softmax attention written as cpu::attention: query t at
// p = min(pos0 + t, cap - 1) sees keys 0..=p. Run twice per case: cp.async copies landing at issue and
// deferred to the wait_group (a read before the right wait sees poison). mma.sync / ldmatrix follow
// the PTX ISA's fragment tables, WMMA fragments use a scrambled
// layout, dynamic smem is poisoned and must not be written past ap_smem_bytes(D), K / V rows past the
// last needed one are poison (NaN) and must never leak, the output has a guard tail. Ragged T (1, 7,
// 63..65, 127, 300), pos0 > 0, key growth (large scores), all four head dims.
#include "util.h"
#include "attention_prefill_emu.cu"
#include "attention_prefill_mma_emu.cu"
#include "attention_prefill_wmma_emu.cu"

// The three kernels of the same contract: 0 run 4's (attention_prefill.cu, grid (tiles, H)), 1 mma
// (attention_prefill_mma.cu) and 2 wmma (attention_prefill_wmma.cu), both grid (H, tiles).
enum { RUN4 = 0, MMA = 1, WMMA = 2 };
static const char* const KERN_NAME[] = {"run4", "mma", "wmma"};
template <typename T, int KERN> struct Kern;
// The mma / wmma kernels take AttentionPrefillParams (params.h) by value: called through this adapter
// with run 4's positional arguments.
template <auto F, typename T>
void by_value(const T* q, const T* k, const T* v, T* out, const uint32_t* pos0, uint32_t t, uint32_t h, uint32_t d,
              uint32_t cap, float scale) {
    F(AttentionPrefillParams{.q = q, .k_cache = k, .v_cache = v, .out = out, .pos0 = pos0, .T = t, .H = h, .D = d,
                             .cap = cap, .scale = scale});
}
template <> struct Kern<__nv_bfloat16, RUN4> {
    static constexpr auto fn = attention_prefill_bf16;
    static size_t smem(int d) { return ap_smem_bytes(d); }
};
template <> struct Kern<__half, RUN4> {
    static constexpr auto fn = attention_prefill_f16;
    static size_t smem(int d) { return ap_smem_bytes(d); }
};
template <> struct Kern<__nv_bfloat16, MMA> {
    static constexpr auto fn = by_value<attention_prefill_mma_bf16, __nv_bfloat16>;
    static size_t smem(int d) { return at_mma::at_smem_bytes(d); }
};
template <> struct Kern<__half, MMA> {
    static constexpr auto fn = by_value<attention_prefill_mma_f16, __half>;
    static size_t smem(int d) { return at_mma::at_smem_bytes(d); }
};
template <> struct Kern<__nv_bfloat16, WMMA> {
    static constexpr auto fn = by_value<attention_prefill_wmma_bf16, __nv_bfloat16>;
    static size_t smem(int d) { return at_wmma::at_smem_bytes(d); }
};
template <> struct Kern<__half, WMMA> {
    static constexpr auto fn = by_value<attention_prefill_wmma_f16, __half>;
    static size_t smem(int d) { return at_wmma::at_smem_bytes(d); }
};

struct Case { int h, d, t, pos0, cap; float growth; };

template <typename T, int KERN> void run(const Case& c, uint64_t seed) {
    const int P = c.h * c.d;
    const int filled = std::min(c.pos0 + c.t, c.cap);  // cache rows the queries can see
    rng_state = seed;
    Buf<T> q((size_t)c.t * P), k((size_t)c.cap * P, 4 * P), v((size_t)c.cap * P, 4 * P), out((size_t)c.t * P, 256);
    std::vector<float> qf((size_t)c.t * P), kf((size_t)filled * P), vf((size_t)filled * P);
    for (size_t i = 0; i < (size_t)c.t * P; ++i) { q[i] = hto<T>(rnd(6.0f)); qf[i] = hf32(q[i]); }
    for (size_t i = 0; i < (size_t)filled * P; ++i) {
        const float g = 1.0f + c.growth * (float)(i / P) / 64.0f;
        k[i] = hto<T>(rnd(1.0f) * g); kf[i] = hf32(k[i]);
    }
    for (size_t i = 0; i < (size_t)filled * P; ++i) { v[i] = hto<T>(rnd(1.0f)); vf[i] = hf32(v[i]); }
    // rows filled..cap-1 and the guard rows stay poison (NaN): never visible to any query
    Buf<uint32_t> pos0(1);
    pos0[0] = (uint32_t)c.pos0;
    const float scale = (float)(1.0 / std::sqrt((double)c.d));
    const size_t smem = Kern<T, KERN>::smem(c.d);
    const unsigned tiles = (unsigned)(c.t + 63) / 64;
    const emu_dim3 grid = KERN == RUN4 ? emu_dim3{tiles, (unsigned)c.h, 1} : emu_dim3{(unsigned)c.h, tiles, 1};
    emu::launch(grid, 128,
                [&] { Kern<T, KERN>::fn(q.p, k.p, v.p, out.p, pos0.p, c.t, c.h, c.d, c.cap, scale); }, smem);

    // Reference (as cpu::attention, f32).
    float max_v = 0;
    for (float x : vf) max_v = std::max(max_v, std::fabs(x));
    const float tol = DT<T>::tol, atol = 0.75f * tol * max_v;
    Stat st;
    std::vector<float> sc;
    for (int t = 0; t < c.t; ++t)
        for (int hh = 0; hh < c.h; ++hh) {
            const int p = std::min(c.pos0 + t, c.cap - 1);
            sc.assign(p + 1, 0);
            for (int j = 0; j <= p; ++j) {
                float dsum = 0;
                for (int e = 0; e < c.d; ++e) dsum += qf[(size_t)t * P + hh * c.d + e] * kf[(size_t)j * P + hh * c.d + e];
                sc[j] = dsum * scale;
            }
            float mx = -INFINITY;
            for (float s : sc) mx = std::max(mx, s);
            float sum = 0;
            for (float& s : sc) { s = expf(s - mx); sum += s; }
            for (int e = 0; e < c.d; ++e) {
                float o = 0;
                for (int j = 0; j <= p; ++j) o += sc[j] / sum * vf[(size_t)j * P + hh * c.d + e];
                const size_t i = (size_t)t * P + hh * c.d + e;
                st.add(i, hf32(out[i]), o, atol, tol);
            }
        }
    char what[160];
    snprintf(what, sizeof what, "prefill %s %s cp.async-%s H%d D%d T%d pos0 %d cap %d growth %.1f",
             KERN_NAME[KERN], DT<T>::name,
             emu::cp_deferred ? "deferred" : "immediate", c.h, c.d, c.t, c.pos0, c.cap, c.growth);
    st.print(what);
    CHECK(st.ok(), "%s", what);
    CHECK(out.guard_ok() && k.guard_ok() && v.guard_ok(), "%s guard written", what);
    case_done(what, st.worst);
}

int main(int argc, char** argv) {
    const int mode = mode_of(argc, argv);
    std::vector<Case> cases = {
        {1, 128, 1, 0, 6, 0}, {1, 128, 7, 0, 12, 0}, {1, 128, 64, 0, 69, 0}, {2, 128, 127, 0, 132, 0}, {1, 128, 300, 0, 305, 0},
        {2, 16, 300, 0, 305, 0}, {3, 32, 127, 0, 130, 0}, {1, 64, 64, 0, 64, 0}, {2, 16, 7, 0, 7, 0},
        {2, 128, 37, 100, 256, 0}, {1, 128, 37, 100, 137, 0}, {1, 128, 127, 65, 192, 0}, {4, 32, 50, 150, 200, 0},
        {3, 64, 64, 63, 127, 0}, {2, 16, 1, 300, 301, 0}, {2, 16, 300, 7, 400, 0}, {1, 128, 300, 1000, 1300, 0},
        {1, 128, 300, 0, 300, 1.0f}, {2, 32, 100, 200, 300, 0.5f},
        {1, 32, 20, 90, 100, 0},  // pos0 + t runs past cap: positions clamp to cap - 1
    };
    if (mode == 1) {  // quick: all but the two slowest (7 s and 1.4 s over the four runs)
        cases.erase(cases.begin() + 16);  // {1, 128, 300, 1000, 1300}
        cases.erase(cases.begin() + 5);   // {2, 16, 300, 0, 305}
    }
    uint64_t seed = 100;
    for (int deferred = 0; deferred < 2; ++deferred) {
        emu::cp_deferred = deferred;
        for (size_t i = 0; i < cases.size(); ++i) {
            run<__nv_bfloat16, RUN4>(cases[i], seed + i);
            run<__half, RUN4>(cases[i], seed + i);
            run<__nv_bfloat16, MMA>(cases[i], seed + i);
            run<__half, MMA>(cases[i], seed + i);
            run<__nv_bfloat16, WMMA>(cases[i], seed + i);
            run<__half, WMMA>(cases[i], seed + i);
        }
    }
    return finish("attention_prefill");
}
