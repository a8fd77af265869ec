//! ChatML prompts exactly as Qwen's `make_context` (spec §5.1–5.4), stop rules and the generation loop.
