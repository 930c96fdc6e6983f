#!/bin/sh
# anvil lora --dropout and --fine-tune-type full on the tiny fixture model and the quotes data:
# dropout changes the training losses but not the seeded determinism, and a run resumed from its
# checkpoint continues with the same losses; full fine-tuning lowers the validation loss, writes
# MLX-LM's layout plus a loadable model directory, resumes exactly, and --test on the output
# matches --test on the model directory; LoRA-only flags with full are refused (one stderr line).
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
D="$AV_DATA/quotes"
[ -d "$D" ] || { echo "FAIL: no data at $D"; exit 1; }
W="$AV_TMP/lora_full"
mkdir -p "$W"
L="$ANVIL lora --model $M --train --data $D --batch-size 2 --max-seq-length 32 --steps-per-report 5 --steps-per-eval 10 \
  --val-batches 2 --save-every 5 --threads 1 --seed 3"
losses() { grep -E '^Iter [0-9]+: (Train|Val) loss' "$1" | sed -E 's/(loss [0-9.naif-]+).*/\1/'; }

# dropout: differs from no dropout; same seed -> same run; exact resume
$L --learning-rate 1e-2 --iters 10 --adapter-path "$W/n0" > "$W/n0.log" 2>&1 || bad "no-dropout run failed"
$L --learning-rate 1e-2 --iters 10 --dropout 0.2 --adapter-path "$W/d1" > "$W/d1.log" 2>&1 || bad "dropout run failed: $(cat "$W/d1.log")"
$L --learning-rate 1e-2 --iters 10 --dropout 0.2 --adapter-path "$W/d2" > "$W/d2.log" 2>&1 || bad "dropout run 2 failed"
[ "$(losses "$W/d1.log")" = "$(losses "$W/d2.log")" ] && ok "dropout: same seed, same losses" || bad "dropout runs differ"
[ "$(losses "$W/d1.log" | grep Train)" != "$(losses "$W/n0.log" | grep Train)" ] && ok "dropout changes the training loss" || bad "dropout 0.2 had no effect"
grep -q '"dropout":[[:space:]]*0.2' "$W/d1/adapter_config.json" && ok "dropout in adapter_config.json" || bad "dropout not recorded"
$L --learning-rate 1e-2 --iters 5 --dropout 0.2 --adapter-path "$W/d3" > /dev/null 2>&1 || bad "short dropout run failed"
$L --learning-rate 1e-2 --iters 10 --resume-adapter-file "$W/d3" --adapter-path "$W/d4" > "$W/d4.log" 2>&1 || bad "resume failed: $(cat "$W/d4.log")"
[ "$(losses "$W/d1.log" | grep -E '^Iter 10: Train')" = "$(losses "$W/d4.log" | grep -E '^Iter 10: Train')" ] \
  && ok "dropout: resumed run continues exactly" || bad "dropout resume differs: $(losses "$W/d4.log")"

# full fine-tuning
if $L --fine-tune-type full --learning-rate 1e-3 --iters 10 --adapter-path "$W/f" > "$W/f.log" 2>&1; then
  v0=$(grep -E '^Iter 0: Val loss' "$W/f.log" | sed -E 's/.*Val loss ([0-9.]+).*/\1/')
  v10=$(grep -E '^Iter 10: Val loss' "$W/f.log" | sed -E 's/.*Val loss ([0-9.]+).*/\1/')
  awk "BEGIN{exit !($v10 < $v0 - 0.3)}" && ok "full: val loss falls ($v0 -> $v10)" || bad "full: val loss '$v0' -> '$v10'"
  grep -qE '^Trainable parameters: 100\.000% ' "$W/f.log" && ok "full: trainable parameters" || bad "full: trainable line"
  for f in adapters.safetensors adapter_config.json model.safetensors config.json tokenizer.json 0000005_adapters.safetensors \
           best_adapters.safetensors adapters.state.safetensors; do [ -f "$W/f/$f" ] || bad "full: missing $f"; done
  grep -q '"fine_tune_type":[[:space:]]*"full"' "$W/f/adapter_config.json" && ok "full: MLX-LM layout" || bad "full: adapter_config.json"
  T="$ANVIL lora --data $D --test --batch-size 2 --max-seq-length 32 --threads 1"
  a=$($T --model "$M" --fine-tune-type full --adapter-path "$W/f" 2>/dev/null | grep '^Test loss')
  b=$($T --model "$W/f" --fine-tune-type full --adapter-path "$W/none" 2>/dev/null | grep '^Test loss')
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "full: output loads as weights and as a model ($a)" || bad "full: '$a' vs '$b'"
  $L --fine-tune-type full --learning-rate 1e-3 --iters 5 --adapter-path "$W/f5" > /dev/null 2>&1 || bad "full: short run failed"
  $L --fine-tune-type full --learning-rate 1e-3 --iters 10 --resume-adapter-file "$W/f5" --adapter-path "$W/f6" > "$W/f6.log" 2>&1 || bad "full: resume failed"
  [ "$(losses "$W/f.log" | grep -E '^Iter 10:')" = "$(losses "$W/f6.log" | grep -E '^Iter 10:')" ] \
    && ok "full: resumed run continues exactly" || bad "full: resume differs"
else
  bad "full fine-tuning failed: $(cat "$W/f.log")"
fi

B="$ANVIL lora --model $M --train --iters 2 --threads 1 --data $D"
expect_error "full + --rank" "LoRA only" $B --fine-tune-type full --rank 4 --adapter-path "$W/x1"
expect_error "full + --dropout" "LoRA only" $B --fine-tune-type full --dropout 0.1 --adapter-path "$W/x2"
expect_error "full + peft" "LoRA format" $B --fine-tune-type full --adapter-format peft --adapter-path "$W/x3"
expect_error "unknown type" "not supported" $B --fine-tune-type dora --adapter-path "$W/x4"
expect_error "dropout 1" "dropout" $B --dropout 1 --adapter-path "$W/x5"
for i in 1 2 3 4 5; do [ -e "$W/x$i" ] && bad "x$i: written after an error"; done
finish
