#!/usr/bin/env python3
"""Checks the sm_90a SASS of anvil's warpgroup kernels for a register-A fragment that a loop's products read
every iteration but that the loop overwrites after reading it (so the next iteration's product reads
something else).

Why: the hd-64 dK/dV kernel of flash_bwd.cu keeps K and V as wgmma register A fragments, loaded once before
its chunk loop. Two different edits of that loop (session 26, bench/NOTES-attention.md) made ptxas (CUDA
13.0) give P^T's and dS^T's fragments the very registers holding K and V, with no reload in the loop: wrong
dK / dV from the second chunk on, caught only by test_flash_bwd on the GPU. Main's build has no such reuse.
Run this after any change to a kernel that holds register fragments across a loop.

usage: cuobjdump -sass -arch sm_90a build/src/attention/flash_bwd.cu.o | python3 bench/sass_wgmma_check.py
(cuobjdump: the CUDA toolkit's, or the PyPI wheel nvidia-cuda-cuobjdump.) Exit status 1 if a kernel is flagged.
"""
import re
import sys


def kernels(lines):
    """{function name: [(address, instruction text)]}"""
    out, cur = {}, None
    for line in lines:
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def innermost_product_loop(ins):
    """the shortest backward branch whose body issues a wgmma (HGMMA)"""
    best = None
    for addr, text in ins:
        b = re.search(r"BRA (0x[0-9a-f]+)", text)
        if b and int(b.group(1), 16) < addr:
            lo = int(b.group(1), 16)
            body = [(a, t) for a, t in ins if lo <= a <= addr]
            if any("HGMMA" in t for _, t in body) and (best is None or len(body) < len(best)):
                best = body
    return best


def clobbered(body):
    """register-A products whose four registers are written in the loop only after the product reads them"""
    products, writes = [], {}
    for addr, text in body:
        t = text.split(None, 1)[1] if text.startswith("@") else text
        m = re.search(r"HGMMA\S*\s+R\d+, R(\d+),", t)
        if m:
            products.append((addr, int(m.group(1))))
            continue
        if t.startswith(("HGMMA", "ST", "SYNCS", "BRA", "WARPGROUP", "RED", "ATOM")):
            continue
        d = re.match(r"\S+\s+R(\d+)", t)
        if d:
            writes.setdefault(int(d.group(1)), []).append(addr)
    bad = []
    for addr, r in products:
        ws = [w for reg in range(r, r + 4) for w in writes.get(reg, [])]
        if ws and all(w > addr for w in ws):  # never redefined before this read: it had to survive the loop
            bad.append((addr, r, min(ws)))
    return bad


def main():
    flagged = 0
    for name, ins in kernels(sys.stdin).items():
        body = innermost_product_loop(ins)
        if body is None:
            continue
        bad = clobbered(body)
        nprod = sum(1 for _, t in body if re.search(r"HGMMA\S*\s+R\d+, R\d+,", t))
        if bad:
            flagged += 1
            where = ", ".join(f"R{r} read at {a:#x}, written at {w:#x}" for a, r, w in bad[:3])
            print(f"CLOBBERED {name}: {where}")
        else:
            print(f"ok {name} ({nprod} register-A products in its loop)")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
