//! `QuantMatrix`: one quantized linear weight in the `nn.Linear` orientation `[N, K]` (N outputs,
//! K inputs, y = x·Wᵀ), its packed bytes kept as stored (in memory after quantizing at load, or
//! in the checkpoint's memory map), and the one operation every consumer builds on: `decode_rows`,
//! the exact dequantized f32 rows (code × scale in f32) of a range of outputs.
use super::{gptq, int8, nf4, QuantFormat};
use crate::checkpoint::{IntTensorView, TensorView};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Packed bytes: owned (quantized at load) or a view into a checkpoint's memory map.
#[derive(Clone, Debug)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped(IntTensorView),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(t) => t.bytes(),
        }
    }
}

/// The packed data of one format.
#[derive(Clone, Debug)]
pub enum QuantData {
    /// Codes `[ceil(N·K/2)]` bytes over the flattened weight; absmax per 64 elements.
    Nf4 { codes: Bytes, absmax: nf4::Absmax },
    /// Codes `[N, K]` i8; SCB `[N]` (row absmax).
    Int8 { codes: Bytes, scb: Vec<f32> },
    /// qweight `[K·bits/32, N]` LE i32 words; zeros (stored + 1) and scales `[G, N]`; g_idx `[K]`.
    Gptq { bits: u32, group: usize, qweight: Bytes, zeros: Vec<i32>, scales: Vec<f32>, g_idx: Vec<u32> },
}

/// One quantized linear weight `[N, K]`.
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    /// Tensor name (errors).
    pub name: String,
    /// Outputs.
    pub n: usize,
    /// Inputs.
    pub k: usize,
    pub data: QuantData,
}

/// Elements of one quantization work item (a multiple of 64, so items start at NF4 block and
/// byte boundaries).
const QUANT_CHUNK: usize = 64 * 1024;

impl QuantMatrix {
    /// Quantize an `nn.Linear` weight view `[N, K]` (bf16 / f16 / f32) to `format` (NF4 or Int8),
    /// streaming: each work item converts at most `QUANT_CHUNK` elements (or one row) to f32, so
    /// no f32 copy of the matrix exists. Parallel on the current rayon pool.
    pub fn quantize(w: &TensorView, format: QuantFormat) -> Result<Self> {
        let [n, k] = w.shape[..] else {
            return Err(w.error(format!("quantize: expected a matrix [N, K], got {:?}", w.shape)));
        };
        if n == 0 || k == 0 {
            return Err(w.error("quantize: empty matrix"));
        }
        let data = match format {
            QuantFormat::Nf4 { double_quant } => {
                let total = n * k;
                let mut codes = vec![0u8; total.div_ceil(2)];
                let mut absmax = vec![0f32; total.div_ceil(nf4::BLOCK)];
                codes
                    .par_chunks_mut(QUANT_CHUNK / 2)
                    .zip(absmax.par_chunks_mut(QUANT_CHUNK / nf4::BLOCK))
                    .enumerate()
                    .for_each_init(Vec::new, |buf: &mut Vec<f32>, (i, (c, a))| {
                        let e0 = i * QUANT_CHUNK;
                        buf.resize(QUANT_CHUNK.min(total - e0), 0.0);
                        w.read_f32(e0, buf);
                        nf4::quantize_blocks(buf, c, a);
                    });
                let absmax = if double_quant {
                    nf4::Absmax::Double(nf4::double_quantize(&absmax))
                } else {
                    nf4::Absmax::Plain(absmax)
                };
                QuantData::Nf4 { codes: Bytes::Owned(codes), absmax }
            }
            QuantFormat::Int8 => {
                let mut codes = vec![0u8; n * k];
                let mut scb = vec![0f32; n];
                codes.par_chunks_mut(k).zip(scb.par_iter_mut()).enumerate().for_each_init(
                    Vec::new,
                    |buf: &mut Vec<f32>, (r, (c, s))| {
                        buf.resize(k, 0.0);
                        w.read_f32(r * k, buf);
                        *s = int8::quantize_row(buf, bytemuck::cast_slice_mut(c));
                    },
                );
                QuantData::Int8 { codes: Bytes::Owned(codes), scb }
            }
            QuantFormat::Gptq { .. } => {
                return Err(w.error("quantize: GPTQ checkpoints are loaded, not made here (use nf4 or int8)"))
            }
        };
        Ok(QuantMatrix { name: w.name.clone(), n, k, data })
    }

    /// The format of this matrix.
    pub fn format(&self) -> QuantFormat {
        match &self.data {
            QuantData::Nf4 { absmax, .. } => {
                QuantFormat::Nf4 { double_quant: matches!(absmax, nf4::Absmax::Double(_)) }
            }
            QuantData::Int8 { .. } => QuantFormat::Int8,
            QuantData::Gptq { bits, group, .. } => QuantFormat::Gptq { bits: *bits, group: *group },
        }
    }

    /// Bytes the packed weight and its statistics take (as held: f32 scales count 4 bytes).
    pub fn byte_len(&self) -> usize {
        match &self.data {
            QuantData::Nf4 { codes, absmax } => {
                codes.as_slice().len()
                    + match absmax {
                        nf4::Absmax::Plain(a) => a.len() * 4,
                        nf4::Absmax::Double(d) => d.q.len() + d.absmax2.len() * 4 + 256 * 4 + 4,
                    }
            }
            QuantData::Int8 { codes, scb } => codes.as_slice().len() + scb.len() * 4,
            QuantData::Gptq { qweight, zeros, scales, g_idx, .. } => {
                qweight.as_slice().len() + zeros.len() * 4 + scales.len() * 4 + g_idx.len() * 4
            }
        }
    }

    /// Exact dequantized rows `n0 .. n0 + out.len() / K` of W `[N, K]` into out `[rows, K]`.
    ///
    /// # Panics
    /// If the rows run past N or out is not a whole number of rows (internal invariant).
    pub fn decode_rows(&self, n0: usize, out: &mut [f32]) {
        let k = self.k;
        assert!(out.len() % k == 0 && n0 + out.len() / k <= self.n, "decode_rows: out of range");
        let rows = out.len() / k;
        match &self.data {
            QuantData::Nf4 { codes, absmax } => nf4::dequantize_range(codes.as_slice(), absmax, n0 * k, out),
            QuantData::Int8 { codes, scb } => {
                let c = codes.as_slice();
                for (r, o) in out.chunks_exact_mut(k).enumerate() {
                    int8::dequantize_row(&c[(n0 + r) * k..][..k], scb[n0 + r], o);
                }
            }
            QuantData::Gptq { bits, qweight, zeros, scales, g_idx, .. } => {
                let (bits, n) = (*bits, self.n);
                let per = 32 / bits as usize;
                let q = qweight.as_slice();
                for wr in 0..k / per {
                    let words = &q[(wr * n + n0) * 4..][..rows * 4]; // [rows] words of qweight row wr
                    for (i, wb) in words.chunks_exact(4).enumerate() {
                        let word = u32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]);
                        let o = &mut out[i * k..][..k];
                        for j in 0..per {
                            let kk = wr * per + j;
                            let gi = g_idx[kk] as usize * n + n0 + i;
                            o[kk] = scales[gi] * (gptq::field(word, bits, j) as i32 - zeros[gi]) as f32;
                        }
                    }
                }
            }
        }
    }

    /// The whole dequantized matrix `[N, K]` (tests and references; allocates N·K f32).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        self.decode_rows(0, &mut out);
        out
    }

    /// Check `x [T, K]`, `out [T, N]`, `bias [N]`; returns T.
    pub(crate) fn check_matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &[f32]) -> Result<usize> {
        let (n, k) = (self.n, self.k);
        let err = |m: String| Error::invalid(format!("{}: quantized matmul: {m}", self.name));
        if x.is_empty() || x.len() % k != 0 {
            return Err(err(format!("input of {} values is not [T, {k}]", x.len())));
        }
        let t = x.len() / k;
        if out.len() != t * n {
            return Err(err(format!("output holds {} values, need [{t}, {n}]", out.len())));
        }
        if let Some(b) = bias {
            if b.len() != n {
                return Err(err(format!("bias has {} values, need {n}", b.len())));
            }
        }
        Ok(t)
    }
}

/// Validated constructors from stored parts (a quantized checkpoint's tensors, or fixtures). A
/// mismatch is an error naming `file` and the tensor `name`.
impl QuantMatrix {
    /// NF4: codes `[ceil(N·K/2)]` bytes, absmax per 64 elements.
    pub fn from_nf4(
        file: &std::path::Path,
        name: &str,
        n: usize,
        k: usize,
        codes: Bytes,
        absmax: nf4::Absmax,
    ) -> Result<Self> {
        let err = |m: String| Error::tensor(file, name, m);
        let total = n.checked_mul(k).filter(|&t| t > 0).ok_or_else(|| err(format!("bad shape [{n}, {k}]")))?;
        if codes.as_slice().len() != total.div_ceil(2) {
            return Err(err(format!(
                "NF4 codes hold {} bytes, but [{n}, {k}] needs {} (two codes per byte)",
                codes.as_slice().len(),
                total.div_ceil(2)
            )));
        }
        let blocks = total.div_ceil(nf4::BLOCK);
        if absmax.len() != blocks {
            return Err(err(format!("{} absmax values, but [{n}, {k}] has {blocks} blocks of 64", absmax.len())));
        }
        if let nf4::Absmax::Double(d) = &absmax {
            let want = blocks.div_ceil(super::blockwise8::BLOCK);
            if d.absmax2.len() != want {
                return Err(err(format!(
                    "{} nested absmax values, but {blocks} absmax codes need {want} (blocks of 256)",
                    d.absmax2.len()
                )));
            }
            if !d.offset.is_finite() {
                return Err(err(format!("nested offset {} is not finite", d.offset)));
            }
        }
        Ok(QuantMatrix { name: name.into(), n, k, data: QuantData::Nf4 { codes, absmax } })
    }

    /// Int8: codes `[N, K]` i8, SCB `[N]`.
    pub fn from_int8(
        file: &std::path::Path,
        name: &str,
        n: usize,
        k: usize,
        codes: Bytes,
        scb: Vec<f32>,
    ) -> Result<Self> {
        let err = |m: String| Error::tensor(file, name, m);
        if n == 0 || k == 0 || codes.as_slice().len() != n * k {
            return Err(err(format!("Int8 codes hold {} bytes, expected [{n}, {k}]", codes.as_slice().len())));
        }
        if scb.len() != n {
            return Err(err(format!("{} row scales (SCB), expected {n}", scb.len())));
        }
        Ok(QuantMatrix { name: name.into(), n, k, data: QuantData::Int8 { codes, scb } })
    }

    /// GPTQ (`gptq` module layout): W `[K, N]` stored; the matrix is its transpose `[N, K]`.
    /// qweight `[K·bits/32, N]` LE i32, qzeros `[G, N·bits/32]` LE i32, scales `[G, N]` (f32, from
    /// f16), g_idx `[K]`, G = ceil(K / group).
    #[allow(clippy::too_many_arguments)]
    pub fn from_gptq(
        file: &std::path::Path,
        name: &str,
        bits: u32,
        group: usize,
        k: usize,
        n: usize,
        qweight: Bytes,
        qzeros: &[u8],
        scales: Vec<f32>,
        g_idx: &[i32],
    ) -> Result<Self> {
        let err = |m: String| Error::tensor(file, name, m);
        if bits != 4 && bits != 8 {
            return Err(err(format!("GPTQ bits = {bits} is not supported (4 or 8)")));
        }
        let per = 32 / bits as usize;
        if group == 0 || k == 0 || n == 0 {
            return Err(err(format!("bad GPTQ shape: K {k}, N {n}, group size {group}")));
        }
        if k % group != 0 {
            return Err(err(format!("group size {group} does not divide the {k} inputs")));
        }
        if k % per != 0 || n % per != 0 {
            return Err(err(format!(
                "{bits}-bit GPTQ packs {per} values per int32: K {k} and N {n} must be multiples"
            )));
        }
        let groups = k / group;
        if qweight.as_slice().len() != k / per * n * 4 {
            return Err(err(format!(
                "qweight holds {} bytes, expected [{}, {n}] int32",
                qweight.as_slice().len(),
                k / per
            )));
        }
        if qzeros.len() != groups * (n / per) * 4 {
            return Err(err(format!("qzeros holds {} bytes, expected [{groups}, {}] int32", qzeros.len(), n / per)));
        }
        if scales.len() != groups * n {
            return Err(err(format!("{} scales, expected [{groups}, {n}]", scales.len())));
        }
        if let Some(s) = scales.iter().find(|s| !s.is_finite()) {
            return Err(err(format!("scales hold a non-finite value {s}")));
        }
        if g_idx.len() != k {
            return Err(err(format!("g_idx has {} entries, expected {k}", g_idx.len())));
        }
        if let Some((i, g)) = g_idx.iter().enumerate().find(|(_, &g)| g < 0 || g as usize >= groups) {
            return Err(err(format!("g_idx[{i}] = {g} is not a group index (0..{groups})")));
        }
        let zeros = super::gptq::unpack_zeros(qzeros, groups, n, bits);
        let g_idx = g_idx.iter().map(|&g| g as u32).collect();
        Ok(QuantMatrix {
            name: name.into(),
            n,
            k,
            data: QuantData::Gptq { bits, group, qweight, zeros, scales, g_idx },
        })
    }
}
