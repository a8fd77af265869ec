//! Place in the flow: checkpoint → **weights** → tokenizer → model; the tensors the backends read.
//! Typed views of every Qwen v1 weight, validated against the config: present, dtype, shape.
//! Names and shapes: spec §2.2 (`nn.Linear` layout `[out, in]`, y = x·Wᵀ + b).
use crate::checkpoint::{Checkpoint, TensorView};
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
