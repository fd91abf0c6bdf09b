#!/usr/bin/env python3
"""make_seeds.py - writes the seed corpora under tests/fuzz/corpus/ (committed;
rerun only to change them). Standard library only:
    python3 tests/fuzz/make_seeds.py
The corpus seeds start with the fuzz target's flag byte ('0': stop on a bad
line, '1': skip_bad_lines)."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes), packed in order.
    pad: spaces after the header up to a multiple of 8 (as the reference
    writer does); False: up to 1 mod 4, so no tensor is 4-byte aligned."""
    header, blobs, off = {}, [], 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h) % 8) if pad else ((1 - len(h)) % 4))
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(*xs):
    return struct.pack("<%df" % len(xs), *xs)


def i32(*xs):
    return struct.pack("<%di" % len(xs), *xs)


put("safetensors", "one_f32.safetensors",
    safetensors([("w", "F32", [2], f32(1.0, -2.5))], {"format": "pt"}))
put("safetensors", "mixed.safetensors",
    safetensors([("transformer.wte.weight", "F32", [2, 3], f32(*range(6))),
                 ("ids", "I32", [4], i32(0, 1, -1, 256)),
                 ("scalar", "F32", [], f32(3.0)),
                 ("empty", "F32", [0, 3], b""),
                 ("t4", "F32", [1, 1, 2, 1], f32(5.0, 6.0))],
                {"format": "pt", "nawal": "1"}))
put("safetensors", "empty_header.safetensors", safetensors([]))
put("safetensors", "unaligned.safetensors",
    safetensors([("a", "I32", [1], i32(7)), ("b", "F32", [2], f32(0.5, 0.25))], pad=False))

put("tokenizer", "byte.nawal", "nawal-bpe 1\nvocab 257\n")
put("tokenizer", "one_merge.nawal", "nawal-bpe 1\nvocab 258\n97 97\n")
# 257 "he", 258 "ll", 259 "hell", 260 " w", 261 "hello", 262 "aa", 263 "aaaa"
put("tokenizer", "hello.nawal",
    "nawal-bpe 1\nvocab 264\n104 101\n108 108\n257 258\n32 119\n259 111\n97 97\n262 262\n")

put("corpus", "two_docs.jsonl",
    '0{"text": "hello world"}\n{"text": "second doc\\nwith \\u00e9 and \\"quotes\\""}\n')
put("corpus", "skip_bad.jsonl",
    '1{"text": "good"}\nnot json\n[1, 2]\n{"txt": "x"}\n\n{"text": 5}\n   \n{"text": "last"}')
put("corpus", "empty_doc.jsonl", '0\n  \n{"text": ""}\r\n{"text": "a"}\n')
put("corpus", "nul_nested.jsonl",
    '0{"id": 1, "text": "a\\u0000b\\ud83d\\ude00", "meta": {"x": [1, 2.5, null, true, false]}}\n')

cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 257,
       "n_positions": 64, "n_embd": 128, "n_layer": 4, "n_head": 4, "n_inner": None,
       "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
       "initializer_range": 0.02, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
       "tie_word_embeddings": True, "bos_token_id": 256, "eos_token_id": 256,
       "torch_dtype": "float32", "nawal_tokenizer": "tokenizer.nawal"}
put("config", "nawal.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
put("config", "minimal.json",
    '{"model_type":"gpt2","n_layer":1,"n_head":1,"n_embd":8,"n_positions":16,"vocab_size":257}')
put("config", "bad_heads.json",
    '{"model_type": "gpt2", "n_layer": 2, "n_head": 3, "n_embd": 64, "n_positions": 32, '
    '"vocab_size": 50257, "activation_function": "gelu"}')
