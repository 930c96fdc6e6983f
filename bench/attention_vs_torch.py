#!/usr/bin/env python3
"""GPU attention kernels side by side in one process tree on one GPU: PyTorch's
scaled_dot_product_attention (flash, cuDNN and math backends; bf16, causal) and anvil's flash and
standard attention (bench/attention_gpu). Same shapes: 16k tokens per batch, model width 2048
(H = 2048 / head_dim, no GQA). TFLOP/s count the causal half of the scores; forward+backward counts
3.5x the forward. anvil "flash" is training's entry points: bf16 q, k, v, f32 out, lse and gradients
(dout f32, converted inside); anvil "flash_bf16" is PyTorch's contract: q, k, v, out, dout and
gradients all bf16 (Hopper). Peak memory is PyTorch's allocator peak for the call (inputs included).
usage: attention_vs_torch.py ANVIL_ATTENTION_GPU_BINARY [reps]"""
import json, subprocess, sys
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
TOKENS, LENGTHS, HDS = 16384, (512, 2048, 8192), (64, 128)
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def timed(fn):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(REPS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def torch_row(backend, T, hd):
    B, H = TOKENS // T, 2048 // hd
    q, k, v = (torch.randn(B, H, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, T, hd, device="cuda", dtype=torch.bfloat16)
    flops = 4.0 * B * H * T * T * hd / 2
    with sdpa_kernel([BACKENDS[backend]]):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        def fwdbwd():
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do)
        torch.cuda.reset_peak_memory_stats()
        f = timed(fwd)
        fb = timed(fwdbwd)
    return {"tool": "torch", "kind": backend, "B": B, "T": T, "H": H, "hd": hd, "fwd_ms": f, "fwdbwd_ms": fb,
            "fwd_tflops": flops / f / 1e9, "fwdbwd_tflops": 3.5 * flops / fb / 1e9,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def main():
    rows = []
    for hd in HDS:
        for T in LENGTHS:
            for backend in BACKENDS:
                if backend == "math" and T > 2048:
                    continue  # 8192: tens of GB of scores and minutes of time
                try:
                    rows.append(torch_row(backend, T, hd))
                except Exception as e:  # a backend without this shape
                    rows.append({"tool": "torch", "kind": backend, "T": T, "hd": hd, "error": str(e).splitlines()[0][:120]})
                torch.cuda.empty_cache()
                print(json.dumps(rows[-1]), flush=True)
    out = subprocess.run([sys.argv[1], str(REPS), str(TOKENS)] + [str(t) for t in LENGTHS], capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
            print(line, flush=True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; TFLOP/s forward / forward+backward\n")
    print("| hd | T | torch flash | torch cuDNN | torch math | anvil flash (f32 out, grads) | anvil flash (bf16 io) | anvil standard |")
    print("|---|---|---|---|---|---|---|---|")
    def cell(tool, kind, T, hd):
        for r in rows:
            if r["tool"] == tool and r["kind"] == kind and r["T"] == T and r["hd"] == hd:
                return "error" if "error" in r else f'{r["fwd_tflops"]:.0f} / {r["fwdbwd_tflops"]:.0f}'
        return "-"
    for hd in HDS:
        for T in LENGTHS:
            print(f"| {hd} | {T} | " + " | ".join(cell(t, k, T, hd) for t, k in
                  (("torch", "flash"), ("torch", "cudnn"), ("torch", "math"), ("anvil", "flash"), ("anvil", "flash_bf16"),
                   ("anvil", "standard"))) + " |")


if __name__ == "__main__":
    main()
