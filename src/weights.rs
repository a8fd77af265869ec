//! Place in the flow: checkpoint → **weights** → tokenizer → model; the tensors the backends read.
//! Typed views of every Qwen v1 weight, validated against the config: present, dtype, shape.
//! Names and shapes: spec §2.2 (`nn.Linear` layout `[out, in]`, y = x·Wᵀ + b).
use crate::checkpoint::{Checkpoint, DType, TensorView};
use crate::config::QwenConfig;
use crate::error::{Error, Result};

/// One transformer block. C hidden, P = H*D projection width, F mlp width.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `transformer.h.{i}.ln_1.weight` [C]
    pub ln_1: TensorView,
    /// `transformer.h.{i}.attn.c_attn.weight` [3P, C]: rows Q | K | V, head h at rows D*h..D*h+D of each
    pub c_attn_w: TensorView,
    /// `transformer.h.{i}.attn.c_attn.bias` [3P]
    pub c_attn_b: TensorView,
    /// `transformer.h.{i}.attn.c_proj.weight` [C, P]
    pub c_proj: TensorView,
    /// `transformer.h.{i}.ln_2.weight` [C]
    pub ln_2: TensorView,
    /// `transformer.h.{i}.mlp.w1.weight` [F, C]: "up", the linear branch
    pub w1: TensorView,
    /// `transformer.h.{i}.mlp.w2.weight` [F, C]: the gate, goes through SiLU
    pub w2: TensorView,
    /// `transformer.h.{i}.mlp.c_proj.weight` [C, F]: down
    pub mlp_c_proj: TensorView,
}

#[derive(Clone, Debug)]
pub struct Weights {
    pub config: QwenConfig,
    /// `transformer.wte.weight` [V, C]
    pub wte: TensorView,
    pub layers: Vec<LayerWeights>,
    /// `transformer.ln_f.weight` [C]
    pub ln_f: TensorView,
    /// `lm_head.weight` [V, C] (the wte view when `tie_word_embeddings`)
    pub lm_head: TensorView,
}

impl Weights {
    /// Resolve and validate every tensor the forward pass needs.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let cfg = &ck.config;
        let (c, p, f, v) = (cfg.hidden_size, cfg.proj_size(), cfg.mlp_width, cfg.vocab_size);
        // Tensors of layers the config does not have: the config disagrees with the weights.
        for (name, t) in &ck.tensors {
            if let Some(layer) = layer_index(name) {
                if layer >= cfg.num_layers {
                    return Err(t.error(format!(
                        "belongs to layer {layer}, but config.json says num_hidden_layers = {} (config and weights disagree)",
                        cfg.num_layers
                    )));
                }
            }
        }
        let get = |name: &str, shape: &[usize]| -> Result<TensorView> { checked(ck, name, shape) };
        let wte = get("transformer.wte.weight", &[v, c])?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let n = |s: &str| format!("transformer.h.{i}.{s}");
                Ok(LayerWeights {
                    ln_1: get(&n("ln_1.weight"), &[c])?,
                    c_attn_w: get(&n("attn.c_attn.weight"), &[3 * p, c])?,
                    c_attn_b: get(&n("attn.c_attn.bias"), &[3 * p])?,
                    c_proj: get(&n("attn.c_proj.weight"), &[c, p])?,
                    ln_2: get(&n("ln_2.weight"), &[c])?,
                    w1: get(&n("mlp.w1.weight"), &[f, c])?,
                    w2: get(&n("mlp.w2.weight"), &[f, c])?,
                    mlp_c_proj: get(&n("mlp.c_proj.weight"), &[c, f])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = get("transformer.ln_f.weight", &[c])?;
        // Tied embeddings: the output projection is wte itself (as HF ties them), whether or not
        // the file also stores an `lm_head.weight`.
        let lm_head = if cfg.tie_word_embeddings { wte.clone() } else { get("lm_head.weight", &[v, c])? };
        Ok(Weights { config: cfg.clone(), wte, layers, ln_f, lm_head })
    }

    /// Total bytes of all weights as stored.
    pub fn byte_len(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.ln_1, &l.c_attn_w, &l.c_attn_b, &l.c_proj, &l.ln_2, &l.w1, &l.w2, &l.mlp_c_proj]
                    .iter()
                    .map(|t| t.byte_len())
                    .sum::<usize>()
            })
            .sum();
        let head = if self.config.tie_word_embeddings { 0 } else { self.lm_head.byte_len() };
        self.wte.byte_len() + l + self.ln_f.byte_len() + head
    }
}

/// `transformer.h.{L}.…` → L (None for other names or a non-numeric L).
fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("transformer.h.")?;
    rest.split('.').next()?.parse().ok()
}

/// The named float tensor with exactly `shape`, or an error naming tensor, file, expected and
/// actual shape (and saying so when the checkpoint is quantized: `quant::QuantWeights` reads those).
pub(crate) fn checked(ck: &Checkpoint, name: &str, shape: &[usize]) -> Result<TensorView> {
    let t = ck.tensors.get(name).ok_or_else(|| {
        let gptq = name.strip_suffix(".weight").map(|b| format!("{b}.qweight"));
        if let Some(q) = ck.int_tensors.get(name).or_else(|| gptq.and_then(|g| ck.int_tensors.get(&g))) {
            return q.error(format!(
                "stored quantized ({} {:?}): this loader reads float weights only; quantized checkpoints \
                 are read by quant::QuantWeights",
                q.dtype.name(),
                q.shape
            ));
        }
        Error::tensor(ck.dir.clone(), name, format!("missing from the checkpoint (expected shape {shape:?})"))
    })?;
    if t.shape != shape {
        return Err(t.error(format!("shape {:?} {}, expected {shape:?} from config.json", t.shape, t.dtype.name())));
    }
    Ok(t.clone())
}

impl Weights {
    /// Every tensor view the forward pass reads (lm_head again when tied: cheap, and harmless).
    pub fn views(&self) -> impl Iterator<Item = &TensorView> {
        let layers = self.layers.iter().flat_map(|l| {
            [&l.ln_1, &l.c_attn_w, &l.c_attn_b, &l.c_proj, &l.ln_2, &l.w1, &l.w2, &l.mlp_c_proj].into_iter()
        });
        std::iter::once(&self.wte).chain(layers).chain([&self.ln_f, &self.lm_head])
    }

    /// Err naming the tensor and file when a weight file faulted (was truncated or failed to read) while
    /// mapped: whatever was computed from the weights since is garbage. Call after every read of the
    /// maps (a CPU forward pass); one atomic load and one fstat per run of tensors in the same file.
    pub fn check_mapped(&self) -> Result<()> {
        let mut last: Option<&TensorView> = None;
        for t in self.views() {
            // Neighbouring tensors mostly share a file: one check (an fstat) per run of them.
            if !last.is_some_and(|l| l.shares_map(t)) {
                t.check_mapped()?;
                last = Some(t);
            }
        }
        Ok(())
    }
}

/// Check weights as they are read: `bytes` are elements `first..` of `t` (its little-endian stored
/// values). Err naming the tensor, its file, the element and its value when one is NaN or ±inf, or when
/// the map faulted while the bytes were read (`TensorView::check_mapped`). The one finiteness check of
/// the crate: the page-in ([`page_in`]) and the CUDA upload call it on every chunk they read.
pub fn check_finite(t: &TensorView, first: usize, bytes: &[u8]) -> Result<()> {
    // Exponent-all-ones masks: such a value is inf (mantissa 0) or NaN.
    fn find(bytes: &[u8], es: usize, mask: u32) -> Option<usize> {
        let bad = |c: &[u8]| -> bool {
            let bits = if es == 2 {
                u16::from_le_bytes([c[0], c[1]]) as u32
            } else {
                u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            };
            bits & mask == mask
        };
        // Blocks of 4 KiB without early exit (vectorises); the element is located in the bad block only.
        for (bi, block) in bytes.chunks(4096).enumerate() {
            if block.chunks_exact(es).fold(false, |acc, c| acc | bad(c)) {
                let i = block.chunks_exact(es).position(bad)?;
                return Some(bi * 4096 / es + i);
            }
        }
        None
    }
    let es = t.dtype.size();
    #[allow(unreachable_patterns)]
    let mask = match t.dtype {
        DType::BF16 => 0x7f80,
        DType::F16 => 0x7c00,
        DType::F32 => 0x7f80_0000,
        _ => 0, // integer dtypes (if added): every value is finite
    };
    let found = if mask == 0 { None } else { find(bytes, es, mask) };
    t.check_mapped()?;
    if let Some(i) = found {
        let mut v = [0f32];
        crate::checkpoint::decode_f32(&bytes[i * es..(i + 1) * es], t.dtype, &mut v);
        let at = first + i;
        let place = match t.shape[..] {
            [_, cols] if cols > 0 => format!("element {at} (row {}, column {})", at / cols, at % cols),
            _ => format!("element {at}"),
        };
        return Err(t.error(format!("{place} is {} (weights must be finite numbers)", v[0])));
    }
    Ok(())
}

/// Read every byte of `tensors` once (pages their maps in), checking each value with [`check_finite`];
/// `progress` gets the byte count of each chunk read (for a progress bar).
pub fn page_in<'a>(tensors: impl IntoIterator<Item = &'a TensorView>, mut progress: impl FnMut(u64)) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    for t in tensors {
        let es = t.dtype.size();
        let per = (CHUNK / es) * es;
        for (i, chunk) in t.bytes().chunks(per).enumerate() {
            check_finite(t, i * (per / es), chunk)?;
            progress(chunk.len() as u64);
        }
    }
    Ok(())
}
