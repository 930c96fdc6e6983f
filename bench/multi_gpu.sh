#!/bin/sh
# Data-parallel scaling on one multi-GPU host (not run by tests; needs a CUDA build and GPUs).
# 1. LoRA, the seed setup (TinyLlama-1.1B-shaped random model from anvil synth, rank 8 / alpha 16 on
#    q_proj,v_proj of the last 16 layers) at 16 rows x 512 tokens per GPU: `anvil lora --gpus N
#    --batch-size 16N` for N = 1, 2, 4, 8 (up to the GPUs present); tokens/s (mean of the report lines
#    after the first, which holds the warm-up) and scaling efficiency = tok/s(N) / (N x tok/s(1)).
# 2. Batched greedy generation: PROMPTS prompts, `anvil generate --prompts-file --gpus N`, generated
#    tokens/s (all sequences; the slowest GPU's time) and wall seconds, same efficiency.
# usage: bench/multi_gpu.sh [BUILD] ; env: ITERS (30), GPUS ("1 2 4 8"), PROMPTS (256), GEN_TOKENS (128),
#        GEN_BATCH (32), KEEP=1. Expects: near-linear LoRA scaling over NVLink (one all-reduce of
#        the 0.82M LoRA gradients per step is tiny next to a 16x512 step), so efficiency >= 0.9 is
#        the bar; generation scales by the prompt split alone (no communication).
set -eu
BUILD=${1:-build}
case "$BUILD" in /*) ANVIL="$BUILD/anvil" ;; *) ANVIL="$PWD/$BUILD/anvil" ;; esac
FX=$PWD/tests/fixtures
ITERS=${ITERS:-30}; PROMPTS=${PROMPTS:-256}; GEN_TOKENS=${GEN_TOKENS:-128}; GEN_BATCH=${GEN_BATCH:-32}
HAVE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "$HAVE" -ge 1 ] || { echo "multi_gpu.sh: no GPU (nvidia-smi -L lists none)"; exit 1; }
GPUS=${GPUS:-"1 2 4 8"}
export NCCL_NVLS_ENABLE=0 # anvil sets it too; NVLink SHARP multicast is off on the machines we borrow
W=$(mktemp -d /tmp/anvil-multi-gpu.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT
echo "== anvil multi-GPU scaling: $HAVE x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
"$ANVIL" synth --preset tinyllama-1.1b --tokenizer "$FX/llama2-tokenizer" --out "$W/model" > /dev/null
[ -f "$W/model/chat_template.jinja" ] || cp "$FX/llama2-tokenizer/chat_template.jinja" "$W/model/"
# rows long enough to be cut to 512 tokens: every batch is 16 x 512 per GPU
mkdir -p "$W/data"
awk 'BEGIN { srand(7); split("the of and a to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part", w, " ");
             for (f = 0; f < 2; f++) { file = f ? "valid.jsonl" : "train.jsonl"; rows = f ? 64 : 1024;
               for (r = 0; r < rows; r++) { s = ""; for (i = 0; i < 700; i++) s = s " " w[1 + int(rand() * 100)]; printf "{\"text\": \"%s\"}\n", s > ("'"$W/data/"'" file) } } }'
for i in $(seq 1 "$PROMPTS"); do echo "Write a story about item number $i and why it matters:"; done > "$W/prompts.txt"

tokps() { awk '/^Iter [0-9]+: Train loss/ { n++; if (n == 1) next; gsub(",", ""); for (i = 1; i <= NF; i++) if ($i == "Tokens/sec") { s += $(i+1); k++ } }
                END { if (k) printf "%.1f", s / k; else print "nan" }' "$1"; }
echo
echo "| GPUs | LoRA tokens/s | LoRA efficiency | gen tokens/s | gen wall s | gen efficiency |"
echo "|---:|---:|---:|---:|---:|---:|"
base_l=""; base_g=""
for n in $GPUS; do
  [ "$n" -le "$HAVE" ] || { echo "| $n | (only $HAVE GPUs) | | | | |"; continue; }
  "$ANVIL" lora --model "$W/model" --train --data "$W/data" --gpus "$n" --batch-size $((16 * n)) --max-seq-length 512 \
    --rank 8 --alpha 16 --num-layers 16 --lora-keys q_proj,v_proj --learning-rate 1e-4 --iters "$ITERS" --steps-per-report 5 \
    --steps-per-eval 100000 --val-batches 1 --save-every 100000 --adapter-path "$W/a$n" > "$W/lora$n.log" 2>&1 \
    || { echo "lora --gpus $n failed:"; tail -3 "$W/lora$n.log"; exit 1; }
  tl=$(tokps "$W/lora$n.log")
  t0=$(date +%s.%N)
  "$ANVIL" generate --model "$W/model" --prompts-file "$W/prompts.txt" --gpus "$n" --batch-size "$GEN_BATCH" \
    --max-tokens "$GEN_TOKENS" --ignore-chat-template > "$W/gen$n.out" 2> "$W/gen$n.err" \
    || { echo "generate --gpus $n failed:"; tail -3 "$W/gen$n.err"; exit 1; }
  t1=$(date +%s.%N)
  tg=$(awk '/^Generation:/ { print $4 }' "$W/gen$n.err")
  wall=$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")
  [ -n "$base_l" ] || { base_l=$tl; base_g=$tg; }
  el=$(awk "BEGIN { printf \"%.2f\", $tl / ($n * $base_l) }"); eg=$(awk "BEGIN { printf \"%.2f\", $tg / ($n * $base_g) }")
  echo "| $n | $tl | $el | $tg | $wall | $eg |"
  [ "$n" = 1 ] || cmp -s "$W/gen1.out" "$W/gen$n.out" || echo "  (note: generated text with $n GPUs differs from 1 GPU)"
done
