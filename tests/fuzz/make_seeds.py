#!/usr/bin/env python3
"""make_seeds.py - writes the seed corpora under tests/fuzz/corpus/ (committed;
rerun only to change them). Standard library only:
    python3 tests/fuzz/make_seeds.py
The corpus seeds start with the fuzz target's flag byte ('0': stop on a bad
line, '1': skip_bad_lines); the messages seeds with their MsgType byte; the
delta seeds are delta frames (their zstd frames of raw blocks, written here)
and encoder material (see fuzz_delta.c); the patch seeds model patches of
fuzz_patch.c's from model and patch material."""
import hashlib
import json
import math
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


# --- protobuf messages of nawal.proto, encoded by hand (no protobuf module) ---
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def pv(num, v):  # varint field (uint32/uint64/bool/enum)
    return varint(num << 3) + varint(v)


def pb(num, data):  # length-delimited field (bytes/string/message)
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def pf(num, x):  # float
    return varint(num << 3 | 5) + struct.pack("<f", x)


def pd(num, x):  # double
    return varint(num << 3 | 1) + struct.pack("<d", x)


KEY = bytes(range(1, 33))
CID = bytes(range(0xA0, 0xC0))
dp = pv(1, 1) + pf(2, 1.1) + pf(3, 1.0) + pf(4, 0.01) + pd(5, 8.0) + pd(6, 1e-5)
train = pv(1, 200) + pf(2, 1e-3) + pv(3, 12) + pb(4, dp) + pf(5, 0.1)
MESSAGES = {
    1: ("hello", pv(1, 1) + pb(2, "nawal-agent 0.1") + pb(3, KEY)),
    2: ("challenge", pb(1, bytes(range(32))) + pv(2, 1750000030000)),
    3: ("auth", pb(1, bytes(range(32)))),
    4: ("round_announce", pv(1, 7) + pb(2, CID) + pv(3, 1 << 32) + pb(4, train) + pv(5, 1750000600000)
        + pv(6, 10**15) + pv(7, 8) + pv(8, 3)),
    5: ("join", pv(1, 7) + pv(2, 5 * 10**12)),
    6: ("blob_request", pb(1, CID) + pv(2, 1 << 20)),
    7: ("blob_chunk", pb(1, CID) + pv(2, 0) + pb(3, bytes(range(256)) * 2) + pv(4, 3 << 20)),
    8: ("update_submit", pv(1, 7) + pb(2, CID) + pv(3, 9600) + pb(4, pf(1, 2.5) + pf(2, 2.7) + pd(3, 12345.0))
        + pd(5, 0.75) + pb(6, CID[::-1]) + pv(7, 123456)),
    9: ("ack", pv(1, 42) + pb(2, "stored")),
    10: ("error", pv(1, 4) + pb(2, "sequence 3 is not after 5")),
    11: ("round_result", pv(1, 7) + pb(2, CID) + pb(3, KEY) + pb(3, KEY[::-1])
         + pb(4, pb(1, KEY) + pv(2, 6 * 10**14)) + pb(4, pb(1, KEY[::-1]) + pv(2, 4 * 10**14))),
    12: ("evaluate_request", pv(1, 7) + pb(2, CID)),
    13: ("evaluate_result", pv(1, 7) + pb(2, CID) + pf(3, 3.25) + pv(4, 65536)),
    14: ("heartbeat", pv(1, 1750000000000)),
}
# messages target: byte 0 is the MsgType
for t, (name, body) in MESSAGES.items():
    put("messages", "%02d_%s.bin" % (t, name), bytes([t]) + body)
put("messages", "14_unknown_fields.bin", bytes([14]) + pv(1, 5) + pv(100, 7) + pb(101, "future") + pd(102, 1.5))
put("messages", "15_unknown_type.bin", bytes([15]) + pv(1, 1))
# an EvaluateResult the coordinator refuses (NaN loss, no tokens) still decodes and re-encodes the same
put("messages", "13_evaluate_result_nan.bin", bytes([13]) + pv(1, 7) + pb(2, CID) + pf(3, float("nan")) + pv(4, 0))
put("messages", "04_bad_wire_type.bin", bytes([4]) + pv(1, 7) + b"\x0f\x01")

# envelope target: envelopes (the signature cannot be made here without a
# crypto library, so they are refused at the signature check; the target
# also seals inputs itself to reach the later checks), plus inputs laid out
# for its sealing half: type, sequence (u64 LE), clock offset (s16 LE, x16 ms),
# byte to alter (u16 LE), payload.
def envelope(t, body, seq=1, ts=1750000000000, version=1, sender=KEY, sig=bytes(64)):
    return pv(1, version) + pb(2, sender) + pv(3, t) + pv(4, seq) + pv(5, ts) + pb(6, body) + pb(7, sig)


put("envelope", "heartbeat.env", envelope(14, MESSAGES[14][1]))
put("envelope", "blob_chunk.env", envelope(7, MESSAGES[7][1], seq=9))
put("envelope", "old_version.env", envelope(1, MESSAGES[1][1], version=0))
put("envelope", "unknown_type.env", envelope(99, b"\x08\x01"))
put("envelope", "extra_field.env", envelope(9, MESSAGES[9][1]) + pv(20, 3) + pb(21, "x"))
put("envelope", "seal_join.bin",
    bytes([5]) + struct.pack("<QhH", 3, -100, 40) + MESSAGES[5][1])
put("envelope", "seal_round_result.bin",
    bytes([11]) + struct.pack("<QhH", 1 << 40, 2000, 7) + MESSAGES[11][1])

# delta target (fuzz_delta.c): frames of proto/delta_codec.h, their payload in
# a zstd frame made of raw (stored) blocks, which needs no zstd module; plus
# inputs laid out for its encoder half: mode byte, block byte, floats.
def zstd_raw(data):
    out = bytearray(b"\x28\xb5\x2f\xfd")          # magic
    out += bytes([0xA0]) + struct.pack("<I", len(data))  # single segment, 4-byte content size
    blocks = [data[i:i + 65536] for i in range(0, len(data), 65536)] or [b""]
    for i, b in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        out += struct.pack("<I", len(b) << 3 | last)[:3] + b  # raw block
    return bytes(out)


def f32bits(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def delta_frame(mode, values, n, ratio, block, payload, trailing=b""):
    k = n if mode == 0 else math.ceil(f32bits(ratio) * n)
    head = b"NWDC" + bytes([1, mode, values, 0]) + struct.pack("<QQfI", n, k, ratio, block)
    return head + zstd_raw(payload) + trailing, k


def planes(raw_values, width):
    """per-entry little-endian values of `width` bytes, as byte planes"""
    return b"".join(bytes((v >> (8 * b)) & 0xFF for v in raw_values) for b in range(width))


def gaps(indices):
    return b"".join(varint(i - (indices[j - 1] if j else 0)) for j, i in enumerate(indices))


def f32u(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


frame, _ = delta_frame(0, 0, 8, 1.0, 0, planes([f32u(x) for x in (1, -2, 0.5, 0, -0.0, 3e-3, 1e-20, 7)], 4))
put("delta", "dense_f32.bin", frame)
frame, _ = delta_frame(0, 1, 5, 1.0, 0, planes([0x3C00, 0xC100, 0x0001, 0x7BFF, 0x8000], 2))
put("delta", "dense_f16.bin", frame)
frame, _ = delta_frame(0, 2, 300, 1.0, 256,
                       struct.pack("<2f", 0.01, 0.5) + bytes(((i * 37) % 255 - 127) & 0xFF for i in range(300)))
put("delta", "dense_i8.bin", frame)
idx = [3, 130, 400, 401, 999]
frame, _ = delta_frame(1, 1, 1000, 0.005, 0, planes([0x3C00, 0xC100, 0x0001, 0x7BFF, 0x8000], 2) + gaps(idx))
put("delta", "topk_f16.bin", frame)
idx = [0, 1, 2, 77, 128, 129, 500, 640, 998, 999]
frame, _ = delta_frame(1, 2, 1000, 0.01, 4,
                       struct.pack("<3f", 0.5, 0.25, 1.0) + bytes([127, 255, 3, 0, 129, 1, 2, 3, 4, 5]) + gaps(idx))
put("delta", "topk_i8.bin", frame)
n = 100000
frame, k = delta_frame(1, 0, n, 1e-4, 0, b"")
idx = [i * 9000 + 17 for i in range(k)]
frame, _ = delta_frame(1, 0, n, 1e-4, 0, planes([f32u(0.001 * (i + 1)) for i in range(k)], 4) + gaps(idx))
put("delta", "topk_f32_wide_gaps.bin", frame)
put("delta", "trailing_byte.bin", frame + b"\x00")
# encoder material: byte 0 = encoding (mod 3) and ratio, byte 1 = block - 1, then floats
put("delta", "material_i8.bin", bytes([5, 15]) + struct.pack("<64f", *[((i * 7919) % 201 - 100) * 1e-3 for i in range(64)]))
put("delta", "material_f16.bin", bytes([1 + 3 * 49, 0]) + struct.pack("<20f", *[(-1) ** i * 1.5 ** i for i in range(20)]))
# tiny blocks: 127 / max|x| overflows there (a fuzzer finding: the sign flipped)
put("delta", "material_i8_tiny.bin", bytes([209, 0]) + struct.pack("<8f", 1.2e-38, -3e-39, 1.7e-38, 1e-45, 0.0, 2e-39, -1e-38, 5e-45))

# ---- model patches (fuzz_patch.c): frames against its from model, bytes i*131+7 ----

def patch_from(n):
    return bytes((i * 131 + 7) & 0xFF for i in range(n))


def patch_frame(frm, to, words, payload, trailing=b""):
    cid = lambda b: hashlib.blake2b(b, digest_size=32).digest()
    head = b"NWMP" + bytes([1, 0, 0, 0]) + struct.pack("<Q", len(frm)) + cid(frm) + cid(to) + struct.pack("<Q", len(words))
    return head + zstd_raw(payload) + trailing


def patch_of(n, changes, trailing=b""):
    """changes: {word index: new 4-byte word}; a final partial word keeps its in-file bytes only"""
    frm = patch_from(n)
    to = bytearray(frm)
    words = sorted(changes)
    for w in words:
        nb = min(4, n - 4 * w)
        to[4 * w:4 * w + nb] = changes[w][:nb]
    vals = [int.from_bytes(bytes(to[4 * w:4 * w + 4]).ljust(4, b"\0"), "little") for w in words]
    return patch_frame(frm, bytes(to), words, gaps(words) + planes(vals, 4), trailing)


put("patch", "none.bin", patch_of(10, {}))
put("patch", "first_last_partial.bin", patch_of(10, {0: b"\x01\x02\x03\x04", 2: b"\xff\xee\0\0"}))
put("patch", "sparse_wide_gaps.bin", patch_of(4000, {3: b"abcd", 300: b"efgh", 999: b"ijkl"}))
put("patch", "every_word.bin", patch_of(33, {w: bytes([w, w + 1, w + 2, w + 3]) for w in range(9)}))
put("patch", "trailing_byte.bin", patch_of(10, {1: b"zzzz"}, b"\x00"))
put("patch", "material.bin", bytes(range(64)) + bytes(range(1, 65)))

# fuzz_http: byte 0 picks the reader (0 number, 1 Range, 2 Content-Range), bytes 1..8 a little-endian u64
# (the size; for a Content-Range: asked in the low 40 bits, length - 1 above), then the header value
def http_seed(sel, n, value):
    return bytes([sel]) + struct.pack("<Q", n) + value


put("http", "u64.bin", http_seed(0, 0, b"123456"))
put("http", "range.bin", http_seed(1, 1000, b"bytes=5-"))
put("http", "content_range.bin", http_seed(2, 5 | (9 << 40), b"bytes 5-14/15"))
