#!/bin/sh
# GPU benchmark, anvil vs HF transformers/PEFT side by side on one GPU in one run: builds anvil
# (CUDA) and bench/gpu_bench, then bench/gpu_vs_hf.py makes a TinyLlama-1.1B-shaped random bf16
# model with transformers, saves it, and measures both on the same weights.
# usage: bench/gpu_bench.sh [CONFIG_JSON] [OUT_DIR]   (run from the repository root on the GPU machine)
set -e
CONFIG=${1:-bench/configs/tinyllama-1.1b-chat.config.json}
OUT=${2:-/tmp/anvil-gpu-bench}
BUILD=${BUILD:-build}
mkdir -p "$OUT"
make --no-print-directory CUDA=1 -j16 "$BUILD/libanvil.a" >/dev/null
LIBS="-lcjson -lyaml -ledit -lm -lpthread -fopenmp -lopenblas -L${CUDA_HOME:-/usr/local/cuda}/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt"
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -DAV_HAVE_CUDA -Iinclude -Isrc -o "$BUILD/gpu_bench" bench/gpu_bench.c "$BUILD/libanvil.a" $LIBS
PYTHONUNBUFFERED=1 python3 bench/gpu_vs_hf.py --config "$CONFIG" --out "$OUT" --anvil "$BUILD/gpu_bench"
