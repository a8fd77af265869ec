// params.h — one parameter struct per kernel family: the single declaration of what each kernel of
// cuda/ takes (as flash-attention's Flash_fwd_params: every field commented with its shape and units).
// Plain C (no CUDA types), so that bindgen reads it: tests/kernel_params.rs checks the Rust mirror
// (src/backend/cuda/launch/params.rs) field by field against it, and each run-4 kernel's positional
// parameter list (parsed from its .cu) against the fields its launcher passes.
//
// Two ways a kernel takes its family's struct:
//   * by value, `kernel(const XParams p)`: every kernel added since H200 run 4 (the opt-in paths).
//   * positionally: run 4's verified kernels keep their `__global__` signatures, byte for byte what
//     commit 9a9a5b1 has (tools/verified_ptx.sh proves their PTX unchanged), until the next GPU session
//     converts them to by-value and verifies that (tools/gpu_check.sh); their launchers pass the
//     struct's fields in the kernel's order, listed once per kernel (`positional!` in params.rs).
//
// Conventions: T is the compute dtype of the `_bf16` / `_f16` entry point (__nv_bfloat16 / __half);
// a `T` buffer is a `void*` here and cast by the kernel. Shapes use cuda/README.md's letters (T tokens
// of the call, C hidden, H heads, D head dim, P = H·D, F mlp width, V vocab rows, S config seq_length,
// N×K a weight matrix, B GEMV batch rows, cap KV cache rows). Every buffer is device memory. A field a
// kernel of the family does not read is zero. "(launcher)" marks fields the launcher sets itself.
#pragma once
#include <stdint.h>

// embedding.cu — `embedding`: out[t] = f32(wte[ids[t]]) (ids >= V give a zero row). Grid (T).
typedef struct EmbeddingParams {
    const void* wte;      // [V, C] T: the token embedding table
    const uint32_t* ids;  // [T] token ids
    float* out;           // [T, C] f32: the residual stream
    uint32_t V;           // rows of wte
    uint32_t C;           // hidden size
} EmbeddingParams;

// fill.cu — `fill_uniform`: out[i] = T(offset + scale · u(key, i)) for i < n (synthetic weights).
typedef struct FillParams {
    void* out;       // [n] T
    uint64_t n;      // values to write
    uint64_t key;    // the tensor's random key (synth::value)
    float offset;    // value at u = 0
    float scale;     // range: values lie in [offset, offset + scale)
} FillParams;

// rmsnorm.cu — `rmsnorm`: out = T(x · rsqrt(mean(x²) + eps) · w); `add_rmsnorm`: x += y (stored),
// then the same. One block per row, grid (T).
typedef struct RmsnormParams {
    float* x;        // [T, C] f32: the rows to normalise (add_rmsnorm: the residual, updated in place)
    const float* y;  // [T, C] f32: add_rmsnorm's addend (rmsnorm: unused)
    const void* w;   // [C] T: the norm's weight
    void* out;       // [T, C] T
    uint32_t C;      // row width (hidden size)
    float eps;       // layer_norm_epsilon
} RmsnormParams;

// swiglu.cu — `swiglu`: out[t, f] = T(up · silu(gate)) with (up ‖ gate) a row of upgate.
typedef struct SwigluParams {
    const float* upgate;  // [T, 2F] f32: row t = up[F] ‖ gate[F]
    void* out;            // [T, F] T
    uint32_t F;           // mlp width (half a row of upgate)
    uint32_t T;           // rows
} SwigluParams;

// rotary.cu — `qkv_rope_append`: bias add, rotate-half RoPE at position *pos0 + t, logN on q, then
// q → q and k / v → cache rows *pos0 + t (positions >= cap write nothing). Grid (T, H).
typedef struct RopeParams {
    const float* qkv;        // [T, 3P] f32: the c_attn matmul output, row = q ‖ k ‖ v
    const void* bias;        // [3P] T: c_attn's bias
    const float* inv_freq;   // [D/2] f32: RoPE inverse frequencies (NTK-scaled by the executor)
    const uint32_t* pos0;    // [1]: position of the first token
    void* q;                 // [T, P] T: rotated, logN-scaled queries
    void* k_cache;           // [cap, P] T: row *pos0 + t receives the rotated key
    void* v_cache;           // [cap, P] T: row *pos0 + t receives the value
    uint32_t T;              // tokens
    uint32_t H;              // heads
    uint32_t D;              // head dim (even, <= 256)
    uint32_t cap;            // KV cache rows
    uint32_t S;              // config seq_length: logN scales positions past it
    uint32_t use_logn;       // 1: apply logN to q (config use_logn_attn), 0: not
} RopeParams;

// attention_prefill.cu (run 4, positional), attention_prefill_mma.cu, attention_prefill_wmma.cu (by
// value) — causal flash attention: query t at position *pos0 + t sees cache rows 0..=*pos0 + t.
typedef struct AttentionPrefillParams {
    const void* q;          // [T, P] T
    const void* k_cache;    // [cap, P] T
    const void* v_cache;    // [cap, P] T
    void* out;              // [T, P] T
    const uint32_t* pos0;   // [1]: position of query 0
    uint32_t T;             // queries
    uint32_t H;             // heads
    uint32_t D;             // head dim: 16, 32, 64 or 128
    uint32_t cap;           // KV cache rows
    float scale;            // softmax scale, 1/sqrt(D)
} AttentionPrefillParams;

// attention_decode.cu (run 4: `attention_decode` + `attention_decode_combine`, positional) and
// attention_decode_fused.cu (`attention_decode_fused`, by value): split-K attention (FlashDecoding)
// of T queries at positions *pos0 + t over key blocks of split_len, then the combine. Grid
// (n_splits, H, T) / combine (H, T).
typedef struct AttentionDecodeParams {
    const void* q;          // [T, P] T
    const void* k_cache;    // [cap, P] T
    const void* v_cache;    // [cap, P] T
    float* part_o;          // [T, H, n_splits, D] f32: each split's unnormalised output
    float* part_ml;         // [T, H, n_splits, 2] f32: each split's (max, sum of exp)
    const uint32_t* pos0;   // [1]: position of query 0
    uint32_t H;             // heads
    uint32_t D;             // head dim, <= 256
    uint32_t cap;           // KV cache rows
    uint32_t split_len;     // keys per split
    uint32_t n_splits;      // splits of the grid (the partials' stride)
    float scale;            // softmax scale, 1/sqrt(D)
    void* out;              // [T, P] T: written by the combine (or the fused kernel's last block)
    uint32_t* counters;     // [T, H]: the fused kernel's tickets, zero on entry and exit (run 4: unused)
} AttentionDecodeParams;

// gemv.cu — run 4's `gemv`: y[b, n] = Σ_k w[n, k] · x[b, k] (f32 accumulation), B <= 8.
typedef struct GemvParams {
    const void* w;      // [N, K] T
    const void* x;      // [B, K] T
    float* y;           // [B, N] f32
    uint32_t N;         // rows of w
    uint32_t K;         // columns of w
    uint32_t B;         // rows of x, 1..=8
    uint32_t stages;    // (launcher) 1 or 2: passes of loads in flight
} GemvParams;

// gemv_fused.cu — the post-run-4 GEMV stream, by value: `gemv_plain` (y = W · x, gemv's bits) and the
// matmul with the next kernel in its epilogue: `gemv_swiglu` (swiglu.cu), `gemv_qkv_rope` (rotary.cu,
// B = 1), `gemv_residual_rmsnorm` (rmsnorm.cu's add_rmsnorm, B = 1). Each kernel reads the common
// fields and its own group; the other groups are zero.
typedef struct GemvFusedParams {
    const void* w;             // [rows, K] T: N rows (plain, residual: C), 2F (swiglu: w1 ‖ w2), 3P (qkv)
    const void* x;             // [B, K] T: the GEMV input
    uint32_t K;                // columns of w
    uint32_t B;                // rows of x, 1..=8 (qkv_rope, residual_rmsnorm: 1)
    uint32_t cfg;              // (launcher) bits 0-7 stages (1, 2), bits 8-31 warps that prefetch to L2
    // gemv_plain
    float* y;                  // [B, N] f32
    uint32_t N;                // rows of w
    // gemv_swiglu
    uint32_t F;                // mlp width: w is [2F, K]
    void* out;                 // [B, F] T: T(up · silu(gate))
    // gemv_qkv_rope (as RopeParams, for the one token at *pos0)
    const void* bias;          // [3P] T
    const float* inv_freq;     // [D/2] f32
    const uint32_t* pos0;      // [1]: the token's position
    void* q;                   // [1, P] T
    void* k_cache;             // [cap, P] T: row *pos0
    void* v_cache;             // [cap, P] T: row *pos0
    uint32_t H;                // heads
    uint32_t D;                // head dim (even, <= 256)
    uint32_t cap;              // KV cache rows
    uint32_t S;                // config seq_length (logN threshold)
    uint32_t use_logn;         // 1: logN on q
    // gemv_residual_rmsnorm
    uint32_t C;                // hidden size: w is [C, K]
    float* resid;              // [C] f32: the residual stream, += W · x
    const void* w_ln;          // [C] T: the next norm's weight
    void* a;                   // [C] T: RMSNorm(resid) · w_ln
    float* partials;           // [⌈C/8⌉] f32: (launcher) per-block sums of squares
    uint32_t* counter;         // [1]: (launcher) the last-block ticket, zero on entry and exit
    float eps;                 // layer_norm_epsilon
} GemvFusedParams;

// sampling.cu (run 4: `sample_mark`, `sample_process`, `sample_draw`, positional), sampling_fast.cu
// (`sample_greedy`, `sample_draw_radix`) and sampling_topp.cu (`sample_prep`, `sample_exp`,
// `sample_cut`, `sample_walk`), all `_f32`, the last six by value: Hugging Face's sampling pipeline on
// the logits of one position; only the chosen id leaves the GPU.
typedef struct SampleParams {
    float* logits;            // [V] f32: steps 0-1 rewrite it in place
    uint32_t V;               // logits
    uint32_t vocab_len;       // ids >= vocab_len are padding rows (-inf)
    uint8_t* flags;           // [V]: repetition-penalty marks, zero between calls (the workspace's head)
    float penalty;            // (launcher) repetition penalty, 1 when off
    const uint32_t* ctx_ids;  // [n_ctx]: context ids for the penalty
    uint32_t n_ctx;           // context ids
    uint32_t greedy;          // (launcher) 1: argmax
    float temperature;        // (launcher) > 0
    uint32_t top_k;           // (launcher) 0: no top-k cut
    float top_p;              // (launcher) (0, 1]
    float thr;                // (launcher) 1 - top_p: the top-p cut's mass threshold (sample_cut)
    double u;                 // (launcher) the uniform draw in [0, 1)
    float* probs;             // [V] f32: the final distribution (and scratch)
    uint32_t* out_id;         // [1]: the chosen id
    void* part;               // (launcher) [⌈V/256⌉] u64 / [⌈V/1024⌉] f32 or f64: per-block results
    uint32_t* counter;        // (launcher) [1]: the last-block ticket, zero between launches
    void* state;              // (launcher) the multi-block search state (SmfState, sampling_topp.cu)
} SampleParams;
