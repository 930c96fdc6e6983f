#!/bin/sh
# `make bench`: the main job. Runs `anvil bench` with its defaults: every suite (finetune,
# finetune-enhanced, attention, comprehensive, chat, llama) on a TinyLlama-1.1B-shaped random model
# that anvil synthesizes once into ~/.cache/anvil, and writes benchmark_results/<UTC timestamp>/
# (report.md, report.html, summary.json, charts, one log per suite). Extra arguments go to anvil
# bench, e.g. `make bench BENCH_ARGS="--quick"` or `BENCH_ARGS="--model DIR --device cuda"`.
set -e
BUILD=${1:-build}
[ $# -gt 0 ] && shift
exec "$PWD/$BUILD/anvil" bench "$@"
