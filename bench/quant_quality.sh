#!/bin/sh
# Quality per quantization setting, as README's table: for bits 2, 3, 4, 5, 6, 8 x group 32, 64,
# 128 and MLX-LM's mixed recipes, quantizes MODEL with anvil, then runs
# `anvil perplexity --model Q --kl-base MODEL` over TEXT (one window) and prints a Markdown table:
# weight file size, perplexity, KL(base || quantized) mean and p99, top-1 agreement.
# Usage: bench/quant_quality.sh [MODEL [TEXT]]   (from the repository root, after make)
# Defaults: tests/fixtures/tiny-llama, and the assistant lines (the quotes) of data/quotes/valid.jsonl
# and test.jsonl, one per line.
set -e
ANVIL=${ANVIL:-$PWD/build/anvil}
MODEL=${1:-$PWD/tests/fixtures/tiny-llama}
TMP=$(mktemp -d /tmp/anvil-qq.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
TEXT=${2:-$TMP/text.txt}
[ -n "${2:-}" ] || sed -n 's/.*"assistant", "content": "\(.*\)"}]}$/\1/p' data/quotes/valid.jsonl data/quotes/test.jsonl > "$TEXT"
mb() { awk -v b="$(cat "$1"/*.safetensors | wc -c)" 'BEGIN { printf "%.2f", b / 1e6 }'; }
num() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
row() { # label dir
  j=$("$ANVIL" perplexity --device cpu --model "$2" --kl-base "$MODEL" --text-file "$TEXT" --json)
  printf '| %s | %s | %.2f | %.3g | %.3g | %.3f |\n' "$1" "$(mb "$2")" "$(num "$j" ppl)" "$(num "$j" kl_mean)" "$(num "$j" kl_p99)" "$(num "$j" top1_agree)"
}
j=$("$ANVIL" perplexity --device cpu --model "$MODEL" --text-file "$TEXT" --json)
echo "Model: $MODEL; text: $TEXT ($(num "$j" tokens) tokens, one window)"
echo
echo "| setting | size (MB) | perplexity | KL mean | KL p99 | top-1 agree |"
echo "|---|---|---|---|---|---|"
printf '| float (as stored) | %s | %.2f | 0 | 0 | 1.000 |\n' "$(mb "$MODEL")" "$(num "$j" ppl)"
for b in 2 3 4 5 6 8; do
  for g in 32 64 128; do
    "$ANVIL" convert --model "$MODEL" --out "$TMP/q${b}_$g" -q --q-bits $b --q-group-size $g > "$TMP/log"
    if grep -q "^Quantized 0 weight" "$TMP/log"; then
      echo "| $b-bit, group $g | nothing quantized: no input size of this model is a multiple of $g | | | | |"
    else
      row "$b-bit, group $g" "$TMP/q${b}_$g"
    fi
    rm -rf "$TMP/q${b}_$g"
  done
done
for r in mixed_2_6 mixed_3_4 mixed_3_6 mixed_4_6; do
  "$ANVIL" quantize --model "$MODEL" --out "$TMP/$r" --quant-predicate $r > /dev/null
  row "$r (group 64)" "$TMP/$r"
  rm -rf "$TMP/$r"
done
