//! The CUDA kernels compiled by build.rs from `cuda/*.cu`, embedded in the binary.
//! Empty when the crate was built without nvcc (`cfg(no_cuda_kernels)`).

/// Fatbin: SASS for sm_80/86/89/90 plus compute_80 PTX (`cuModuleLoadData` accepts it).
pub static KERNELS_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));
/// The same kernels as PTX text (compute_80), for JIT on newer GPUs.
pub static KERNELS_PTX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// Whether build.rs compiled the kernels (nvcc was found).
pub const KERNELS_BUILT: bool = !cfg!(no_cuda_kernels);

/// Entry points every build must contain, checked by a test against the PTX.
pub const ENTRY_POINTS: &[&str] = &["embedding_bf16", "embedding_f16"];
