#!/bin/sh
# anvil lora end to end on the tiny fixture model and the quotes chat data: validation loss falls,
# same seed -> same losses, an interrupted run resumed from its checkpoint prints the same losses
# as the uninterrupted one, PEFT output + --test alone, config file, every optimizer (PyTorch's
# AdamW, SGD with momentum from optimizer_config, Adafactor) resuming exactly, and bad inputs (one
# stderr line, non-zero exit, no adapter written).
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
D="$AV_DATA/quotes"
[ -d "$D" ] || { echo "FAIL: no data at $D"; exit 1; }
W="$AV_TMP/lora"
mkdir -p "$W"
# small and fast: 2 rows per batch, 48 tokens, one thread (deterministic, and the box has 2 cores)
L="$ANVIL lora --model $M --train --data $D --learning-rate 1e-2 --num-layers -1 --batch-size 2 --max-seq-length 48 \
  --steps-per-report 5 --steps-per-eval 25 --val-batches 3 --save-every 25 --threads 1"
losses() { grep -E '^Iter [0-9]+: (Train|Val) loss' "$1" | sed -E 's/(loss [0-9.naif-]+).*/\1/'; }

# 1. 50 iterations: validation loss falls; files as MLX-LM writes them
if $L --seed 3 --iters 50 --adapter-path "$W/a" > "$W/a.log" 2> "$W/a.err"; then
  v0=$(grep -E '^Iter 0: Val loss' "$W/a.log" | sed -E 's/.*Val loss ([0-9.]+).*/\1/')
  v50=$(grep -E '^Iter 50: Val loss' "$W/a.log" | sed -E 's/.*Val loss ([0-9.]+).*/\1/')
  if [ -n "$v0" ] && [ -n "$v50" ] && awk "BEGIN{exit !($v50 < $v0 - 0.3)}"; then ok "val loss falls ($v0 -> $v50)"; else bad "val loss did not fall: '$v0' -> '$v50'"; fi
  grep -qE '^Iter 50: Train loss [0-9.]+, Learning Rate 1\.000e-02, It/sec [0-9.]+, Tokens/sec [0-9.]+, Trained Tokens [0-9]+, Peak mem [0-9.]+ GB$' "$W/a.log" \
    && ok "report line format" || bad "report line format: $(grep 'Iter 50: Train' "$W/a.log")"
  grep -qE '^Trainable parameters: [0-9.]+% \([0-9.]+M/[0-9.]+M\)$' "$W/a.log" && ok "trainable parameters line" || bad "no trainable parameters line"
  grep -qE '^Iter 25: Val loss [0-9.]+, Val took [0-9.]+s$' "$W/a.log" && ok "val line format" || bad "val line format"
  grep -q 'truncated to 48' "$W/a.err" && ok "truncation warning" || bad "no truncation warning: $(cat "$W/a.err")"
  for f in adapters.safetensors adapter_config.json 0000025_adapters.safetensors 0000050_adapters.safetensors \
           best_adapters.safetensors adapters.state.safetensors 0000025_adapters.state.safetensors; do
    [ -f "$W/a/$f" ] || bad "missing $f"
  done
  ok "adapter files"
else
  bad "training failed: $(cat "$W/a.err")"
fi

# 2. same seed -> same losses (a shorter run shares the first 10 iterations); another seed differs
$L --seed 3 --iters 10 --adapter-path "$W/b" > "$W/b.log" 2>&1 || bad "run b failed"
losses "$W/a.log" | grep -E '^Iter (0: Val|5: Train|10: Train)' > "$W/a10"
losses "$W/b.log" | grep -E '^Iter (0: Val|5: Train|10: Train)' > "$W/b10"
[ -s "$W/b10" ] && cmp -s "$W/a10" "$W/b10" && ok "same seed, same losses" || bad "same seed, different losses: $(diff "$W/a10" "$W/b10" | head -4)"
$L --seed 4 --iters 5 --adapter-path "$W/c" > "$W/c.log" 2>&1 || bad "run c failed"
[ "$(losses "$W/c.log" | grep '^Iter 5:')" != "$(grep '^Iter 5:' "$W/a10")" ] && ok "other seed, other losses" || bad "seed has no effect"

# 3. interrupted at 25 and resumed: the second half is the same, to the last digit
$L --seed 3 --iters 50 --adapter-path "$W/r" --resume-adapter-file "$W/a/0000025_adapters.safetensors" > "$W/r.log" 2> "$W/r.err" \
  || bad "resume failed: $(cat "$W/r.err")"
grep -q '^Resuming from iteration 25' "$W/r.log" && ok "resumed at iteration 25" || bad "did not resume the state: $(head -8 "$W/r.log")"
losses "$W/a.log" | awk -F'[ :]' '$2 > 25' > "$W/a2"
losses "$W/r.log" > "$W/r2"
[ -s "$W/r2" ] && cmp -s "$W/a2" "$W/r2" && ok "resumed run matches the uninterrupted one" || bad "resume differs: $(diff "$W/a2" "$W/r2" | head -6)"
cmp -s "$W/a/adapters.safetensors" "$W/r/adapters.safetensors" && ok "same final adapter bytes" || bad "final adapters differ"

# 4. PEFT format, then --test alone from that directory (via -c config.yaml)
$L --seed 3 --iters 5 --adapter-format peft --adapter-path "$W/p" > "$W/p.log" 2> "$W/p.err" || bad "peft run failed: $(cat "$W/p.err")"
[ -f "$W/p/adapter_model.safetensors" ] && [ -f "$W/p/adapter_config.json" ] && [ -f "$W/p/best/adapter_model.safetensors" ] \
  && grep -q '"peft_type"' "$W/p/adapter_config.json" && ok "PEFT files" || bad "PEFT files missing: $(ls -R "$W/p")"
cat > "$W/cfg.yaml" <<YAML
model: $M
data: $D
test: true
batch_size: 2
max_seq_length: 48
adapter_path: $W/p
test_batches: -1
threads: 1
YAML
$ANVIL lora -c "$W/cfg.yaml" > "$W/t.log" 2> "$W/t.err"
grep -qE '^Test loss [0-9.]+, Test ppl [0-9.]+\.$' "$W/t.log" && ok "--test alone with a PEFT adapter and a config file" \
  || bad "--test: $(cat "$W/t.log" "$W/t.err")"

# 5. the other optimizers: each resumed at 5 continues exactly; the state names its optimizer
cat > "$W/sgd.yaml" <<YAML
optimizer: sgd
optimizer_config:
  sgd: {momentum: 0.9, nesterov: true}
  adam: {betas: [0.8, 0.9]}
YAML
for opt in "adamw --bias-correction" "sgd -c $W/sgd.yaml" adafactor; do
  n=$(echo "$opt" | cut -d' ' -f1)
  $L --seed 3 --iters 10 --save-every 5 --steps-per-eval 10 --optimizer $opt --adapter-path "$W/o_$n" > "$W/o_$n.log" 2> "$W/o_$n.err" \
    || bad "$n: training failed: $(cat "$W/o_$n.err")"
  $L --seed 3 --iters 10 --save-every 5 --steps-per-eval 10 --optimizer $opt --adapter-path "$W/o_${n}r" \
    --resume-adapter-file "$W/o_$n/0000005_adapters.safetensors" > "$W/o_${n}r.log" 2> "$W/o_${n}r.err" || bad "$n: resume failed: $(cat "$W/o_${n}r.err")"
  losses "$W/o_$n.log" | awk -F'[ :]' '$2 > 5' > "$W/o_$n.2"
  losses "$W/o_${n}r.log" > "$W/o_${n}r.2"
  [ -s "$W/o_$n.2" ] && cmp -s "$W/o_$n.2" "$W/o_${n}r.2" && ok "$n: resumed run matches" || bad "$n: resume differs: $(diff "$W/o_$n.2" "$W/o_${n}r.2" | head -4)"
done
[ "$(losses "$W/o_adamw.log" | grep '^Iter 10: Train')" != "$(grep '^Iter 10: Train' "$W/a10")" ] && ok "adamw --bias-correction differs from adam" \
  || bad "the optimizer had no effect"
expect_error "resume with another optimizer" "written by optimizer adam; this run uses sgd" $L --seed 3 --iters 30 --optimizer sgd --max-seq-length 100 \
  --adapter-path "$W/x10" --resume-adapter-file "$W/a/0000025_adapters.safetensors"

# 6. bad inputs: one stderr line, non-zero exit, nothing written
B="$ANVIL lora --model $M --train --iters 2 --threads 1"
expect_error "missing data dir" "not found" $B --data "$W/nodata" --adapter-path "$W/x1"
mkdir -p "$W/bad"
cp "$D/valid.jsonl" "$W/bad/valid.jsonl"
head -3 "$D/train.jsonl" > "$W/bad/train.jsonl"
echo '{"messages": [{"role": "user"}]}' >> "$W/bad/train.jsonl"
expect_error "malformed line" "train.jsonl:4: message 1" $B --data "$W/bad" --adapter-path "$W/x2"
printf '{"text": "a"}\n{"text": "b"\n' > "$W/bad/train.jsonl"
expect_error "bad JSON line" "train.jsonl:2: invalid JSON" $B --data "$W/bad" --adapter-path "$W/x3"
head -3 "$D/train.jsonl" > "$W/bad/train.jsonl"
expect_error "fewer rows than the batch" "at least batch_size=4" $B --data "$W/bad" --adapter-path "$W/x4"
expect_error "absurd batch size" "batch-size" $B --data "$D" --batch-size -3 --adapter-path "$W/x5"
expect_error "absurd learning rate" "learning-rate" $B --data "$D" --learning-rate abc --adapter-path "$W/x6"
expect_error "too many layers" "only has 2 layers|only 2 layers" $B --data "$D" --num-layers 99 --adapter-path "$W/x7"
expect_error "unknown lora key" "unknown projection" $B --data "$D" --lora-keys q_proj,foo --adapter-path "$W/x8"
expect_error "resume from nothing" "not found" $B --data "$D" --resume-adapter-file "$W/none.safetensors" --adapter-path "$W/x9"
expect_error "nothing to do" "nothing to do" $ANVIL lora --model "$M" --data "$D"
expect_error "unknown optimizer" "muon is not supported" $B --data "$D" --optimizer muon --adapter-path "$W/x11"
expect_error "weight decay with adam" "adam has no weight decay" $B --data "$D" --weight-decay 0.1 --adapter-path "$W/x12"
expect_error "bias correction with sgd" "bias-correction applies to adam" $B --data "$D" --optimizer sgd --bias-correction --adapter-path "$W/x13"
printf 'optimizer_config:\n  adam: {weight_decay: 0.1}\n' > "$W/bad.yaml"
expect_error "adam has no weight_decay argument" "optimizer_config.adam: weight_decay is not an argument" $B --data "$D" -c "$W/bad.yaml" --adapter-path "$W/x14"
printf 'optimizer: sgd\noptimizer_config:\n  sgd: {nesterov: true}\n' > "$W/bad2.yaml"
expect_error "nesterov without momentum" "nesterov momentum requires a momentum" $B --data "$D" -c "$W/bad2.yaml" --adapter-path "$W/x15"
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do [ -e "$W/x$i" ] && bad "x$i: adapter written after an error"; done
ok "no adapter written on errors"
# --profile: one table of the steps' phases at the end
"$ANVIL" lora --model "$M" --train --data "$D" --iters 2 --batch-size 2 --profile --adapter-path "$AV_TMP/prof" > "$AV_TMP/prof.log" 2>&1 \
  && grep -q '^Profile (ms over the run.*xent [0-9.]* (' "$AV_TMP/prof.log" && ok "--profile prints the phase table" \
  || bad "--profile: $(tail -2 "$AV_TMP/prof.log")"
finish
