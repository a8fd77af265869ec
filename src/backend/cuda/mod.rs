//! Place in the flow: backend::**cuda**, the product backend (beside `cpu`, its oracle).
//! CUDA backend: `device` (context, module, buffers, the launch site) → `launch` (one launcher per
//! kernel family) → `plan` (static buffer plan) → `upload` (weight streaming) → `graph` (the
//! executor and the captured decode step); `switches` reads the environment switches; `bench` holds
//! the measuring hooks. `probe` says exactly why the GPU cannot be used (no
//! kernels, no driver, no device, module load failure) and never panics.
pub mod bench;
pub mod device;
pub mod graph;
pub mod launch;
pub mod plan;
pub mod switches;
pub mod upload;
pub mod upload_quant;

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

/// Ok when the CUDA backend can run here: kernels built, driver, a device, the module loads.
pub fn probe() -> Result<()> {
    if !KERNELS_BUILT {
        return Err(Error::Backend("this build has no CUDA kernels (nvcc was not found at build time)".into()));
    }
    device::Gpu::open(0).map(|_| ())
}

/// Upload the weights of `ck` to GPU 0 (see `graph::CudaModel::load`).
pub fn load(ck: &Checkpoint, opts: &LoadOptions) -> Result<Arc<dyn Model>> {
    Ok(Arc::new(graph::CudaModel::load(ck, opts)?))
}
