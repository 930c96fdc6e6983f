#!/bin/sh
# The seed report's fine-tuning run on this machine: a TinyLlama-1.1B-shaped random model
# (anvil synth, Llama-2 tokenizer + Zephyr chat template), LoRA rank 8 / alpha 16 on q_proj and
# v_proj of the last 16 layers (0.819M trainable), batch 2, max length 512, 50 iterations on the
# quotes data. Prints it/s, tokens/s, peak memory and the achieved fraction of peak FLOP/s.
# usage: bench/lora_seed.sh [BUILD] [extra anvil lora flags...]
#   env: ITERS (50), BATCH (2), KEEP=1, PEAK_GFLOPS (default: cores x GHz x 64 = f32 AVX-512 with 2 FMA
#   units; the fraction is of the CPU's peak, so with --device cuda pass the GPU's, e.g. 989000 for H100/H200 bf16)
# Reads only the repository (tests/fixtures/llama2-tokenizer, data/quotes), so it runs anywhere.
set -eu
BUILD=${1:-build}; [ $# -gt 0 ] && shift
case "$BUILD" in /*) ANVIL="$BUILD/anvil" ;; *) ANVIL="$PWD/$BUILD/anvil" ;; esac
FX=$PWD/tests/fixtures
DATA=$PWD/data/quotes
ITERS=${ITERS:-50}; BATCH=${BATCH:-2}
W=$(mktemp -d /tmp/anvil-lora-seed.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT
echo "== anvil lora, seed setup: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$ANVIL" synth --preset tinyllama-1.1b --tokenizer "$FX/llama2-tokenizer" --out "$W/model" > /dev/null
[ -f "$W/model/chat_template.jinja" ] || cp "$FX/llama2-tokenizer/chat_template.jinja" "$W/model/"
start=$(date +%s.%N)
"$ANVIL" lora --model "$W/model" --train --data "$DATA" --iters "$ITERS" --batch-size "$BATCH" --max-seq-length 512 \
  --rank 8 --alpha 16 --num-layers 16 --lora-keys q_proj,v_proj --learning-rate 1e-4 --steps-per-report 10 \
  --steps-per-eval "$ITERS" --val-batches 5 --save-every 100000 --adapter-path "$W/adapters" "$@" | tee "$W/log"
end=$(date +%s.%N)
# FLOPs per trained token ~ 4 x (non-embedding params + LM head): forward (2P) + input-gradient backward (2P);
# LoRA's own and attention's FLOPs are small at these lengths and left out.
P=$(python3 -c "
import json; c=json.load(open('$W/model/config.json'))
D=c['hidden_size']; F=c['intermediate_size']; L=c['num_hidden_layers']; H=c['num_attention_heads']; K=c.get('num_key_value_heads',H); V=c['vocab_size']
hd=D//H; print(L*(2*D*H*hd+2*D*K*hd+3*D*F) + V*D)")
GHZ=$(awk -F: '/model name/{if (match($2,/[0-9.]+GHz/)) {print substr($2,RSTART,RLENGTH-3); exit}}' /proc/cpuinfo)
PEAK=${PEAK_GFLOPS:-$(awk "BEGIN{print $(nproc) * ${GHZ:-2.5} * 64}")}
awk -v P="$P" -v peak="$PEAK" -v wall="$(awk "BEGIN{print $end - $start}")" '
  /^Iter [0-9]+: Train loss/ { n++; gsub(",", ""); for (i = 1; i <= NF; i++) { if ($i == "It/sec") its += $(i+1); if ($i == "Tokens/sec") tps += $(i+1); if ($i == "mem") mem = $(i+1) } }
  /^Trainable parameters/ { tp = $0 }
  END { if (!n) { print "no report lines"; exit 1 }
        its /= n; tps /= n; g = tps * 4 * P / 1e9
        printf "\n== summary\n%s\nit/s %.3f  tokens/s %.1f  peak mem %.3f GB  wall %.1f s (incl. model load, eval)\n", tp, its, tps, mem, wall
        printf "model FLOP/s ~ %.1f GFLOP/s = %.1f%% of %.0f GFLOP/s peak (f32)\n", g, 100 * g / peak, peak }' "$W/log"
