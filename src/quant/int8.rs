//! Int8 weights exactly as bitsandbytes' `load_in_8bit` stores them (`Int8Params`: the weight
//! converted to float16, then `int8_vectorwise_quant`): per output row n, SCB[n] = max|w[n, :]|
//! and q = round_half_even(w · s) in f32 with s = (1 / SCB[n]) · 127 (torch's scalar division). Dequantization is bitsandbytes'
//! `int8_vectorwise_dequant`: w = (q · SCB[n]) · (1/127 as f32).
//!
//! Compute is weight-only (activations stay f32): more accurate than LLM.int8's mixed
//! decomposition of the activations, which this runtime does not do.

use half::slice::HalfFloatSliceExt;

/// 1/127 as bitsandbytes writes it (`7.874015718698502e-3`), rounded to f32.
#[allow(clippy::excessive_precision)]
pub const INV_127: f32 = 7.874015718698502e-3;

/// Quantize one row (any source dtype; its values are first rounded to float16 as `Int8Params`
/// does). Returns SCB and writes the codes. An all-zero row gets SCB 0 and codes 0 (bitsandbytes
/// would divide by zero there).
pub fn quantize_row(row: &[f32], codes: &mut [i8]) -> f32 {
    assert_eq!(row.len(), codes.len(), "int8: bad sizes");
    // The row through float16 and back with half's slice conversions (F16C where the CPU has it:
    // the same round-to-nearest-even as the scalar `f16::from_f32`, several times faster).
    let mut h16 = vec![half::f16::ZERO; row.len()];
    let mut h = vec![0f32; row.len()];
    h16.convert_from_f32_slice(row);
    h16.convert_to_f32_slice(&mut h);
    let scb = h.iter().fold(0f32, |m, &v| m.max(v.abs()));
    if scb == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let s = (1.0 / scb) * 127.0; // torch evaluates `127.0 / absmax` as reciprocal times 127
    for (c, &v) in codes.iter_mut().zip(&h) {
        *c = (v * s).round_ties_even() as i8;
    }
    scb
}

/// Dequantize one row: `(q · scb) · INV_127`.
#[inline]
pub fn dequantize_row(codes: &[u8], scb: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (c as i8 as f32 * scb) * INV_127;
    }
}
