//! Qwen tokenizer vs the Python reference (tiktoken 0.14.0 + Qwen's PAT_STR, NFC, 208 specials).
//! Expected ids come only from tests/data/tokenizer_cases.json (tools/gen_tokenizer_fixtures.py),
//! which also holds every spec §4.7 vector (the generator refuses to write ids that disagree with the spec).
use qwen_rt::tokenizer::{
    StreamDecoder, Tokenizer, ENDOFTEXT, IM_END, IM_START, NUM_REGULAR, PAT_STR, QWEN_TIKTOKEN_SHA256, VOCAB_LEN,
};
use qwen_rt::Error;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Deserialize)]
struct Fixture {
    generator: String,
    tiktoken_version: String,
    vocab_sha256: String,
    pat_str: String,
    num_spec_vectors: usize,
    cases: Vec<Case>,
    decode: Vec<DecodeCase>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    /// allowed_special=set()
    ids: Vec<u32>,
    /// allowed_special="all"
    ids_special: Vec<u32>,
    /// unicodedata NFC of `text`, present only when it differs
    nfc: Option<String>,
}

impl Case {
    fn normalized(&self) -> &str {
        self.nfc.as_deref().unwrap_or(&self.text)
    }
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    /// bytes.decode("utf-8", errors="replace")
    text: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Fixture {
    let path = root().join("tests/data/tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tok() -> &'static Tokenizer {
    Tokenizer::shared()
}

/// Push ids one at a time; returns (concatenation of pushes + finish, the pieces).
fn stream(tok: &Tokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut dec = StreamDecoder::new();
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).expect("in-range id")).collect();
    pieces.push(dec.finish());
    assert!(!dec.has_pending());
    (pieces.concat(), pieces)
}

#[test]
fn vocab_sha256_matches() {
    let data = std::fs::read(root().join("assets/qwen.tiktoken")).expect("assets/qwen.tiktoken");
    let digest: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, QWEN_TIKTOKEN_SHA256);
    assert_eq!(fixture().vocab_sha256, QWEN_TIKTOKEN_SHA256);
}

#[test]
fn fixture_metadata() {
    let fx = fixture();
    assert_eq!(fx.generator, "tools/gen_tokenizer_fixtures.py");
    assert_eq!(fx.tiktoken_version, "0.14.0");
    assert_eq!(fx.pat_str, PAT_STR, "fixture generated with a different regex");
    assert!(fx.cases.len() >= 250, "only {} cases", fx.cases.len());
    assert!(fx.num_spec_vectors >= 20);
    for i in 0..fx.num_spec_vectors {
        let name = format!("spec:{i}");
        assert!(fx.cases.iter().any(|c| c.name == name), "spec vector {name} missing from the fixture");
    }
    assert!(fx.cases.iter().any(|c| c.text.is_empty()), "empty string case missing");
    assert!(fx.cases.iter().any(|c| c.nfc.is_some()), "no NFC-changing case");
}

#[test]
fn encode_matches_reference() {
    let fx = fixture();
    let tok = tok();
    let mut failures = Vec::new();
    for c in &fx.cases {
        let got = tok.encode(&c.text);
        if got != c.ids {
            failures.push(format!("{} encode {:?}: got {got:?}, want {:?}", c.name, c.text, c.ids));
        }
        let got = tok.encode_with_special(&c.text);
        if got != c.ids_special {
            failures
                .push(format!("{} encode_with_special {:?}: got {got:?}, want {:?}", c.name, c.text, c.ids_special));
        }
        // the Result-returning variants agree on every ordinary input
        if tok.try_encode(&c.text).ok().as_ref() != Some(&c.ids)
            || tok.try_encode_with_special(&c.text).ok().as_ref() != Some(&c.ids_special)
        {
            failures.push(format!("{} try_encode differs", c.name));
        }
    }
    println!("encode: {}/{} cases match both ways", fx.cases.len() - failures.len(), fx.cases.len());
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn special_text_is_plain_in_encode() {
    // injection safety: no special id ever comes out of `encode`, and the fixture has cases where
    // encode_with_special does produce them (otherwise this test would prove nothing)
    let fx = fixture();
    let mut with_special = 0;
    for c in &fx.cases {
        assert!(c.ids.iter().all(|&id| id < NUM_REGULAR), "{}: special id in injection-safe ids", c.name);
        assert!(tok().encode(&c.text).iter().all(|&id| id < NUM_REGULAR), "{}", c.name);
        with_special += c.ids_special.iter().any(|&id| id >= NUM_REGULAR) as usize;
    }
    assert!(with_special >= 5, "only {with_special} cases contain special tokens");
}

#[test]
fn decode_round_trip() {
    let fx = fixture();
    let tok = tok();
    for c in &fx.cases {
        assert_eq!(tok.decode(&c.ids).unwrap(), c.normalized(), "{}", c.name);
        assert_eq!(tok.decode(&c.ids_special).unwrap(), c.normalized(), "{}", c.name);
        assert_eq!(tok.decode_bytes(&c.ids).unwrap(), c.normalized().as_bytes(), "{}", c.name);
    }
    println!("decode round trip: {} cases", fx.cases.len());
}

#[test]
fn decode_matches_reference() {
    let fx = fixture();
    let tok = tok();
    assert!(fx.decode.iter().any(|d| d.text.contains('\u{FFFD}')), "no lossy decode case");
    for d in &fx.decode {
        assert_eq!(tok.decode(&d.ids).unwrap(), d.text, "ids {:?}", d.ids);
    }
    println!("decode: {}/{} reference cases match", fx.decode.len(), fx.decode.len());
}

#[test]
fn decode_skip_special_drops_specials() {
    let fx = fixture();
    let tok = tok();
    let mut checked = 0;
    for c in fx.cases.iter().filter(|c| c.ids_special.iter().any(|&id| id >= ENDOFTEXT)) {
        let regular: Vec<u32> = c.ids_special.iter().copied().filter(|&id| id < ENDOFTEXT).collect();
        let got = tok.decode_skip_special(&c.ids_special).unwrap();
        assert_eq!(got, tok.decode(&regular).unwrap(), "{}", c.name);
        checked += 1;
    }
    assert!(checked > 0);
    // ids beyond the vocabulary are filtered like specials (reference: `i < eod_id`)
    assert_eq!(tok.decode_skip_special(&[VOCAB_LEN + 5, ENDOFTEXT]).unwrap(), "");
}

#[test]
fn stream_decoder_equals_decode() {
    let fx = fixture();
    let tok = tok();
    let mut lists: Vec<&[u32]> = Vec::new();
    for c in &fx.cases {
        lists.push(&c.ids);
        lists.push(&c.ids_special);
    }
    for d in &fx.decode {
        lists.push(&d.ids);
    }
    let mut held_back = 0;
    for ids in &lists {
        let want = tok.decode(ids).unwrap();
        let (got, pieces) = stream(tok, ids);
        assert_eq!(got, want, "ids {ids:?}");
        // never half a character: a text that decodes cleanly never shows U+FFFD mid-stream
        if !want.contains('\u{FFFD}') {
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "ids {ids:?}: pieces {pieces:?}");
        }
        // some token ended inside a character: its push returned less than the token's own text
        held_back += ids.iter().zip(&pieces).any(|(&id, p)| p.as_bytes() != tok.decode_bytes(&[id]).unwrap()) as usize;
    }
    assert!(held_back > 10, "only {held_back} id lists split a character; the test would be weak");
    println!("stream decoder: {} id lists equal decode ({held_back} split a character)", lists.len());
}

#[test]
fn stream_decoder_split_character_spec_vector() {
    // spec §4.6: [51461] → " �", [51461, 117] → " 根"; found in the fixture by text, not typed as ids
    let fx = fixture();
    let tok = tok();
    let d = fx.decode.iter().find(|d| d.text == " 根" && d.ids.len() == 2).expect("fixture has the \" 根\" case");
    let first = fx.decode.iter().find(|p| p.ids.len() == 1 && p.ids[0] == d.ids[0]).expect("prefix case");
    assert_eq!(first.text, " \u{FFFD}");
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.push(tok, d.ids[0]).unwrap(), " ", "the incomplete character must be held back");
    assert!(dec.has_pending());
    assert_eq!(dec.push(tok, d.ids[1]).unwrap(), "根");
    assert_eq!(dec.finish(), "");
}

#[test]
fn stream_decoder_bytes() {
    let mut dec = StreamDecoder::new();
    // a byte that can never start or continue UTF-8 is replaced at once, not held
    assert_eq!(dec.push_bytes(b"a\xff"), String::from_utf8_lossy(b"a\xff"));
    assert!(!dec.has_pending());
    // an incomplete 4-byte sequence is held, then broken by ASCII: same result as the lossy whole
    let whole: &[u8] = b"\xf0\x9f\x98A\xe2\x82";
    let mut out = String::new();
    for b in whole {
        out.push_str(&dec.push_bytes(&[*b]));
    }
    assert!(dec.has_pending(), "the trailing incomplete sequence is held");
    out.push_str(&dec.finish());
    assert_eq!(out, String::from_utf8_lossy(whole));
}

#[test]
fn out_of_range_ids_are_errors() {
    let tok = tok();
    for bad in [VOCAB_LEN, VOCAB_LEN + 84, u32::MAX] {
        for res in [tok.decode_bytes(&[1, bad]).map(|_| ()), tok.decode(&[bad]).map(|_| ())] {
            match res {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(&bad.to_string()), "{msg}"),
                other => panic!("id {bad}: expected InvalidArgument, got {other:?}"),
            }
        }
        let mut dec = StreamDecoder::new();
        assert!(dec.push(tok, bad).is_err());
    }
    // the last special id decodes to its current name
    assert_eq!(tok.decode(&[VOCAB_LEN - 1]).unwrap(), "<|extra_204|>");
}

#[test]
fn special_ids_both_generations() {
    let tok = tok();
    assert_eq!(tok.special_id("<|endoftext|>"), Some(ENDOFTEXT));
    assert_eq!(tok.special_id("<|im_start|>"), Some(IM_START));
    assert_eq!(tok.special_id("<|im_end|>"), Some(IM_END));
    for i in 0..205u32 {
        let name = format!("<|extra_{i}|>");
        let id = IM_END + 1 + i;
        assert_eq!(tok.special_id(&name), Some(id));
        // encode_with_special parses every current name; decode gives it back
        assert_eq!(tok.encode_with_special(&name), vec![id], "{name}");
        assert_eq!(tok.decode(&[id]).unwrap(), name);
    }
    // Aug-2023 names: lookup only (spec §4.4)
    for (i, name) in ["<R>", "<S>", "<X>", "<mask>", "<sep>"].iter().enumerate() {
        assert_eq!(tok.special_id(name), Some(IM_END + 1 + i as u32), "{name}");
        assert!(tok.encode_with_special(name).iter().all(|&id| id < NUM_REGULAR), "{name} must not parse");
    }
    for i in 0..200u32 {
        assert_eq!(tok.special_id(&format!("<extra_{i}>")), Some(IM_END + 6 + i));
    }
    assert_eq!(tok.special_id("<extra_199>"), Some(VOCAB_LEN - 1));
    for bad in ["<|extra_205|>", "<extra_200>", "<|im_start", "", "im_start", "<|IM_START|>"] {
        assert_eq!(tok.special_id(bad), None, "{bad}");
    }
    assert!(Tokenizer::is_special(ENDOFTEXT) && Tokenizer::is_special(VOCAB_LEN - 1));
    assert!(!Tokenizer::is_special(NUM_REGULAR - 1) && !Tokenizer::is_special(VOCAB_LEN));
}

#[test]
fn from_file_matches_builtin() {
    let path = root().join("assets/qwen.tiktoken");
    let t0 = Instant::now();
    let file_tok = Tokenizer::from_file(&path).expect("load assets/qwen.tiktoken");
    println!("from_file build: {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    let fx = fixture();
    for c in fx.cases.iter().take(60) {
        assert_eq!(file_tok.encode(&c.text), c.ids, "{}", c.name);
        assert_eq!(file_tok.encode_with_special(&c.text), c.ids_special, "{}", c.name);
    }
    assert!(std::ptr::eq(Tokenizer::shared(), Tokenizer::shared()));
}

// ---- malformed vocabulary files ----

/// The first `n` lines of the real vocabulary (ranks 0..n).
fn real_lines(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("assets/qwen.tiktoken")).unwrap();
    text.lines().take(n).map(str::to_string).collect()
}

fn load_err(dir: &Path, name: &str, content: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    match Tokenizer::from_file(&path) {
        Ok(_) => panic!("{name}: malformed vocabulary accepted"),
        Err(e) => {
            match &e {
                Error::BadFile { path: p, .. } => assert_eq!(p, &path, "{name}: error names another file"),
                other => panic!("{name}: expected BadFile, got {other:?}"),
            }
            (path.clone(), e.to_string())
        }
    }
}

#[test]
fn malformed_vocab_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let good = real_lines(NUM_REGULAR as usize);
    assert_eq!(good.len(), NUM_REGULAR as usize);

    let mut v = good[..4].to_vec();
    v[1] = "!!!notbase64 1".into();
    let (path, msg) = load_err(dir, "bad_b64.tiktoken", &v.join("\n"));
    assert!(msg.contains(&path.display().to_string()) && msg.contains("line 2") && msg.contains("base64"), "{msg}");

    let mut v = good[..4].to_vec();
    v[2] = v[2].split(' ').next().unwrap().to_string();
    let (_, msg) = load_err(dir, "missing_rank.tiktoken", &v.join("\n"));
    assert!(msg.contains("line 3") && msg.contains("rank is missing"), "{msg}");

    let mut v = good[..4].to_vec();
    v[3] = format!("{} x12", v[3].split(' ').next().unwrap());
    let (_, msg) = load_err(dir, "bad_rank.tiktoken", &v.join("\n"));
    assert!(msg.contains("line 4") && msg.contains("invalid rank"), "{msg}");

    let mut v = good[..4].to_vec();
    v[0] = format!("{} extra", v[0]);
    let (_, msg) = load_err(dir, "three_fields.tiktoken", &v.join("\n"));
    assert!(msg.contains("line 1"), "{msg}");

    // duplicate rank: line 3 reuses the rank of line 2
    let mut v = good[..4].to_vec();
    let rank1 = v[1].split(' ').nth(1).unwrap().to_string();
    v[2] = format!("{} {rank1}", v[2].split(' ').next().unwrap());
    let (_, msg) = load_err(dir, "dup_rank.tiktoken", &v.join("\n"));
    assert!(msg.contains("line 3") && msg.contains("already defined on line 2"), "{msg}");

    // duplicate token bytes with a new rank
    let mut v = good[..4].to_vec();
    v[3] = format!("{} 3", v[0].split(' ').next().unwrap());
    let (_, msg) = load_err(dir, "dup_token.tiktoken", &v.join("\n"));
    assert!(msg.contains("line 4") && msg.contains("already defined on line 1"), "{msg}");

    // rank beyond the Qwen range
    let mut v = good[..4].to_vec();
    v[2] = format!("{} {NUM_REGULAR}", v[2].split(' ').next().unwrap());
    let (_, msg) = load_err(dir, "rank_range.tiktoken", &v.join("\n"));
    assert!(msg.contains("line 3") && msg.contains("out of range"), "{msg}");

    // non-contiguous ranks: the full file with one line removed
    let mut v = good.clone();
    let removed = v.remove(1000);
    let missing_rank = removed.split(' ').nth(1).unwrap().to_string();
    let (_, msg) = load_err(dir, "gap.tiktoken", &v.join("\n"));
    assert!(msg.contains("not contiguous") && msg.contains(&format!("rank {missing_rank} is missing")), "{msg}");

    // a truncated file is not contiguous either
    let (_, msg) = load_err(dir, "short.tiktoken", &good[..300].join("\n"));
    assert!(msg.contains("not contiguous"), "{msg}");

    // the full file round-trips through from_file with CRLF line ends and a trailing blank line
    let path = dir.join("crlf.tiktoken");
    std::fs::write(&path, good.join("\r\n") + "\r\n\r\n").unwrap();
    let t = Tokenizer::from_file(&path).expect("CRLF vocabulary");
    let fx = fixture();
    let c = &fx.cases[9];
    assert_eq!(t.encode(&c.text), c.ids);
}

#[test]
fn missing_vocab_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_such_qwen.tiktoken");
    match Tokenizer::from_file(&path) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
        Err(e) => panic!("expected Io error, got {e:?}"),
        Ok(_) => panic!("missing file accepted"),
    }
}

#[test]
fn huge_whitespace_run_does_not_panic() {
    // Python tiktoken raises here ("Max stack size exceeded for backtracking"); try_encode errors
    // like it, encode falls back to chunks and still round-trips.
    let text = " ".repeat(1_200_000) + "x";
    let tok = tok();
    assert!(tok.try_encode(&text).is_err(), "expected the reference's regex failure");
    let ids = tok.encode(&text);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let ids = tok.encode_with_special(&text);
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn encode_speed_sanity() {
    let fx = fixture();
    let tok = tok();
    let (mut text, mut want) = (String::new(), String::new());
    while text.len() < 1 << 20 {
        for c in fx.cases.iter().filter(|c| !c.name.starts_with("random")) {
            text.push_str(&c.text);
            text.push('\n');
            want.push_str(c.normalized());
            want.push('\n');
        }
    }
    let t0 = Instant::now();
    let ids = tok.encode(&text);
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "encode {} bytes → {} tokens in {:.1} ms ({:.1} MB/s)",
        text.len(),
        ids.len(),
        dt * 1e3,
        text.len() as f64 / dt / 1e6
    );
    assert!(tok.decode(&ids).unwrap() == want, "1 MB text does not round-trip");
    assert!(dt < 10.0, "encoding 1 MB took {dt:.1} s");
    // already-NFC input skips the normalisation copy
    let t0 = Instant::now();
    let ids_nfc = tok.encode(&want);
    println!("encode of the NFC text: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert_eq!(ids_nfc, ids);
}
