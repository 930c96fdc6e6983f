#!/bin/sh
# CPU serving benchmark: starts `anvil serve` on a model (default: a ~125M-parameter random-weight
# Llama synthesized once with the Llama-2 tokenizer) on a free loopback port and runs
# bench/serve_load.py at 1, 4 and 8 concurrent clients (streamed greedy completions, distinct prompts);
# prints one JSON line per concurrency. Usage: bench/serve_load.sh [BUILD] (env: AV_SERVE_MODEL,
# AV_SERVE_THREADS, AV_SERVE_PARALLEL, AV_SERVE_ARGS: extra arguments for serve_load.py).
set -e
BUILD=${1:-build}
ANVIL="$PWD/$BUILD/anvil"
MODEL=${AV_SERVE_MODEL:-$PWD/$BUILD/models/serve-125m}
if [ ! -f "$MODEL/model.safetensors" ]; then
  mkdir -p "$MODEL.cfg"
  cat > "$MODEL.cfg/config.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 768,
 "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 4,
 "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
 "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
EOF
  "$ANVIL" synth --config "$MODEL.cfg/config.json" --out "$MODEL" --dtype bf16 --tokenizer "$PWD/tests/fixtures/llama2-tokenizer"
fi
LOG=$(mktemp /tmp/anvil-serve-bench.XXXXXX)
"$ANVIL" serve --model "$MODEL" --port 0 --parallel "${AV_SERVE_PARALLEL:-8}" --ctx-size 512 --threads "${AV_SERVE_THREADS:-$(nproc)}" 2> "$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
PORT=""
for i in $(seq 600); do
  PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$LOG")
  [ -n "$PORT" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(head -1 "$LOG")"
python3 bench/serve_load.py "$PORT" ${AV_SERVE_ARGS:-}
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^anvil_(decode_steps|decode_rows|prefill_chunks|generation_tokens|engine_seconds|prefix_store_(saves|hits))_total'
kill -TERM $PID
wait $PID
