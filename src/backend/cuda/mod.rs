//! CUDA backend entry. The kernels are compiled and embedded (see `kernels.rs`); the executor that
//! runs the model on the GPU is the next step (issue 3). Until then `probe` reports exactly why the
//! GPU cannot be used, and never panics: no kernels, no driver, no device, or not implemented.
pub mod device;
pub mod launch;

use super::kernels::KERNELS_BUILT;
use super::LoadOptions;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::Model;
use std::sync::Arc;

/// Whether the CUDA driver library (libcuda.so) can be loaded. Never panics.
pub fn driver_present() -> bool {
    // SAFETY: is_culib_present only tries to dlopen the driver library and reports success.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

pub use device::device_count;

/// Ok when the CUDA backend can run here.
pub fn probe() -> Result<()> {
    if !KERNELS_BUILT {
        return Err(Error::Backend("this build has no CUDA kernels (nvcc was not found at build time)".into()));
    }
    device_count()?;
    Err(Error::Backend("the CUDA executor is not implemented in this version (CPU only for now)".into()))
}

pub fn load(_ck: &Checkpoint, _opts: &LoadOptions) -> Result<Arc<dyn Model>> {
    probe()?;
    Err(Error::Backend("the CUDA executor is not implemented in this version".into()))
}
