//! Place in the flow: backend::cuda: device → launch → plan → upload → **upload_quant** → graph.
//! Quantized weights on the GPU (issue 15): the five linears of every layer in the device layout of
//! cuda/quant_params.h, everything else (wte, norms, the c_attn bias, lm_head) in T as `upload` does,
//! all in one allocation, streamed through `upload::Stager`.
//!
//! Device layouts, from a `quant::QuantMatrix`:
//! - NF4: the packed codes as stored (bitsandbytes order), absmax as f32 — nf4-dq's double-quantized
//!   absmax is decoded here to exactly the f32 values the CPU oracle uses (`nf4::Absmax::to_f32`), so
//!   nf4-dq costs 4 bytes per 64 weights on the GPU instead of ~1.
//! - Int8: codes and SCB as stored.
//! - GPTQ: the inputs sorted by group (stable, by `g_idx`), each group padded to whole 32-bit words
//!   (padding slots: weight 0), so every qweight row lies in one group (`row_group`); qweight rows
//!   repacked in that slot order; `perm` maps slots to inputs. When g_idx is k / group and the group is
//!   a whole number of words (every official checkpoint without act-order) the layout is the stored one
//!   and no permutation is uploaded. Zeros are the true zeros (stored + 1) as u16, scales f32.
use super::device::{DevSlice, Gpu, GpuDType};
use super::launch::QuantWeight;
use super::plan::ALIGN;
use super::upload::{check_room, GpuLayer, GpuWeights, Stager};
use crate::checkpoint::TensorView;
use crate::error::{Error, Result};
use crate::quant::{gptq, Linear, QuantData, QuantLayer, QuantMatrix, QuantWeights};
use std::borrow::Cow;

/// The quantized linears of one layer (`[N, K]` each; w1 up and w2 gate are separate matrices: their
/// g_idx may differ).
#[derive(Clone, Copy, Debug)]
pub struct GpuQuantLayer {
    /// `[3P, C]`
    pub c_attn: QuantWeight,
    /// `[C, P]`
    pub c_proj: QuantWeight,
    /// `[F, C]` up
    pub w1: QuantWeight,
    /// `[F, C]` gate
    pub w2: QuantWeight,
    /// `[C, F]` down
    pub mlp_c_proj: QuantWeight,
}

/// GPTQ's slot order (module docs): `perm[s]` the input of slot s (K: padding), `row_group[r]` the
/// group of qweight row r; None when the stored order already is it (g_idx = k / group, group a
/// multiple of 32/bits).
pub fn gptq_slots(g_idx: &[u32], groups: usize, group: usize, per: usize) -> Option<(Vec<u32>, Vec<u32>)> {
    let k = g_idx.len();
    if group % per == 0 && g_idx.iter().enumerate().all(|(i, &g)| g as usize == i / group) {
        return None;
    }
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); groups];
    for (i, &g) in g_idx.iter().enumerate() {
        members[g as usize].push(i as u32);
    }
    let (mut perm, mut row_group) = (Vec::with_capacity(k + groups * per), Vec::new());
    for (g, m) in members.iter().enumerate() {
        perm.extend_from_slice(m);
        perm.resize(perm.len().div_ceil(per) * per, k as u32);
        row_group.resize(perm.len() / per, g as u32);
    }
    Some((perm, row_group))
}

/// One matrix in its device layout, as host bytes (`parts` in the order of `weight`'s slices).
pub struct HostQuant<'a> {
    pub parts: Vec<Cow<'a, [u8]>>,
    n: usize,
    k: usize,
    kind: Kind,
}

/// The format of a `HostQuant`, with what its parts do not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// parts: codes, absmax f32.
    Nf4,
    /// parts: codes, SCB f32.
    Int8,
    /// parts: qweight, row_group, [perm,] scales, zeros.
    Gptq { bits: u32, rows: usize, groups: usize, has_perm: bool },
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl<'a> HostQuant<'a> {
    /// The device layout of `m` (see the module docs).
    pub fn of(m: &'a QuantMatrix) -> HostQuant<'a> {
        let (n, k) = (m.n, m.k);
        match &m.data {
            QuantData::Nf4 { codes, absmax } => HostQuant {
                parts: vec![Cow::Borrowed(codes.as_slice()), Cow::Owned(f32_bytes(&absmax.to_f32()))],
                n,
                k,
                kind: Kind::Nf4,
            },
            QuantData::Int8 { codes, scb } => HostQuant {
                parts: vec![Cow::Borrowed(codes.as_slice()), Cow::Owned(f32_bytes(scb))],
                n,
                k,
                kind: Kind::Int8,
            },
            QuantData::Gptq { bits, group, qweight, zeros, scales, g_idx } => {
                let per = 32 / *bits as usize;
                let groups = scales.len() / n;
                let q = qweight.as_slice();
                let zeros: Vec<u8> = zeros.iter().flat_map(|&z| (z as u16).to_le_bytes()).collect();
                let (qw, row_group, perm) = match gptq_slots(g_idx, groups, *group, per) {
                    None => {
                        let rg: Vec<u32> = (0..k / per).map(|r| (r * per / group) as u32).collect();
                        (Cow::Borrowed(q), rg, None)
                    }
                    Some((perm, rg)) => {
                        let rows = rg.len();
                        let mut out = vec![0u8; rows * n * 4];
                        for r in 0..rows {
                            for j in 0..per {
                                let kk = perm[r * per + j] as usize;
                                if kk >= k {
                                    continue; // padding: code 0 (its x is 0)
                                }
                                let (wr, wj) = (kk / per, kk % per); // stored word row and field of input kk
                                for c in 0..n {
                                    let w = u32::from_le_bytes(q[(wr * n + c) * 4..][..4].try_into().expect("4"));
                                    let v = gptq::field(w, *bits, wj) << (*bits as usize * j);
                                    let o = &mut out[(r * n + c) * 4..][..4];
                                    let cur = u32::from_le_bytes(o[..4].try_into().expect("4")) | v;
                                    o.copy_from_slice(&cur.to_le_bytes());
                                }
                            }
                        }
                        (Cow::Owned(out), rg, Some(perm))
                    }
                };
                let rows = row_group.len();
                let mut parts = vec![qw, Cow::Owned(u32_bytes(&row_group))];
                let has_perm = perm.is_some();
                if let Some(p) = perm {
                    parts.push(Cow::Owned(u32_bytes(&p)));
                }
                parts.push(Cow::Owned(f32_bytes(scales)));
                parts.push(Cow::Owned(zeros));
                HostQuant { parts, n, k, kind: Kind::Gptq { bits: *bits, rows, groups, has_perm } }
            }
        }
    }

    /// Bytes of each part (what `of` would build), without building the repacked qweight.
    pub fn sizes(m: &QuantMatrix) -> Vec<usize> {
        let (n, k) = (m.n, m.k);
        match &m.data {
            QuantData::Nf4 { codes, .. } => vec![codes.as_slice().len(), (n * k).div_ceil(64) * 4],
            QuantData::Int8 { codes, .. } => vec![codes.as_slice().len(), n * 4],
            QuantData::Gptq { bits, group, scales, g_idx, .. } => {
                let per = 32 / *bits as usize;
                let groups = scales.len() / n;
                let (rows, perm) = match gptq_slots(g_idx, groups, *group, per) {
                    None => (k / per, None),
                    Some((p, rg)) => (rg.len(), Some(p.len())),
                };
                let mut s = vec![rows * n * 4, rows * 4];
                s.extend(perm.map(|p| p * 4));
                s.extend([groups * n * 4, groups * n * 2]);
                s
            }
        }
    }

    /// The device weight whose parts live at `dev` (one slice per part, in order: `parts.len()`).
    pub fn weight(&self, dev: &[DevSlice]) -> QuantWeight {
        let (n, k) = (self.n, self.k);
        match self.kind {
            Kind::Nf4 => QuantWeight::Nf4 { codes: dev[0], absmax: dev[1], n, k },
            Kind::Int8 => QuantWeight::Int8 { codes: dev[0], scb: dev[1], n, k },
            Kind::Gptq { bits, rows, groups, has_perm } => {
                let (perm, rest) = if has_perm { (Some(dev[2]), &dev[3..]) } else { (None, &dev[2..]) };
                QuantWeight::Gptq {
                    bits,
                    qweight: dev[0],
                    row_group: dev[1],
                    perm,
                    scales: rest[0],
                    zeros: rest[1],
                    n,
                    k,
                    rows,
                    groups,
                }
            }
        }
    }
}

/// `w`'s quantized matrix, or an internal error naming it (every linear of a quantized model is one).
fn quant_of(l: &Linear) -> Result<&QuantMatrix> {
    match l {
        Linear::Quant(q) => Ok(q),
        Linear::Dense(t) => Err(t.error("internal: a dense linear in a quantized model")),
    }
}

/// The five quantized matrices of a layer, in carve order.
fn mats(l: &QuantLayer) -> Result<[&QuantMatrix; 5]> {
    Ok([quant_of(&l.c_attn)?, quant_of(&l.c_proj)?, quant_of(&l.w1)?, quant_of(&l.w2)?, quant_of(&l.mlp_c_proj)?])
}

/// Upload `qw` (its linears quantized) to `gpu`: one allocation, checked against free memory ("needs X
/// GiB, Y GiB free"), then every tensor streamed through the staging buffers.
pub fn upload_quant_weights(gpu: &Gpu, qw: &QuantWeights, dt: GpuDType, progress: bool) -> Result<GpuWeights> {
    let cfg = &qw.config;
    let tied = cfg.tie_word_embeddings;
    // Sizes, in carve order: wte, per layer (ln_1, c_attn_b, ln_2, then each matrix's parts), ln_f, lm_head.
    let dense = |t: &TensorView| t.numel() * dt.size();
    let mut sizes = vec![dense(&qw.wte)];
    for l in &qw.layers {
        sizes.extend([dense(&l.ln_1), dense(&l.c_attn_b), dense(&l.ln_2)]);
        for m in mats(l)? {
            sizes.extend(HostQuant::sizes(m));
        }
    }
    sizes.push(dense(&qw.ln_f));
    if !tied {
        sizes.push(dense(&qw.lm_head));
    }
    let total: usize = sizes.iter().map(|s| s.div_ceil(ALIGN) * ALIGN).sum();
    check_room(gpu, total, "the quantized weights")?;
    let buf = gpu.alloc(total)?;
    let all = buf.slice();
    let mut off = 0usize;
    let mut next = sizes.iter();
    let mut take = || -> Result<DevSlice> {
        let n = *next.next().ok_or_else(|| Error::Backend("internal: quantized carve out of sizes".into()))?;
        let r = all.sub(off, n)?;
        off += n.div_ceil(ALIGN) * ALIGN;
        Ok(r)
    };
    let mut st = Stager::new(gpu, qw.byte_len() as u64, progress)?;
    type Carved = (DevSlice, Vec<GpuLayer>, DevSlice, DevSlice, Vec<GpuQuantLayer>);
    let streamed = (|| -> Result<Carved> {
        let wte = take()?;
        st.tensor(&qw.wte, dt, wte)?;
        let (mut layers, mut quant) = (Vec::new(), Vec::new());
        for l in &qw.layers {
            let (ln_1, c_attn_b, ln_2) = (take()?, take()?, take()?);
            st.tensor(&l.ln_1, dt, ln_1)?;
            st.tensor(&l.c_attn_b, dt, c_attn_b)?;
            st.tensor(&l.ln_2, dt, ln_2)?;
            let mut ws = Vec::with_capacity(5);
            for m in mats(l)? {
                let host = HostQuant::of(m);
                let mut dev = Vec::with_capacity(host.parts.len());
                for part in &host.parts {
                    let d = take()?;
                    st.bytes(part, d, &m.name)?;
                    dev.push(d);
                }
                ws.push(host.weight(&dev));
            }
            layers.push(GpuLayer {
                ln_1,
                c_attn_w: DevSlice::default(),
                c_attn_b,
                c_proj: DevSlice::default(),
                ln_2,
                w12: DevSlice::default(),
                mlp_c_proj: DevSlice::default(),
            });
            quant.push(GpuQuantLayer { c_attn: ws[0], c_proj: ws[1], w1: ws[2], w2: ws[3], mlp_c_proj: ws[4] });
        }
        let ln_f = take()?;
        st.tensor(&qw.ln_f, dt, ln_f)?;
        let lm_head = if tied {
            wte
        } else {
            let h = take()?;
            st.tensor(&qw.lm_head, dt, h)?;
            h
        };
        Ok((wte, layers, ln_f, lm_head, quant))
    })();
    // Wait for the copies in flight before anything (staging buffers, the weight buffer) is freed,
    // on the error path too.
    let finished = st.finish();
    let (wte, layers, ln_f, lm_head, quant) = streamed?;
    finished?;
    Ok(GpuWeights { _buf: buf, wte, layers, ln_f, lm_head, bytes: total, quant: Some(quant) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::matrix::Bytes;

    /// W `[N, K]` from a device layout, on the host, as the kernels read it (quant_params.h).
    fn dequant_layout(h: &HostQuant) -> Vec<f32> {
        let (n, k) = (h.n, h.k);
        let u32s =
            |b: &[u8]| -> Vec<u32> { b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect() };
        let f32s =
            |b: &[u8]| -> Vec<f32> { b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
        let Kind::Gptq { bits, rows, has_perm, .. } = h.kind else { panic!("GPTQ") };
        let per = 32 / bits as usize;
        let qw = u32s(&h.parts[0]);
        let rg = u32s(&h.parts[1]);
        let perm = has_perm.then(|| u32s(&h.parts[2]));
        let rest = if has_perm { 3 } else { 2 };
        let scales = f32s(&h.parts[rest]);
        let zeros: Vec<u16> = h.parts[rest + 1].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let mut w = vec![f32::NAN; n * k];
        for r in 0..rows {
            for c in 0..n {
                let g = rg[r] as usize * n + c;
                for j in 0..per {
                    let s = r * per + j;
                    let kk = perm.as_ref().map_or(s, |p| p[s] as usize);
                    if kk < k {
                        let q = gptq::field(qw[r * n + c], bits, j) as i32;
                        w[c * k + kk] = scales[g] * (q - zeros[g] as i32) as f32;
                    }
                }
            }
        }
        w
    }

    /// A GPTQ matrix K x N (stored [K, N]) with g_idx from `gidx`, random codes / zeros / scales.
    fn gptq_matrix(bits: u32, k: usize, n: usize, group: usize, gidx: impl Fn(usize) -> i32, seed: u64) -> QuantMatrix {
        let per = 32 / bits as usize;
        let groups = k / group;
        let mut s = seed;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let qweight: Vec<u8> = (0..k / per * n).flat_map(|_| rnd().to_le_bytes()).collect();
        let qzeros: Vec<u8> = (0..groups * n / per).flat_map(|_| rnd().to_le_bytes()).collect();
        let scales: Vec<f32> =
            (0..groups * n).map(|_| half::f16::from_f32(0.001 + (rnd() % 1000) as f32 * 1e-4).to_f32()).collect();
        let g_idx: Vec<i32> = (0..k).map(gidx).collect();
        QuantMatrix::from_gptq(
            std::path::Path::new("t"),
            "w",
            bits,
            group,
            k,
            n,
            Bytes::Owned(qweight),
            &qzeros,
            scales,
            &g_idx,
        )
        .expect("valid GPTQ")
    }

    #[test]
    fn gptq_layout_dequantizes_to_the_oracle() {
        // (bits, K, N, group, g_idx): trivial (no permutation), act-order (a permutation of it), and
        // arbitrary groups of unequal sizes (padded slots).
        let trivial = |g: usize| move |i: usize| (i / g) as i32;
        let act = |k: usize, g: usize| move |i: usize| (((i * 37 + 11) % k) / g) as i32;
        let arbitrary = |groups: usize| move |i: usize| ((i * i + 3 * i) % groups) as i32;
        for bits in [4u32, 8] {
            for (k, n, group, kind) in [(256, 24, 128, 0), (256, 8, 64, 1), (384, 16, 128, 2), (96, 8, 32, 2)] {
                let m = match kind {
                    0 => gptq_matrix(bits, k, n, group, trivial(group), 1),
                    1 => gptq_matrix(bits, k, n, group, act(k, group), 2),
                    _ => gptq_matrix(bits, k, n, group, arbitrary(k / group), 3),
                };
                let h = HostQuant::of(&m);
                let sizes: Vec<usize> = h.parts.iter().map(|p| p.len()).collect();
                assert_eq!(sizes, HostQuant::sizes(&m), "bits {bits} kind {kind}: sizes");
                let has_perm = matches!(h.kind, Kind::Gptq { has_perm: true, .. });
                assert_eq!(has_perm, kind != 0, "bits {bits} kind {kind}: a permutation only when needed");
                let got = dequant_layout(&h);
                let want = m.dequantize();
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "bits {bits} K {k} N {n} kind {kind}: the device layout dequantizes differently"
                );
            }
        }
    }

    #[test]
    fn gptq_slots_group_and_pad() {
        // g_idx 1 0 1 1 0 with 2 groups, 4 per word: group 0 = inputs 1 4 + 2 pads, group 1 = 0 2 3 + 1 pad.
        let (perm, rg) = gptq_slots(&[1, 0, 1, 1, 0], 2, 3, 4).expect("not the stored order");
        assert_eq!(perm, [1, 4, 5, 5, 0, 2, 3, 5]);
        assert_eq!(rg, [0, 1]);
        assert!(gptq_slots(&[0, 0, 0, 0, 1, 1, 1, 1], 2, 4, 4).is_none());
        assert!(gptq_slots(&[0, 0, 1, 1], 2, 2, 4).is_some(), "a group of half a word needs padding");
    }
}
