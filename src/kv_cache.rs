//! KV cache of one sequence on the CPU: post-RoPE keys and values per layer.
