#!/usr/bin/env python3
"""Makes fuzz/seeds/*.gguf (dev aid; `make fuzz` only copies the results): small GGUF files cut from
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


os.makedirs("fuzz/seeds", exist_ok=True)
cut(f"{FX}/tiny-v1024-q8_0.gguf", "fuzz/seeds/llama-spm-v200.gguf", 200)
cut(f"{FX}/vocab-llama2.gguf", "fuzz/seeds/vocab-llama2-v300.gguf", 300)
cut(f"{FX}/vocab-gpt2.gguf", "fuzz/seeds/vocab-gpt2-v300.gguf", 300)
cut(f"{FX}/vocab-llama3.gguf", "fuzz/seeds/vocab-llama3-v300.gguf", 300)
cut(f"{FX}/vocab-qwen2.gguf", "fuzz/seeds/vocab-qwen2-v300.gguf", 300)
