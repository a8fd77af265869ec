//! Random-weight models in the real Qwen v1 format (config, generation config, index + shards, vocabulary).
