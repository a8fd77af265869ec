//! NF4 exactly as bitsandbytes `quantize_4bit(quant_type="nf4", blocksize=64)` (spec §7.2), with
//! optional double quantization of the absmax (`compress_statistics`).
//!
//! Layout over the flattened weight `[N, K]` (element e = n·K + k): blocks of 64 consecutive
//! elements (they cross rows when K % 64 != 0), one f32 absmax per block; codes 0..15 into
//! `NF4_CODE`, two per byte, element 2i in the high nibble of byte i; an odd count ends with the
//! code of 0.0 (7) in the last low nibble. w = NF4_CODE[q] · absmax[e / 64] in f32.
//!
//! Quantization, as bitsandbytes 0.50 computes it on the CPU (its torch "default" kernel):
//! absmax = max|x| per block; a full block scales by x · (1 / max(absmax, 1e-38)), the last partial
//! block by x / absmax with its absmax clamped to >= 1e-38 (and stored clamped); clamp to [-1, 1];
//! the code is the number of f32 midpoints `(c[i] + c[i+1]) / 2` strictly below the value (a
//! value on a midpoint takes the lower code).
use super::blockwise8;

/// Elements per absmax block.
pub const BLOCK: usize = 64;

/// The 16 NF4 values (bitsandbytes `get_4bit_type("nf4")`, spec §7.2), as f32. The literals are
/// bitsandbytes' double values, rounded to f32 here as torch does (tests/quant.rs checks the bits).
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The code of 0.0, which pads an odd element count.
pub const ZERO_CODE: u8 = 7;

/// The f32 midpoints between consecutive codes. `[15]`
fn midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0)
}

/// Nearest code of a scaled value in [-1, 1]: the number of midpoints strictly below it.
#[inline]
fn code_of(v: f32, mids: &[f32; 15]) -> u8 {
    mids.iter().map(|&m| (m < v) as u8).sum()
}

/// Per-block absmax statistics: plain f32, or double quantized.
#[derive(Clone, Debug)]
pub enum Absmax {
    /// One f32 per block. `[B]`
    Plain(Vec<f32>),
    /// `compress_statistics`: absmax[b] = map[q[b]] · absmax2[b / 256] + offset (f32).
    Double(DoubleQuant),
}

/// Double-quantized absmax (bitsandbytes `nested_*` tensors and `nested_offset`).
#[derive(Clone, Debug)]
pub struct DoubleQuant {
    /// 8-bit codes of absmax - offset. `[B]`
    pub q: Vec<u8>,
    /// absmax of each block of 256 codes (`nested_absmax`). `[ceil(B/256)]`
    pub absmax2: Vec<f32>,
    /// The dynamic map the codes index (`nested_quant_map`). `[256]`
    pub map: Box<[f32; 256]>,
    /// Mean of the absmax values, subtracted before quantizing (`nested_offset`).
    pub offset: f32,
}

impl Absmax {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len(),
            Absmax::Double(d) => d.q.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The absmax of block b as the dequantization uses it.
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match self {
            Absmax::Plain(v) => v[b],
            Absmax::Double(d) => d.map[d.q[b] as usize] * d.absmax2[b / blockwise8::BLOCK] + d.offset,
        }
    }
    /// Every block's absmax as the dequantization uses it. `[B]`
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.len()).map(|b| self.get(b)).collect()
    }
}

/// Double quantization of plain absmax values (bitsandbytes `compress_statistics`): offset =
/// mean(absmax), then the 8-bit blockwise quantization of absmax - offset in blocks of 256.
///
/// The mean is the f64 sum rounded to f32, divided by B in f32. bitsandbytes takes torch's f32
/// `mean`, whose summation order depends on the CPU's vector width, so its offset can differ from
/// this one in the last bit (the codes then may differ where a value sits on a code boundary).
pub fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    let sum: f64 = absmax.iter().map(|&a| a as f64).sum();
    let offset = if absmax.is_empty() { 0.0 } else { (sum as f32) / absmax.len() as f32 };
    double_quantize_with_offset(absmax, offset)
}

/// `double_quantize` with a given offset (the one bitsandbytes stored, to reproduce its codes).
pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> DoubleQuant {
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (q, absmax2) = blockwise8::quantize(&centred);
    DoubleQuant { q, absmax2, map: Box::new(*blockwise8::dynamic_map()), offset }
}

/// Quantize consecutive blocks of a flattened weight: `vals` starts at a block boundary and holds
/// whole blocks, except that the tensor's last block may be partial when `vals` ends the tensor.
/// Writes `ceil(len/2)` code bytes (an odd length pads with `ZERO_CODE`) and `ceil(len/64)` absmax.
pub fn quantize_blocks(vals: &[f32], codes: &mut [u8], absmax: &mut [f32]) {
    assert!(codes.len() == vals.len().div_ceil(2) && absmax.len() == vals.len().div_ceil(BLOCK), "nf4: bad sizes");
    let mids = midpoints();
    let mut scaled = [0u8; BLOCK];
    for (bi, blk) in vals.chunks(BLOCK).enumerate() {
        let am = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let sc = &mut scaled[..blk.len()];
        if blk.len() == BLOCK {
            let inv = 1.0 / am.max(1e-38);
            for (s, &v) in sc.iter_mut().zip(blk) {
                *s = code_of((v * inv).clamp(-1.0, 1.0), &mids);
            }
            absmax[bi] = am;
        } else {
            let am = am.max(1e-38);
            for (s, &v) in sc.iter_mut().zip(blk) {
                *s = code_of((v / am).clamp(-1.0, 1.0), &mids);
            }
            absmax[bi] = am;
        }
        let out = &mut codes[bi * BLOCK / 2..][..blk.len().div_ceil(2)];
        for (o, pair) in out.iter_mut().zip(sc.chunks(2)) {
            *o = (pair[0] << 4) | pair.get(1).copied().unwrap_or(ZERO_CODE);
        }
    }
}

/// Byte → its two dequantized codes (high nibble first), before the absmax scale. `[256][2]`
fn pair_table() -> &'static [[f32; 2]; 256] {
    static T: std::sync::OnceLock<[[f32; 2]; 256]> = std::sync::OnceLock::new();
    T.get_or_init(|| std::array::from_fn(|b| [NF4_CODE[b >> 4], NF4_CODE[b & 15]]))
}

/// Dequantize flattened elements `[e0, e0 + out.len())`: `NF4_CODE[q] · absmax[e / 64]`.
/// codes: the whole tensor's packed bytes.
pub fn dequantize_range(codes: &[u8], absmax: &Absmax, e0: usize, out: &mut [f32]) {
    let table = pair_table();
    let (mut e, end) = (e0, e0 + out.len());
    let mut o = 0;
    while e < end {
        let b = e / BLOCK;
        let seg_end = ((b + 1) * BLOCK).min(end); // this block's part of the range
        let am = absmax.get(b);
        if e % 2 == 1 {
            out[o] = NF4_CODE[(codes[e / 2] & 15) as usize] * am;
            (e, o) = (e + 1, o + 1);
        }
        // Whole bytes: a pair of elements each (blocks are even-sized, so a pair never crosses one).
        let pairs = (seg_end - e) / 2;
        for (dst, &byte) in out[o..o + 2 * pairs].chunks_exact_mut(2).zip(&codes[e / 2..e / 2 + pairs]) {
            let [hi, lo] = table[byte as usize];
            dst[0] = hi * am;
            dst[1] = lo * am;
        }
        (e, o) = (e + 2 * pairs, o + 2 * pairs);
        if e < seg_end {
            out[o] = NF4_CODE[(codes[e / 2] >> 4) as usize] * am;
            (e, o) = (e + 1, o + 1);
        }
    }
}
