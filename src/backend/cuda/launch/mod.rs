//! Launchers: the only place kernels are launched from, one file per kernel family (the same
//! family names as `cuda/*.cu`). Each launcher checks the dimensions and that every buffer is big
//! enough for them, then says in a `// SAFETY:` line what it checked. Buffers are `DevSlice`s
//! (address + bytes); T is the compute dtype (`GpuDType`), 2 bytes.
pub mod attention;
pub mod attention_decode;
pub mod embedding;
pub mod fill;
pub mod gemm;
pub mod gemv;
pub mod rmsnorm;
pub mod rotary;
pub mod sampling;
pub mod swiglu;

pub use attention::*;
pub use attention_decode::*;
pub use embedding::*;
pub use fill::*;
pub use gemm::*;
pub use gemv::*;
pub use rmsnorm::*;
pub use rotary::*;
pub use sampling::*;
pub use swiglu::*;

use crate::error::{Error, Result};

/// A dimension as the kernels' `uint32_t`, or an error naming it.
pub fn dim_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Backend(format!("internal: {what} = {v} does not fit a u32 kernel argument")))
}

/// Bytes of `n` f32 values.
pub const fn f32_bytes(n: usize) -> usize {
    n * 4
}
