#!/usr/bin/env python3
"""Generate tests/data/tokenizer_cases.json: reference encodings/decodings of Qwen's tokenizer.

Run by hand from the repository root (not in CI):

    /tmp/qwen-ci-tools/py/bin/python tools/gen_tokenizer_fixtures.py

Needs: Python >= 3.9 and `pip install tiktoken==0.14.0` (nothing else). Deterministic (fixed seed).

The reference is exactly what Qwen's tokenization_qwen.py (v1.1) does: unicodedata NFC, then
tiktoken.Encoding("Qwen", PAT_STR, ranks from assets/qwen.tiktoken, 208 specials from 151643), with
`encode(s, allowed_special=set(), disallowed_special=())` (injection-safe, "ids") and
`encode(s, allowed_special="all", disallowed_special=())` ("ids_special"). Decoding fixtures use
`bytes.decode("utf-8", errors="replace")` on the concatenated token bytes.
"""
import base64
import hashlib
import json
import os
import random
import sys
import unicodedata

import tiktoken

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "assets", "qwen.tiktoken")
OUT = os.path.join(ROOT, "tests", "data", "tokenizer_cases.json")
SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
TIKTOKEN_VERSION = "0.14.0"
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIALS = [ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{i}|>" for i in range(205)]
SEED = 20230803
N_RANDOM = 150

# Spec §4.7 / §4.5 / §4.6 vectors (copied from /work/shared/spec/qwen-v1.md): the generator refuses to
# write a fixture that disagrees with the spec. Tests read the ids from the fixture, not from here.
SPEC_VECTORS = [
    ("Hello world", [9707, 1879]),
    ("\n", [198]),
    ("system", [8948]),
    ("user", [872]),
    ("assistant", [77091]),
    ("You are a helpful assistant.", [2610, 525, 264, 10950, 17847, 13]),
    ("你好", [108386]),
    ("12345", [16, 17, 18, 19, 20]),
    ("12345.678", [16, 17, 18, 19, 20, 13, 21, 22, 23]),
    ("Hello, world! 123 你好世界\n\n  foo", [9707, 11, 1879, 0, 220, 16, 17, 18, 220, 108386, 99489, 271, 220, 15229]),
    ("a  b", [64, 220, 293]),
    ("a   \n\n b", [64, 33933, 293]),
    ("I'm DON'T you'LL", [40, 2776, 44273, 17323, 498, 6, 4086]),
    ("e\u0301t\u00e9", [38783]),
    ("\U0001F600\U0001F44D\U0001F3FD", [141334, 144349, 145375]),
    ("\t\tindent\r\nx", [197, 197, 32840, 319, 87]),
    ("def f(x):\n    return x**2\n", [750, 282, 2075, 982, 262, 470, 856, 334, 17, 198]),
    ("<|im_start|>", [27, 91, 318, 4906, 91, 29]),
    ("Observation", [37763, 367]),
    ("Observation:", [37763, 367, 25]),
    ("Observation:\n", [37763, 367, 510]),
    ("Human:", [33975, 25]),
    ('print("<|endoftext|>")', [1350, 9639, 91, 8691, 723, 427, 91, 82598]),
]
SPEC_SPECIAL_VECTORS = [('print("<|endoftext|>")', [1350, 445, 151643, 899])]
SPEC_DECODE_VECTORS = [([51461], " \ufffd"), ([51461, 117], " 根")]


def load_encoding():
    data = open(VOCAB, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"{VOCAB}: sha256 {digest} != {SHA256}")
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    special = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
    enc = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=special)
    return enc, ranks


def named_strings():
    """(name, text) pairs: spec vectors first, then hand-picked categories."""
    out = [(f"spec:{i}", s) for i, (s, _) in enumerate(SPEC_VECTORS)]
    add = lambda name, s: out.append((name, s))
    # scripts
    for name, s in [
        ("cjk", "人工智能是未来的发展方向，我们需要认真学习。"),
        ("cjk_punct", "“你好！”他说：「今天天气很好」。"),
        ("cjk_trad", "繁體中文測試：臺灣、香港與澳門。"),
        ("japanese", "こんにちは、世界！カタカナとひらがなと漢字。"),
        ("japanese_halfwidth", "ｶﾀｶﾅ ﾃｽﾄ"),
        ("korean", "안녕하세요, 세계! 한국어 문장입니다."),
        ("greek", "Καλημέρα κόσμε· ΑΒΓΔ αβγδ ς σ"),
        ("cyrillic", "Привет, мир! Съешь же ещё этих мягких французских булок."),
        ("arabic", "مرحبا بالعالم! هذه جملة عربية."),
        ("hebrew", "שלום עולם, זה משפט בעברית."),
        ("hindi", "नमस्ते दुनिया! यह हिंदी वाक्य है।"),
        ("thai", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง"),
        ("vietnamese", "Tiếng Việt có dấu: ắ ằ ẳ ẵ ặ"),
        ("turkish", "İstanbul'da ılık bir gün; I ı İ i"),
        ("german", "Größenmaßstäbe für Übergrößen: straße STRASSE"),
        ("mixed_scripts", "English中文日本語한국어Русский"),
        ("math_symbols", "∀x∈ℝ: x²≥0, ∑ᵢ aᵢ = ∞ ≠ ∅"),
        ("tamil", "வணக்கம் உலகம்"),
        ("georgian_armenian", "გამარჯობა Բարեւ"),
    ]:
        add(name, s)
    # code
    for name, s in [
        ("python", 'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n'
                   '    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint(fib(10))  # 55\n'),
        ("c", '#include <stdio.h>\n\nint main(void) {\n\tint x[3] = {1, 2, 3};\n\tprintf("%d\\n", x[0] + x[2]);\n'
              '\treturn 0;\n}\n'),
        ("json", '{"name": "Qwen-7B", "vocab_size": 151936, "layers": [1, 2, 3], "nested": {"a": null, "b": true}}'),
        ("rust", 'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!("{:?}", v);\n}\n'),
        ("code_with_endoftext", 'tok = "<|endoftext|>"\nassert tok != "<|im_end|>"\n'),
        ("html", '<div class="a">Hello &amp; <b>world</b></div><!-- comment -->'),
        ("shell", "cd /tmp && ls -la | grep '\\.rs$' > out.txt 2>&1"),
        ("sql", "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%qwen%';"),
        ("regex_text", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"),
        ("markdown", "# Title\n\n- item 1\n- **bold** and `code`\n\n```python\nx = 1\n```\n"),
        ("url", "https://huggingface.co/Qwen/Qwen-7B-Chat/blob/main/tokenization_qwen.py?x=1&y=2#L42"),
    ]:
        add(name, s)
    # emoji
    for name, s in [
        ("emoji_simple", "I ❤️ Rust 🦀 and Python 🐍!"),
        ("emoji_zwj_family", "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"),
        ("emoji_zwj_profession", "\U0001F469\U0001F3FD\u200D\U0001F4BB \U0001F9D1\u200D\U0001F373"),
        ("emoji_flags", "\U0001F1E8\U0001F1F3\U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5 \U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F"),
        ("emoji_skin_tones", "👋🏻👋🏼👋🏽👋🏾👋🏿"),
        ("emoji_keycap", "1\ufe0f\u20e3 #\ufe0f\u20e3 *\ufe0f\u20e3"),
        ("emoji_text_mix", "好的😀！ok👍🏽done"),
    ]:
        add(name, s)
    # whitespace
    for name, s in [
        ("empty", ""),
        ("space", " "),
        ("two_spaces", "  "),
        ("spaces_run", "a" + " " * 17 + "b"),
        ("trailing_spaces", "end   "),
        ("leading_spaces", "   start"),
        ("tabs", "\t\ta\tb\t\t\tc\t"),
        ("space_tab", "a \tb"),
        ("crlf", "line1\r\nline2\r\n\r\nline3"),
        ("cr_only", "a\rb\r\rc"),
        ("newlines", "\n\n\n"),
        ("newline_spaces", "x\n   \n  y"),
        ("spaces_newline", "x   \ny"),
        ("nbsp", "a\u00a0b\u00a0\u00a0c \u00a0d"),
        ("ideographic_space", "中\u3000文\u3000\u3000字"),
        ("zero_width", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj"),
        ("line_sep", "a\u2028b\u2029c\u0085d"),
        ("vertical_tab_ff", "a\x0bb\x0cc"),
        ("only_whitespace_mix", " \t\n\r\u00a0\u3000 "),
        ("en_em_spaces", "a\u2002b\u2003c\u2009d\u202fe"),
    ]:
        add(name, s)
    # combining marks / NFC
    for name, s in [
        ("nfc_e_acute", "e\u0301"),
        ("nfc_cafe", "cafe\u0301 na\u0308ive"),
        ("nfc_angstrom", "\u212b \u2126 A\u030a"),
        ("nfc_reorder", "a\u0323\u0301 a\u0301\u0323 q\u0307\u0323"),
        ("nfc_hangul_jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af"),
        ("nfc_cjk_compat", "\uf900\uf901\ufa10"),
        ("nfc_vietnamese", "Vie\u0323\u0302t"),
        ("combining_no_compose", "x\u0301\u0302\u0303 \u0301leading"),
        ("nfc_already", "été naïve Å"),
        ("nfc_devanagari", "\u0915\u093c \u0958"),
        ("zalgo", "Z\u0351\u036b\u0343a\u0310\u0357l\u0304g\u0306o\u0352"),
    ]:
        add(name, s)
    # digits / numbers
    for name, s in [
        ("digits", "0123456789"),
        ("number_commas", "1,234,567.89 and -42 and 3.14e-10"),
        ("fullwidth_digits", "１２３ ４５６"),
        ("other_numbers", "½ ¾ ² ³ Ⅻ ⑤ ٣٤ ४२ 〇"),
        ("version", "v1.2.3-rc.4+build.567"),
        ("phone", "+1 (555) 012-3456"),
        ("date", "2023-08-03T12:34:56Z"),
    ]:
        add(name, s)
    # contractions
    for name, s in [
        ("contractions_lower", "it's don't we're they've I'm you'll he'd"),
        ("contractions_upper", "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D"),
        ("contractions_mixed", "It'S dOn'T wE'Re ThEy'Ve i'M yOu'Ll He'D"),
        ("contraction_alone", "'s 't 're 've 'm 'll 'd"),
        ("curly_apostrophe", "it’s don’t"),
        ("long_s", "it'ſ ſ 'ſ"),
        ("apostrophe_runs", "''s '''t rock'n'roll"),
    ]:
        add(name, s)
    # special-token look-alikes
    for name, s in [
        ("im_start", IM_START),
        ("im_end", IM_END),
        ("endoftext", ENDOFTEXT),
        ("chatml", f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n{IM_START}user\n你好{IM_END}\n{IM_START}assistant\n"),
        ("extra_0", "<|extra_0|>"),
        ("extra_204", "<|extra_204|>"),
        ("extra_205", "<|extra_205|>"),
        ("partial_im_start", "<|im_start"),
        ("partial_im_start2", "im_start|>"),
        ("partial_end", "<|endoftext"),
        ("legacy_names", "<R><S><X><mask><sep><extra_0><extra_199>"),
        ("nested_specials", "<|<|im_end|>|>"),
        ("specials_adjacent", f"{ENDOFTEXT}{ENDOFTEXT}{IM_START}{IM_END}"),
        ("special_spaces", f" {IM_START} x {IM_END} "),
        ("special_case", "<|IM_START|> <|Im_End|>"),
        ("special_in_word", f"abc{ENDOFTEXT}def"),
    ]:
        add(name, s)
    # long repeats (including pieces >= 100 bytes: tiktoken's large-merge path)
    for name, s in [
        ("repeat_a", "a" * 1000),
        ("repeat_ha", "ha" * 300),
        ("repeat_space", " " * 500),
        ("repeat_space_word", " " * 300 + "word"),
        ("repeat_newline", "\n" * 200),
        ("repeat_digits", "7" * 200),
        ("repeat_cjk", "的" * 300),
        ("repeat_emoji", "😀" * 100),
        ("repeat_dash", "-" * 250),
        ("repeat_equals_newline", "=" * 120 + "\n"),
        ("repeat_sentence", "The quick brown fox jumps over the lazy dog. " * 20),
        ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 4),
        ("repeat_byte_fallback", "\U0001F9EC" * 60),
    ]:
        add(name, s)
    # misc
    for name, s in [
        ("punct_runs", "!!! ??? ... ,,, ;;; ---> <=> !!!\n\n"),
        ("quotes", "\"double\" 'single' «guillemets» „low“"),
        ("control_chars", "a\x00b\x01c\x1fd\x7fe"),
        ("private_use", "\ue000\uf8ff\U000F0000"),
        ("noncharacters", "\ufdd0\ufffe\U0010FFFF"),
        ("replacement_char", "\ufffd bad \ufffd"),
        ("mixed_newline_punct", "end.\n\nNew paragraph!\r\n-- sig"),
        ("hashtags", "#Qwen #通义千问 @user"),
        ("single_chars", "a"), ("single_digit", "5"), ("single_cjk", "中"), ("single_punct", "."),
    ]:
        add(name, s)
    return out


# Units of the random strings: tricky for the regex (alternation order, lookahead, case-insensitive
# contractions), for NFC (combining marks, jamo) and for byte-level BPE (astral chars, rare bytes).
ALPHABET = list("abcXYZ09 ") + [
    "  ", "   ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u200b", "\u200d", "\ufeff",
    "'", "'s", "'S", "'t", "'re", "'VE", "'m", "'ll", "'D", "’", "ſ", "K", "İ", "ı",
    ".", ",", "!", "?", "-", "_", "(", ")", "{", "}", "<", ">", "|", "/", "\\", "\"", "#", "*", "=", "@",
    "<|", "|>", "im_start", "im_end", "endoftext", "extra_", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<|extra_7|>",
    "\u0301", "\u0308", "\u0323", "\u0327", "e\u0301", "A\u030a", "\u1100", "\u1161", "\u11a8", "\uf900", "\u212b",
    "中", "文", "你好", "世界", "的", "こ", "ん", "カ", "한", "국", "α", "Ω", "ж", "Я", "ب", "ש", "न", "्", "ก", "ี",
    "１", "½", "Ⅻ", "٣", "²",
    "😀", "👍", "🏽", "\U0001F468\u200d\U0001F469", "\U0001F1E8\U0001F1F3", "\ufe0f", "\u20e3", "\U0001F9EC",
    "\x00", "\x7f", "\u0085", "\u2028", "\ufffd", "\U0010fffd",
]


def random_strings(rng):
    out = []
    for i in range(N_RANDOM):
        n = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55])
        out.append((f"random:{i}", "".join(rng.choice(ALPHABET) for _ in range(n))))
    return out


def decode_cases(enc, ranks, rng):
    """Id lists whose bytes split or break UTF-8, with Python's errors="replace" result."""
    byte_id = {b[0]: r for b, r in ranks.items() if len(b) == 1}
    lists = [ids for ids, _ in SPEC_DECODE_VECTORS]
    # single-byte tokens spelling broken UTF-8
    for bs in [b"\xe6\xa0", b"\xe6\xa0\xb9", b"\xe6\xa0A", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80", b"\x80\x80",
               b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff\xfe", b"a\xe4b\xe4\xbd", b"\xf0\x9f",
               b"\xe2\x82", b"\xe2\x82\xac\xe2"]:
        lists.append([byte_id[b] for b in bs])
    # encodings of multi-byte text whose tokens split characters, cut at every prefix
    for s in ["😀👍🏽", "\U0001F9EC\U0001F9EC", "根据你好", "ก็"]:
        ids = enc.encode(s, allowed_special=set(), disallowed_special=())
        for k in range(1, len(ids) + 1):
            lists.append(ids[:k])
    # special tokens mixed in, all three generations of ids
    lists.append([151643, 151644, 151645, 151646, 151850])
    lists.append([byte_id[0xe6], 151645, byte_id[0xa0], byte_id[0xb9]])
    lists.append([])
    # random regular ids (mostly valid) and random byte tokens (mostly invalid UTF-8)
    for _ in range(20):
        lists.append([rng.randrange(151643) for _ in range(rng.randrange(1, 12))])
    for _ in range(20):
        lists.append([byte_id[rng.randrange(256)] for _ in range(rng.randrange(1, 10))])
    out = []
    for ids in lists:
        text = enc.decode_bytes(ids).decode("utf-8", errors="replace")
        out.append({"ids": ids, "text": text})
    for ids, want in SPEC_DECODE_VECTORS:
        got = enc.decode_bytes(ids).decode("utf-8", errors="replace")
        if got != want:
            sys.exit(f"spec decode vector {ids}: got {got!r}, spec says {want!r}")
    return out


def main():
    if tiktoken.__version__ != TIKTOKEN_VERSION:
        sys.exit(f"need tiktoken=={TIKTOKEN_VERSION}, have {tiktoken.__version__}")
    enc, ranks = load_encoding()
    rng = random.Random(SEED)
    strings = named_strings() + random_strings(rng)
    names = [n for n, _ in strings]
    assert len(set(names)) == len(names), "duplicate case names"

    cases = []
    for name, text in strings:
        text.encode("utf-8")  # raises on lone surrogates: they cannot round-trip through JSON/Rust
        norm = unicodedata.normalize("NFC", text)
        ids = enc.encode(norm, allowed_special=set(), disallowed_special=())
        ids_special = enc.encode(norm, allowed_special="all", disallowed_special=())
        assert enc.decode(ids) == norm, name
        case = {"name": name, "text": text, "ids": ids, "ids_special": ids_special}
        if norm != text:
            case["nfc"] = norm
        cases.append(case)

    by_name = {c["name"]: c for c in cases}
    for i, (s, want) in enumerate(SPEC_VECTORS):
        if by_name[f"spec:{i}"]["ids"] != want:
            sys.exit(f"spec vector {s!r}: tiktoken gives {by_name[f'spec:{i}']['ids']}, spec says {want}")
    for s, want in SPEC_SPECIAL_VECTORS:
        got = enc.encode(s, allowed_special="all", disallowed_special=())
        if got != want:
            sys.exit(f"spec vector (allowed_special=all) {s!r}: tiktoken gives {got}, spec says {want}")

    doc = {
        "generator": "tools/gen_tokenizer_fixtures.py",
        "tiktoken_version": tiktoken.__version__,
        "python_version": sys.version.split()[0],
        "unicodedata_version": unicodedata.unidata_version,
        "vocab_sha256": SHA256,
        "pat_str": PAT_STR,
        "seed": SEED,
        "num_spec_vectors": len(SPEC_VECTORS),
        "cases": cases,
        "decode": decode_cases(enc, ranks, rng),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("{\n")
        items = list(doc.items())
        for k, (key, val) in enumerate(items):
            sep = "," if k + 1 < len(items) else ""
            if isinstance(val, list):
                f.write(f"  {json.dumps(key)}: [\n")
                f.write(",\n".join("    " + json.dumps(v, ensure_ascii=True) for v in val))
                f.write(f"\n  ]{sep}\n")
            else:
                f.write(f"  {json.dumps(key)}: {json.dumps(val, ensure_ascii=True)}{sep}\n")
        f.write("}\n")
    # the written file must round-trip exactly
    with open(OUT, encoding="utf-8") as f:
        assert json.load(f) == doc
    print(f"wrote {OUT}: {len(cases)} cases, {len(doc['decode'])} decode cases, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
