//! `fill_uniform_{bf16,f16}` vs the safetensors generator's values (`synth::synth_tensor_value`).
use crate::common::*;
use qwen_rt::backend::cuda::launch::{self, FillParams};
use qwen_rt::synth::{synth_tensor_value, synth_tensors, SynthPreset};

#[test]
fn fill_matches_synth_values() {
    let Some(gpu) = gpu("fill_matches_synth_values") else { return };
    // A matrix, a bias and a norm of the tiny preset: every element equal after rounding to T.
    let tensors = synth_tensors(&SynthPreset::tiny(), 3);
    for t in tensors.iter().take(4) {
        let n: usize = t.shape.iter().product::<usize>().min(100_003);
        for dt in DTYPES {
            let out = poisoned(&gpu, n * 2);
            let params = FillParams { out: out.slice(), n: n as u64, key: t.key, offset: t.offset, scale: t.scale };
            launch::fill_uniform(&gpu, &gpu.stream, dt, &params).unwrap();
            let got = read_dt(&gpu, dt, out.slice(), n);
            let want: Vec<f32> = (0..n).map(|i| synth_tensor_value(t, i as u64)).collect();
            let want = dt.decode(&dt.encode(&want));
            assert_close(&format!("fill {} {dt:?}", t.name), &got, &want, 0.0, 0.0);
        }
    }
}
