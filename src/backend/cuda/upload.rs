//! Place in the flow: backend::cuda: device → launch → plan → **upload** → graph.
//! Weight streaming: the shards stay memory-mapped; each tensor is read (converted to the compute
//! dtype when the checkpoint stores another one) into one of several pinned staging buffers and
//! copied to the GPU asynchronously on a copy stream, so reading the next piece overlaps the
//! transfer of this one. All weights live in one device allocation, carved in the order below;
//! w1 and w2 of a layer are adjacent (`w12` = `[2F, C]`: rows 0..F up, F..2F gate), so one matmul
//! gives both halves of the SwiGLU input.
use super::device::{cuda_err, gib, DevBuf, DevSlice, Gpu, GpuDType};
use super::launch;
use super::plan::{weight_bytes, ALIGN};
use crate::checkpoint::{decode_f32, DType, TensorView};
use crate::config::QwenConfig;
use crate::error::{Error, Result};
use crate::synth::{synth_config, synth_tensors, SynthPreset};
use crate::weights::Weights;
use cudarc::driver::{result, CudaEvent, CudaStream, PinnedHostSlice};
use std::sync::Arc;

/// One transformer block on the GPU (T = compute dtype).
#[derive(Debug, Clone, Copy)]
pub struct GpuLayer {
    /// `[C]` T
    pub ln_1: DevSlice,
    /// `[3P, C]` T
    pub c_attn_w: DevSlice,
    /// `[3P]` T
    pub c_attn_b: DevSlice,
    /// `[C, P]` T
    pub c_proj: DevSlice,
    /// `[C]` T
    pub ln_2: DevSlice,
    /// `[2F, C]` T: w1 (up) rows then w2 (gate) rows
    pub w12: DevSlice,
    /// `[C, F]` T
    pub mlp_c_proj: DevSlice,
}

/// Every weight on the GPU, in one allocation.
pub struct GpuWeights {
    pub(super) _buf: DevBuf,
    /// `[V, C]` T
    pub wte: DevSlice,
    pub layers: Vec<GpuLayer>,
    /// `[C]` T
    pub ln_f: DevSlice,
    /// `[V, C]` T (the wte region when tied)
    pub lm_head: DevSlice,
    pub bytes: usize,
    /// Quantized linears, one entry per layer (`upload_quant`); the dense linear slices of `layers`
    /// are then empty. None: every linear is dense T.
    pub quant: Option<Vec<super::upload_quant::GpuQuantLayer>>,
}

/// Size of one pinned staging buffer, and how many rotate.
const STAGE_BYTES: usize = 32 << 20;
const STAGES: usize = 3;

/// Free device memory the weight upload leaves for the driver's own allocations; each sequence
/// checks its own plan (KV cache + activations) when it is created.
pub const RESERVE_BYTES: usize = 512 << 20;

pub(super) struct Stager {
    copy: Arc<CudaStream>,
    bufs: Vec<PinnedHostSlice<u8>>,
    done: Vec<Option<CudaEvent>>,
    next: usize,
    progress: Option<indicatif::ProgressBar>,
}

impl Stager {
    /// The pinned staging buffers and a copy stream of `gpu`; a progress bar over `total` bytes when
    /// `progress`.
    pub(super) fn new(gpu: &Gpu, total: u64, progress: bool) -> Result<Stager> {
        let copy = gpu.ctx.new_stream().map_err(cuda_err("creating the copy stream"))?;
        let mut bufs = Vec::with_capacity(STAGES);
        for _ in 0..STAGES {
            // SAFETY: the staging memory is written (by `convert` / `bytes`) before any copy reads it.
            bufs.push(
                unsafe { gpu.ctx.alloc_pinned::<u8>(STAGE_BYTES) }
                    .map_err(cuda_err("allocating pinned staging memory"))?,
            );
        }
        let progress = progress.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "uploading {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("to {}", gpu.name));
            bar
        });
        Ok(Stager { copy, bufs, done: (0..STAGES).map(|_| None).collect(), next: 0, progress })
    }

    /// Wait for every copy in flight (before the staging buffers or the destination may be freed, on
    /// the error path too), then finish the progress bar.
    pub(super) fn finish(&self) -> Result<()> {
        self.copy.synchronize().map_err(cuda_err("finishing the weight upload"))?;
        if let Some(p) = &self.progress {
            p.finish();
        }
        Ok(())
    }

    /// Copy the raw bytes `src` into `dst` (at least as long) through the staging buffers.
    pub(super) fn bytes(&mut self, src: &[u8], dst: DevSlice, what: &str) -> Result<()> {
        if dst.bytes < src.len() {
            return Err(Error::Backend(format!("internal: device region too small for {what}")));
        }
        for (i, piece) in src.chunks(STAGE_BYTES).enumerate() {
            let slot = self.next;
            self.next = (self.next + 1) % self.bufs.len();
            if let Some(ev) = self.done[slot].take() {
                ev.synchronize().map_err(cuda_err("waiting for a staging copy"))?;
            }
            let buf = self.bufs[slot].as_mut_slice().map_err(cuda_err("mapping a staging buffer"))?;
            let out = &mut buf[..piece.len()];
            out.copy_from_slice(piece);
            // SAFETY: dst + i·STAGE_BYTES .. + piece.len() lies inside `dst` (checked above); `out` is
            // pinned memory not touched again until the event recorded below has completed.
            unsafe { result::memcpy_htod_async(dst.ptr.offset(i * STAGE_BYTES).0, &*out, self.copy.cu_stream()) }
                .map_err(cuda_err("copying weights to the GPU"))?;
            let ev = self.copy.record_event(None).map_err(cuda_err("recording a copy event"))?;
            self.done[slot] = Some(ev);
            if let Some(p) = &self.progress {
                p.inc(piece.len() as u64);
            }
        }
        Ok(())
    }

    /// Stream `t` (converted to `dt`) into `dst`, which holds exactly numel · 2 bytes.
    pub(super) fn tensor(&mut self, t: &TensorView, dt: GpuDType, dst: DevSlice) -> Result<()> {
        let es = t.dtype.size();
        let n = t.numel();
        if dst.bytes < n * dt.size() {
            return Err(t.error("internal: device region too small for the tensor"));
        }
        let src = t.bytes();
        let per_chunk = STAGE_BYTES / 4; // elements per staging pass (an f32 source fills it exactly)
        let mut done = 0;
        while done < n {
            let m = per_chunk.min(n - done);
            let slot = self.next;
            self.next = (self.next + 1) % self.bufs.len();
            if let Some(ev) = self.done[slot].take() {
                ev.synchronize().map_err(cuda_err("waiting for a staging copy"))?;
            }
            let buf = self.bufs[slot].as_mut_slice().map_err(cuda_err("mapping a staging buffer"))?;
            let out = &mut buf[..m * dt.size()];
            crate::weights::check_finite(t, done, &src[done * es..(done + m) * es])?;
            convert(&src[done * es..(done + m) * es], t.dtype, dt, out);
            // SAFETY: dst + done·2 .. + m·2 lies inside `dst` (checked above); `out` is pinned
            // memory that is not touched again until the event recorded below has completed.
            unsafe { result::memcpy_htod_async(dst.ptr.offset(done * dt.size()).0, &*out, self.copy.cu_stream()) }
                .map_err(cuda_err("copying weights to the GPU"))?;
            let ev = self.copy.record_event(None).map_err(cuda_err("recording a copy event"))?;
            self.done[slot] = Some(ev);
            if let Some(p) = &self.progress {
                p.inc((m * es) as u64);
            }
            done += m;
        }
        Ok(())
    }
}

/// `src` (`from`, little endian) → `out` in `to`, 2 bytes per value. bf16 → bf16 and f16 → f16
/// are plain copies; everything else goes through f32 with round-to-nearest-even.
fn convert(src: &[u8], from: DType, to: GpuDType, out: &mut [u8]) {
    match (from, to) {
        (DType::BF16, GpuDType::BF16) | (DType::F16, GpuDType::F16) => out.copy_from_slice(src),
        _ => {
            let mut tmp = vec![0f32; out.len() / 2];
            decode_f32(src, from, &mut tmp);
            for (o, bits) in out.chunks_exact_mut(2).zip(to.encode(&tmp)) {
                o.copy_from_slice(&bits.to_le_bytes());
            }
        }
    }
}

/// `total` bytes plus the reserve fit in the GPU's free memory, or an error saying how much `what`
/// needs and how much is free.
pub(super) fn check_room(gpu: &Gpu, total: usize, what: &str) -> Result<()> {
    let (free, _) = gpu.mem_info()?;
    if total + RESERVE_BYTES > free {
        return Err(Error::Backend(format!(
            "{what} need {:.2} GiB on the GPU (+{:.2} GiB reserve), {:.2} GiB free on {}",
            gib(total),
            gib(RESERVE_BYTES),
            gib(free),
            gpu.name
        )));
    }
    Ok(())
}

impl GpuWeights {
    /// Check free memory ("needs X GiB, Y GiB free"), allocate one buffer for every weight of
    /// `cfg` in `dt` and carve it (model order, each tensor ALIGN-aligned).
    fn carve(gpu: &Gpu, cfg: &QwenConfig, dt: GpuDType) -> Result<GpuWeights> {
        let tied = cfg.tie_word_embeddings;
        let total = weight_bytes(cfg, dt, tied);
        check_room(gpu, total, "the weights")?;
        let buf = gpu.alloc(total)?;
        let all = buf.slice();
        let mut off = 0usize;
        let mut take = |n: usize| -> Result<DevSlice> {
            let r = all.sub(off, n * dt.size())?;
            off += (n * dt.size()).div_ceil(ALIGN) * ALIGN;
            Ok(r)
        };
        let (c, p, f, v) = (cfg.hidden_size, cfg.proj_size(), cfg.mlp_width, cfg.vocab_size);
        let wte = take(v * c)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            layers.push(GpuLayer {
                ln_1: take(c)?,
                c_attn_w: take(3 * p * c)?,
                c_attn_b: take(3 * p)?,
                c_proj: take(c * p)?,
                ln_2: take(c)?,
                w12: take(2 * f * c)?,
                mlp_c_proj: take(c * f)?,
            });
        }
        let ln_f = take(c)?;
        let lm_head = if tied { wte } else { take(v * c)? };
        Ok(GpuWeights { _buf: buf, wte, layers, ln_f, lm_head, bytes: total, quant: None })
    }

    /// The region of the checkpoint tensor `name` (w1 / w2 are the two halves of `w12`).
    fn region(&self, name: &str) -> Option<DevSlice> {
        match name {
            "transformer.wte.weight" => return Some(self.wte),
            "transformer.ln_f.weight" => return Some(self.ln_f),
            "lm_head.weight" => return Some(self.lm_head),
            _ => {}
        }
        let rest = name.strip_prefix("transformer.h.")?;
        let (i, field) = rest.split_once('.')?;
        let l = self.layers.get(i.parse::<usize>().ok()?)?;
        let half = l.w12.bytes / 2;
        match field {
            "ln_1.weight" => Some(l.ln_1),
            "attn.c_attn.weight" => Some(l.c_attn_w),
            "attn.c_attn.bias" => Some(l.c_attn_b),
            "attn.c_proj.weight" => Some(l.c_proj),
            "ln_2.weight" => Some(l.ln_2),
            "mlp.w1.weight" => l.w12.sub(0, half).ok(),
            "mlp.w2.weight" => l.w12.sub(half, half).ok(),
            "mlp.c_proj.weight" => Some(l.mlp_c_proj),
            _ => None,
        }
    }
}

/// Upload every weight of `w` in `dt` through the pinned staging buffers.
pub fn upload_weights(gpu: &Gpu, w: &Weights, dt: GpuDType, progress: bool) -> Result<GpuWeights> {
    let gw = GpuWeights::carve(gpu, &w.config, dt)?;
    let mut st = Stager::new(gpu, w.byte_len() as u64, progress)?;
    let mut tensors: Vec<&TensorView> = vec![&w.wte];
    for lw in &w.layers {
        tensors.extend([&lw.ln_1, &lw.c_attn_w, &lw.c_attn_b, &lw.c_proj, &lw.ln_2, &lw.w1, &lw.w2, &lw.mlp_c_proj]);
    }
    tensors.push(&w.ln_f);
    if !w.config.tie_word_embeddings {
        tensors.push(&w.lm_head);
    }
    let streamed = tensors.into_iter().try_for_each(|t| {
        let dst = gw.region(&t.name).ok_or_else(|| t.error("internal: no GPU region for this tensor"))?;
        st.tensor(t, dt, dst)
    });
    // Wait for the copies in flight before anything (staging buffers, the weight buffer) is freed,
    // on the error path too.
    let finished = st.finish();
    streamed?;
    finished?;
    Ok(gw)
}

/// Generate the weights of synth preset `p` (seed `seed`) directly on the GPU: the same values
/// `synth_model` would write to disk, without the 15 GB file.
pub fn synth_weights(gpu: &Gpu, p: &SynthPreset, seed: u64, dt: GpuDType) -> Result<(QwenConfig, GpuWeights)> {
    let cfg = synth_config(p)?;
    let gw = GpuWeights::carve(gpu, &cfg, dt)?;
    for t in synth_tensors(p, seed) {
        let dst = gw
            .region(&t.name)
            .ok_or_else(|| Error::Backend(format!("internal: no GPU region for synth tensor {}", t.name)))?;
        let n: usize = t.shape.iter().product();
        launch::fill_uniform(
            gpu,
            &gpu.stream,
            dt,
            &launch::FillParams { out: dst, n: n as u64, key: t.key, offset: t.offset, scale: t.scale },
        )?;
    }
    gpu.sync()?;
    Ok((cfg, gw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_rounds_like_the_dtype_encoder() {
        let vals = [0.0f32, 1.0, -2.5, 3.3333, 1e-3, 65504.0, -1e-8];
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        for dt in [GpuDType::BF16, GpuDType::F16] {
            let mut out = vec![0u8; vals.len() * 2];
            convert(&f32_bytes, DType::F32, dt, &mut out);
            let want: Vec<u8> = dt.encode(&vals).iter().flat_map(|b| b.to_le_bytes()).collect();
            assert_eq!(out, want, "{dt:?}");
        }
        // bf16 → f16 goes through f32: 1.5 is exact in both.
        let one_half = half::bf16::from_f32(1.5).to_bits().to_le_bytes();
        let mut out = [0u8; 2];
        convert(&one_half, DType::BF16, GpuDType::F16, &mut out);
        assert_eq!(u16::from_le_bytes(out), half::f16::from_f32(1.5).to_bits());
    }
}
