//! Typed views of every Qwen v1 weight, validated against the config: present, dtype, shape.
//! Names and shapes: spec §2.2 (`nn.Linear` layout `[out, in]`, y = x·Wᵀ + b).
use crate::checkpoint::{Checkpoint, TensorView};
use crate::config::QwenConfig;
use crate::error::Result;

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
        let _ = ck;
        todo!("weights::Weights::from_checkpoint")
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
