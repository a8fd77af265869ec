// h_gemv_quant.cpp — cuda/gemv_quant.cu: the quantized-weight decode GEMVs (gemv_nf4 / int8 / gptq4 /
// gptq8, and gemv_nf4_rows / gemv_int8_rows bit for bit against gemv_nf4 / gemv_int8) against a double-precision y = W · x with W dequantized here from the FORMAT (bitsandbytes
// NF4 blocks of 64 over the flattened weight, Int8 row scales, AutoGPTQ qweight / qzeros-minus-one /
// scales / g_idx), tolerance 1e-5·sqrt(K)·Σ|w·x| (f32 accumulation in any order); the dequant_*
// entries (prefill) bit-exact against T(w) with w computed in f32 as the CPU oracle does.
// Shapes: rows not a multiple of the 8 rows per block, K % 64 != 0 (NF4 blocks crossing rows), an odd
// element count (the last partial block and half byte), K not a multiple of the vector width and x
// 2 bytes off 16-byte alignment (scalar paths), grids of one row per warp and of 1-2 blocks (warps
// stream several rows). GPTQ: g_idx trivial (k / group: no permutation), act-order (a permutation of
// the trivial one) and arbitrary (groups of unequal sizes: padded slots); the K-permuted device layout
// of quant_params.h is built here independently of the Rust upload (src/backend/cuda/upload_quant.rs).
// dequant_gptq{4,8}_tile (QWEN_GPTQ_DEQUANT=tile) bit for bit against dequant_gptq and T(w), on every
// GPTQ case, on its launch grid, one block and three (grid-stride over tiles), with out 16-byte
// aligned and 2 bytes off (the element path even without a permutation); tile-sized edge shapes
// (N 4 / 12 / 36 / 100, rows 1 / 3 / 17, K not a multiple of 32/bits, several row tiles, N 4096).
#include "util.h"
#include "gemv_quant_emu.cu"
#include <numeric>

template <class T> struct K;
template <> struct K<__nv_bfloat16> {
    static constexpr auto nf4 = gemv_nf4_bf16; static constexpr auto dq_nf4 = dequant_nf4_bf16;
    static constexpr auto nf4r = gemv_nf4_rows_bf16;
    static constexpr auto i8 = gemv_int8_bf16; static constexpr auto dq_i8 = dequant_int8_bf16;
    static constexpr auto i8r = gemv_int8_rows_bf16;
    static constexpr auto g4 = gemv_gptq4_bf16; static constexpr auto dq_g4 = dequant_gptq4_bf16;
    static constexpr auto g8 = gemv_gptq8_bf16; static constexpr auto dq_g8 = dequant_gptq8_bf16;
    static constexpr auto dq_g4t = dequant_gptq4_tile_bf16; static constexpr auto dq_g8t = dequant_gptq8_tile_bf16;
};
template <> struct K<__half> {
    static constexpr auto nf4 = gemv_nf4_f16; static constexpr auto dq_nf4 = dequant_nf4_f16;
    static constexpr auto nf4r = gemv_nf4_rows_f16;
    static constexpr auto i8 = gemv_int8_f16; static constexpr auto dq_i8 = dequant_int8_f16;
    static constexpr auto i8r = gemv_int8_rows_f16;
    static constexpr auto g4 = gemv_gptq4_f16; static constexpr auto dq_g4 = dequant_gptq4_f16;
    static constexpr auto g8 = gemv_gptq8_f16; static constexpr auto dq_g8 = dequant_gptq8_f16;
    static constexpr auto dq_g4t = dequant_gptq4_tile_f16; static constexpr auto dq_g8t = dequant_gptq8_tile_f16;
};

// bitsandbytes get_4bit_type("nf4") (functional.py), as f32.
static const float NF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                              -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                              0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                              0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
static const float INV127 = 7.874015718698502e-3f;
static uint32_t rndu(uint32_t m) { return (uint32_t)((rnd(0.5f) + 0.5f) * m) % m; }

// y vs the double reference of W (f32 values, [N, K]) and x.
template <class T> bool check_y(const char* what, const std::vector<float>& w, const T* x, const Buf<float>& y, int n, int k, double& worst) {
    Stat s;
    for (int ni = 0; ni < n; ++ni) {
        double acc = 0, aabs = 0;
        for (int ki = 0; ki < k; ++ki) { const double p = (double)w[(size_t)ni * k + ki] * hf32(x[ki]); acc += p; aabs += std::fabs(p); }
        s.add(ni, y.p[ni], (float)acc, (float)(1e-5 * std::sqrt((double)k) * aabs + 1e-30), 0.0f);
    }
    s.print(what);
    worst = s.worst;
    return s.ok();
}
template <class T> long dequant_mismatch(const Buf<T>& out, const std::vector<float>& w) {
    long bad = 0;
    for (size_t i = 0; i < w.size(); ++i) bad += out.p[i].b != hto<T>(w[i]).b;
    return bad;
}

template <class T> void run_nf4(int n, int k, int shift, unsigned grid, uint64_t seed) {
    rng_state = seed;
    const size_t total = (size_t)n * k, bytes = (total + 1) / 2, blocks = (total + 63) / 64;
    Buf<uint8_t> codes(bytes + 16); Buf<float> absmax(blocks); Buf<T> xb((size_t)k + 8, 8); Buf<float> y(n); Buf<T> out(total);
    for (size_t i = 0; i < bytes; ++i) codes[i] = (uint8_t)rndu(256);
    if (total % 2) codes[bytes - 1] = (codes[bytes - 1] & 0xF0) | 7;  // the pad nibble is the code of 0.0
    for (size_t b = 0; b < blocks; ++b) absmax[b] = 0.01f + (rnd(0.5f) + 0.5f);
    T* x = xb.p + shift;
    for (int i = 0; i < k; ++i) x[i] = hto<T>(rnd(2.0f));
    std::vector<float> w(total);  // f32, as quant::nf4::dequantize_range
    for (size_t e = 0; e < total; ++e) w[e] = NF4[(e & 1) ? codes[e / 2] & 15 : codes[e / 2] >> 4] * absmax[e / 64];
    QuantNf4Params p{codes.p, absmax.p, x, y.p, (uint32_t)n, (uint32_t)k};
    emu::launch({grid, 1, 1}, 256, [&] { K<T>::nf4(p); });
    char what[128]; snprintf(what, sizeof what, "gemv_nf4 %s N%d K%d grid %u%s", DT<T>::name, n, k, grid, shift ? " x misaligned" : "");
    double worst; const bool ok = check_y(what, w, x, y, n, k, worst);
    CHECK(ok && y.guard_ok() && codes.guard_ok() && absmax.guard_ok(), "%s", what); case_done(what, worst);
    // gemv_nf4_rows (block 128, 16 rows a block): the same bits as gemv_nf4, on its own grid (one
    // row set per warp) and on one block (warps stream several row sets; rows past N clamped).
    for (unsigned rgrid : {(unsigned)((n + 15) / 16), 1u}) {
        Buf<float> yr(n);
        QuantNf4Params pr{codes.p, absmax.p, x, yr.p, (uint32_t)n, (uint32_t)k};
        emu::launch({rgrid, 1, 1}, 128, [&] { K<T>::nf4r(pr); });
        long differ = 0;
        for (int i = 0; i < n; ++i) differ += yr.p[i] != y.p[i] && !(yr.p[i] != yr.p[i] && y.p[i] != y.p[i]);
        snprintf(what, sizeof what, "gemv_nf4_rows %s N%d K%d grid %u%s", DT<T>::name, n, k, rgrid, shift ? " x misaligned" : "");
        printf("%-56s rows differing from gemv_nf4's bits: %ld\n", what, differ);
        CHECK(differ == 0 && yr.guard_ok(), "%s", what); case_done(what, 0.0);
    }
    QuantNf4Params d{codes.p, absmax.p, nullptr, out.p, (uint32_t)n, (uint32_t)k};
    emu::launch({std::min(grid, 3u), 1, 1}, 256, [&] { K<T>::dq_nf4(d); });
    const long bad = dequant_mismatch(out, w);
    snprintf(what, sizeof what, "dequant_nf4 %s N%d K%d grid %u", DT<T>::name, n, k, std::min(grid, 3u));
    printf("%-56s elements differing from T(code * absmax): %ld\n", what, bad);
    CHECK(bad == 0 && out.guard_ok(), "%s", what); case_done(what, 0.0);
}

template <class T> void run_int8(int n, int k, int shift, unsigned grid, uint64_t seed) {
    rng_state = seed;
    const size_t total = (size_t)n * k;
    Buf<int8_t> codes(total + 16); Buf<float> scb(n); Buf<T> xb((size_t)k + 8, 8); Buf<float> y(n); Buf<T> out(total);
    for (size_t i = 0; i < total; ++i) codes[i] = (int8_t)((int)rndu(255) - 127);
    for (int i = 0; i < n; ++i) scb[i] = 0.01f + (rnd(0.5f) + 0.5f) * 3.0f;
    T* x = xb.p + shift;
    for (int i = 0; i < k; ++i) x[i] = hto<T>(rnd(2.0f));
    std::vector<float> w(total);  // (q · SCB) · (1/127), as quant::int8::dequantize_row
    for (size_t e = 0; e < total; ++e) w[e] = ((float)codes[e] * scb[e / k]) * INV127;
    QuantInt8Params p{codes.p, scb.p, x, y.p, (uint32_t)n, (uint32_t)k};
    emu::launch({grid, 1, 1}, 256, [&] { K<T>::i8(p); });
    char what[128]; snprintf(what, sizeof what, "gemv_int8 %s N%d K%d grid %u%s", DT<T>::name, n, k, grid, shift ? " x misaligned" : "");
    double worst; const bool ok = check_y(what, w, x, y, n, k, worst);
    CHECK(ok && y.guard_ok() && codes.guard_ok(), "%s", what); case_done(what, worst);
    // gemv_int8_rows (block 128, 16 rows a block): the same bits as gemv_int8 (and so within the
    // reference's tolerance), on its own grid (one row set per warp) and on one block (warps stream
    // several row sets; rows past N clamped to N - 1, not stored).
    for (unsigned rgrid : {(unsigned)((n + 15) / 16), 1u}) {
        Buf<float> yr(n);
        QuantInt8Params pr{codes.p, scb.p, x, yr.p, (uint32_t)n, (uint32_t)k};
        emu::launch({rgrid, 1, 1}, 128, [&] { K<T>::i8r(pr); });
        long differ = 0;
        for (int i = 0; i < n; ++i) differ += yr.p[i] != y.p[i] && !(yr.p[i] != yr.p[i] && y.p[i] != y.p[i]);
        snprintf(what, sizeof what, "gemv_int8_rows %s N%d K%d grid %u%s", DT<T>::name, n, k, rgrid, shift ? " x misaligned" : "");
        printf("%-56s rows differing from gemv_int8's bits: %ld\n", what, differ);
        double rworst; const bool rok = check_y(what, w, x, yr, n, k, rworst);
        CHECK(differ == 0 && rok && yr.guard_ok() && codes.guard_ok(), "%s", what); case_done(what, rworst);
    }
    QuantInt8Params d{codes.p, scb.p, nullptr, out.p, (uint32_t)n, (uint32_t)k};
    emu::launch({std::min(grid, 3u), 1, 1}, 256, [&] { K<T>::dq_i8(d); });
    const long bad = dequant_mismatch(out, w);
    snprintf(what, sizeof what, "dequant_int8 %s N%d K%d", DT<T>::name, n, k);
    printf("%-56s elements differing from T(w): %ld\n", what, bad);
    CHECK(bad == 0 && out.guard_ok(), "%s", what); case_done(what, 0.0);
}

// GPTQ: gidx_kind 0 trivial (k / group), 1 act-order (a random permutation of the trivial g_idx),
// 2 arbitrary (every k a random group: unequal group sizes, padded slots).
template <class T, int BITS> void run_gptq(int k, int n, int group, int gidx_kind, int shift, uint64_t seed) {
    rng_state = seed;
    constexpr int PER = 32 / BITS;
    const int G = k / group;
    const uint32_t qmax = 1u << BITS;
    // The checkpoint (AutoGPTQ): q [K, N], stored zeros [G, N] (true zero - 1), scales [G, N] (f16 values), g_idx [K].
    std::vector<uint32_t> q((size_t)k * n), zs((size_t)G * n);
    std::vector<float> sc((size_t)G * n);
    std::vector<uint32_t> gidx(k);
    for (auto& v : q) v = rndu(qmax);
    for (auto& v : zs) v = rndu(qmax);  // stored zero 2^bits - 1 makes the true zero 2^bits
    for (auto& v : sc) v = hf32(hto<__half>(0.001f + (rnd(0.5f) + 0.5f) * 0.05f));
    for (int i = 0; i < k; ++i) gidx[i] = i / group;
    if (gidx_kind == 1) for (int i = k - 1; i > 0; --i) std::swap(gidx[i], gidx[rndu(i + 1)]);
    if (gidx_kind == 2) for (auto& g : gidx) g = rndu(G);
    // W [N, K] as the format defines it: scales[g, n] · (q[k, n] − (z_stored[g, n] + 1)), f32.
    std::vector<float> w((size_t)n * k);
    for (int ki = 0; ki < k; ++ki) for (int ni = 0; ni < n; ++ni) {
        const size_t gi = (size_t)gidx[ki] * n + ni;
        w[(size_t)ni * k + ki] = sc[gi] * (float)((int32_t)q[(size_t)ki * n + ni] - (int32_t)(zs[gi] + 1));
    }
    // The device layout (quant_params.h): slots sorted by group (stable), each group padded to whole words.
    std::vector<uint32_t> perm, row_group;
    for (int g = 0; g < G; ++g) {
        for (int ki = 0; ki < k; ++ki) if ((int)gidx[ki] == g) perm.push_back(ki);
        while (perm.size() % PER) perm.push_back((uint32_t)k);  // padding: weight 0
        while (row_group.size() < perm.size() / PER) row_group.push_back(g);
    }
    bool identity = perm.size() == (size_t)k;
    for (int i = 0; identity && i < k; ++i) identity = perm[i] == (uint32_t)i;
    const uint32_t rows = (uint32_t)(perm.size() / PER);
    Buf<uint32_t> qw((size_t)rows * n), rg(rows), pm(perm.size()), zb((size_t)G * n / 2 + 1);
    Buf<float> scales((size_t)G * n);
    Buf<uint16_t> zeros((size_t)G * n);
    for (uint32_t r = 0; r < rows; ++r) {
        rg[r] = row_group[r];
        for (int ni = 0; ni < n; ++ni) {
            uint32_t word = 0;
            for (int j = 0; j < PER; ++j) {
                const uint32_t ki = perm[r * PER + j];
                const uint32_t v = ki < (uint32_t)k ? q[(size_t)ki * n + ni] : rndu(qmax);  // padding: any code
                word |= v << (BITS * j);
            }
            qw[(size_t)r * n + ni] = word;
        }
    }
    for (size_t i = 0; i < perm.size(); ++i) pm[i] = perm[i];
    for (size_t i = 0; i < (size_t)G * n; ++i) { scales[i] = sc[i]; zeros[i] = (uint16_t)(zs[i] + 1); }
    Buf<T> xb((size_t)k + 8, 8); Buf<float> y(n); Buf<T> out((size_t)n * k);
    T* x = xb.p + shift;
    for (int i = 0; i < k; ++i) x[i] = hto<T>(rnd(2.0f));
    QuantGptqParams p{qw.p, rg.p, identity ? nullptr : pm.p, scales.p, zeros.p, x, y.p, (uint32_t)n, (uint32_t)k, rows, (uint32_t)G};
    const unsigned grid = (unsigned)((n + 15) / 16);
    const size_t smem = identity ? 0 : perm.size() * 4;
    emu::launch({grid, 1, 1}, 256, [&] { if (BITS == 4) K<T>::g4(p); else K<T>::g8(p); }, smem);
    const char* kinds[] = {"trivial", "act-order", "arbitrary"};
    char what[160]; snprintf(what, sizeof what, "gemv_gptq%d %s K%d N%d group %d g_idx %s (%u slots)%s", BITS, DT<T>::name, k, n, group, kinds[gidx_kind], rows * PER, shift ? " x misaligned" : "");
    double worst; const bool ok = check_y(what, w, x, y, n, k, worst);
    CHECK(ok && y.guard_ok() && qw.guard_ok(), "%s", what); case_done(what, worst);
    QuantGptqParams d = p; d.x = nullptr; d.out = out.p;
    emu::launch({2, 1, 1}, 256, [&] { if (BITS == 4) K<T>::dq_g4(d); else K<T>::dq_g8(d); });
    const long bad = dequant_mismatch(out, w);
    snprintf(what, sizeof what, "dequant_gptq%d %s K%d N%d g_idx %s", BITS, DT<T>::name, k, n, kinds[gidx_kind]);
    printf("%-56s elements differing from T(w): %ld\n", what, bad);
    CHECK(bad == 0 && out.guard_ok(), "%s", what); case_done(what, 0.0);
    // dequant_gptq*_tile: tiles of 32 columns x 256 slots (32 word rows of gptq4, 64 of gptq8); the
    // launcher's grid is one block a tile (at most 16 per SM), then one block and three blocks
    // walking the tiles. out 2 bytes off 16-byte alignment takes the element path.
    const unsigned tile_rows = 32 * (8 / PER);
    const unsigned tiles = (unsigned)(((n + 31) / 32) * ((rows + tile_rows - 1) / tile_rows));
    std::vector<unsigned> tgrids = {tiles};
    for (unsigned g : {1u, 3u}) if (g < tiles) tgrids.push_back(g);
    for (unsigned tgrid : tgrids) {
        for (int oshift : {0, 1}) {
            Buf<T> ob((size_t)n * k + 1);
            QuantGptqParams dt = d; dt.out = ob.p + oshift;
            emu::launch({tgrid, 1, 1}, 256, [&] { if (BITS == 4) K<T>::dq_g4t(dt); else K<T>::dq_g8t(dt); });
            const T* o = ob.p + oshift;
            long vs_grid = 0, vs_w = 0;
            for (size_t i = 0; i < (size_t)n * k; ++i) { vs_grid += o[i].b != out.p[i].b; vs_w += o[i].b != hto<T>(w[i]).b; }
            const bool untouched = ob.p[oshift ? 0 : (size_t)n * k].b == 0xFFFF && ob.guard_ok();
            snprintf(what, sizeof what, "dequant_gptq%d_tile %s K%d N%d g_idx %s (%u rows) grid %u%s", BITS, DT<T>::name, k, n,
                     kinds[gidx_kind], rows, tgrid, oshift ? " out misaligned" : "");
            printf("%-56s elements differing from dequant_gptq / T(w): %ld / %ld\n", what, vs_grid, vs_w);
            CHECK(vs_grid == 0 && vs_w == 0 && untouched, "%s", what); case_done(what, 0.0);
        }
    }
}

int main(int argc, char** argv) {
    const int mode = mode_of(argc, argv);
    struct C { int n, k, shift; };
    // NF4: K % 32 == 0 (vector path; K % 64 != 0 crosses blocks between rows), ragged K, odd N·K, x misaligned.
    std::vector<C> nf4 = {{1, 64, 0}, {3, 32, 0}, {7, 96, 0}, {5, 33, 0}, {9, 100, 0}, {17, 4096, 0}, {11, 160, 1}, {3, 1, 0}, {13, 2080, 0}};
    // Int8: K % 16 == 0 (vector path), ragged K, x misaligned; N not a multiple of 4 or 16 (the rows
    // kernel's clamp: 1, 3, 5, 17, 21, 4097) and a multiple of 16 (32).
    std::vector<C> i8 = {{1, 16, 0}, {7, 48, 0}, {9, 17, 0}, {17, 4096, 0}, {11, 528, 1}, {3, 1, 0}, {13, 1040, 0},
                         {5, 80, 0}, {21, 33, 1}, {32, 64, 1}, {4097, 32, 0}};
    if (mode == 2) { nf4 = {{64, 11008, 0}}; i8 = {{64, 11008, 0}}; }
    uint64_t s = 1;
    for (auto& c : nf4) {
        const unsigned one = (unsigned)((c.n + 7) / 8);
        for (unsigned grid : {one, 1u}) {
            if (grid == 1u && one == 1u) continue;
            run_nf4<__nv_bfloat16>(c.n, c.k, c.shift, grid, s++); run_nf4<__half>(c.n, c.k, c.shift, grid, s++);
        }
    }
    for (auto& c : i8) {
        const unsigned one = (unsigned)((c.n + 7) / 8);
        for (unsigned grid : {one, 1u}) {
            if (grid == 1u && one == 1u) continue;
            run_int8<__nv_bfloat16>(c.n, c.k, c.shift, grid, s++); run_int8<__half>(c.n, c.k, c.shift, grid, s++);
        }
    }
    struct G { int k, n, group, kind, shift; };
    std::vector<G> gs = {{128, 4, 128, 0, 0}, {256, 20, 64, 1, 0}, {384, 36, 128, 2, 0}, {256, 16, 32, 0, 1}, {1024, 52, 128, 1, 0}, {64, 8, 32, 2, 0}};
    // dequant_gptq*_tile edges (rows for gptq4 / gptq8): rows 1 / 2, 3 / 6, a padded 4-bit layout
    // with 8-bit rows 3 (K % 8 = 4), 17 / 34 act-order, 17 rows of gptq8 and a padded gptq4 (K 68),
    // act-order with padding, arbitrary g_idx, three row tiles, and a 7B-wide N.
    std::vector<G> tl = {{8, 4, 8, 0, 0}, {24, 12, 8, 0, 0}, {12, 12, 4, 0, 0}, {136, 36, 8, 1, 0}, {68, 100, 4, 0, 0},
                         {100, 36, 20, 1, 0}, {96, 100, 32, 2, 0}, {600, 40, 40, 0, 0}, {256, 4096, 128, 0, 0}};
    gs.insert(gs.end(), tl.begin(), tl.end());
    if (mode == 2) gs = {{4096, 64, 128, 1, 0}};
    for (auto& g : gs) {
        run_gptq<__nv_bfloat16, 4>(g.k, g.n, g.group, g.kind, g.shift, s++); run_gptq<__half, 4>(g.k, g.n, g.group, g.kind, g.shift, s++);
        run_gptq<__nv_bfloat16, 8>(g.k, g.n, g.group, g.kind, g.shift, s++); run_gptq<__half, 8>(g.k, g.n, g.group, g.kind, g.shift, s++);
    }
    return finish("gemv_quant");
}
