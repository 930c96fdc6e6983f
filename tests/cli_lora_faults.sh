#!/bin/sh
# `anvil lora` under faults. A NaN planted in one embedding row (a copy of the tiny fixture with
# one bf16 value patched) makes the loss NaN at the one iteration whose batch uses that token:
# training stops with one line naming it, nothing of that step is written and the previous
# checkpoint stays; with --skip-nonfinite that step is skipped (one warning) and the run finishes. Under AV_TEST_LONG=1: the adapter directory on a small tmpfs fills up
# during a checkpoint: one clear line, non-zero exit, and the previous checkpoint intact (it is the
# uninterrupted run's checkpoint of that iteration, byte for byte, and resuming from it works).
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
D="$AV_DATA/quotes"
W="$AV_TMP/faults"
mkdir -p "$W"
L="$ANVIL lora --train --data $D --learning-rate 1e-2 --num-layers -1 --batch-size 2 --max-seq-length 128 \
  --steps-per-report 2 --steps-per-eval 100 --val-batches 1 --save-every 1 --threads 1 --seed 5"

# 1. NaN loss mid-run: a copy of the tiny model whose embedding row of token 4096 ("anz") is NaN,
# and data where only one row ("... Zanzibar") holds that token; with seed 6 and one row per batch
# it is the batch of iteration 5
cp -rL "$M" "$W/nan-model"
f="$W/nan-model/model.safetensors"
hlen=$(od -An -tu8 -N8 "$f" | tr -d ' ')
# model.embed_tokens.weight (bf16 [32000, 64]) starts 4096000 bytes into the data; first value of row 4096 = NaN
printf '\300\177' | dd of="$f" bs=1 seek=$((8 + hlen + 4096000 + 4096 * 128)) conv=notrunc 2>/dev/null
mkdir -p "$W/nan-data"
for t in "the cat sat on the mat" "a dog ran to the park" "we like to read books" "the sun is warm today" "my friend has a red car" \
         "she sings a happy song" "he drinks hot tea" "the bird flies over the tree" "it is a good day" "they play in the garden" \
         "the boy reads a story" "the girl draws a house" "we walk by the river" "the cat sleeps on the bed" "I see the blue sky" \
         "the ship sailed to Zanzibar"; do
  echo "{\"text\": \"$t\"}"
done > "$W/nan-data/train.jsonl"
head -4 "$W/nan-data/train.jsonl" > "$W/nan-data/valid.jsonl"
N="$ANVIL lora --model $W/nan-model --train --data $W/nan-data --batch-size 1 --iters 16 --save-every 1 --steps-per-eval 100 \
  --val-batches 1 --threads 1 --seed 6"
expect_error "NaN loss stops naming the iteration" '^anvil lora: error: iteration 5: the training loss is nan; stopping' \
  $N --adapter-path "$W/nan"
[ -f "$W/nan/0000005_adapters.safetensors" ] && bad "the NaN iteration was checkpointed" || ok "nothing of the NaN step written"
cmp -s "$W/nan/adapters.safetensors" "$W/nan/0000004_adapters.safetensors" && ok "the last checkpoint (iteration 4) is kept" \
  || bad "adapters.safetensors is not iteration 4's checkpoint"
if $N --adapter-path "$W/skip" --skip-nonfinite > "$W/skip.log" 2> "$W/skip.err"; then
  grep -qx 'anvil lora: warning: iteration 5: training loss is nan; step skipped' "$W/skip.err" && [ "$(wc -l < "$W/skip.err")" = 1 ] \
    && ok "--skip-nonfinite skips the NaN step with one warning" || bad "--skip-nonfinite warnings: $(cat "$W/skip.err")"
  grep -q '^Saved final weights' "$W/skip.log" && ok "--skip-nonfinite run finished with finite weights" || bad "no final weights after --skip-nonfinite"
else
  bad "--skip-nonfinite run failed: $(cat "$W/skip.err")"
fi

# 2. full disk during a checkpoint (test-long)
if [ "${AV_TEST_LONG:-0}" = 1 ]; then
  mnt="$W/mnt"; mkdir -p "$mnt"
  if mount -t tmpfs -o size=400k tmpfs "$mnt" 2>/dev/null; then
    $L --model "$M" --iters 12 --adapter-path "$W/ref" > /dev/null 2>&1 || bad "reference run failed"
    expect_error "disk full during a checkpoint" 'anvil lora: error: .*(No space left on device|disk full)' \
      $L --model "$M" --iters 12 --adapter-path "$mnt/a"
    last=$(grep -o '^Iter [0-9]*: Saved' "$AV_TMP/out.$$" | tail -1 | grep -o '[0-9][0-9]*')
    if [ -n "$last" ]; then
      tag=$(printf '%07d' "$last")
      cmp -s "$mnt/a/adapters.safetensors" "$W/ref/${tag}_adapters.safetensors" && cmp -s "$mnt/a/adapters.state.safetensors" "$W/ref/${tag}_adapters.state.safetensors" \
        && ok "previous checkpoint (iteration $last) intact" || bad "checkpoint of iteration $last damaged"
      cp -r "$mnt/a" "$W/resume"
      umount "$mnt"
      $L --model "$M" --iters 12 --adapter-path "$W/resume" --resume-adapter-file "$W/resume/adapters.safetensors" > "$W/r.log" 2>&1 \
        && grep -q "^Resuming from iteration $last" "$W/r.log" && cmp -s "$W/resume/adapters.safetensors" "$W/ref/adapters.safetensors" \
        && ok "resumed after the full disk: same final adapter" || bad "resume after full disk: $(tail -3 "$W/r.log")"
    else
      umount "$mnt"
      bad "no checkpoint was written before the disk filled: $(cat "$AV_TMP/out.$$" | tail -3)"
    fi
  else
    skip "full disk: cannot mount a tmpfs here (needs root)"
  fi
fi
finish
