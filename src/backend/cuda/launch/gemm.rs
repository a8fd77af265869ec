//! Prefill matmuls (T > 8 rows) through cuBLAS `cublasGemmEx`: T inputs, f32 output, f32 compute.
//! Oracle `cpu::matmul` (tests/kernels/gemm.rs). libcublas is loaded at run time (cudarc's
//! dynamic loading); without it `Blas::new` returns an error and the caller falls back to GEMVs.
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType};
use crate::error::{Error, Result};
use cudarc::cublas::{result as blas, sys};
use cudarc::driver::{CudaContext, CudaStream};
use std::ffi::c_void;
use std::sync::Arc;

/// A cuBLAS handle bound to one stream. `new` loads libcublas (cudarc panics when the library is
/// missing: that is caught and returned as `Error::Backend("cuBLAS not found ...")`).
///
/// The handle is not internally synchronised: a `Blas` is used by one thread at a time (its owner
/// holds it by value and calls through `&self` only from that thread), which is what makes moving
/// it between threads sound. The stream given to `new` must outlive the `Blas`, or at least no
/// `gemm` may run after the stream is destroyed (`Drop` detaches the handle from it first).
pub struct Blas {
    handle: sys::cublasHandle_t,
    /// The stream set on the handle (also used to zero y when K = 0).
    stream: cudarc::driver::sys::CUstream,
    ctx: Arc<CudaContext>,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it do not overlap
// (documented above: one thread at a time); the context is bound before every call.
unsafe impl Send for Blas {}

fn blas_err(what: &'static str) -> impl FnOnce(blas::CublasError) -> Error {
    move |e| Error::Backend(format!("cuBLAS error while {what}: {e}"))
}

/// A cuBLAS `int` argument, or an error naming it.
fn dim_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Backend(format!("internal: gemm {what} = {v} does not fit cuBLAS's int")))
}

impl Blas {
    /// Load libcublas (once per process), create a handle in `gpu`'s context and set its stream to `s`.
    pub fn new(gpu: &Gpu, s: &CudaStream) -> Result<Blas> {
        const MISSING: &str = "cuBLAS not found (libcublas could not be loaded; add its directory to LD_LIBRARY_PATH)";
        // SAFETY: is_culib_present only tries to dlopen the library candidates and reports success.
        let present = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
        if !present {
            return Err(Error::Backend(MISSING.into()));
        }
        gpu.bind()?;
        // create_handle loads the library and resolves symbols on first use; cudarc panics when
        // either fails, so that panic is caught here.
        let handle = match std::panic::catch_unwind(blas::create_handle) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(Error::Backend(format!("cuBLAS error while creating a handle: {e}"))),
            Err(_) => return Err(Error::Backend(format!("{MISSING}, or it lacks a needed symbol"))),
        };
        let b = Blas { handle, stream: s.cu_stream(), ctx: gpu.ctx.clone() };
        // SAFETY: the handle was just created; `s` is a live stream of the same context (the caller
        // keeps it alive while the Blas is used, see the type's docs).
        unsafe { blas::set_stream(b.handle, b.stream as sys::cudaStream_t) }.map_err(blas_err("setting its stream"))?;
        Ok(b)
    }

    /// y[T, N] (f32) = x[T, K] (T) · W[N, K]ᵀ (T); fp32 compute (CUBLAS_COMPUTE_32F), default algo,
    /// queued on the handle's stream. All row-major and dense (row strides K, K and N).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        dt: GpuDType,
        w: DevSlice,
        x: DevSlice,
        y: DevSlice,
        t: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let (ti, ni, ki) = (dim_i32(t, "T")?, dim_i32(n, "N")?, dim_i32(k, "K")?);
        // Each factor < 2^31: the products fit usize (64-bit).
        w.need(n * k * dt.size(), "gemm w [N, K]")?;
        x.need(t * k * dt.size(), "gemm x [T, K]")?;
        y.need(t * n * 4, "gemm y [T, N]")?;
        if t == 0 || n == 0 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Backend(format!("CUDA error while binding the context for cuBLAS: {e}")))?;
        if k == 0 {
            // An empty sum: y = 0 (cuBLAS would be asked for a zero-depth product).
            return self.zero(y, t * n * 4);
        }
        let ab_type = match dt {
            GpuDType::BF16 => sys::cudaDataType::CUDA_R_16BF,
            GpuDType::F16 => sys::cudaDataType::CUDA_R_16F,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Column-major view: a row-major [R, C] matrix is a column-major C x R one with ld = C.
        // So W [N, K] row-major is column-major K x N (lda = K), x [T, K] is K x T (ldb = K) and
        // y [T, N] is N x T (ldc = N); y(N x T) = op(W)(N x K) · x(K x T) with op = transpose.
        // SAFETY: w, x, y hold [N, K] T, [T, K] T and [T, N] f32 (checked above) and stay alive
        // until the stream runs the GEMM (the caller's plan owns them); alpha and beta are host
        // f32 values read during this call (default host pointer mode); the context is bound.
        unsafe {
            blas::gemm_ex(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                ti,
                ki,
                &alpha as *const f32 as *const c_void,
                w.ptr.0 as *const c_void,
                ab_type,
                ki,
                x.ptr.0 as *const c_void,
                ab_type,
                ki,
                &beta as *const f32 as *const c_void,
                y.ptr.0 as *mut c_void,
                sys::cudaDataType::CUDA_R_32F,
                ni,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("running GemmEx"))
    }

    /// `bytes` zero bytes at `y` on the handle's stream.
    fn zero(&self, y: DevSlice, bytes: usize) -> Result<()> {
        // SAFETY: y holds at least `bytes` bytes (checked by the caller); asynchronous on the
        // handle's stream, which is live (type contract).
        unsafe { cudarc::driver::result::memset_d8_async(y.ptr.0, 0, bytes, self.stream) }
            .map_err(|e| Error::Backend(format!("CUDA error while zeroing a gemm output: {e}")))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        if crate::backend::cuda::device::set_current(&self.ctx) {
            // SAFETY: the handle is live and destroyed exactly once. Detaching it from the stream
            // first (null = default stream) means destroy never touches a stream the owner may
            // already have destroyed.
            unsafe {
                let _ = blas::set_stream(self.handle, std::ptr::null_mut());
                let _ = blas::destroy_handle(self.handle);
            }
        }
    }
}
