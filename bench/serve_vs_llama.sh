#!/bin/sh
# anvil serve and llama-server side by side on one machine, same weights, same load: the model of
# bench/serve_load.sh (synthesized once) is written to GGUF by `anvil convert`, then bench/serve_load.py
# drives each server in turn (streamed greedy /v1/completions, distinct prompts).
# Usage: bench/serve_vs_llama.sh LLAMA_SERVER [BUILD]   (env: AV_SERVE_THREADS, AV_SERVE_PARALLEL,
# AV_SERVE_ARGS as in serve_load.sh; AV_SERVE_OUTTYPE: GGUF type, default f16; AV_LLAMA_ARGS: extra
# llama-server arguments, e.g. "-ngl 99" on a GPU)
set -e
LLAMA=${1:?usage: bench/serve_vs_llama.sh LLAMA_SERVER [BUILD]}
BUILD=${2:-build}
MODEL=${AV_SERVE_MODEL:-$PWD/$BUILD/models/serve-125m}
THREADS=${AV_SERVE_THREADS:-$(nproc)}
PAR=${AV_SERVE_PARALLEL:-8}
OT=${AV_SERVE_OUTTYPE:-f16}
echo "## anvil serve"
sh bench/serve_load.sh "$BUILD"
GGUF="$MODEL-$OT.gguf"
[ -f "$GGUF" ] || "$PWD/$BUILD/anvil" convert --model "$MODEL" --out "$GGUF" --outtype "$OT" > /dev/null
LOG=$(mktemp /tmp/llama-serve-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$LLAMA" -m "$GGUF" --host 127.0.0.1 --port "$PORT" -np "$PAR" -c $((PAR * 512)) -t "$THREADS" ${AV_LLAMA_ARGS:-} > "$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for i in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done
echo "## llama-server ($("$LLAMA" --version 2>&1 | grep -m1 version), $OT GGUF, -np $PAR, -t $THREADS ${AV_LLAMA_ARGS:-})"
python3 bench/serve_load.py "$PORT" ${AV_SERVE_ARGS:-}
