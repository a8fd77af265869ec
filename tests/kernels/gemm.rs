//! Prefill GEMM through cuBLAS (`launch::Blas::gemm`) vs `cpu::matmul`, both dtypes, T in
//! {9, 127, 512}, the 7B projection shapes plus ragged ones. Tolerance: the fp32-summation bound
//! of `gemv::Oracle` (products exact, only the summation order differs; cuBLAS may split K, still
//! in fp32). Without libcublas on a GPU machine these tests FAIL with the loader's message; only
//! "no CUDA device" skips.
use crate::common::*;
use crate::gemv::{assert_within, poisoned_out, read_checked, Oracle};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::Blas;

fn blas(gpu: &Gpu) -> Blas {
    match Blas::new(gpu, &gpu.stream) {
        Ok(b) => b,
        Err(e) => panic!("cuBLAS is needed on a GPU machine: {e}"),
    }
}

#[test]
fn gemm_matches_cpu() {
    let Some(gpu) = gpu("gemm_matches_cpu") else { return };
    let blas = blas(&gpu);
    // (N, K): c_attn 12288 x 4096, fused w1‖w2 22016 x 4096, mlp c_proj 4096 x 11008, attn c_proj
    // 4096 x 4096, and ragged ones (odd N, K = 16 and 64).
    for (n, k) in [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008), (127, 64), (7, 16)] {
        let w_f32 = rand_vec(n * k, 11 + (n * 3 + k) as u64, 1.0);
        for dt in DTYPES {
            let (w, w_host) = upload_dt(&gpu, dt, &w_f32);
            let oracle = Oracle::new(&w_host, n, k);
            for t in [9, 127, 512] {
                let (x, x_host) = upload_dt(&gpu, dt, &rand_vec(t * k, 500 + (t * 7 + k) as u64, 1.0));
                let (ybuf, ys) = poisoned_out(&gpu, t * n);
                let what = format!("gemm {dt:?} T{t} N{n} K{k}");
                blas.gemm(dt, w.slice(), x.slice(), ys, t, n, k).unwrap();
                let got = read_checked(&gpu, &ybuf, t * n, &what);
                let (want, lim) = oracle.run(&x_host, t);
                assert_within(&what, &got, &want, &lim);
            }
        }
    }
}

#[test]
fn gemm_rejects_bad_shapes() {
    let Some(gpu) = gpu("gemm_rejects_bad_shapes") else { return };
    let blas = blas(&gpu);
    let (t, n, k) = (16, 32, 64);
    let w = gpu.alloc(n * k * 2).unwrap();
    let x = gpu.alloc(t * k * 2).unwrap();
    let y = gpu.alloc(t * n * 4).unwrap();
    let dt = GpuDType::F16;
    let y_small = y.slice().sub(0, t * n * 4 - 4).unwrap();
    assert!(blas.gemm(dt, w.slice(), x.slice(), y_small, t, n, k).is_err(), "short y accepted");
    let x_small = x.slice().sub(0, (t - 1) * k * 2).unwrap();
    assert!(blas.gemm(dt, w.slice(), x_small, y.slice(), t, n, k).is_err(), "short x accepted");
    // A dimension past i32 is refused before any buffer check could pass.
    assert!(blas.gemm(dt, w.slice(), x.slice(), y.slice(), 1 << 31, n, k).is_err());
    gpu.sync().unwrap();
}

#[test]
fn gemm_zero_depth_writes_zeros() {
    let Some(gpu) = gpu("gemm_zero_depth_writes_zeros") else { return };
    let blas = blas(&gpu);
    // K = 0: an empty sum, every y[t, n] = 0 (and nothing past y).
    let (t, n) = (9, 37);
    let (w, x) = (gpu.alloc(16).unwrap(), gpu.alloc(16).unwrap());
    for dt in DTYPES {
        let (ybuf, ys) = poisoned_out(&gpu, t * n);
        blas.gemm(dt, w.slice(), x.slice(), ys, t, n, 0).unwrap();
        let got = read_checked(&gpu, &ybuf, t * n, "gemm K0");
        assert!(got.iter().all(|&v| v == 0.0), "gemm {dt:?} K = 0 must write zeros: {got:?}");
    }
}
