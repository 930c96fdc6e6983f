#!/usr/bin/env python3
"""anvil vs HF transformers / PEFT on one GPU, same weights, same run.

Builds a random TinyLlama-1.1B-shaped LlamaForCausalLM (bf16) from a config.json with
transformers, saves it, runs anvil's bench/gpu_bench on that directory (separate process, before
torch touches the GPU), then measures HF on the same weights: greedy decode of 128 tokens at batch
1 / 8 / 32 (different prompt lengths, left padding), a 2048-token prefill, and LoRA r8 q/v on the
last 16 layers at 1x512, 4x512, 16x512 with PEFT + AdamW. Prints a side-by-side table and writes
results.json. usage: gpu_vs_hf.py --config CONFIG --out DIR --anvil PATH/TO/gpu_bench [--skip-hf]
"""
import argparse, json, os, subprocess, sys, time


def anvil_run(binary, model_dir, what):
    r = subprocess.run([binary, model_dir, what], capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    out = {}
    for line in r.stdout.splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "workload" in d:
            out[d["workload"]] = d
        else:
            out["_info"] = d
    if r.returncode != 0:
        out["_error"] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return out


def sync():
    import torch
    torch.cuda.synchronize()


def hf_decode(model, tok_fn, n_seq, gen, V):
    import torch
    lens = [16] if n_seq == 1 else [12 + (i * 7) % 13 for i in range(n_seq)]
    L = max(lens)
    ids = torch.zeros((n_seq, L), dtype=torch.long, device="cuda")
    mask = torch.zeros((n_seq, L), dtype=torch.long, device="cuda")
    for i, n in enumerate(lens):  # left padding
        ids[i, L - n:] = torch.tensor([tok_fn(i * 100 + t, V) for t in range(n)])
        mask[i, L - n:] = 1
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
    sync()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    sync()
    t_prefill = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=gen, min_new_tokens=gen, **kw)
    sync()
    dt = time.perf_counter() - t0 - t_prefill
    return {"tok_s": n_seq * (gen - 1) / dt, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def hf_prefill(model, T, V, tok_fn):
    import torch
    ids = torch.tensor([[tok_fn(i, V) for i in range(T)]], device="cuda")
    best = 1e30
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for rep in range(4):
            sync()
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1)
            sync()
            if rep:
                best = min(best, time.perf_counter() - t0)
    return {"tok_s": T / best, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def hf_lora(model_dir, B, T, V, tok_fn, n_layers, peak_tflops, params):
    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                     layers_to_transform=list(range(n_layers - 16, n_layers)), task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.tensor([[tok_fn(b * T + t, V) for t in range(T)] for b in range(B)], device="cuda")
    steps, t0 = 6, 0.0
    for s in range(steps):
        if s == 2:
            sync()
            t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    dt = (time.perf_counter() - t0) / (steps - 2)
    tps = B * T / dt
    res = {"tok_s": tps, "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "mfu": 4 * params * tps / (peak_tflops * 1e12)}
    del model, opt
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--anvil", required=True)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--only", default="all", help="decode|batch|prefill|lora|all")
    a = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    model_dir = os.path.join(a.out, "tinyllama-random")
    cfg = LlamaConfig.from_dict(json.load(open(a.config)))
    V, NL = cfg.vocab_size, cfg.num_hidden_layers
    tok_fn = lambda i, V: 1 + ((i * 2654435761) % (2 ** 32)) % (V - 1)
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(model_dir)
        del model
        torch.cuda.empty_cache()
        print(f"model: {model_dir} ({time.perf_counter() - t0:.1f} s to build + save)", flush=True)
    gpu = torch.cuda.get_device_name(0)
    peak_tflops = 312 if "A100" in gpu else 989
    t0 = time.perf_counter()
    an = anvil_run(a.anvil, model_dir, a.only)
    print(f"anvil: {time.perf_counter() - t0:.1f} s; {json.dumps(an)}", flush=True)
    params = an.get("_info", {}).get("params") or 1.1e9
    hf = {}
    if not a.skip_hf:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
        if a.only in ("all", "decode"):
            hf["decode_b1"] = hf_decode(model, tok_fn, 1, 128, V)
        if a.only in ("all", "batch"):
            hf["decode_b8"] = hf_decode(model, tok_fn, 8, 128, V)
            hf["decode_b32"] = hf_decode(model, tok_fn, 32, 128, V)
        if a.only in ("all", "prefill"):
            hf["prefill_2048"] = hf_prefill(model, 2048, V, tok_fn)
        del model
        torch.cuda.empty_cache()
        if a.only in ("all", "lora"):
            for B in (1, 4, 16):
                hf[f"lora_{B}x512"] = hf_lora(model_dir, B, 512, V, tok_fn, NL, peak_tflops, params)
        print(f"hf: {json.dumps(hf)}", flush=True)
    rows = ["decode_b1", "decode_b8", "decode_b32", "prefill_2048", "lora_1x512", "lora_4x512", "lora_16x512"]
    print(f"\nGPU: {gpu}   (anvil: {an.get('_info', {}).get('device', '?')}; same call, same weights)")
    print(f"{'workload':<14} {'anvil tok/s':>12} {'HF tok/s':>10} {'ratio':>7} {'anvil GB':>9} {'HF GB':>7}  extra")
    for r in rows:
        x, h = an.get(r), hf.get(r)
        if not x and not h:
            continue
        xs, hs = (x or {}).get("tok_s"), (h or {}).get("tok_s")
        ratio = f"{xs / hs:.2f}x" if xs and hs else "-"
        extra = []
        if x and "gb_s" in x:
            extra.append(f"anvil {x['gb_s']:.0f} GB/s")
        if x and "mfu" in x:
            extra.append(f"anvil MFU {100 * x['mfu']:.1f}%")
        if h and "mfu" in h:
            extra.append(f"HF MFU {100 * h['mfu']:.1f}%")
        f = lambda v, w, p: f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
        print(f"{r:<14} {f(xs, 12, 1)} {f(hs, 10, 1)} {ratio:>7} {f((x or {}).get('peak_gb'), 9, 2)} {f((h or {}).get('peak_gb'), 7, 2)}  {', '.join(extra)}")
    if "_error" in an:
        print(f"anvil error: {an['_error']}")
    json.dump({"gpu": gpu, "anvil": an, "hf": hf}, open(os.path.join(a.out, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
