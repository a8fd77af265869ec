//! Launchers: the only place kernels are launched from, one file per kernel family (the same
//! family names as `cuda/*.cu`). Each launcher checks the dimensions and that every buffer is big
//! enough for them, then says in a `// SAFETY:` line what it checked. Each takes its family's
//! parameter struct (`params.rs`, the mirror of cuda/params.h) with buffers as `DevSlice`s (address +
//! bytes) and dimensions as `usize`, plus what only the launch shape needs (e.g. the row count of a
//! kernel with one block per row); T is the compute dtype (`GpuDType`), 2 bytes.
pub mod attention;
pub mod attention_decode;
pub mod embedding;
pub mod fill;
pub mod gemm;
pub mod gemv;
pub mod gemv_quant;
pub mod params;
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
pub use gemv_quant::*;
pub use params::{
    AttentionDecodeParams, AttentionPrefillParams, EmbeddingParams, FillParams, GemvFusedParams, GemvParams,
    RmsnormParams, RopeParams, SampleParams, SwigluParams,
};
pub use rmsnorm::*;
pub use rotary::*;
pub use sampling::*;
pub use swiglu::*;

use crate::backend::cuda::device::DevSlice;
use crate::error::{Error, Result};

/// `buf` starts at a multiple of `align` bytes, or an error naming it. Run 4's pointwise kernels
/// (rmsnorm, add_rmsnorm, swiglu, embedding) take their 16-byte / 8-byte vector path from the shape
/// alone (C % 4, F % 4, C % 8): their launchers refuse a view the vector path would read misaligned
/// (issue 13 §2c), so a sub-slice at an odd offset is an error, never a misaligned access. The
/// executor's plan aligns every region to 256 bytes and every row of these shapes to 16 bytes.
pub fn need_aligned(buf: DevSlice, align: u64, what: &str) -> Result<()> {
    if buf.ptr.0 % align != 0 {
        return Err(Error::Backend(format!(
            "internal: {what} starts at {:#x}, not {align}-byte aligned as the kernel's vector path needs",
            buf.ptr.0
        )));
    }
    Ok(())
}

/// A dimension as the kernels' `uint32_t`, or an error naming it.
pub fn dim_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Backend(format!("internal: {what} = {v} does not fit a u32 kernel argument")))
}

/// Bytes of `n` f32 values.
pub const fn f32_bytes(n: usize) -> usize {
    n * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::device::DevPtr;

    #[test]
    fn misaligned_views_are_refused() {
        let at = |a: u64| DevSlice::new(DevPtr(a), 64);
        assert!(need_aligned(at(0x1000), 16, "x").is_ok());
        assert!(need_aligned(at(0x1008), 8, "w").is_ok());
        let e = need_aligned(at(0x1008), 16, "rmsnorm x").unwrap_err().to_string();
        assert!(e.contains("rmsnorm x") && e.contains("16-byte"), "{e}");
        assert!(need_aligned(at(0x1002), 8, "out").is_err());
    }
}
