#!/bin/sh
# `make bench`: the main job. Synthesizes a TinyLlama-1.1B-shaped random model once (anvil synth,
# bf16), then runs each suite on this machine and writes bench/out/report.md (+ raw logs):
#   1. generate: prompt processing (512 tokens) and decode (128 tokens), anvil bench, median of 3
#   2. lora: the seed report's fine-tune (rank 8, alpha 16, q/v of the last 16 layers, batch 2,
#      max length 512, 50 iterations on the quotes data shipped in data/quotes), it/s, tokens/s,
#      peak memory, share of the CPU's peak FLOP/s
# Env: AV_BENCH_MODEL (model dir), AV_BENCH_OUT, AV_BENCH_REPEAT, AV_BENCH_ITERS, AV_BENCH_DEVICE.
set -e
BUILD=${1:-build}
ANVIL="$PWD/$BUILD/anvil"
OUT=${AV_BENCH_OUT:-$PWD/bench/out}
MODELS=$PWD/$BUILD/models
MODEL=${AV_BENCH_MODEL:-$MODELS/tinyllama-1.1b}
DEV=${AV_BENCH_DEVICE:-auto}
ITERS=${AV_BENCH_ITERS:-50}
TOKENIZER=$PWD/tests/fixtures/llama2-tokenizer # the Llama-2 tokenizer + Zephyr chat template (TinyLlama-Chat's)
mkdir -p "$OUT" "$MODELS"
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$ANVIL" synth --preset tinyllama-1.1b --out "$MODEL" --dtype bf16 --tokenizer "$TOKENIZER"
fi
[ -f "$MODEL/chat_template.jinja" ] || grep -qs chat_template "$MODEL/tokenizer_config.json" || cp "$TOKENIZER/chat_template.jinja" "$MODEL/"
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "== 1/2 generate: $MODEL ($(nproc) cores, $CPU)"
"$ANVIL" bench --model "$MODEL" --device "$DEV" --prompt-tokens 512 --gen-tokens 128 --repeat "${AV_BENCH_REPEAT:-3}" --json | tee "$OUT/generate.jsonl"

echo "== 2/2 lora: seed setup, $ITERS iterations"
DATA="$PWD/data/quotes"
rm -rf "$OUT/adapters"
"$ANVIL" lora --model "$MODEL" --device "$DEV" --train --data "$DATA" --iters "$ITERS" --batch-size 2 --max-seq-length 512 \
  --rank 8 --alpha 16 --num-layers 16 --lora-keys q_proj,v_proj --learning-rate 1e-4 --steps-per-report 10 \
  --steps-per-eval "$ITERS" --val-batches 5 --save-every 100000 --adapter-path "$OUT/adapters" 2>&1 | tee "$OUT/lora.log"

P=$("$ANVIL" info --model "$MODEL" | sed -n 's/^parameters: *\([0-9]*\).*/\1/p')
GHZ=$(echo "$CPU" | sed -n 's/.*@ *\([0-9.]*\)GHz.*/\1/p')
PEAK=$(awk "BEGIN{print $(nproc) * ${GHZ:-2.5} * 64}")
{
  echo "# anvil benchmark report"
  echo
  echo "Machine: $(nproc) cores, $CPU; $(date -u '+%Y-%m-%d %H:%M UTC'); model: TinyLlama-1.1B shape (random weights, bf16), $MODEL"
  echo
  echo "## Inference (anvil bench, median of ${AV_BENCH_REPEAT:-3})"
  echo
  echo "| test | tokens/s | notes |"
  echo "|---|---|---|"
  sed -n 's/.*"device":"\([a-z]*\)".*"pp":\([0-9]*\),"pp_tps":\([0-9.]*\),"tg":\([0-9]*\),"tg_tps":\([0-9.]*\),"tg_gbps":\([0-9.]*\).*"peak_mem_gb":\([0-9.]*\).*/| pp\2 (\1) | \3 | prompt processing, batched prefill |\n| tg\4 (\1) | \5 | decode: \6 GB\/s of weights read; peak memory \7 GB |/p' "$OUT/generate.jsonl"
  echo
  echo "## LoRA fine-tuning (seed setup: rank 8, alpha 16, q/v of the last 16 layers, batch 2, max length 512, $ITERS iterations)"
  echo
  grep -m1 '^Trainable parameters' "$OUT/lora.log" || true
  echo
  awk -v P="$P" -v peak="$PEAK" '
    /^Iter [0-9]+: Train loss/ { n++; gsub(",", ""); for (i = 1; i <= NF; i++) { if ($i == "It/sec") its += $(i+1); if ($i == "Tokens/sec") tps += $(i+1); if ($i == "mem") mem = $(i+1); if ($i == "loss" && !first) first = $(i+1); if ($i == "loss") last = $(i+1) } }
    /Val loss/ { v = $0; sub(/.*Val loss /, "", v); sub(/,.*/, "", v); if (vf == "") vf = v; vl = v }
    END { if (!n) { print "(no training report lines: see lora.log)"; exit }
          its /= n; tps /= n; g = tps * 4 * P / 1e9
          printf "| metric | value |\n|---|---|\n| it/s | %.3f |\n| tokens/s | %.1f |\n| peak memory | %.3f GB |\n", its, tps, mem
          printf "| train loss | %s -> %s |\n| val loss | %s -> %s |\n", first, last, vf, vl
          printf "| model FLOP/s (4 x params x tokens/s) | %.1f GFLOP/s = %.1f%% of %.0f GFLOP/s f32 peak |\n", g, 100 * g / peak, peak }' "$OUT/lora.log"
  echo
  echo "Reference (seed report, MLX on M3 Max): 838 tokens/s, 11.2 it/s, 2.895 GB peak; inference 93-97 tokens/s."
} > "$OUT/report.md.tmp" && mv "$OUT/report.md.tmp" "$OUT/report.md"
echo
cat "$OUT/report.md"
