//! The CPU reference backend: the forward pass of spec §2 in plain f32, llama2.c style.
//! It is the oracle for every CUDA kernel (`cpu::rmsnorm` <-> `rmsnorm_bf16` …).
use super::LoadOptions;
use crate::checkpoint::Checkpoint;
use crate::error::Result;

pub struct CpuModel {}

impl CpuModel {
    pub fn load(ck: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let _ = (ck, opts);
        todo!()
    }
}

impl crate::model::Model for CpuModel {
    fn config(&self) -> &crate::config::QwenConfig {
        todo!()
    }
    fn backend_name(&self) -> &'static str {
        "cpu"
    }
    fn new_sequence(self: std::sync::Arc<Self>, max_seq_len: usize) -> Result<Box<dyn crate::model::Sequence>> {
        let _ = max_seq_len;
        todo!()
    }
}
