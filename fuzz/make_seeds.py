#!/usr/bin/env python3
"""Makes tests/fixtures/fuzz-seeds/*.gguf (dev aid; `make fuzz` only copies the results): small GGUF files cut from
the real fixtures so that whole inputs fit the fuzzer's max_len (64 KB). Each keeps a fixture's
metadata with its token arrays cut to the first N entries (merges kept when both halves and the
result survive) and at most a few tiny tensor infos with their data. Standard library only; run from
the repository root: python3 fuzz/make_seeds.py"""
import os, struct

FX = "tests/fixtures/gguf"
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
TOKEN_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


class R:
    def __init__(self, b): self.b, self.p = b, 0
    def take(self, n): v = self.b[self.p:self.p + n]; self.p += n; return v
    def u32(self): return struct.unpack("<I", self.take(4))[0]
    def u64(self): return struct.unpack("<Q", self.take(8))[0]
    def s(self): return self.take(self.u64())


def read_value(r, t):
    if t in SIZES: return (t, r.take(SIZES[t]))
    if t == 8: return (t, r.s())
    et, n = r.u32(), r.u64()
    return (t, (et, [read_value(r, et)[1] for _ in range(n)]))


def write_value(t, v):
    if t in SIZES: return v
    if t == 8: return struct.pack("<Q", len(v)) + v
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(write_value(et, x) for x in items)


def load(path):
    r = R(open(path, "rb").read())
    assert r.take(4) == b"GGUF"
    ver, nt, nkv = r.u32(), r.u64(), r.u64()
    kv = []
    for _ in range(nkv):
        k = r.s(); t = r.u32(); kv.append((k, t, read_value(r, t)[1]))
    tinfo = []
    for _ in range(nt):
        name = r.s(); nd = r.u32(); ne = [r.u64() for _ in range(nd)]; ty = r.u32(); off = r.u64()
        tinfo.append((name, ne, ty, off))
    align = 32
    for k, t, v in kv:
        if k == b"general.alignment": align = struct.unpack("<I", v)[0]
    data = (r.p + align - 1) // align * align
    return ver, kv, tinfo, r.b, data


def cut(path, out, n_tok, max_tensor_bytes=4096):
    ver, kv, tinfo, raw, data = load(path)
    toks = None
    nkv = []
    for k, t, v in kv:
        if k.decode() in TOKEN_KEYS:
            v = (v[0], v[1][:n_tok])
            if k == b"tokenizer.ggml.tokens": toks = set(v[1])
        nkv.append((k, t, v))
    kv2 = []
    for k, t, v in nkv:
        if k == b"tokenizer.ggml.merges" and toks is not None:
            keep = [m for m in v[1] if b" " in m and all(p in toks for p in m.split(b" ", 1)) and m.replace(b" ", b"", 1) in toks]
            v = (v[0], keep)
        if k.decode().endswith("_token_id") and toks is not None and struct.unpack("<I", v[:4])[0] >= len(toks):
            continue
        kv2.append((k, t, v))
    # tiny tensors only (norm weights and the like), repacked one after another
    keep = []
    for name, ne, ty, off in tinfo:
        elems = 1
        for e in ne: elems *= e
        nbytes = {0: 4 * elems, 1: 2 * elems, 30: 2 * elems}.get(ty)
        if nbytes and nbytes <= max_tensor_bytes and len(keep) < 4:
            keep.append((name, ne, ty, raw[data + off:data + off + nbytes]))
    body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + write_value(t, v) for k, t, v in kv2)
    infos, blob = b"", b""
    for name, ne, ty, payload in keep:
        infos += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", e) for e in ne)
        infos += struct.pack("<IQ", ty, len(blob))
        blob += payload + b"\0" * (-len(payload) % 32)
    head = b"GGUF" + struct.pack("<IQQ", ver, len(keep), len(kv2)) + body + infos
    head += b"\0" * (-len(head) % 32)
    open(out, "wb").write(head + blob)
    print(out, len(head + blob))


os.makedirs("tests/fixtures/fuzz-seeds", exist_ok=True)
cut(f"{FX}/tiny-v1024-q8_0.gguf", "tests/fixtures/fuzz-seeds/llama-spm-v200.gguf", 200)
cut(f"{FX}/vocab-llama2.gguf", "tests/fixtures/fuzz-seeds/vocab-llama2-v300.gguf", 300)
cut(f"{FX}/vocab-gpt2.gguf", "tests/fixtures/fuzz-seeds/vocab-gpt2-v300.gguf", 300)
cut(f"{FX}/vocab-llama3.gguf", "tests/fixtures/fuzz-seeds/vocab-llama3-v300.gguf", 300)
cut(f"{FX}/vocab-qwen2.gguf", "tests/fixtures/fuzz-seeds/vocab-qwen2-v300.gguf", 300)
cut(f"{FX}/vocab-llama2.gguf", "tests/fixtures/fuzz-seeds/vocab-llama2-v3.gguf", 3)
cut(f"{FX}/vocab-gpt2.gguf", "tests/fixtures/fuzz-seeds/vocab-gpt2-v3.gguf", 3)


def tiny_model(out, src=f"{FX}/vocab-llama2.gguf", V=64, D=32, F=64, H=4, KV=2, L=1):
    """A whole (random) llama model small enough to fuzz: every weight type the binder converts."""
    import random
    rnd = random.Random(7)
    ver, kv, _, _, _ = load(src)
    u32 = lambda v: struct.pack("<I", v)
    keys = [(b"general.architecture", 8, b"llama"), (b"llama.embedding_length", 4, u32(D)),
            (b"llama.feed_forward_length", 4, u32(F)), (b"llama.block_count", 4, u32(L)),
            (b"llama.attention.head_count", 4, u32(H)), (b"llama.attention.head_count_kv", 4, u32(KV)),
            (b"llama.context_length", 4, u32(128)), (b"llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
            (b"llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))]
    for k, t, v in kv:
        if k.startswith(b"tokenizer.") and k.decode() in TOKEN_KEYS: keys.append((k, t, (v[0], v[1][:V])))
        elif k in (b"tokenizer.ggml.model", b"tokenizer.ggml.bos_token_id", b"tokenizer.ggml.eos_token_id"): keys.append((k, t, v))
    block = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34)}
    qd = (D // H) * H
    tensors = [("token_embd.weight", [D, V], 8), ("output_norm.weight", [D], 0), ("output.weight", [D, V], 2)]
    for l in range(L):
        tensors += [(f"blk.{l}.attn_q.weight", [D, qd], 3), (f"blk.{l}.attn_k.weight", [D, KV * D // H], 6),
                    (f"blk.{l}.attn_v.weight", [D, KV * D // H], 7), (f"blk.{l}.attn_output.weight", [qd, D], 1),
                    (f"blk.{l}.ffn_gate.weight", [D, F], 30), (f"blk.{l}.ffn_up.weight", [D, F], 8),
                    (f"blk.{l}.ffn_down.weight", [F, D], 0), (f"blk.{l}.attn_norm.weight", [D], 0),
                    (f"blk.{l}.ffn_norm.weight", [D], 0)]
    body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + write_value(t, v) for k, t, v in keys)
    infos, blob = b"", b""
    for name, ne, ty in tensors:
        blk, size = block[ty]
        n = 1
        for e in ne: n *= e
        if ty == 0: payload = b"".join(struct.pack("<f", rnd.uniform(-1, 1)) for _ in range(n))
        elif ty in (1, 30): payload = bytes(rnd.randrange(256) if i % 2 == 0 else 0x3c for i in range(2 * n))
        else:
            payload = b""
            for _ in range(n // blk):
                b = bytearray(rnd.randrange(256) for _ in range(size))
                b[0:2] = struct.pack("<e", 0.01)
                if ty in (3, 7): b[2:4] = struct.pack("<e", -0.05)
                payload += bytes(b)
        nm = name.encode()
        infos += struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", e) for e in ne)
        infos += struct.pack("<IQ", ty, len(blob))
        blob += payload + b"\0" * (-len(payload) % 32)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(keys)) + body + infos
    head += b"\0" * (-len(head) % 32)
    open(out, "wb").write(head + blob)
    print(out, len(head + blob))


tiny_model("tests/fixtures/fuzz-seeds/tiny-llama-v64.gguf")
