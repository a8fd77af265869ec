//! Shared helpers of the kernel parity tests: the GPU (or a loud SKIP), deterministic random
//! inputs, upload in a compute dtype (returning the rounded values the GPU really sees, so the CPU
//! oracle runs on identical inputs), poisoned outputs and a comparison that prints the worst element.
#![allow(dead_code)]
use qwen_rt::backend::cuda::device::{DevBuf, DevSlice, Gpu, GpuDType};
use std::sync::Arc;

/// The GPU, or None after printing `SKIP: no CUDA device (why)`. With `QWEN_REQUIRE_GPU=1` (set on
/// the GPU machine) a missing GPU is a failure instead, so a skip can never pass for a pass there.
pub fn gpu(test: &str) -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("QWEN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("QWEN_REQUIRE_GPU=1 but the GPU cannot be used: {e}");
            }
            // Written to the stderr handle, not with eprintln!, so libtest's capture cannot hide it.
            use std::io::Write;
            // A device that is there but unusable (no kernels in this build, compute capability
            // < 8.0, module load failure) is said as such, never as "no CUDA device".
            let why = match qwen_rt::backend::cuda::device_count() {
                Ok(n) => format!("SKIP: {n} CUDA device(s) present but unusable ({e})"),
                Err(_) => format!("SKIP: no CUDA device ({e})"),
            };
            let _ = writeln!(std::io::stderr(), "{why} — {test} not run");
            None
        }
    }
}

/// Both compute dtypes, for tests that run each.
pub const DTYPES: [GpuDType; 2] = [GpuDType::BF16, GpuDType::F16];

/// Deterministic values in [-scale, scale) (splitmix64).
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Upload f32 values as they are.
pub fn upload_f32(gpu: &Gpu, v: &[f32]) -> DevBuf {
    gpu.upload(v).expect("upload f32")
}

/// Upload u32 values.
pub fn upload_u32(gpu: &Gpu, v: &[u32]) -> DevBuf {
    gpu.upload(v).expect("upload u32")
}

/// Round `v` to `dt`, upload it, and return the buffer with the rounded values as f32.
pub fn upload_dt(gpu: &Gpu, dt: GpuDType, v: &[f32]) -> (DevBuf, Vec<f32>) {
    let bits = dt.encode(v);
    let rounded = dt.decode(&bits);
    (gpu.upload(&bits).expect("upload T"), rounded)
}

/// `bytes` of device memory filled with 0xFF: NaN as f32, bf16 and f16, so an element the kernel
/// fails to write shows up as NaN in the comparison.
pub fn poisoned(gpu: &Gpu, bytes: usize) -> DevBuf {
    let b = gpu.alloc(bytes).expect("alloc");
    gpu.memset(&gpu.stream, b.ptr(), 0xFF, bytes).expect("poison");
    gpu.sync().expect("sync");
    b
}

pub fn read_f32(gpu: &Gpu, s: DevSlice, n: usize) -> Vec<f32> {
    gpu.read::<f32>(s.ptr, n).expect("read f32")
}

pub fn read_u32(gpu: &Gpu, s: DevSlice, n: usize) -> Vec<u32> {
    gpu.read::<u32>(s.ptr, n).expect("read u32")
}

/// Read `n` values of dtype `dt` as f32.
pub fn read_dt(gpu: &Gpu, dt: GpuDType, s: DevSlice, n: usize) -> Vec<f32> {
    dt.decode(&gpu.read::<u16>(s.ptr, n).expect("read T"))
}

/// Relative tolerance for a value rounded once to `dt` (a few ulps of its 8 / 11-bit mantissa).
pub fn tol(dt: GpuDType) -> f32 {
    match dt {
        GpuDType::BF16 => 1.6e-2,
        GpuDType::F16 => 2e-3,
    }
}

/// Assert |got - want| <= atol + rtol·|want| everywhere; NaN anywhere fails. Always prints the
/// worst element (index, got, want, error) so passing runs show their margin too.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let mut worst = (0usize, 0f32); // index, excess ratio
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let lim = atol + rtol * w.abs();
        let err = (g - w).abs();
        // NaN anywhere fails; an exact match passes even at zero tolerance (0/0 would be NaN).
        let ratio = if g.is_nan() || w.is_nan() {
            f32::INFINITY
        } else if err == 0.0 {
            0.0
        } else {
            err / lim
        };
        if ratio > 1.0 {
            bad += 1;
        }
        if ratio > worst.1 {
            worst = (i, ratio);
        }
    }
    let i = worst.0;
    eprintln!(
        "{what}: {} values, worst at [{i}]: got {} want {} (|err| {:.3e}, {:.2} of the tolerance), {bad} over",
        got.len(),
        got.get(i).copied().unwrap_or(f32::NAN),
        want.get(i).copied().unwrap_or(f32::NAN),
        (got.get(i).copied().unwrap_or(0.0) - want.get(i).copied().unwrap_or(0.0)).abs(),
        worst.1
    );
    assert!(bad == 0, "{what}: {bad} of {} values outside atol {atol} + rtol {rtol}", got.len());
}
