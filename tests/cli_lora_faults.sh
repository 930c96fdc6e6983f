#!/bin/sh
# `anvil lora` under faults. A model whose final norm holds a NaN (a copy of the tiny fixture with
# one bf16 value patched) makes the loss NaN: training stops with one line naming the iteration and
# writes no adapter; with --skip-nonfinite the steps are skipped (one warning each) and the run
# ends with finite weights. Under AV_TEST_LONG=1: the adapter directory on a small tmpfs fills up
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

# 1. NaN loss
cp -rL "$M" "$W/nan-model"
f="$W/nan-model/model.safetensors"
sz=$(stat -c %s "$f")
printf '\300\177' | dd of="$f" bs=1 seek=$((sz - 2)) conv=notrunc 2>/dev/null # last bf16 of model.norm.weight = NaN
expect_error "NaN loss stops naming the iteration" '^anvil lora: error: iteration 1: the training loss is nan' \
  $L --model "$W/nan-model" --iters 4 --adapter-path "$W/nan"
ls "$W/nan"/*.safetensors > /dev/null 2>&1 && bad "a NaN run wrote weights: $(ls "$W/nan")" || ok "no adapter written by the NaN run"
if $L --model "$W/nan-model" --iters 4 --adapter-path "$W/skip" --skip-nonfinite > "$W/skip.log" 2> "$W/skip.err"; then
  [ "$(grep -c 'warning: iteration [0-9]*: training loss is nan; step skipped' "$W/skip.err")" = 4 ] && ok "--skip-nonfinite skips each NaN step" \
    || bad "--skip-nonfinite warnings: $(cat "$W/skip.err")"
  [ -f "$W/skip/adapters.safetensors" ] && ok "--skip-nonfinite run saved its (finite) adapter" || bad "no adapter after --skip-nonfinite"
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
