//! Next-token selection with Hugging Face semantics (spec §5.6).
