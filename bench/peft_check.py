"""Loads an anvil-written PEFT adapter in transformers + PEFT and prints the mean next-token NLL of
a text (first N tokens, BOS first, f32 compute) — compare with `anvil perplexity --adapter-path`.
Usage: python3 bench/peft_check.py MODEL_DIR ADAPTER_DIR TEXT_FILE [N]   (runs where torch is)"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

model_dir, adapter_dir, text_file = sys.argv[1:4]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 512
tok = AutoTokenizer.from_pretrained(model_dir)
ids = tok(open(text_file, encoding="utf-8").read(), return_tensors="pt").input_ids[:, :n]
base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).float()
out = {"tokens": ids.shape[1]}
with torch.no_grad():
    out["base_mean_nll"] = torch.nn.functional.cross_entropy(base(ids).logits[0, :-1], ids[0, 1:]).item()
    model = PeftModel.from_pretrained(base, adapter_dir).float()
    out["peft_mean_nll"] = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:]).item()
print(json.dumps(out))
