//! Place in the flow: config → **checkpoint** → weights; the model directory's files, mapped.
//! A Hugging Face Qwen v1 model directory as users download it, memory-mapped, zero copy.
//!
//! Files: `config.json`, `generation_config.json` (optional), `qwen.tiktoken`, and the weights as
//! `model.safetensors` or shards listed in `model.safetensors.index.json`. `pytorch_model.bin` is
//! refused with a message that says how to convert. Every header is validated before use: header
//! length inside the file, offsets in range and consistent with dtype x shape, known dtype. A bad
//! file is an `Error` naming the file and the tensor; never a panic.
use crate::config::{GenerationConfig, QwenConfig};
use crate::error::{Error, Result};
use crate::mapped::MappedFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    BF16,
    F16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
        }
    }
}

/// Element type of a stored integer tensor: the packed codes and indices of quantized
/// checkpoints (bitsandbytes U8 nibbles / I8 codes, GPTQ I32 words and g_idx). These tensors never
/// reach the float compute paths: they are `IntTensorView`s in `Checkpoint::int_tensors`, read by
/// `crate::quant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntDType {
    U8,
    I8,
    I32,
}

impl IntDType {
    pub fn size(self) -> usize {
        match self {
            IntDType::U8 | IntDType::I8 => 1,
            IntDType::I32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            IntDType::U8 => "U8",
            IntDType::I8 => "I8",
            IntDType::I32 => "I32",
        }
    }
}

/// A safetensors dtype this reader accepts: a float (`TensorView`) or an integer (`IntTensorView`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredDType {
    Float(DType),
    Int(IntDType),
}

impl StoredDType {
    fn size(self) -> usize {
        match self {
            StoredDType::Float(d) => d.size(),
            StoredDType::Int(d) => d.size(),
        }
    }
}

/// f16 -> f32 for every bit pattern (256 KiB, built once): exact, and much faster than a
/// software conversion on CPUs where the crate is built without F16C.
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| half::f16::from_bits(b).to_f32()).collect())
}

/// Little-endian stored values -> f32; `bytes` holds `out.len()` elements of `dtype`.
#[inline]
pub fn decode_f32(bytes: &[u8], dtype: DType, out: &mut [f32]) {
    match dtype {
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            let f16 = f16_table();
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16[u16::from_le_bytes([c[0], c[1]]) as usize];
            }
        }
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// One tensor: a typed view into a memory-mapped shard. Cloning is cheap (an `Arc`).
/// Invariant (checked when the checkpoint is opened): `offset + numel * dtype.size() <= mmap.len()`.
#[derive(Clone)]
pub struct TensorView {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The shard file, for error messages.
    pub file: Arc<PathBuf>,
    mmap: Arc<MappedFile>,
    offset: usize,
}

impl std::fmt::Debug for TensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {} in {}", self.name, self.shape, self.dtype.name(), self.file.display())
    }
}

impl TensorView {
    /// Built only by the checkpoint reader after validating the range.
    pub(crate) fn new(
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        file: Arc<PathBuf>,
        mmap: Arc<MappedFile>,
        offset: usize,
    ) -> Self {
        let v = TensorView { name, dtype, shape, file, mmap, offset };
        assert!(v.offset + v.byte_len() <= v.mmap.len(), "TensorView out of range (checked by the reader)");
        v
    }
    /// An in-memory f32 tensor (an anonymous map), e.g. the input of an oracle in a kernel test.
    pub fn from_f32(name: &str, shape: &[usize], values: &[f32]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(Error::invalid(format!("{name}: {} values for shape {shape:?}", values.len())));
        }
        let mut map = memmap2::MmapMut::map_anon((n * 4).max(1))
            .map_err(|e| Error::Backend(format!("{name}: anonymous map: {e}")))?;
        for (dst, v) in map.chunks_exact_mut(4).zip(values) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        let mmap = map.make_read_only().map_err(|e| Error::Backend(format!("{name}: anonymous map: {e}")))?;
        Ok(TensorView::new(
            name.into(),
            DType::F32,
            shape.to_vec(),
            Arc::new(PathBuf::from("<memory>")),
            Arc::new(MappedFile::anonymous(mmap)),
            0,
        ))
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.offset..self.offset + self.byte_len()]
    }
    /// Convert elements `[start, start + out.len())` (flattened) to f32.
    pub fn read_f32(&self, start: usize, out: &mut [f32]) {
        let es = self.dtype.size();
        decode_f32(&self.bytes()[start * es..(start + out.len()) * es], self.dtype, out);
    }
    /// The whole tensor as f32 (use for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.numel()];
        self.read_f32(0, &mut v);
        v
    }
    /// Err naming this tensor and its file when its map could not be read since it was made (the file
    /// was truncated or failed to read while mapped: see `mapped`); what was read from it is garbage.
    pub fn check_mapped(&self) -> Result<()> {
        match self.mmap.fault() {
            None => Ok(()),
            Some(what) => Err(self.error(format!(
                "the file {what} while memory-mapped, so the weights read from it are garbage: reload the model \
                 (replace model files by renaming a new file over the old one, never by rewriting them in place)"
            ))),
        }
    }
    /// True when both views lie in the same mapped file.
    pub fn shares_map(&self, other: &TensorView) -> bool {
        Arc::ptr_eq(&self.mmap, &other.mmap)
    }
    /// Error helper that names this tensor and its file.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::tensor(self.file.as_ref().clone(), self.name.clone(), msg)
    }
}

/// One stored integer tensor (quantized checkpoints): like `TensorView`, the bytes stay in the
/// memory map. Cloning is cheap (an `Arc`). Same invariant as `TensorView`.
#[derive(Clone)]
pub struct IntTensorView {
    pub name: String,
    pub dtype: IntDType,
    pub shape: Vec<usize>,
    /// The shard file, for error messages.
    pub file: Arc<PathBuf>,
    mmap: Arc<MappedFile>,
    offset: usize,
}

impl std::fmt::Debug for IntTensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {} in {}", self.name, self.shape, self.dtype.name(), self.file.display())
    }
}

impl IntTensorView {
    fn new(
        name: String,
        dtype: IntDType,
        shape: Vec<usize>,
        file: Arc<PathBuf>,
        mmap: Arc<MappedFile>,
        offset: usize,
    ) -> Self {
        let v = IntTensorView { name, dtype, shape, file, mmap, offset };
        assert!(v.offset + v.byte_len() <= v.mmap.len(), "IntTensorView out of range (checked by the reader)");
        v
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.offset..self.offset + self.byte_len()]
    }
    /// Error helper that names this tensor and its file.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::tensor(self.file.as_ref().clone(), self.name.clone(), msg)
    }
}

/// An opened model directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: QwenConfig,
    /// From `generation_config.json`, or the defaults when the file is absent.
    pub generation: GenerationConfig,
    /// Every float tensor of every shard, by name.
    pub tensors: BTreeMap<String, TensorView>,
    /// Every integer tensor (U8 / I8 / I32: quantized checkpoints), by name; read by `crate::quant`.
    pub int_tensors: BTreeMap<String, IntTensorView>,
    /// Every shard file opened, with its size in bytes, in the order opened.
    pub shards: Vec<(PathBuf, u64)>,
}

/// Largest safetensors JSON header accepted (the real 7B shards have headers of a few KB).
const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// One validated entry of a safetensors header: where its bytes lie in the mmap.
struct RawTensor {
    name: String,
    dtype: StoredDType,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    offset: usize,
}

fn parse_dtype(s: &str) -> Option<StoredDType> {
    match s {
        "BF16" => Some(StoredDType::Float(DType::BF16)),
        "F16" => Some(StoredDType::Float(DType::F16)),
        "F32" => Some(StoredDType::Float(DType::F32)),
        "U8" => Some(StoredDType::Int(IntDType::U8)),
        "I8" => Some(StoredDType::Int(IntDType::I8)),
        "I32" => Some(StoredDType::Int(IntDType::I32)),
        _ => None,
    }
}

/// Parse and validate the header of a mapped safetensors file. Every range is checked against
/// the data section before any `TensorView` is built.
fn parse_safetensors(path: &Path, mmap: &[u8]) -> Result<Vec<RawTensor>> {
    let file_len = mmap.len() as u64;
    let len_bytes: [u8; 8] = mmap.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        Error::bad_file(
            path,
            format!("not a safetensors file: {file_len} bytes, shorter than the 8-byte header length"),
        )
    })?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_LEN {
        return Err(Error::bad_file(
            path,
            format!("safetensors header length {n} is absurd (limit {MAX_HEADER_LEN} bytes)"),
        ));
    }
    if 8 + n > file_len {
        return Err(Error::bad_file(
            path,
            format!("safetensors header length {n} runs past the end of the file ({file_len} bytes): truncated or not safetensors"),
        ));
    }
    let data_start = 8 + n as usize;
    let data_len = mmap.len() - data_start;
    let header = std::str::from_utf8(&mmap[8..data_start])
        .map_err(|e| Error::bad_file(path, format!("safetensors header is not valid UTF-8: {e}")))?;
    let obj = match serde_json::from_str::<serde_json::Value>(header) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err(Error::bad_file(path, "safetensors header is not a JSON object")),
        Err(e) => return Err(Error::bad_file(path, format!("safetensors header is not valid JSON: {e}"))),
    };
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in &obj {
        if name == "__metadata__" {
            continue;
        }
        let terr = |msg: String| Error::tensor(path, name.as_str(), msg);
        let entry = v.as_object().ok_or_else(|| terr(format!("header entry is not an object: {}", clip(v))))?;
        let dtype_s = match entry.get("dtype") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(d) => return Err(terr(format!("field `dtype` must be a string, got {}", clip(d)))),
            None => return Err(terr("header entry has no field `dtype`".into())),
        };
        let dtype = parse_dtype(dtype_s)
            .ok_or_else(|| terr(format!("field `dtype`: unsupported dtype {dtype_s:?} (supported: BF16, F16, F32, and U8, I8, I32 for quantized weights)")))?;
        let shape_v = match entry.get("shape") {
            Some(serde_json::Value::Array(a)) => a,
            Some(s) => return Err(terr(format!("field `shape` must be a list of dimensions, got {}", clip(s)))),
            None => return Err(terr("header entry has no field `shape`".into())),
        };
        let shape_text = clip(&entry["shape"]);
        let mut shape = Vec::with_capacity(shape_v.len());
        let mut numel: usize = 1;
        for (i, d) in shape_v.iter().enumerate() {
            let d = d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or_else(|| {
                terr(format!("field `shape` {shape_text}: dimension {i} is {}, not a non-negative integer", clip(d)))
            })?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| terr(format!("field `shape` {shape_text}: the element count overflows")))?;
            shape.push(d);
        }
        let nbytes = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| terr(format!("field `shape` {shape_text}: the byte count overflows")))?;
        let offs = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| terr("header entry has no field `data_offsets` [begin, end]".into()))?;
        let (begin, end) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => {
                return Err(terr(format!(
                    "field `data_offsets` {}: not two non-negative integers",
                    clip(&entry["data_offsets"])
                )))
            }
        };
        if begin > end {
            return Err(terr(format!("field `data_offsets` [{begin}, {end}]: begin > end")));
        }
        if end > data_len as u64 {
            return Err(terr(format!(
                "field `data_offsets` [{begin}, {end}] runs past the end of the data section ({data_len} bytes): file truncated?"
            )));
        }
        if end - begin != nbytes as u64 {
            return Err(terr(format!(
                "field `data_offsets` [{begin}, {end}] holds {} bytes, but {dtype_s} {shape:?} needs {nbytes}",
                end - begin
            )));
        }
        out.push(RawTensor { name: name.clone(), dtype, shape, offset: data_start + begin as usize });
    }
    // Overlapping tensors: sort by offset and check neighbours (zero-sized tensors never overlap).
    let mut spans: Vec<(usize, usize, &str)> = out
        .iter()
        .filter(|t| t.shape.iter().product::<usize>() > 0)
        .map(|t| (t.offset, t.offset + t.shape.iter().product::<usize>() * t.dtype.size(), t.name.as_str()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(Error::tensor(path, w[1].2, format!("bytes overlap those of tensor `{}`", w[0].2)));
        }
    }
    Ok(out)
}

/// A JSON value for an error message, cut to 80 characters (a hostile header can hold megabytes).
fn clip(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Memory-map one shard read-only and validate its header.
fn open_shard(path: &Path) -> Result<(Arc<MappedFile>, Vec<RawTensor>, u64)> {
    let (file, size) = crate::files::open_regular(path)?;
    if size < 8 {
        return Err(Error::bad_file(
            path,
            format!("not a safetensors file: {size} bytes, shorter than the 8-byte header length"),
        ));
    }
    // All ranges are validated against the length mapped here; a truncation after this point is
    // caught by the map's guard (see `mapped`).
    let mmap = MappedFile::map(&file, path)?;
    let raw = parse_safetensors(path, &mmap)?;
    if let Some(what) = mmap.fault() {
        return Err(Error::bad_file(path, format!("the file {what} while its header was read")));
    }
    Ok((Arc::new(mmap), raw, size))
}

/// A shard name from the index must be a plain file name inside the model directory.
fn check_shard_name(index: &Path, name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !Path::new(name).is_absolute()
        && Path::new(name).components().count() == 1;
    if plain {
        Ok(())
    } else {
        Err(Error::bad_file(
            index,
            format!("weight_map names shard {name:?}, which is not a plain file name inside the model directory"),
        ))
    }
}

/// `weight_map` of `model.safetensors.index.json`: tensor name → shard file name.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let text = crate::files::read_json_text(index)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::bad_file(index, "missing `weight_map` object"))?;
    let mut out = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| Error::bad_file(index, format!("weight_map[{tensor:?}] is not a file name: {shard}")))?;
        check_shard_name(index, shard)?;
        out.insert(tensor.clone(), shard.to_string());
    }
    if out.is_empty() {
        return Err(Error::bad_file(index, "weight_map lists no tensors"));
    }
    Ok(out)
}

/// The message for a directory that only has PyTorch pickles.
fn pytorch_only_error(dir: &Path, found: &str) -> Error {
    Error::bad_file(
        dir.join(found),
        format!(
            "PyTorch pickle weights are not supported (they can run arbitrary code when loaded); convert the \
             directory to safetensors first, e.g.\n  python -c \"from transformers import AutoModelForCausalLM as M; \
             M.from_pretrained('{d}', trust_remote_code=True, torch_dtype='auto').save_pretrained('{d}-safetensors', \
             safe_serialization=True)\"\n(then copy config.json, generation_config.json and qwen.tiktoken along), or per file with \
             safetensors.torch.save_file(torch.load('pytorch_model.bin'), 'model.safetensors')",
            d = dir.display()
        ),
    )
}

impl Checkpoint {
    /// Open `dir`: parse the configs, map every shard, validate every header. Does not check
    /// tensors against the config (that is `weights::Weights::from_checkpoint`).
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::bad_file(dir, "not a directory (expected a Hugging Face model directory)"));
        }
        let config = QwenConfig::load(&dir.join("config.json"))?;
        let gen_path = dir.join("generation_config.json");
        let generation =
            if gen_path.exists() { GenerationConfig::load(&gen_path)? } else { GenerationConfig::default() };

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        // (shard file name, tensors the index places in it; None for a single-file model)
        let mut plan: Vec<(String, Option<Vec<String>>)> = Vec::new();
        if index_path.exists() {
            let index = read_index(&index_path)?;
            let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (tensor, shard) in index {
                by_shard.entry(shard).or_default().push(tensor);
            }
            plan.extend(by_shard.into_iter().map(|(s, t)| (s, Some(t))));
        } else if single.exists() {
            plan.push(("model.safetensors".to_string(), None));
        } else {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut bin: Option<String> = None;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".bin") || name == "pytorch_model.bin.index.json" {
                    bin = Some(bin.map_or(name.clone(), |b: String| b.min(name)));
                }
            }
            return Err(match bin {
                Some(found) => pytorch_only_error(dir, &found),
                None => Error::bad_file(
                    dir,
                    "no weights found: expected model.safetensors or model.safetensors.index.json + shards",
                ),
            });
        }

        let mut tensors: BTreeMap<String, TensorView> = BTreeMap::new();
        let mut int_tensors: BTreeMap<String, IntTensorView> = BTreeMap::new();
        let mut shards = Vec::with_capacity(plan.len());
        for (shard_name, listed) in plan {
            let path = dir.join(&shard_name);
            let (mmap, raw, size) = open_shard(&path)?;
            let file = Arc::new(path.clone());
            if let Some(listed) = listed {
                for t in &listed {
                    if !raw.iter().any(|r| &r.name == t) {
                        return Err(Error::tensor(
                            &path,
                            t.as_str(),
                            format!("listed in {} but absent from this shard", index_path.display()),
                        ));
                    }
                }
            }
            for r in raw {
                if let Some(prev) = tensors.get(&r.name) {
                    return Err(Error::tensor(
                        &path,
                        r.name.as_str(),
                        format!("duplicated: also stored in {}", prev.file.display()),
                    ));
                }
                if let Some(prev) = int_tensors.get(&r.name) {
                    return Err(Error::tensor(
                        &path,
                        r.name.as_str(),
                        format!("duplicated: also stored in {}", prev.file.display()),
                    ));
                }
                match r.dtype {
                    StoredDType::Float(d) => {
                        let view = TensorView::new(r.name.clone(), d, r.shape, file.clone(), mmap.clone(), r.offset);
                        tensors.insert(r.name, view);
                    }
                    StoredDType::Int(d) => {
                        let view = IntTensorView::new(r.name.clone(), d, r.shape, file.clone(), mmap.clone(), r.offset);
                        int_tensors.insert(r.name, view);
                    }
                }
            }
            shards.push((path, size));
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), config, generation, tensors, int_tensors, shards })
    }

    /// The named tensor, or an error naming the tensor and the directory.
    pub fn tensor(&self, name: &str) -> Result<&TensorView> {
        self.tensors.get(name).ok_or_else(|| Error::tensor(self.dir.clone(), name, "missing from the checkpoint"))
    }

    /// Path of the vocabulary file (`qwen.tiktoken`) in the directory.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("qwen.tiktoken")
    }
}
