//! qwen-rt: an inference runtime for Qwen-7B / Qwen-7B-Chat (Qwen v1).
//!
//! Start at [`engine`]: `Engine::open` loads a model, `Engine::session` gives chat / generate
//! sessions; `qwen-run`, the C ABI (`ffi`) and the HTTP server are thin layers over it.
//!
//! Modules in the order the data moves (a module imports only the ones before it):
//!
//! ```text
//! config ─► checkpoint (mmap, zero copy) ─► weights (typed views, shapes checked) ─► quant ─► tokenizer
//!    ─► model (Model / Sequence traits, NTK + logN math)
//!    ─► backend::cpu (f32 oracle: ops, matmul, executor + KV cache) | backend::cuda (kernels) · backend::bench
//!    ─► sampler (HF pipeline) ─► chat (ChatML, stops) ─► react (function calling)
//!    ─► generate (the loop; owns the Sampler) ─► engine (Engine, Session)
//!    ─► server (OpenAI HTTP) · qwen-run CLI · C ABI (ffi)
//! ```
//! `synth` (random-weight models in the real format) and `error` sit beside the flow.
pub mod backend;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod files;
pub mod generate;
pub mod mapped;
pub mod model;
pub mod quant;
pub mod react;
pub mod sampler;
pub mod server;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
