//! `embedding_{bf16,f16}` vs `cpu::embedding`.
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::launch::{self, EmbeddingParams};
use qwen_rt::checkpoint::TensorView;

#[test]
fn embedding_matches_cpu() {
    let Some(gpu) = gpu("embedding_matches_cpu") else { return };
    // (V, C, T): C = 4096 (vector path), C = 7 and 127 (scalar path), V = 151936.
    for (v, c, t) in [(151936, 64, 7), (300, 4096, 3), (97, 7, 5), (1000, 127, 1)] {
        for dt in DTYPES {
            let (wte, wte_host) = upload_dt(&gpu, dt, &rand_vec(v * c, 1 + c as u64, 1.0));
            let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919 + 13) % v as u32).collect();
            let ids_buf = upload_u32(&gpu, &ids);
            let out = poisoned(&gpu, t * c * 4);
            let params = EmbeddingParams { wte: wte.slice(), ids: ids_buf.slice(), out: out.slice(), v, c };
            launch::embedding(&gpu, &gpu.stream, dt, &params, t).unwrap();
            let got = read_f32(&gpu, out.slice(), t * c);
            let view = TensorView::from_f32("wte", &[v, c], &wte_host).unwrap();
            let mut want = vec![0f32; t * c];
            cpu::embedding(&view, &ids, &mut want).unwrap();
            assert_close(&format!("embedding {dt:?} V{v} C{c} T{t}"), &got, &want, 0.0, 0.0);
        }
    }
}
