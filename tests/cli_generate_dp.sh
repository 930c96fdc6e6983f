#!/bin/sh
# anvil generate --prompts-file F --workers N (the CPU twin of --gpus N): prompts split over worker
# threads with a model copy each print exactly what one worker prints, in prompt order (text and
# JSON ids, greedy and seeded sampling, more workers than prompts); misuse is one stderr line.
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
P="$AV_TMP/prompts.txt"
printf 'Once upon a time\nThe capital of France\nHello\n{"prompt": "A quote:"}\nWhy is the sky\n' > "$P"
G="$ANVIL generate --model $M --prompts-file $P --max-tokens 12 --device cpu --ignore-chat-template"
for args in "" "--json --batch-size 2" "--json --temp 0.8 --seed 5"; do
  $G $args --threads 1 > "$AV_TMP/one" 2> "$AV_TMP/one.err" || bad "1 worker ($args) failed: $(cat "$AV_TMP/one.err")"
  for w in 2 3 7; do
    $G $args --threads 2 --workers $w > "$AV_TMP/w$w" 2> "$AV_TMP/w$w.err" || bad "$w workers ($args) failed: $(cat "$AV_TMP/w$w.err")"
    [ -s "$AV_TMP/one" ] && cmp -s "$AV_TMP/one" "$AV_TMP/w$w" && ok "$w workers = 1 worker ($args)" || bad "$w workers ($args) differ: $(diff "$AV_TMP/one" "$AV_TMP/w$w" | head -4)"
  done
done
grep -q '^Workers: 5 (CPU threads)' "$AV_TMP/w7.err" && ok "workers capped at the prompt count" || bad "workers line: $(cat "$AV_TMP/w7.err")"
expect_error "--workers without --prompts-file" "split a --prompts-file" "$ANVIL" generate --model "$M" --prompt hi --device cpu --workers 2
expect_error "--gpus with --device cpu" "cannot be mixed with --device cpu" $G --gpus 2
expect_error "--gpus on this machine" "^anvil generate: --gpus 0,1: (this anvil was built without CUDA|no CUDA GPU found|GPU 1 does not exist)" $G --device cuda --gpus 0,1
finish
