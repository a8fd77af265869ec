//! `quantize_checkpoint`: a float checkpoint (bf16 / f16 / f32) → a bitsandbytes 4-bit / 8-bit
//! checkpoint in the layout transformers saves (`bnb` has the tensors of one linear), which
//! `QuantWeights::from_checkpoint` loads as stored (`qwen-run quantize`).
//!
//! - Which tensors: the five linears of every layer (`attn.c_attn`, `attn.c_proj`, `mlp.w1`,
//!   `mlp.w2`, `mlp.c_proj` weights) are quantized exactly as `--quant` does at load
//!   (`QuantMatrix::quantize`); every other tensor (wte, lm_head, norms, the c_attn bias, anything
//!   else stored) is copied byte for byte in its stored dtype.
//! - Streaming: one tensor at a time, read from the input's memory map; a quantized linear's packed
//!   bytes are the only thing held in memory (never an f32 copy of a weight). Every value read is
//!   checked finite (`weights::check_finite`), as the loader does.
//! - Files: `model.safetensors`, or shards `model-0000k-of-0000n.safetensors` of at most
//!   `max_shard_bytes` (a linear's tensors stay together) with `model.safetensors.index.json`
//!   (`metadata.total_size`, `weight_map`), as `save_pretrained` writes them. config.json gains
//!   `quantization_config` (`bnb::quantization_config`); every other regular file of the input
//!   (generation_config.json, qwen.tiktoken, tokenizer files, code) is copied.
//! - Atomic: everything is written into a fresh hidden sibling of the output directory and renamed
//!   into place at the end; an error or a cancel removes it, so the output either is complete or
//!   does not exist.
//!
//! Safetensors layout of each shard: tensors sorted by element size (largest first) then name, so
//! every tensor is aligned to its element size, then the quant_state JSON tensors (whose lengths are
//! known only once quantized) at the end. The header's size is reserved up front from an upper
//! bound and padded with spaces (the format allows trailing whitespace), so each tensor is written
//! at its final offset as soon as it exists.
use super::bnb::{self, OutDType, OutTensor, Planned};
use super::{QuantFormat, QuantMatrix};
use crate::checkpoint::{Checkpoint, TensorView};
use crate::config::QuantConfig;
use crate::error::{Error, Result};
use crate::files;
use crate::weights::{check_finite, Weights};
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes copied per step of a float tensor (progress and cancel granularity).
const COPY_CHUNK: usize = 16 << 20;

/// How to quantize a checkpoint.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// NF4 (with or without double quant) or Int8.
    pub format: QuantFormat,
    /// Start a new shard before a tensor group that would push the current one past this size.
    pub max_shard_bytes: u64,
    /// A progress bar on stderr.
    pub progress: bool,
}

impl QuantizeOptions {
    pub fn new(format: QuantFormat) -> Self {
        QuantizeOptions { format, max_shard_bytes: 2_000_000_000, progress: false }
    }
}

/// What `quantize_checkpoint` wrote.
#[derive(Clone, Debug, Default)]
pub struct QuantizeSummary {
    /// Linear weights quantized.
    pub quantized: usize,
    /// Tensors copied as stored.
    pub copied: usize,
    /// Bytes of the input's tensors.
    pub bytes_in: u64,
    /// Bytes of the output's tensors (the index's `total_size`).
    pub bytes_out: u64,
    /// Weight files written.
    pub shards: Vec<String>,
    /// Other files copied from the input.
    pub files_copied: Vec<String>,
    /// Entries of the input directory not copied (not regular files).
    pub skipped: Vec<String>,
}

/// One input tensor and what becomes of it.
enum Source<'a> {
    /// Stored as it is.
    Copy(&'a TensorView),
    /// A linear weight `X.weight` quantized; the prefix is `X`.
    Quantize(&'a TensorView, String),
}

impl Source<'_> {
    fn view(&self) -> &TensorView {
        match self {
            Source::Copy(t) | Source::Quantize(t, _) => t,
        }
    }
}

/// Order tensors as the model uses them: wte, the layers by number, ln_f, lm_head, anything else.
fn model_order(name: &str) -> (u8, usize, String) {
    let layer =
        name.strip_prefix("transformer.h.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
    match (name, layer) {
        ("transformer.wte.weight", _) => (0, 0, String::new()),
        (_, Some(i)) => (1, i, name.to_string()),
        ("transformer.ln_f.weight", _) => (2, 0, String::new()),
        ("lm_head.weight", _) => (3, 0, String::new()),
        _ => (4, 0, name.to_string()),
    }
}

/// Quantize the float checkpoint `input` into the new directory `output` (see the module docs).
/// `cancel` is polled between tensors and chunks: when set, nothing is left at `output` and the
/// result is an error saying so.
pub fn quantize_checkpoint(
    input: &Path,
    output: &Path,
    opts: &QuantizeOptions,
    cancel: &AtomicBool,
) -> Result<QuantizeSummary> {
    let format = opts.format;
    if matches!(format, QuantFormat::Gptq { .. }) {
        return Err(Error::invalid("quantize: GPTQ is not written here (nf4, nf4-dq or int8)"));
    }
    if std::fs::symlink_metadata(output).is_ok() {
        return Err(Error::bad_file(output, "already exists; refusing to overwrite it (give a new directory)"));
    }
    let ck = Checkpoint::open(input)?;
    if QuantConfig::load(&ck.dir)?.is_some() {
        let cfg = ck.dir.join("config.json");
        let in_config = files::read_json_text(&cfg)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("quantization_config").is_some());
        let file = if in_config { cfg } else { ck.dir.join("quantize_config.json") };
        return Err(Error::bad_file(
            file,
            "the checkpoint is already quantized; quantize takes a float (bf16, f16 or f32) checkpoint",
        ));
    }
    if let Some(t) = ck.int_tensors.values().next() {
        return Err(t.error(format!(
            "stored as {} (quantized), but config.json has no quantization_config; quantize takes a float checkpoint",
            t.dtype.name()
        )));
    }
    let w = Weights::from_checkpoint(&ck)?;
    let linears: HashSet<&str> = w
        .layers
        .iter()
        .flat_map(|l| [&l.c_attn_w, &l.c_proj, &l.w1, &l.w2, &l.mlp_c_proj])
        .map(|t| t.name.as_str())
        .collect();
    let mut sources: Vec<Source<'_>> = ck
        .tensors
        .values()
        .map(|t| match (linears.contains(t.name.as_str()), t.name.strip_suffix(".weight")) {
            (true, Some(prefix)) => Source::Quantize(t, prefix.to_string()),
            _ => Source::Copy(t),
        })
        .collect();
    sources.sort_by_cached_key(|s| model_order(&s.view().name));
    let plans: Vec<Vec<Planned>> = sources
        .iter()
        .map(|s| match s {
            Source::Copy(t) => vec![Planned {
                name: t.name.clone(),
                dtype: OutDType::of_float(t.dtype),
                shape: t.shape.clone(),
                exact: true,
            }],
            Source::Quantize(t, prefix) => bnb::plan(prefix, t.shape[0], t.shape[1], format, t.dtype),
        })
        .collect();
    let mut names: BTreeMap<&str, &TensorView> = BTreeMap::new();
    for (s, plan) in sources.iter().zip(&plans) {
        for p in plan {
            if let Some(other) = names.insert(&p.name, s.view()) {
                return Err(s.view().error(format!(
                    "its quantized form would store `{}`, which the checkpoint already holds as tensor `{}`",
                    p.name, other.name
                )));
            }
        }
    }

    let tmp = temp_sibling(output)?;
    let result = write_all(&ck, &sources, &plans, &tmp, opts, cancel).and_then(|summary| {
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(output));
        }
        std::fs::rename(&tmp, output).map_err(|e| Error::io(output, e))?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(output));
        }
    }
    result
}

fn cancelled(output: &Path) -> Error {
    Error::invalid(format!("quantize interrupted: nothing was written at {}", output.display()))
}

/// Write every file into `tmp`.
fn write_all(
    ck: &Checkpoint,
    sources: &[Source<'_>],
    plans: &[Vec<Planned>],
    tmp: &Path,
    opts: &QuantizeOptions,
    cancel: &AtomicBool,
) -> Result<QuantizeSummary> {
    let mut summary = QuantizeSummary::default();
    let bytes_in: u64 = sources.iter().map(|s| s.view().byte_len() as u64).sum();
    summary.bytes_in = bytes_in;
    let bar = if opts.progress { indicatif::ProgressBar::new(bytes_in) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "quantizing to {} {{bar:40}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} {{msg}}",
            opts.format.name()
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let sizes: Vec<u64> = plans.iter().map(|p| p.iter().map(|t| t.byte_len() as u64).sum()).collect();
    let shards = files::shard_ranges(&sizes, opts.max_shard_bytes.max(1));
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, range) in shards.into_iter().enumerate() {
        let file =
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", k + 1) };
        let planned: Vec<Planned> = plans[range.clone()].iter().flatten().cloned().collect();
        let mut shard = ShardWriter::create(&tmp.join(&file), &planned)?;
        for s in &sources[range.clone()] {
            if cancel.load(Ordering::SeqCst) {
                return Err(Error::invalid("quantize interrupted"));
            }
            bar.set_message(s.view().name.clone());
            match s {
                Source::Copy(t) => {
                    copy_tensor(t, &mut shard, cancel, &bar)?;
                    summary.copied += 1;
                }
                Source::Quantize(t, prefix) => {
                    crate::weights::page_in([*t], |_| {})?; // finite check, and the pages the quantizer reads
                    let m = QuantMatrix::quantize(t, opts.format)?;
                    for out in bnb::serialize(prefix, &m, t.dtype) {
                        shard.write(&out)?;
                    }
                    bar.inc(t.byte_len() as u64);
                    summary.quantized += 1;
                }
            }
        }
        summary.bytes_out += shard.finish()?;
        for p in &planned {
            weight_map.insert(p.name.clone(), serde_json::json!(file));
        }
        summary.shards.push(file);
    }
    bar.finish_and_clear();
    if n > 1 {
        let index = serde_json::json!({"metadata": {"total_size": summary.bytes_out}, "weight_map": weight_map});
        files::write_json(&tmp.join("model.safetensors.index.json"), &index)?;
    }
    copy_other_files(ck, tmp, opts.format, &mut summary)?;
    Ok(summary)
}

/// Copy a float tensor's stored bytes in chunks, checking every value finite.
fn copy_tensor(
    t: &TensorView,
    shard: &mut ShardWriter,
    cancel: &AtomicBool,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let es = t.dtype.size();
    let per = (COPY_CHUNK / es) * es;
    for (i, chunk) in t.bytes().chunks(per).enumerate() {
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::invalid("quantize interrupted"));
        }
        check_finite(t, i * (per / es), chunk)?;
        shard.write_part(&t.name, i * per, chunk)?;
        bar.inc(chunk.len() as u64);
    }
    shard.mark_written(&t.name, t.byte_len())
}

/// config.json with `quantization_config`; every other regular file of the input except the
/// weights (safetensors, PyTorch pickles) and the synth stamp.
fn copy_other_files(ck: &Checkpoint, tmp: &Path, format: QuantFormat, summary: &mut QuantizeSummary) -> Result<()> {
    let cfg_path = ck.dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&files::read_json_text(&cfg_path)?)
        .map_err(|e| Error::bad_file(&cfg_path, format!("invalid JSON: {e}")))?;
    let obj = cfg.as_object_mut().ok_or_else(|| Error::bad_file(&cfg_path, "is not a JSON object"))?;
    obj.insert("quantization_config".into(), bnb::quantization_config(format));
    files::write_json(&tmp.join("config.json"), &cfg)?;

    let shard_names: HashSet<String> =
        ck.shards.iter().filter_map(|(p, _)| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    let mut entries: Vec<_> = std::fs::read_dir(&ck.dir)
        .map_err(|e| Error::io(&ck.dir, e))?
        .map(|e| e.map(|e| e.file_name()).map_err(|e| Error::io(&ck.dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for name in entries {
        let s = name.to_string_lossy().into_owned();
        let weights = s.ends_with(".safetensors")
            || s == "model.safetensors.index.json"
            || s.ends_with(".bin")
            || s == "pytorch_model.bin.index.json"
            || shard_names.contains(&s);
        if weights || s == "config.json" || s == "qwen_rt_synth.json" {
            continue;
        }
        let src = ck.dir.join(&name);
        if !std::fs::metadata(&src).map(|m| m.is_file()).unwrap_or(false) {
            summary.skipped.push(s);
            continue;
        }
        let (mut f, _) = files::open_regular(&src)?;
        let dst = tmp.join(&name);
        let mut out = std::fs::File::create(&dst).map_err(|e| Error::io(&dst, e))?;
        std::io::copy(&mut f, &mut out).map_err(|e| Error::io(&dst, e))?;
        summary.files_copied.push(s);
    }
    Ok(())
}

/// A fresh, unique hidden sibling of `dir` (same filesystem, so the final rename is atomic).
fn temp_sibling(dir: &Path) -> Result<PathBuf> {
    let tmp = files::temp_sibling_path(dir, "quantize output")?;
    std::fs::create_dir(&tmp).map_err(|e| {
        Error::bad_file(dir, format!("cannot write the output here (creating {} failed: {e})", tmp.display()))
    })?;
    Ok(tmp)
}

/// One safetensors file written tensor by tensor at precomputed offsets (see the module docs).
struct ShardWriter {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes reserved for the header JSON (a multiple of 8).
    reserved: usize,
    /// Tensors of known size: plan and offset in the data section.
    fixed: BTreeMap<String, (Planned, usize)>,
    /// End of the known-size tensors in the data section.
    fixed_end: usize,
    /// Known-size tensors completely written.
    written: HashSet<String>,
    /// The quant_state tensors (planned upper bound, then the bytes), in plan order.
    tail: Vec<(Planned, Option<OutTensor>)>,
}

impl ShardWriter {
    fn create(path: &Path, planned: &[Planned]) -> Result<Self> {
        let mut exact: Vec<&Planned> = planned.iter().filter(|p| p.exact).collect();
        exact.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then(a.name.cmp(&b.name)));
        let mut fixed = BTreeMap::new();
        let mut off = 0usize;
        for p in exact {
            fixed.insert(p.name.clone(), (p.clone(), off));
            off += p.byte_len();
        }
        let tail: Vec<(Planned, Option<OutTensor>)> =
            planned.iter().filter(|p| !p.exact).map(|p| (p.clone(), None)).collect();
        let bound: Vec<(&str, OutDType, &[usize])> =
            tail.iter().map(|(p, _)| (p.name.as_str(), p.dtype, p.shape.as_slice())).collect();
        let reserved = header(&fixed, off, &bound).len().next_multiple_of(8);
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(ShardWriter { path: path.into(), file, reserved, fixed, fixed_end: off, written: HashSet::new(), tail })
    }

    fn data_start(&self) -> u64 {
        8 + self.reserved as u64
    }

    /// Bytes `[at, at + bytes.len())` of the known-size tensor `name`.
    fn write_part(&mut self, name: &str, at: usize, bytes: &[u8]) -> Result<()> {
        let (p, off) = self.fixed.get(name).ok_or_else(|| self.internal(name, "not planned in this shard"))?;
        if at + bytes.len() > p.byte_len() {
            return Err(self.internal(name, "write past its planned size"));
        }
        let pos = self.data_start() + (off + at) as u64;
        self.file.write_all_at(bytes, pos).map_err(|e| Error::io(&self.path, e))
    }

    fn mark_written(&mut self, name: &str, len: usize) -> Result<()> {
        match self.fixed.get(name) {
            Some((p, _)) if p.byte_len() == len => {
                self.written.insert(name.to_string());
                Ok(())
            }
            _ => Err(self.internal(name, "written with a size other than planned")),
        }
    }

    /// A whole tensor (known-size, or a quant_state no longer than planned).
    fn write(&mut self, t: &OutTensor) -> Result<()> {
        if let Some((p, _)) = self.fixed.get(&t.name) {
            if p.dtype != t.dtype || p.shape != t.shape || t.bytes.len() != p.byte_len() {
                return Err(self.internal(&t.name, "dtype or shape differs from the plan"));
            }
            self.write_part(&t.name, 0, &t.bytes)?;
            return self.mark_written(&t.name, t.bytes.len());
        }
        let path = self.path.clone();
        let slot = self.tail.iter_mut().find(|(p, _)| p.name == t.name);
        match slot {
            Some((p, slot)) if p.dtype == t.dtype && t.bytes.len() <= p.byte_len() && slot.is_none() => {
                *slot = Some(t.clone());
                Ok(())
            }
            _ => Err(Error::tensor(path, t.name.as_str(), "internal error: not planned, or longer than planned")),
        }
    }

    fn internal(&self, name: &str, msg: &str) -> Error {
        Error::tensor(self.path.clone(), name, format!("internal error: {msg}"))
    }

    /// Write the quant_state tensors and the header; returns the data section's size.
    fn finish(self) -> Result<u64> {
        if let Some(name) = self.fixed.keys().find(|n| !self.written.contains(*n)) {
            return Err(self.internal(name, "never written"));
        }
        let io = |e| Error::io(&self.path, e);
        let mut end = self.fixed_end;
        let mut actual: Vec<(&str, OutDType, &[usize])> = Vec::new();
        for (p, t) in &self.tail {
            let t = t.as_ref().ok_or_else(|| self.internal(&p.name, "never written"))?;
            self.file.write_all_at(&t.bytes, self.data_start() + end as u64).map_err(io)?;
            end += t.bytes.len();
            actual.push((&t.name, t.dtype, &t.shape));
        }
        let mut text = header(&self.fixed, self.fixed_end, &actual);
        if text.len() > self.reserved {
            return Err(Error::bad_file(&self.path, "internal error: the header outgrew its reserved space"));
        }
        while text.len() < self.reserved {
            text.push(' ');
        }
        let mut head = (self.reserved as u64).to_le_bytes().to_vec();
        head.extend_from_slice(text.as_bytes());
        self.file.write_all_at(&head, 0).map_err(io)?;
        self.file.set_len(self.data_start() + end as u64).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        Ok(end as u64)
    }
}

/// The safetensors header JSON: the known-size tensors at their offsets, then `tail` packed after
/// `fixed_end` in order; `__metadata__` {"format": "pt"}.
fn header(fixed: &BTreeMap<String, (Planned, usize)>, fixed_end: usize, tail: &[(&str, OutDType, &[usize])]) -> String {
    let mut h = serde_json::Map::new();
    h.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    for (name, (p, off)) in fixed {
        h.insert(
            name.clone(),
            serde_json::json!({"dtype": p.dtype.name(), "shape": p.shape, "data_offsets": [off, off + p.byte_len()]}),
        );
    }
    let mut off = fixed_end;
    for &(name, dtype, shape) in tail {
        let len = shape.iter().product::<usize>() * dtype.size();
        h.insert(
            name.into(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    serde_json::Value::Object(h).to_string()
}
