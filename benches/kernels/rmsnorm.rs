//! (in progress)
use criterion::Criterion;
use qwen_rt::backend::cuda::device::Gpu;
use std::sync::Arc;

pub fn register(_c: &mut Criterion, _gpu: &Arc<Gpu>) {}
