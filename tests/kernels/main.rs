//! Every CUDA kernel against its CPU oracle (correctness layer 3, design/architecture.md): fresh
//! random inputs, poisoned outputs, ragged shapes, bf16 and fp16, tolerance by dtype, the worst
//! element printed; and the whole model on CUDA vs on the CPU (`model.rs`, correctness layer 4).
//! It is the one GPU test binary (tools/gpu_build.sh carries it to the GPU machine). Without a GPU each test prints `SKIP: no CUDA device` and returns; on the GPU
//! machine run with `QWEN_REQUIRE_GPU=1` so a skip fails instead.
mod common;

mod attention_decode;
mod attention_prefill;
mod embedding;
mod fill;
mod gemm;
mod gemv;
mod gemv_fused;
mod gemv_quant;
mod model;
mod rmsnorm;
mod rotary;
mod sampling;
mod swiglu;
