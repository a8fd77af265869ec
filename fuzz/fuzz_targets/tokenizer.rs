//! The tokenizer on arbitrary input. The first byte picks the mode; every mode asserts a property,
//! not just "no panic":
//! 0 encode (specials as text): decode(encode(s)) == NFC(s), no special id, try_encode agrees
//! 1 encode_with_special: decode(ids) == NFC(s)
//! 2 decode arbitrary ids: Ok iff every id < VOCAB_LEN; lossy decode == from_utf8_lossy(decode_bytes);
//!   the streaming decoder pushed id by id == the one-shot decode; skip_special == decode(filtered)
//! 3 streaming decoder on arbitrary bytes split at arbitrary points == String::from_utf8_lossy(all)
//! 4 a `qwen.tiktoken` file from arbitrary bytes: an error, never a panic (a valid one has 151643 lines)
#![no_main]
use libfuzzer_sys::fuzz_target;
use qwen_rt::tokenizer::{StreamDecoder, Tokenizer, ENDOFTEXT, NUM_REGULAR, VOCAB_LEN};
use unicode_normalization::UnicodeNormalization;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn roundtrip(tok: &Tokenizer, s: &str, special: bool) {
    let ids = if special { tok.encode_with_special(s) } else { tok.encode(s) };
    let nfc: String = s.nfc().collect();
    let back = tok.decode(&ids).expect("encode produced an id decode refuses");
    assert_eq!(back, nfc, "decode(encode(s)) != NFC(s) (special = {special})");
    if !special {
        assert!(ids.iter().all(|&id| id < NUM_REGULAR), "special id from injection-safe encode: {ids:?}");
        if let Ok(t) = tok.try_encode(s) {
            assert_eq!(t, ids, "try_encode and encode disagree");
        }
    }
}

// Build the tokenizer / load the model before fuzzing starts: under ASan that takes seconds, and inside
// the first input it would count against -timeout.
fuzz_target!(init: { Tokenizer::shared(); }, |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let tok = Tokenizer::shared();
    match mode % 5 {
        0 => roundtrip(tok, &text(rest), false),
        1 => roundtrip(tok, &text(rest), true),
        2 => {
            // 3 bytes per id, spread over the vocabulary plus a few ids past its end.
            let ids: Vec<u32> = rest
                .chunks_exact(3)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], 0]) % (VOCAB_LEN + 8))
                .collect();
            let all_valid = ids.iter().all(|&id| id < VOCAB_LEN);
            match tok.decode_bytes(&ids) {
                Ok(bytes) => {
                    assert!(all_valid, "decode_bytes accepted an out-of-range id");
                    let one_shot = tok.decode(&ids).unwrap();
                    assert_eq!(one_shot, String::from_utf8_lossy(&bytes));
                    let mut sd = StreamDecoder::new();
                    let mut streamed = String::new();
                    for &id in &ids {
                        streamed.push_str(&sd.push(tok, id).unwrap());
                    }
                    streamed.push_str(&sd.finish());
                    assert_eq!(streamed, one_shot, "streaming decode != one-shot decode");
                    let kept: Vec<u32> = ids.iter().copied().filter(|&i| i < ENDOFTEXT).collect();
                    assert_eq!(tok.decode_skip_special(&ids).unwrap(), tok.decode(&kept).unwrap());
                }
                Err(e) => {
                    assert!(!all_valid, "decode_bytes refused valid ids: {e}");
                    assert!(e.to_string().contains("out of range"), "{e}");
                }
            }
        }
        3 => {
            // rest = [n splits][split lengths...][bytes]
            let Some((&n, rest)) = rest.split_first() else { return };
            let n = (n as usize % 16).min(rest.len());
            let (cuts, bytes) = rest.split_at(n);
            let mut sd = StreamDecoder::new();
            let mut out = String::new();
            let mut pos = 0;
            for &c in cuts {
                let end = (pos + c as usize % 8).min(bytes.len());
                out.push_str(&sd.push_bytes(&bytes[pos..end]));
                pos = end;
            }
            out.push_str(&sd.push_bytes(&bytes[pos..]));
            out.push_str(&sd.finish());
            assert!(!sd.has_pending());
            assert_eq!(out, String::from_utf8_lossy(bytes), "streaming push_bytes != from_utf8_lossy");
        }
        _ => {
            let r = Tokenizer::from_bytes(rest, std::path::Path::new("fuzz/qwen.tiktoken"));
            let e = r.err().expect("a vocabulary shorter than 151643 lines was accepted");
            assert!(e.to_string().contains("fuzz/qwen.tiktoken"), "error does not name the file: {e}");
        }
    }
});
