#!/bin/sh
# Asking for more memory than the machine has fails before any work, with one line naming what
# needed how much (the memory planner's total against MemAvailable), never an OOM kill: a KV cache
# of 10^8 tokens for `anvil generate`, and `anvil lora` on a batch of rows so long that its
# attention buffers exceed twice the available memory (a copy of the tiny model with a long context).
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
W="$AV_TMP/res"
mkdir -p "$W"
avail_kb=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo 2>/dev/null)
[ -n "$avail_kb" ] || skip_all "no MemAvailable in /proc/meminfo"

# 1. KV cache: 10^8 tokens x 2 layers x 2 x 32 floats = 47.7 GiB (only where that is more than is available)
if [ "$avail_kb" -lt 40000000 ]; then
  expect_error "huge --max-kv-size: one line before any work" 'KV cache: session buffers: needs [0-9.]+ GiB, only [0-9.]+ GiB of (CPU|GPU) memory is available' \
    $ANVIL generate --model "$M" --prompt hi --max-tokens 4 --max-kv-size 100000000
  [ -s "$AV_TMP/out.$$" ] && bad "generate printed output before failing: $(head -2 "$AV_TMP/out.$$")" || ok "nothing generated"
else
  skip "huge --max-kv-size: this machine has more than 40 GB available"
fi

# 2. absurd batch flags on the small quotes data: refused before the model is loaded
expect_error "--batch-size 100000 --max-seq-length 100000" 'dataset must have at least batch_size=100000 examples' \
  $ANVIL lora --model "$M" --train --data "$AV_DATA/quotes" --batch-size 100000 --max-seq-length 100000 --iters 1 --adapter-path "$W/q"

# 3. training batch: rows of L=30000 tokens with standard attention, whose probabilities alone take rows x 4
#    heads x L^2 x 4 bytes (flash attention, the CPU default, would not hold them)
cp -rL "$M" "$W/long"
sed -i 's/"max_position_embeddings": 2048/"max_position_embeddings": 1048576/' "$W/long/config.json"
rows=$(awk -v a="$avail_kb" 'BEGIN{n = int(2 * a * 1024 / (16 * 30000 * 30000)) + 2; print n < 4 ? 4 : n}')
mkdir -p "$W/data"
awk -v n="$rows" 'BEGIN{s = "the"; for (i = 1; i < 30000; i++) s = s " the"; for (r = 0; r < n; r++) printf "{\"text\": \"%s\"}\n", s}' > "$W/data/train.jsonl"
cp "$W/data/train.jsonl" "$W/data/valid.jsonl"
expect_error "batch that cannot fit: one line before any work" 'train: a [0-9]+ x [0-9]+ batch: training buffers: needs [0-9.]+ GiB, only [0-9.]+ GiB of (CPU|GPU) memory is available' \
  $ANVIL lora --model "$W/long" --train --data "$W/data" --batch-size "$rows" --max-seq-length 100000 --iters 1 --threads 1 --attention standard --adapter-path "$W/out"
grep -q 'Starting training' "$AV_TMP/out.$$" && bad "training started before the memory check" || ok "no training started"
[ -e "$W/out/adapters.safetensors" ] && bad "adapter written" || ok "no adapter written"
finish
