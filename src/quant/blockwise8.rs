//! bitsandbytes' blockwise 8-bit quantization with the signed dynamic map: the second level of
//! NF4 double quantization (`compress_statistics`, spec §7.2), which quantizes the centred absmax
//! values in blocks of 256.
//!
//! The map is `create_dynamic_map(signed=True)` (256 sorted f32 values, from -0.99297 to 1.0);
//! the quantizer is bitsandbytes 0.50's CPU path (a 65536-entry lookup table over [-1, 1], see
//! `lut`), which picks the nearest code except within 1/65535 of a midpoint. Dequantization is
//! `map[q] * absmax[block]` in f32.
use std::sync::OnceLock;

/// Elements per block of the second-level quantization (bitsandbytes' `nested_blocksize`).
pub const BLOCK: usize = 256;

/// Entries of the quantizer's lookup table over [-1, 1].
const LUT_SIZE: usize = 65536;

/// torch.linspace(start, end, steps) in f32, as torch's (vectorised, fused multiply-add) CPU
/// kernel computes it: the first half `start + step·i`, the second half `end - step·(steps-1-i)`,
/// each with one rounding.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// bitsandbytes `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`: for each
/// exponent e = -6..=0, the 2^(e+6) midpoints of linspace(0.1, 1, 2^(e+6) + 1) times 10^e, both
/// signs; then 0 and 1; sorted. `[256]`
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut data: Vec<f32> = Vec::with_capacity(256);
        // 10^e as Python computes `10 ** e` (correctly rounded doubles), then used in f32.
        const POW10: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        for (i, &p) in POW10.iter().enumerate() {
            let b = linspace_f32(0.1, 1.0, (1 << i) + 1);
            let scale = p as f32;
            for w in b.windows(2) {
                let mean = (w[0] + w[1]) / 2.0;
                data.push(scale * mean);
                data.push(-(scale * mean));
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.sort_by(f32::total_cmp);
        let mut out = [0f32; 256];
        out.copy_from_slice(&data);
        out
    })
}

/// The quantizer's table: `lut[i]` is the first code j whose midpoint `0.5 * (map[j] + map[j+1])`
/// is not below `-1 + 2i / 65535` (all f32), i.e. the nearest code to that grid point.
fn lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let map = dynamic_map();
        let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = vec![0u8; LUT_SIZE];
        let mut code = 0usize;
        for (i, l) in lut.iter_mut().enumerate() {
            let val = -1.0f32 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
            while code < mids.len() && mids[code] < val {
                code += 1;
            }
            *l = code as u8;
        }
        lut
    })
}

/// Quantize `x` in blocks of 256 (the last may be shorter): per block absmax = max|x| and
/// `q = lut[trunc(((clamp(x · (1/absmax), -1, 1) + 1) · 0.5) · 65535 + 0.5)]`; an all-zero block gets
/// codes 0. Returns (codes `[x.len()]`, absmax `[ceil(len/256)]`).
pub fn quantize(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let lut = lut();
    let mut codes = vec![0u8; x.len()];
    let mut absmax = Vec::with_capacity(x.len().div_ceil(BLOCK));
    for (blk, out) in x.chunks(BLOCK).zip(codes.chunks_mut(BLOCK)) {
        let am = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        if am == 0.0 {
            continue; // codes stay 0, as bitsandbytes writes them
        }
        let inv = 1.0 / am;
        for (o, &v) in out.iter_mut().zip(blk) {
            let t = (((v * inv).clamp(-1.0, 1.0) + 1.0) * 0.5) * (LUT_SIZE - 1) as f32 + 0.5;
            *o = lut[t as usize]; // t in [0.5, 65535.5]: truncation gives 0..=65535
        }
    }
    (codes, absmax)
}

/// `map[q] * absmax[i / 256]` for element i. codes `[N]`, absmax `[ceil(N/256)]`, out `[N]`.
pub fn dequantize(codes: &[u8], absmax: &[f32], map: &[f32; 256], out: &mut [f32]) {
    for ((blk, o), &am) in codes.chunks(BLOCK).zip(out.chunks_mut(BLOCK)).zip(absmax) {
        for (v, &q) in o.iter_mut().zip(blk) {
            *v = map[q as usize] * am;
        }
    }
}
