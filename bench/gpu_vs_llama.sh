#!/bin/sh
# anvil vs llama.cpp on one GPU, same GGUF files of a TinyLlama-1.1B-shaped random model, one run:
# serving (anvil serve vs llama-server: 1/8/32/64 clients, ~128-token prompts with a shared prefix, 128
# generated), batched decode (bench/gpu_bench vs llama-batched-bench: 1/8/32 sequences, 16-token
# prompts, 128 generated) and the llama-bench tests (anvil bench vs llama-bench: pp512, tg128; F16,
# Q8_0, Q4_0, Q4_K), two alternating rounds. llama.cpp is built outside the repository (CUDA, e.g.
# from the llama-cpp-python sdist); nothing of it is read from here.
# Usage (repository root, GPU machine): bench/gpu_vs_llama.sh LLAMA_BIN_DIR [BUILD] [MODEL_DIR]
#   LLAMA_BIN_DIR holds llama-server, llama-batched-bench and llama-bench; BUILD holds anvil and
#   gpu_bench (bench/gpu_bench.sh builds it); MODEL_DIR (default BUILD/models/tinyllama-random) is
#   synthesized once.
set -e
L=${1:?usage: bench/gpu_vs_llama.sh LLAMA_BIN_DIR [BUILD] [MODEL_DIR]}
B=${2:-build}
M=${3:-$PWD/$B/models/tinyllama-random}
A=$PWD/$B/anvil
[ -f "$M/model.safetensors" ] || "$A" synth --config bench/configs/tinyllama-1.1b-chat.config.json --out "$M" --dtype bf16 \
  --tokenizer tests/fixtures/llama2-tokenizer > /dev/null
for t in f16 q8_0 q4_0 q4_k; do [ -f "$M-$t.gguf" ] || "$A" convert --model "$M" --out "$M-$t.gguf" --outtype $t > /dev/null; done
[ -d "$M-q4" ] || "$A" convert --model "$M" --out "$M-q4" -q --q-bits 4 --q-group-size 64 > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

echo "### serving (f16 GGUF; anvil: --parallel 64 --ctx-size 512; llama-server: -np 64 -c 32768 -ngl 99)"
AV_SERVE_MODEL=$M AV_SERVE_OUTTYPE=f16 AV_SERVE_PARALLEL=64 AV_SERVE_THREADS=8 AV_LLAMA_ARGS="-ngl 99" \
  AV_SERVE_ARGS="--clients 1,8,32,64 --requests 2 --prompt-words 90 --prefix-words 45 --gen 128" \
  sh bench/serve_vs_llama.sh "$L/llama-server" "$B"

echo "### batched decode (16-token prompts, 128 generated)"
for t in q4_0 f16; do
  "$L/llama-batched-bench" -m "$M-$t.gguf" -ngl 99 -c 8192 -npp 16 -ntg 128 -npl 1,8,32 2>&1 | grep -E "^\|" | sed "s/^/llama.cpp $t /"
  for w in decode batch; do "$PWD/$B/gpu_bench" "$M-$t.gguf" $w 2>&1 | grep workload | sed "s/^/anvil $t /"; done
done
for w in decode batch; do "$PWD/$B/gpu_bench" "$M-q4" $w 2>&1 | grep workload | sed "s/^/anvil mlx-4bit-g64 /"; done

echo "### llama-bench tests (pp512, tg128, 3 repetitions), two alternating rounds"
for r in 1 2; do for t in f16 q8_0 q4_0 q4_k; do
  "$L/llama-bench" -m "$M-$t.gguf" -ngl 99 -p 512 -n 128 -r 3 2>&1 | grep -E "^\| .*(pp|tg)" | sed "s/^/round $r llama.cpp $t /"
  "$A" bench --model "$M-$t.gguf" --device cuda -p 512 -n 128 -r 3 2>&1 | grep -E "^\| .*(pp|tg)" | sed "s/^/round $r anvil $t /"
done; done
