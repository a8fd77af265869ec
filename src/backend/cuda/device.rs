//! Place in the flow: backend::cuda, first: **device** → launch → plan → upload → graph.
//! The GPU as the executor sees it: one context, the embedded kernel module, raw device buffers and
//! the one place kernels are launched from (`Gpu::launch`).
//!
//! Everything below cudarc's safe slice API on purpose: buffers are plain device addresses
//! (`DevPtr`) carved from a few allocations by the static plan, so a launch is a `cuLaunchKernel`
//! with no event bookkeeping, and a stream capture records exactly the kernels we launch.
use super::super::kernels::{ENTRY_POINTS, KERNELS_BUILT, KERNELS_FATBIN};
use crate::error::{Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// Map any displayable CUDA error into `Error::Backend` with what we were doing.
pub fn cuda_err(what: &str) -> impl FnOnce(result::DriverError) -> Error + '_ {
    move |e| Error::Backend(format!("CUDA error while {what}: {e}"))
}

/// Compute dtype of the GPU path: weights and activations that feed matmuls/attention.
/// Residual stream, matmul outputs, softmax statistics and logits stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuDType {
    BF16,
    F16,
}

impl GpuDType {
    /// Kernel name suffix: `rmsnorm_bf16`, `rmsnorm_f16`.
    pub fn suffix(self) -> &'static str {
        match self {
            GpuDType::BF16 => "bf16",
            GpuDType::F16 => "f16",
        }
    }
    pub fn size(self) -> usize {
        2
    }
    /// Round f32 values to this dtype's bits (round to nearest even), as the upload does.
    pub fn encode(self, src: &[f32]) -> Vec<u16> {
        match self {
            GpuDType::BF16 => src.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect(),
            GpuDType::F16 => src.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect(),
        }
    }
    /// Widen this dtype's bits to f32 (exact).
    pub fn decode(self, src: &[u16]) -> Vec<f32> {
        match self {
            GpuDType::BF16 => src.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect(),
            GpuDType::F16 => src.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect(),
        }
    }
}

/// A raw device address (what a kernel's `T*` parameter receives; transparent, so a `#[repr(C)]`
/// parameter struct holds it as the kernel's 8-byte pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct DevPtr(pub u64);

impl DevPtr {
    /// The address `bytes` further on.
    pub fn offset(self, bytes: usize) -> DevPtr {
        DevPtr(self.0 + bytes as u64)
    }
}

/// A region of device memory: address and length in bytes. Launchers take these (not bare
/// pointers) so they can check every buffer is large enough for the shape they launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DevSlice {
    pub ptr: DevPtr,
    pub bytes: usize,
}

impl DevSlice {
    pub fn new(ptr: DevPtr, bytes: usize) -> Self {
        DevSlice { ptr, bytes }
    }
    /// `len` bytes starting `offset` bytes in. Errors when that leaves the region.
    pub fn sub(&self, offset: usize, len: usize) -> Result<DevSlice> {
        match offset.checked_add(len) {
            Some(end) if end <= self.bytes => Ok(DevSlice { ptr: self.ptr.offset(offset), bytes: len }),
            _ => Err(Error::Backend(format!(
                "internal: sub-slice {offset}+{len} of a {}-byte device region",
                self.bytes
            ))),
        }
    }
    /// Ok when the region holds at least `bytes` bytes; `what` names the operand in the error.
    pub fn need(&self, bytes: usize, what: &str) -> Result<()> {
        if self.ptr.0 == 0 || self.bytes < bytes {
            return Err(Error::Backend(format!(
                "internal: {what} needs {bytes} bytes on the GPU, its buffer has {} (null: {})",
                self.bytes,
                self.ptr.0 == 0
            )));
        }
        Ok(())
    }
}

/// One device allocation, freed on drop.
pub struct DevBuf {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DevBuf {
    pub fn ptr(&self) -> DevPtr {
        DevPtr(self.ptr)
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The whole allocation as a slice.
    pub fn slice(&self) -> DevSlice {
        DevSlice { ptr: DevPtr(self.ptr), bytes: self.bytes }
    }
}

/// Make `ctx` current on this thread with the raw driver call: unlike cudarc's `bind_to_thread`,
/// this neither reports nor consumes an error some earlier cudarc call stored in the context, so
/// drops and capture teardown always run.
pub fn set_current(ctx: &CudaContext) -> bool {
    // SAFETY: cu_ctx is the live context owned by `ctx`.
    unsafe { result::ctx::set_current(ctx.cu_ctx()) }.is_ok()
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr != 0 && set_current(&self.ctx) {
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed exactly once; every
            // stream that used it is synchronised by the owner before the buffer is dropped.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

// SAFETY: a DevBuf is an address plus its owning context; CUDA contexts may be used from any thread.
unsafe impl Send for DevBuf {}
unsafe impl Sync for DevBuf {}

/// A kernel argument, passed by value. Pointers are `T*` on the device side, the rest are
/// `uint32_t` / `int32_t` / `float` / `uint64_t`. The kernel's own signature decides the width;
/// the launcher that builds the list is the only place that must agree with it.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(DevPtr),
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
}

impl Arg {
    /// The value in the low bytes of an 8-byte slot (little endian, so a 4-byte parameter reads
    /// exactly its value from the slot start).
    pub(crate) fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p.0,
            Arg::U32(v) => v as u64,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
            Arg::U64(v) => v,
        }
    }
}

/// A kernel's parameter struct, passed by value as the kernel's one parameter (`launch/params.rs`).
///
/// # Safety
/// The type is `#[repr(C)]` with exactly the layout of the kernel's parameter type in cuda/params.h
/// (tests/kernel_params.rs checks each implementation against bindgen's reading of the header).
pub unsafe trait KernelParams: Copy {}

/// Grid and block of a launch, plus dynamic shared memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl Launch {
    pub fn new(grid: (u32, u32, u32), block: u32, smem: u32) -> Self {
        Launch { grid, block: (block, 1, 1), smem }
    }
}

/// A device, its context, the kernel module and the compute stream used by tests and loading.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// The stream for one-off work (tests, loading, shared by every user of this `Gpu`: work on
    /// it is ordered, not concurrent); each sequence makes its own.
    pub stream: Arc<CudaStream>,
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Streaming multiprocessors (sizes persistent grids).
    pub sms: u32,
    /// Launch kernels with programmatic dependent launch (cuda/common.cuh: each may start while
    /// the previous one finishes and waits for it in `pdl_wait`): compute capability 9.0+, unless
    /// `QWEN_PDL=0`.
    pub pdl: bool,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    /// While `Some`, every launch is bracketed by a pair of timed events (`profile_start` /
    /// `profile_take`; a measuring aid for `qwen-run bench`, never on during graph capture).
    profile: std::sync::Mutex<Option<Vec<LaunchEvents>>>,
}

/// A profiled launch: the kernel's name and the events recorded before and after it.
type LaunchEvents = (&'static str, CudaEvent, CudaEvent);

/// One kernel's share of a profiled run: launches and total milliseconds (from event pairs).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub name: &'static str,
    pub launches: usize,
    pub ms: f64,
}

/// Why CUDA cannot be used here, or the number of devices.
pub fn device_count() -> Result<usize> {
    if !super::driver_present() {
        return Err(Error::Backend("no CUDA driver found (libcuda.so could not be loaded)".into()));
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(0)) => Err(Error::Backend("no CUDA device".into())),
        Ok(Ok(n)) => Ok(n as usize),
        Ok(Err(e)) => Err(Error::Backend(format!("CUDA driver error: {e}"))),
        Err(_) => Err(Error::Backend("CUDA driver could not be initialised".into())),
    }
}

impl Gpu {
    /// Device `ordinal` with the embedded kernels loaded and every entry point resolved. Opened
    /// once per process and shared (probe, load, every sequence, the tests), so the module is not
    /// loaded again; a failure is not remembered. Each way this can fail is an `Error::Backend`
    /// that says which; never a panic.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        static OPENED: std::sync::Mutex<Vec<(usize, Arc<Gpu>)>> = std::sync::Mutex::new(Vec::new());
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, g)) = opened.iter().find(|(o, _)| *o == ordinal) {
            return Ok(g.clone());
        }
        let g = Self::open_new(ordinal)?;
        opened.push((ordinal, g.clone()));
        Ok(g)
    }

    fn open_new(ordinal: usize) -> Result<Arc<Gpu>> {
        if !KERNELS_BUILT {
            return Err(Error::Backend("this build has no CUDA kernels (nvcc was not found at build time)".into()));
        }
        let n = device_count()?;
        if ordinal >= n {
            return Err(Error::Backend(format!("CUDA device {ordinal} does not exist ({n} found)")));
        }
        let ctx = match std::panic::catch_unwind(|| CudaContext::new(ordinal)) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Error::Backend(format!("cannot create a CUDA context on device {ordinal}: {e}"))),
            Err(_) => return Err(Error::Backend("the CUDA driver panicked while creating a context".into())),
        };
        let cc = ctx.compute_capability().map_err(cuda_err("reading the compute capability"))?;
        if cc.0 < 8 {
            return Err(Error::Backend(format!(
                "CUDA device {ordinal} has compute capability {}.{}; qwen-rt needs 8.0 or newer (Ampere+)",
                cc.0, cc.1
            )));
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("reading the multiprocessor count"))?
            .max(1) as u32;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(KERNELS_FATBIN.to_vec()))
            .map_err(cuda_err("loading the embedded kernels (fatbin sm_80/86/89/90 + compute_80 PTX)"))?;
        let mut functions = HashMap::new();
        for &entry in ENTRY_POINTS {
            let f = module
                .load_function(entry)
                .map_err(|e| Error::Backend(format!("kernel `{entry}` missing from the embedded module: {e}")))?;
            functions.insert(entry, f);
        }
        // Events are not needed: the executor orders work with streams itself.
        // SAFETY: no cudarc slice is shared between streams by this crate.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        // Tuning::pdl (QWEN_PDL) as the environment has it when the process first opens the device
        // (the Gpu is shared; CudaModel::load says a bad value when it reads the whole Tuning).
        let pdl = cc.0 >= 9 && super::switches::Tuning::read(|n| std::env::var(n).ok()).0.pdl;
        let profile = std::sync::Mutex::new(None);
        Ok(Arc::new(Gpu { ctx, stream, name, cc, sms, pdl, _module: module, functions, profile }))
    }

    /// Device memory (free, total) in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(cuda_err("querying free memory"))
    }

    /// Make this context current on the calling thread (every entry from another thread does).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("binding the context to this thread"))
    }

    /// Allocate `bytes` (at least 1) of device memory, uninitialised.
    pub fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        self.bind()?;
        // SAFETY: plain allocation; the result is owned by the returned DevBuf.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            let free = result::mem_get_info().map(|(f, _)| f).unwrap_or(0);
            Error::Backend(format!("cannot allocate {:.2} GiB on the GPU ({:.2} GiB free): {e}", gib(bytes), gib(free)))
        })?;
        Ok(DevBuf { ptr, bytes, ctx: self.ctx.clone() })
    }

    /// Allocate and copy `data` (synchronous).
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<DevBuf> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.write(buf.ptr(), data)?;
        Ok(buf)
    }

    /// Copy `data` to `dst` on `self.stream` and wait (the caller owns a region of at least that size).
    pub fn write<T: bytemuck::Pod>(&self, dst: DevPtr, data: &[T]) -> Result<()> {
        self.write_on(&self.stream, dst, data)?;
        self.sync()
    }

    /// Queue a copy of `data` (pageable host memory: the driver stages it before returning, so the
    /// caller may drop it at once) to `dst` on `stream`, ordered with the kernels on that stream.
    pub fn write_on<T: bytemuck::Pod>(&self, stream: &CudaStream, dst: DevPtr, data: &[T]) -> Result<()> {
        self.bind()?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: dst is a live allocation of at least size_of_val(data) bytes (caller's contract:
        // every caller passes a region the plan sized for it); `data` is pageable, so the driver has
        // copied it to staging memory when this returns.
        unsafe { result::memcpy_htod_async(dst.0, data, stream.cu_stream()) }.map_err(cuda_err("copying to the GPU"))
    }

    /// Read `n` values of `T` from `src` (waits for `self.stream` first).
    pub fn read<T: bytemuck::Pod + Default>(&self, src: DevPtr, n: usize) -> Result<Vec<T>> {
        self.read_on(&self.stream, src, n)
    }

    /// Wait for `stream`, then read `n` values of `T` from `src`.
    pub fn read_on<T: bytemuck::Pod + Default>(&self, stream: &CudaStream, src: DevPtr, n: usize) -> Result<Vec<T>> {
        self.bind()?;
        stream.synchronize().map_err(cuda_err("waiting for the GPU"))?;
        let mut out = vec![T::default(); n];
        if n > 0 {
            // SAFETY: src holds at least n values of T (caller's contract); synchronous copy.
            unsafe { result::memcpy_dtoh_sync(&mut out, src.0) }.map_err(cuda_err("copying from the GPU"))?;
        }
        Ok(out)
    }

    /// Set `bytes` bytes at `dst` to `value` on `stream` (used to poison outputs in tests).
    pub fn memset(&self, stream: &CudaStream, dst: DevPtr, value: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst..dst+bytes is inside a live allocation (caller's contract).
        unsafe { result::memset_d8_async(dst.0, value, bytes, stream.cu_stream()) }
            .map_err(cuda_err("memset on the GPU"))
    }

    /// Store one u32 at `dst` on `stream`, by value (capture-safe, no host buffer to keep alive).
    pub fn set_u32(&self, stream: &CudaStream, dst: DevPtr, value: u32) -> Result<()> {
        // SAFETY: dst is a live 4-byte-aligned u32 slot of a plan buffer.
        let r = unsafe { sys::cuMemsetD32Async(dst.0, value, 1, stream.cu_stream()) };
        r.result().map_err(cuda_err("setting a device scalar"))
    }

    /// Wait for `self.stream`.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("waiting for the GPU"))
    }

    /// Device-to-device copy bandwidth in bytes/s, counting bytes read + written (the ceiling the
    /// decode floor is computed against, design/performance.md): 10 copies of up to 1 GiB, timed
    /// with events after a warm-up copy.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let (free, _) = self.mem_info()?;
        let bytes = (1usize << 30).min(free / 4).max(1 << 20);
        let (src, dst) = (self.alloc(bytes)?, self.alloc(bytes)?);
        let s = &self.stream;
        let copy = || {
            // SAFETY: both buffers are live allocations of `bytes` bytes.
            unsafe { result::memcpy_dtod_async(dst.ptr().0, src.ptr().0, bytes, s.cu_stream()) }
                .map_err(cuda_err("device-to-device copy"))
        };
        copy()?;
        const REPS: usize = 10;
        let ms = self.time_ms(s, || (0..REPS).try_for_each(|_| copy()))?;
        Ok((2 * bytes * REPS) as f64 / (ms / 1e3))
    }

    /// Milliseconds the GPU spends on the work `enqueue` puts on `stream` (events recorded before
    /// and after it; waits for the end event).
    pub fn time_ms(&self, stream: &CudaStream, enqueue: impl FnOnce() -> Result<()>) -> Result<f64> {
        let timed = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (
            self.ctx.new_event(timed).map_err(cuda_err("creating an event"))?,
            self.ctx.new_event(timed).map_err(cuda_err("creating an event"))?,
        );
        start.record(stream).map_err(cuda_err("recording an event"))?;
        enqueue()?;
        end.record(stream).map_err(cuda_err("recording an event"))?;
        end.synchronize().map_err(cuda_err("waiting for an event"))?;
        Ok(start.elapsed_ms(&end).map_err(cuda_err("reading an event timer"))? as f64)
    }

    /// Start timing every launch (each gets a start and an end event on its stream). Launches of
    /// other threads on this `Gpu` are timed too; use from one thread, outside graph capture.
    pub fn profile_start(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Stop timing; wait for the recorded events and return each kernel's launches and total time,
    /// longest first.
    pub fn profile_take(&self) -> Result<Vec<KernelTime>> {
        let recs = self.profile.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        let mut out: Vec<KernelTime> = Vec::new();
        for (name, start, end) in recs {
            end.synchronize().map_err(cuda_err("waiting for a profiling event"))?;
            let ms = start.elapsed_ms(&end).map_err(cuda_err("reading a profiling event"))? as f64;
            match out.iter_mut().find(|k| k.name == name) {
                Some(k) => {
                    k.launches += 1;
                    k.ms += ms;
                }
                None => out.push(KernelTime { name, launches: 1, ms }),
            }
        }
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(out)
    }

    /// The kernel `name` (an entry of `kernels::ENTRY_POINTS`).
    pub fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| Error::Backend(format!("kernel `{name}` is not an entry point of this build")))
    }

    /// Let kernel `name` use up to `bytes` of dynamic shared memory (needed above 48 KiB).
    pub fn allow_smem(&self, name: &str, bytes: u32) -> Result<()> {
        let f = self.function(name)?;
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
            .map_err(cuda_err("raising a kernel's shared-memory limit"))
    }

    /// Launch kernel `name` on `stream`.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and width, every pointer
    /// must address a live buffer large enough for what the kernel touches at this launch shape,
    /// and those buffers must stay alive until the stream has run the kernel. Each launcher in
    /// `launch/` checks its shapes and states what it checked in a `// SAFETY:` line.
    pub unsafe fn launch(&self, stream: &CudaStream, name: &str, cfg: Launch, args: &[Arg]) -> Result<()> {
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        // SAFETY: the caller's contract, passed on; `slots` outlives the launch, which copies them.
        unsafe { self.launch_raw(stream, name, cfg, &mut params) }
    }

    /// Launch kernel `name`, whose one parameter is the struct `P`, passed by value.
    ///
    /// # Safety
    /// `name`'s parameter type must be `P`'s C struct (`KernelParams`); the buffers `p` addresses, as
    /// `launch`.
    pub unsafe fn launch_params<P: KernelParams>(
        &self,
        stream: &CudaStream,
        name: &str,
        cfg: Launch,
        p: &P,
    ) -> Result<()> {
        let mut copy = *p;
        let mut params = [&mut copy as *mut P as *mut c_void];
        // SAFETY: the caller's contract, passed on; `copy` outlives the launch, which copies it.
        unsafe { self.launch_raw(stream, name, cfg, &mut params) }
    }

    /// `launch` with the parameters as the driver takes them (one pointer per parameter), through
    /// the profiling hook.
    ///
    /// # Safety
    /// As `launch`, for what `params` points at.
    unsafe fn launch_raw(
        &self,
        stream: &CudaStream,
        name: &str,
        cfg: Launch,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let mut profile = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let Some(recs) = profile.as_mut() else {
            drop(profile);
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.launch_now(stream, name, cfg, params) };
        };
        let timed = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(timed).map_err(cuda_err("creating a profiling event"))?;
        let end = self.ctx.new_event(timed).map_err(cuda_err("creating a profiling event"))?;
        start.record(stream).map_err(cuda_err("recording a profiling event"))?;
        // SAFETY: the caller's contract, passed on.
        unsafe { self.launch_now(stream, name, cfg, params) }?;
        end.record(stream).map_err(cuda_err("recording a profiling event"))?;
        if let Some((&key, _)) = self.functions.get_key_value(name) {
            recs.push((key, start, end)); // always found: launch_now resolved the name
        }
        Ok(())
    }

    /// `launch_raw` without the profiling hook.
    ///
    /// # Safety
    /// As `launch_raw`.
    unsafe fn launch_now(
        &self,
        stream: &CudaStream,
        name: &str,
        cfg: Launch,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.function(name)?;
        let failed = |e: result::DriverError| {
            Error::Backend(format!(
                "launching `{name}` (grid {:?}, block {:?}, smem {}): {e}",
                cfg.grid, cfg.block, cfg.smem
            ))
        };
        if !self.pdl {
            return result::launch_kernel(f.cu_function(), cfg.grid, cfg.block, cfg.smem, stream.cu_stream(), params)
                .map_err(failed);
        }
        // SAFETY: an all-zero CUlaunchAttribute is a valid value of this plain C struct/union.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid.0,
            gridDimY: cfg.grid.1,
            gridDimZ: cfg.grid.2,
            blockDimX: cfg.block.0,
            blockDimY: cfg.block.1,
            blockDimZ: cfg.block.2,
            sharedMemBytes: cfg.smem,
            hStream: stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as launch_kernel above (the caller's contract covers the arguments); `config`,
        // `attr` and `params` outlive the call, which copies them.
        unsafe { sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(failed)
    }
}

/// Bytes as GiB, for messages.
pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
