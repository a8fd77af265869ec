//! qwen-rt: an inference runtime for Qwen-7B / Qwen-7B-Chat (Qwen v1).
//!
//! Modules in the order the data moves:
//!
//! ```text
//! HF model dir ─► checkpoint (mmap, zero copy) ─► weights (typed views, shapes checked)
//!      │                                              │
//!  qwen.tiktoken ─► tokenizer                    backend::cpu (f32 oracle) | backend::cuda
//!      │                                              │
//!  chat (ChatML, history, stops) ─► model::{Model, Sequence} (+ kv_cache)
//!                                      │
//!                                   sampler
//!                                      │
//!                          qwen-run CLI · C ABI (ffi)
//! ```
pub mod backend;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod ffi;
pub mod files;
pub mod generate;
pub mod kv_cache;
pub mod mapped;
pub mod model;
pub mod sampler;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
