//! Qwen's exact tokenizer: `qwen.tiktoken` byte-level BPE with Qwen's split regex (spec §4),
//! on tiktoken-rs. NFC normalisation first; no BOS/EOS ever added.
use crate::error::Result;
use std::path::Path;

/// `<|endoftext|>`: eod / eos / pad.
pub const ENDOFTEXT: u32 = 151643;
/// `<|im_start|>`
pub const IM_START: u32 = 151644;
/// `<|im_end|>`
pub const IM_END: u32 = 151645;
/// Number of regular (BPE) tokens; special tokens follow.
pub const NUM_REGULAR: u32 = 151643;
/// Total ids the tokenizer knows (regular + 208 special). Embedding rows beyond are padding.
pub const VOCAB_LEN: u32 = 151851;
/// sha256 of the one `qwen.tiktoken` every Qwen v1 release ships.
pub const QWEN_TIKTOKEN_SHA256: &str = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186";
/// Qwen's pre-tokenisation regex (spec §4.2).
pub const PAT_STR: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    // filled in by the tokenizer implementation
}

impl Tokenizer {
    /// Load a `qwen.tiktoken` file (errors name the file and the line).
    pub fn from_file(path: &Path) -> Result<Self> {
        let _ = path;
        todo!()
    }
    /// The vocabulary committed in `assets/qwen.tiktoken`, embedded in the binary.
    pub fn builtin() -> Self {
        todo!()
    }
    /// Injection-safe encoding: special-token text is plain text (`allowed_special=set()`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let _ = text;
        todo!()
    }
    /// Special-token text (`<|im_start|>` …) becomes the special id (`allowed_special="all"`).
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        let _ = text;
        todo!()
    }
    /// Token bytes concatenated (special tokens give their text). Errors on ids >= VOCAB_LEN.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let _ = ids;
        todo!()
    }
    /// UTF-8 with U+FFFD for invalid sequences (errors="replace").
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
    /// The special id for a surface form like `<|im_end|>` (both naming generations), if any.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        let _ = text;
        todo!()
    }
}

/// Streaming decoder: push ids one at a time, get back text that is complete UTF-8; bytes of an
/// unfinished character are held until it completes (or `finish` flushes them lossily).
pub struct StreamDecoder {
    pending: Vec<u8>,
}
