//! Place in the flow: backend::cuda's input: the compiled `cuda/*.cu` (build.rs → here → `device`).
//! The CUDA kernels compiled by build.rs from `cuda/*.cu`, embedded in the binary.
//! Empty when the crate was built without nvcc (`cfg(no_cuda_kernels)`).

/// Fatbin: SASS for sm_80/86/89/90 plus compute_80 PTX (`cuModuleLoadData` accepts it).
pub static KERNELS_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));
/// The same kernels as PTX text (compute_80), for JIT on newer GPUs.
pub static KERNELS_PTX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// Whether build.rs compiled the kernels (nvcc was found).
pub const KERNELS_BUILT: bool = !cfg!(no_cuda_kernels);

/// Entry points every build must contain (see cuda/README.md), checked by a test against the PTX
/// and resolved when a GPU is opened.
pub const ENTRY_POINTS: &[&str] = &[
    "embedding_bf16",
    "embedding_f16",
    "fill_uniform_bf16",
    "fill_uniform_f16",
    "rmsnorm_bf16",
    "rmsnorm_f16",
    "add_rmsnorm_bf16",
    "add_rmsnorm_f16",
    "swiglu_bf16",
    "swiglu_f16",
    "qkv_rope_append_bf16",
    "qkv_rope_append_f16",
    "attention_prefill_bf16",
    "attention_prefill_f16",
    "attention_prefill_mma_bf16",
    "attention_prefill_mma_f16",
    "attention_prefill_wmma_bf16",
    "attention_prefill_wmma_f16",
    "attention_decode_bf16",
    "attention_decode_f16",
    "attention_decode_combine_bf16",
    "attention_decode_combine_f16",
    "attention_decode_fused_bf16",
    "attention_decode_fused_f16",
    "gemv_bf16",
    "gemv_f16",
    "gemv_plain_bf16",
    "gemv_plain_f16",
    "gemv_swiglu_bf16",
    "gemv_swiglu_f16",
    "gemv_qkv_rope_bf16",
    "gemv_qkv_rope_f16",
    "gemv_residual_rmsnorm_bf16",
    "gemv_residual_rmsnorm_f16",
    "gemv_nf4_bf16",
    "gemv_nf4_f16",
    "gemv_nf4_rows_bf16",
    "gemv_nf4_rows_f16",
    "dequant_nf4_bf16",
    "dequant_nf4_f16",
    "gemv_int8_bf16",
    "gemv_int8_f16",
    "gemv_int8_rows_bf16",
    "gemv_int8_rows_f16",
    "dequant_int8_bf16",
    "dequant_int8_f16",
    "gemv_gptq4_bf16",
    "gemv_gptq4_f16",
    "dequant_gptq4_bf16",
    "dequant_gptq4_f16",
    "gemv_gptq8_bf16",
    "gemv_gptq8_f16",
    "dequant_gptq8_bf16",
    "dequant_gptq8_f16",
    "dequant_gptq4_tile_bf16",
    "dequant_gptq4_tile_f16",
    "dequant_gptq8_tile_bf16",
    "dequant_gptq8_tile_f16",
    "sample_mark_f32",
    "sample_process_f32",
    "sample_draw_f32",
    "sample_draw_radix_f32",
    "sample_greedy_f32",
    "sample_prep_f32",
    "sample_exp_f32",
    "sample_cut_f32",
    "sample_walk_f32",
];
