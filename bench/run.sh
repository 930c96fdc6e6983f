#!/bin/sh
# `make bench`: the main job. Builds a TinyLlama-1.1B-shaped random model once (anvil synth) and
# measures anvil on it; writes bench/out/report.md (and .jsonl) and prints the report.
set -e
BUILD=${1:-build}
ANVIL="$PWD/$BUILD/anvil"
OUT=${AV_BENCH_OUT:-$PWD/bench/out}
MODEL=${AV_BENCH_MODEL:-$PWD/$BUILD/models/tinyllama-1.1b}
mkdir -p "$OUT"
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$ANVIL" synth --preset tinyllama-1.1b --out "$MODEL" --dtype bf16
fi
echo "== anvil bench: $MODEL ($(nproc) cores)"
"$ANVIL" bench --model "$MODEL" --prompt-tokens 512 --gen-tokens 128 --repeat ${AV_BENCH_REPEAT:-3} --json | tee "$OUT/generate.jsonl"
{
  echo "# anvil benchmark report"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%Y-%m-%d)"
  echo
  echo "| suite | metric | value |"
  echo "|---|---|---|"
  sed -n 's/.*"pp_tps":\([0-9.]*\).*"tg_tps":\([0-9.]*\),"tg_gbps":\([0-9.]*\).*"peak_mem_gb":\([0-9.]*\).*/| generate (TinyLlama-1.1B bf16, CPU) | pp512 tok\/s | \1 |\n| generate | tg128 tok\/s | \2 |\n| generate | decode GB\/s | \3 |\n| generate | peak memory GB | \4 |/p' "$OUT/generate.jsonl"
} > "$OUT/report.md.tmp" && mv "$OUT/report.md.tmp" "$OUT/report.md"
cat "$OUT/report.md"
