//! Place in the flow: weights → **tokenizer** → model; text ↔ ids.
//! Qwen's exact tokenizer: `qwen.tiktoken` byte-level BPE with Qwen's split regex (spec §4),
//! on tiktoken-rs. NFC normalisation first; no BOS/EOS ever added.
//!
//! Reference: Python `tiktoken==0.14.0` with the same PAT_STR, vocabulary and 208 special tokens;
//! `tests/tokenizer.rs` checks every case of `tests/data/tokenizer_cases.json` against it.
use crate::error::{Error, Result};
use base64::Engine as _;
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

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
pub const PAT_STR: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The vocabulary committed in `assets/qwen.tiktoken` (2.5 MB, sha256 = QWEN_TIKTOKEN_SHA256).
static BUILTIN_VOCAB: &[u8] = include_bytes!("../assets/qwen.tiktoken");
/// Name used in error messages about the embedded vocabulary.
const BUILTIN_NAME: &str = "<builtin assets/qwen.tiktoken>";
/// Number of `<|extra_N|>` specials (151646..=151850).
const NUM_EXTRA: u32 = VOCAB_LEN - IM_END - 1;
/// Input chunk size (bytes) for the fallback used when the split regex gives up (see `encode`).
const FALLBACK_CHUNK: usize = 1 << 16;

pub struct Tokenizer {
    /// Regular ranks + the 208 current-name specials.
    bpe: CoreBPE,
    /// Current (v1.1) special names → id: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_N|>`.
    specials: FxHashMap<String, u32>,
    /// Original Aug-2023 names → id (`<R>`, `<S>`, `<X>`, `<mask>`, `<sep>`, `<extra_N>`); lookup only.
    legacy_specials: FxHashMap<String, u32>,
}

impl Tokenizer {
    /// Load a `qwen.tiktoken` file (errors name the file and the line).
    pub fn from_file(path: &Path) -> Result<Self> {
        let data = crate::files::read_regular(path, crate::files::MAX_VOCAB_BYTES)?;
        Self::from_bytes(&data, path)
    }

    /// Parse `qwen.tiktoken` content (`base64(token) rank` per line); `source` names it in errors.
    /// Ranks must be exactly 0..151643 (any order), token byte strings unique, all 256 single bytes present.
    pub fn from_bytes(data: &[u8], source: &Path) -> Result<Self> {
        let ranks = parse_ranks(data, source)?;
        let specials = special_tokens();
        let bpe = CoreBPE::new(ranks, specials.clone(), PAT_STR)
            .map_err(|e| Error::bad_file(source, format!("cannot build the BPE: {e}")))?;
        Ok(Tokenizer { bpe, specials, legacy_specials: legacy_special_tokens() })
    }

    /// The vocabulary committed in `assets/qwen.tiktoken`, embedded in the binary. Takes ~200 ms;
    /// prefer [`Tokenizer::shared`] when one instance is enough.
    pub fn builtin() -> Self {
        // The embedded asset is fixed at build time and its sha256 is checked by tests/tokenizer.rs,
        // so this cannot fail on user input.
        Self::from_bytes(BUILTIN_VOCAB, Path::new(BUILTIN_NAME))
            .unwrap_or_else(|e| panic!("embedded qwen.tiktoken is corrupt: {e}"))
    }

    /// One process-wide builtin tokenizer, built on first use.
    pub fn shared() -> &'static Tokenizer {
        static SHARED: OnceLock<Tokenizer> = OnceLock::new();
        SHARED.get_or_init(Self::builtin)
    }

    /// Injection-safe encoding: special-token text is plain text (`allowed_special=set()`).
    ///
    /// Python tiktoken raises on a single whitespace run of ~1M characters (its regex backtracking
    /// stack overflows); there we return the encoding of the text cut into 64 KiB chunks instead of
    /// failing. [`Tokenizer::try_encode`] reports that case as an error, like the reference.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = nfc(text);
        match self.encode_nfc(&text, false) {
            Ok(ids) => ids,
            Err(_) => self.encode_chunked(&text, false),
        }
    }

    /// Special-token text (`<|im_start|>` …) becomes the special id (`allowed_special="all"`).
    /// Same fallback as [`Tokenizer::encode`] for pathological whitespace runs.
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        let text = nfc(text);
        match self.encode_nfc(&text, true) {
            Ok(ids) => ids,
            Err(_) => self.encode_chunked(&text, true),
        }
    }

    /// [`Tokenizer::encode`] that errors where the reference raises (regex backtracking limit).
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_nfc(&nfc(text), false)
    }

    /// [`Tokenizer::encode_with_special`] that errors where the reference raises.
    pub fn try_encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_nfc(&nfc(text), true)
    }

    /// Token bytes concatenated (special tokens give their text). Errors on ids >= VOCAB_LEN.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        if let Some(&bad) = ids.iter().find(|&&id| id >= VOCAB_LEN) {
            return Err(Error::invalid(format!(
                "token id {bad} is out of range (the tokenizer has {VOCAB_LEN} ids, 0..{})",
                VOCAB_LEN - 1
            )));
        }
        self.bpe
            .decode_bytes(ids)
            .map_err(|e| Error::invalid(format!("token id {} has no bytes in the vocabulary", e.token)))
    }

    /// UTF-8 with U+FFFD for invalid sequences (errors="replace").
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// `decode(..., skip_special_tokens=True)`: drops every id >= ENDOFTEXT (the reference's
    /// `i < eod_id` filter, which also drops out-of-range ids silently), then decodes lossily.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        let kept: Vec<u32> = ids.iter().copied().filter(|&id| id < ENDOFTEXT).collect();
        self.decode(&kept)
    }

    /// The special id for a surface form like `<|im_end|>` (both naming generations), if any.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.get(text).or_else(|| self.legacy_specials.get(text)).copied()
    }

    /// True for the 208 special ids (151643..151851).
    pub fn is_special(id: u32) -> bool {
        (ENDOFTEXT..VOCAB_LEN).contains(&id)
    }

    /// Encode already-NFC text; `special` = parse current special names.
    fn encode_nfc(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let allowed: HashSet<&str> =
            if special { self.specials.keys().map(String::as_str).collect() } else { HashSet::new() };
        self.bpe
            .encode(text, &allowed)
            .map(|(ids, _)| ids)
            .map_err(|e| Error::invalid(format!("text cannot be tokenized ({} bytes): {}", text.len(), e.message)))
    }

    /// Fallback for text the regex cannot split: encode ~64 KiB pieces (cut at char boundaries)
    /// independently. Only reached for inputs the reference refuses.
    fn encode_chunked(&self, text: &str, special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(FALLBACK_CHUNK);
            while !rest.is_char_boundary(cut) {
                cut -= 1; // never reaches 0: a char is at most 4 bytes and FALLBACK_CHUNK > 4
            }
            let (head, tail) = rest.split_at(cut);
            // A 64 KiB piece is far below the regex stack limit (~1M chars of one whitespace run);
            // should it still fail, its ids are dropped rather than panicking.
            if let Ok(part) = self.encode_nfc(head, special) {
                ids.extend(part);
            }
            rest = tail;
        }
        ids
    }
}

/// Unicode NFC, borrowing when the text is already normalised (the common case).
fn nfc(text: &str) -> Cow<'_, str> {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        _ => Cow::Owned(text.nfc().collect()),
    }
}

/// Parse `base64(token) rank` lines into token bytes → rank, validating everything CoreBPE assumes.
fn parse_ranks(data: &[u8], source: &Path) -> Result<FxHashMap<Vec<u8>, u32>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ranks: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
    ranks.reserve(NUM_REGULAR as usize);
    // 1-based line where each rank was defined; 0 = not yet seen
    let mut rank_line: Vec<usize> = vec![0; NUM_REGULAR as usize];
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let lineno = i + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // the reference loader skips empty lines
        }
        let bad = |msg: String| Error::bad_file(source, format!("line {lineno}: {msg}"));
        let mut fields = line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
        let (tok, rank) = match (fields.next(), fields.next(), fields.next()) {
            (Some(t), Some(r), None) => (t, r),
            (Some(_), None, _) => return Err(bad("expected `base64(token) rank`, the rank is missing".into())),
            _ => return Err(bad("expected `base64(token) rank` (2 fields)".into())),
        };
        let bytes =
            b64.decode(tok).map_err(|e| bad(format!("invalid base64 `{}`: {e}", String::from_utf8_lossy(tok))))?;
        if bytes.is_empty() {
            return Err(bad("empty token".into()));
        }
        let rank_str = std::str::from_utf8(rank).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
        let rank: u32 = rank_str
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("invalid rank `{}`", String::from_utf8_lossy(rank))))?;
        let slot = rank_line.get_mut(rank as usize).ok_or_else(|| {
            bad(format!("rank {rank} is out of range (Qwen has ranks 0..{}, contiguous)", NUM_REGULAR - 1))
        })?;
        if *slot != 0 {
            return Err(bad(format!("rank {rank} already defined on line {}", *slot)));
        }
        *slot = lineno;
        if let Some(prev) = ranks.insert(bytes, rank) {
            let prev_line = rank_line.get(prev as usize).copied().unwrap_or(0);
            return Err(bad(format!(
                "token `{tok}` already defined on line {prev_line} (rank {prev})",
                tok = String::from_utf8_lossy(tok)
            )));
        }
    }
    if let Some(missing) = rank_line.iter().position(|&l| l == 0) {
        return Err(Error::bad_file(
            source,
            format!(
                "ranks are not contiguous: rank {missing} is missing ({} tokens, expected {NUM_REGULAR})",
                ranks.len()
            ),
        ));
    }
    // byte-level BPE starts from single bytes: all 256 must be tokens (tiktoken indexes them unchecked)
    if let Some(b) = (0u8..=255).find(|b| !ranks.contains_key(&[*b][..])) {
        return Err(Error::bad_file(source, format!("single byte 0x{b:02x} is not a token")));
    }
    Ok(ranks)
}

/// The 208 specials by their current (v1.1 tiktoken) names, the ones encoding parses.
fn special_tokens() -> FxHashMap<String, u32> {
    let mut m = FxHashMap::default();
    m.insert("<|endoftext|>".to_string(), ENDOFTEXT);
    m.insert("<|im_start|>".to_string(), IM_START);
    m.insert("<|im_end|>".to_string(), IM_END);
    for i in 0..NUM_EXTRA {
        m.insert(format!("<|extra_{i}|>"), IM_END + 1 + i);
    }
    m
}

/// Original Aug-2023 names of ids 151646..151850 (lookup only, spec §4.4).
fn legacy_special_tokens() -> FxHashMap<String, u32> {
    let mut m = FxHashMap::default();
    for (i, name) in ["<R>", "<S>", "<X>", "<mask>", "<sep>"].iter().enumerate() {
        m.insert(name.to_string(), IM_END + 1 + i as u32);
    }
    for i in 0..NUM_EXTRA - 5 {
        m.insert(format!("<extra_{i}>"), IM_END + 6 + i);
    }
    m
}

/// Streaming decoder: push ids one at a time, get back text that is complete UTF-8; bytes of an
/// unfinished character are held until it completes (or `finish` flushes them lossily).
/// The concatenation of every `push` and `finish` equals `Tokenizer::decode` of all ids.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder { pending: Vec::new() }
    }

    /// Append token `id`'s bytes; returns the newly completed text (maybe empty).
    /// Errors (and changes nothing) on an id >= VOCAB_LEN.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        let bytes = tok.decode_bytes(&[id])?;
        Ok(self.push_bytes(&bytes))
    }

    /// Append raw bytes; returns the newly completed text. Bytes that can never become valid UTF-8
    /// give U+FFFD (one per maximal invalid subsequence, like `String::from_utf8_lossy`); an
    /// incomplete sequence at the end is held back.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut pos = 0;
        while pos < self.pending.len() {
            let rest = &self.pending[pos..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // from_utf8 validated rest[..valid]; the lossy call never substitutes here
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            pos += valid + n;
                        }
                        None => {
                            // incomplete trailing sequence: keep it for the next push
                            pos += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }

    /// True when bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flush the held-back bytes lossily (U+FFFD) and reset.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// The tokenizer of a model directory: the process-wide built one when the directory ships the
/// standard `qwen.tiktoken` (checked by sha256) or none at all, else one built from its file.
pub enum ModelTokenizer {
    Shared(&'static Tokenizer),
    Own(Box<Tokenizer>),
}

impl std::ops::Deref for ModelTokenizer {
    type Target = Tokenizer;
    fn deref(&self) -> &Tokenizer {
        match self {
            ModelTokenizer::Shared(t) => t,
            ModelTokenizer::Own(t) => t,
        }
    }
}

impl ModelTokenizer {
    /// Load `dir/qwen.tiktoken`; a directory without one gets the built-in Qwen vocabulary.
    pub fn for_model_dir(dir: &Path) -> Result<Self> {
        use sha2::Digest;
        let path = dir.join("qwen.tiktoken");
        if !path.exists() {
            return Ok(ModelTokenizer::Shared(Tokenizer::shared()));
        }
        let data = crate::files::read_regular(&path, crate::files::MAX_VOCAB_BYTES)?;
        let hex: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        if hex == QWEN_TIKTOKEN_SHA256 {
            Ok(ModelTokenizer::Shared(Tokenizer::shared()))
        } else {
            Ok(ModelTokenizer::Own(Box::new(Tokenizer::from_bytes(&data, &path)?)))
        }
    }
}
