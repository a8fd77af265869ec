//! The real Qwen-7B configuration files, copied byte for byte from the released model repositories
//! into tests/data/qwen/ (spec §0: HF-7B@v1.1 and HF-7B-Chat@Aug, the latter in its final Aug-2023
//! form), loaded by `QwenConfig` / `GenerationConfig`: every field against the value spec §1.1,
//! §1.2, §1.3 and §5.6 give for that file (the spec is the independent reference here).
use qwen_rt::config::{GenerationConfig, QwenConfig, MAX_SEQ_LEN_LOGN};
use std::path::{Path, PathBuf};

fn real(dir: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen").join(dir).join(file)
}

/// Spec §1.1 / §1.3: the Qwen-7B architecture, the same in both releases.
fn assert_qwen_7b_architecture(c: &QwenConfig, what: &str) {
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.head_dim), (4096, 32, 32, 128), "{what}");
    assert_eq!(c.mlp_width, 11008, "{what}: MLP width = intermediate_size / 2");
    assert_eq!(c.vocab_size, 151936, "{what}");
    assert_eq!(c.proj_size(), 4096, "{what}");
    assert_eq!(c.rotary_emb_base, 10000.0, "{what}");
    assert_eq!(c.layer_norm_epsilon, 1e-6, "{what}: eps (1e-5 only in the first Aug-03 config)");
    assert!(c.use_dynamic_ntk && c.use_logn_attn, "{what}: NTK and logN are on");
    assert!(!c.tie_word_embeddings, "{what}");
    assert!(!c.bf16 && !c.fp16 && !c.fp32, "{what}: all dtype flags false = auto");
    assert_eq!(c.num_params(), 7_721_324_544, "{what}: parameter count of spec §1.3");
}

#[test]
fn qwen_7b_v1_1_config() {
    let c = QwenConfig::load(&real("Qwen-7B-v1.1", "config.json")).unwrap();
    assert_qwen_7b_architecture(&c, "v1.1");
    assert_eq!((c.seq_length, c.max_position_embeddings), (8192, 32768));
    // The model's own limit: max(32768, 8192) capped by the logN table (spec §3.2).
    assert_eq!(c.max_supported_seq_len(), MAX_SEQ_LEN_LOGN);
    assert_eq!(c.resolve_max_seq_len(None, "max_seq_len").unwrap(), 32767);
}

#[test]
fn qwen_7b_chat_aug_2023_config() {
    // Old-style keys (n_embd, n_head, n_layer, ffn_hidden_size, n_positions, padded_vocab_size).
    let path = real("Qwen-7B-Chat-2023-08", "config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"n_embd\"") && !text.contains("\"hidden_size\""), "not the Aug-2023 dialect");
    let c = QwenConfig::load(&path).unwrap();
    assert_qwen_7b_architecture(&c, "Aug-2023");
    assert_eq!((c.seq_length, c.max_position_embeddings), (2048, 6144));
    assert_eq!(c.resolve_max_seq_len(None, "max_seq_len").unwrap(), 6144);
}

#[test]
fn generation_configs() {
    // Spec §5.6. Missing fields take the Hugging Face defaults (temperature 1, penalty 1) and
    // Qwen's window 6144; the Aug-2023 leftovers (decay_bound, max_context_size, ...) are ignored.
    let base = GenerationConfig::load(&real("Qwen-7B-v1.1", "generation_config.json")).unwrap();
    let chat = GenerationConfig::load(&real("Qwen-7B-Chat-2023-08", "generation_config.json")).unwrap();
    for (g, format) in [(&base, "raw"), (&chat, "chatml")] {
        assert_eq!(g.chat_format, format);
        assert_eq!((g.eos_token_id, g.pad_token_id), (151643, 151643), "{format}");
        assert_eq!(g.stop_words_ids, vec![vec![151643]], "{format}");
        assert_eq!((g.max_new_tokens, g.max_window_size), (512, 6144), "{format}");
        assert!(g.do_sample, "{format}");
        assert_eq!((g.top_k, g.top_p), (0, 0.8), "{format}");
        assert_eq!((g.temperature, g.repetition_penalty), (1.0, 1.0), "{format}");
    }
    // Everything but the chat format is the same in the two files.
    assert_eq!(GenerationConfig { chat_format: "raw".into(), ..chat }, base);
}
