//! Runtime SIMD dispatch of the quantized matmul (`Kernel`), and the dot product of the GPTQ path
//! (which decodes rows to f32 first). `dot` computes the same arithmetic as `backend::cpu::dot`
//! (16 independent lane sums, lane i taking k ≡ i mod 16 in increasing k, then a fixed reduction
//! tree, then the K % 16 tail in order), with a separate multiply and add (no FMA), so the AVX2
//! kernel is bit-identical to the portable one. The NF4 / Int8 kernels (`gemv`) fuse multiply and
//! add in both kernels, and are likewise bit-identical to each other: a quantized model gives the
//! same numbers with either kernel.

/// Lanes of the accumulator.
pub(crate) const LANES: usize = 16;

/// Which dot kernel a matmul uses. `detect` picks the fastest one the CPU supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust (any CPU).
    Portable,
    /// AVX2 + FMA, only built by `detect` after both CPU features were checked.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// `Avx2` whose NF4 codebook lookup is one AVX-512VL instruction; only built by `detect` after
    /// AVX2, FMA, AVX-512F and AVX-512VL were checked. Same results as `Avx2`.
    #[cfg(target_arch = "x86_64")]
    Avx512Vl,
}

impl Kernel {
    /// The fastest kernel this CPU supports: AVX-512VL, AVX2 (both with FMA), else portable.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return Kernel::Avx512Vl;
            }
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run (the portable one first), for tests that compare them.
    pub fn available() -> Vec<Kernel> {
        let mut v = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if Kernel::detect() != Kernel::Portable {
            v.push(Kernel::Avx2);
            if Kernel::detect() == Kernel::Avx512Vl {
                v.push(Kernel::Avx512Vl);
            }
        }
        v
    }

    /// Σ a[k]·b[k] in the lane order above. a, b `[K]`.
    #[inline]
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot: lengths differ");
        match self {
            Kernel::Portable => dot_portable(a, b),
            // SAFETY: `Avx2` / `Avx512Vl` are only constructed by `detect` after AVX2 was
            // detected; the kernel reads within a.len() == b.len() (asserted above).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512Vl => unsafe { avx2::dot(a, b) },
        }
    }
}

/// `dot`'s fixed reduction tree over the 16 lane sums.
#[inline(always)]
pub(crate) fn reduce(acc: &[f32; LANES]) -> f32 {
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = acc[i] + acc[i + 8];
    }
    ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]))
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; LANES];
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = reduce(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{reduce, LANES};
    use std::arch::x86_64::*;

    /// `dot_portable` with lanes 0..8 in `lo` and 8..16 in `hi` (mul then add, like the portable
    /// kernel: bit-identical).
    ///
    /// # Safety
    /// The CPU must support AVX2; `a.len() == b.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let body = n - n % LANES;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut k = 0;
        while k < body {
            // SAFETY: k + 16 <= body <= n, so both 16-value loads are inside a and b.
            lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(pa.add(k)), _mm256_loadu_ps(pb.add(k))));
            hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(pa.add(k + 8)), _mm256_loadu_ps(pb.add(k + 8))));
            k += LANES;
        }
        let mut acc = [0f32; LANES];
        // SAFETY: acc holds 16 values: two stores of 8.
        _mm256_storeu_ps(acc.as_mut_ptr(), lo);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
        let mut s = reduce(&acc);
        for (x, y) in a[body..n].iter().zip(&b[body..n]) {
            s += x * y;
        }
        s
    }
}
