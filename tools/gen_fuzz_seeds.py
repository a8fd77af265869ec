#!/usr/bin/env python3
"""Seed inputs for the cargo-fuzz targets in fuzz/ (stdlib only): valid examples of each target's
input format, so the fuzzers start from inputs that reach deep into the code. Writes
fuzz/seeds/<target>/seed-*; FUZZING.md says how they become the committed, minimised corpus.

    python3 tools/gen_fuzz_seeds.py
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds")
SEP = b"\n#QWENFILE#\n"
C, H, F, V = 8, 2, 12, 16


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def bf16(x):
    return struct.pack("<f", x)[2:]  # truncation is exact for these small values


def safetensors(tensors, dtype="BF16"):
    """tensors: [(name, shape)] with values (i % 7) * 0.1."""
    size = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, data, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        vals = [(i % 7) * 0.1 for i in range(n)]
        if dtype == "BF16":
            raw = b"".join(bf16(v) for v in vals)
        elif dtype == "F16":
            raw = b"".join(struct.pack("<e", v) for v in vals)
        else:
            raw = b"".join(struct.pack("<f", v) for v in vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n * size]}
        data += raw
        off += n * size
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def tensors(layers=1):
    t = [("transformer.wte.weight", [V, C])]
    for i in range(layers):
        p = f"transformer.h.{i}."
        t += [(p + "ln_1.weight", [C]), (p + "attn.c_attn.weight", [3 * C, C]), (p + "attn.c_attn.bias", [3 * C]),
              (p + "attn.c_proj.weight", [C, C]), (p + "ln_2.weight", [C]), (p + "mlp.w1.weight", [F, C]),
              (p + "mlp.w2.weight", [F, C]), (p + "mlp.c_proj.weight", [C, F])]
    return t + [("transformer.ln_f.weight", [C]), ("lm_head.weight", [V, C])]


def config(**kw):
    c = {"model_type": "qwen", "hidden_size": C, "num_attention_heads": H, "num_hidden_layers": 1,
         "kv_channels": C // H, "intermediate_size": 2 * F, "vocab_size": V, "seq_length": 4,
         "max_position_embeddings": 32, "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000}
    c.update(kw)
    return json.dumps(c).encode()


GEN = json.dumps({"chat_format": "chatml", "eos_token_id": 151643, "pad_token_id": 151643,
                  "stop_words_ids": [[151643]], "max_new_tokens": 512, "do_sample": True, "top_k": 0,
                  "top_p": 0.8, "temperature": 1.0, "repetition_penalty": 1.1, "max_window_size": 6144}).encode()


def checkpoint_seeds():
    ts = tensors()
    put("checkpoint", "single", SEP.join([config(), b"", b"", safetensors(ts)]))
    put("checkpoint", "single-gen", SEP.join([config(), GEN, b"", safetensors(ts)]))
    put("checkpoint", "f32-tied", SEP.join([config(tie_word_embeddings=True), b"", b"", safetensors(ts[:-1], "F32")]))
    put("checkpoint", "f16-aug2023", SEP.join([json.dumps({"n_embd": C, "n_head": H, "n_layer": 1,
        "ffn_hidden_size": 2 * F, "padded_vocab_size": V, "seq_length": 4}).encode(), b"", b"",
        safetensors(ts, "F16")]))
    half = len(ts) // 2
    index = {"metadata": {}, "weight_map": {n: ("s1.safetensors" if i < half else "s2.safetensors")
                                            for i, (n, _) in enumerate(ts)}}
    put("checkpoint", "sharded", SEP.join([config(), GEN, json.dumps(index).encode(),
                                           safetensors(ts[:half]), safetensors(ts[half:])]))


def tokenizer_seeds():
    texts = ["Hello, world! 你好，世界。", "<|im_start|>system\nYou are<|im_end|>\n", "  \n\n\t x = 1;\r\n",
             "e\u0301 \u212b caf\u00e9 \U0001F600 ﷺ", "'s 've 'LL 123456 ١٢٣"]
    for i, t in enumerate(texts):
        put("tokenizer", f"encode-{i}", b"\x00" + t.encode())
        put("tokenizer", f"special-{i}", b"\x01" + t.encode())
    ids = [0, 151643, 151644, 151645, 151850, 151851, 33984, 103929, 99489]
    put("tokenizer", "decode", b"\x02" + b"".join(struct.pack("<I", i)[:3] for i in ids))
    put("tokenizer", "stream", b"\x03\x05\x01\x02\x03\x01\x07" + "é你😀".encode() + b"\xff\xe4\xbd")
    put("tokenizer", "vocab", b"\x04IQ== 0\nIg== 1\nIyQ= 2\n")


def chat_seeds():
    msgs = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "<|im_end|>and 3+3?"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
         {"role": "assistant", "content": "d"}, {"role": "user", "content": "e\u0301"}],
        [{"role": "assistant", "content": "x"}],
        [],
    ]
    for i, m in enumerate(msgs):
        put("chat", f"unlimited-{i}", b"\xff\xff" + json.dumps(m, ensure_ascii=False).encode())
        put("chat", f"window40-{i}", struct.pack("<H", 40) + json.dumps(m).encode())


def c_abi_seeds():
    text = "Hello <|im_start|> 世界".encode()
    tokenize = b"\x00" + bytes([len(text)]) + text + b"\x81"
    detok = b"\x01\x04" + b"".join(struct.pack("<I", i) for i in [1, 151644, 151851, 9]) + b"\x00"
    sampling = (struct.pack("<I", 1) + struct.pack("<f", 0.7) + struct.pack("<I", 5) + struct.pack("<f", 0.9)
                + struct.pack("<f", 1.1) + struct.pack("<I", 42))
    sys = b"\x05Brief"
    session_reset = b"\x02" + sys + sampling + b"\x01" + struct.pack("<I", 1) + struct.pack("<I", 9) + b"\x00"
    session_send = b"\x02" + sys + sampling + b"\x00" + struct.pack("<I", 1) + struct.pack("<I", 9) + b"\x01\x02Hi"
    session_tokens = (b"\x02\x00" + sampling + b"\x00" + struct.pack("<I", 2) + struct.pack("<I", 9) + b"\x02\x02"
                      + struct.pack("<I", 100) + struct.pack("<I", 200))
    foreign = b"\x03" + struct.pack("<I", 0x1000) + b"\x04" + struct.pack("<I", 3)
    put("c_abi", "tokenize", tokenize)
    put("c_abi", "detokenize", detok)
    put("c_abi", "session-reset", session_reset)
    put("c_abi", "session-send", session_send)
    put("c_abi", "session-tokens", session_tokens)
    put("c_abi", "foreign-and-null", foreign + b"\x04" + struct.pack("<I", 7) + b"\x05\x00")
    put("c_abi", "mixed", tokenize + detok + session_reset + foreign)


if __name__ == "__main__":
    checkpoint_seeds()
    tokenizer_seeds()
    chat_seeds()
    c_abi_seeds()
    for t in sorted(os.listdir(ROOT)):
        print(t, len(os.listdir(os.path.join(ROOT, t))), "seeds")
