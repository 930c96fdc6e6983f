#!/bin/sh
# anvil lora --workers N (data parallelism on the CPU, the path --gpus takes on GPUs): with the same
# global --batch-size, 2 and 3 workers (LoRA and full fine-tuning) print the one-worker run's train
# and validation losses (every printed digit; tests/test_dp_train.c checks the unrounded values to
# 1e-5 relative), write one set of adapter files and resume; --test after training; --gpus/--workers
# misuse is one stderr line each.
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
D="$AV_DATA/quotes"
[ -d "$D" ] || { echo "FAIL: no data at $D"; exit 1; }
W="$AV_TMP/dp"
mkdir -p "$W"
L="$ANVIL lora --model $M --train --data $D --device cpu --learning-rate 1e-2 --num-layers -1 --batch-size 4 --max-seq-length 48 \
  --steps-per-report 1 --steps-per-eval 4 --val-batches 3 --save-every 4 --seed 3 --iters 8"
losses() { grep -E '^Iter [0-9]+: (Train|Val) loss' "$1" | sed -E 's/(loss [0-9.naif-]+).*/\1/'; }

$L --threads 1 --adapter-path "$W/one" > "$W/one.log" 2> "$W/one.err" || bad "1 worker failed: $(cat "$W/one.err")"
$L --threads 2 --workers 2 --adapter-path "$W/two" > "$W/two.log" 2> "$W/two.err" || bad "2 workers failed: $(cat "$W/two.err")"
losses "$W/one.log" > "$W/one.l"
losses "$W/two.log" > "$W/two.l"
n=$(wc -l < "$W/one.l")
[ "$n" -ge 11 ] && cmp -s "$W/one.l" "$W/two.l" && ok "2 workers print the 1-worker losses ($n lines; last: $(tail -1 "$W/two.l"))" \
  || bad "losses differ: $(diff "$W/one.l" "$W/two.l" | head -6)"
for f in adapters.safetensors adapter_config.json 0000004_adapters.safetensors 0000008_adapters.safetensors best_adapters.safetensors \
         adapters.state.safetensors; do
  [ -f "$W/two/$f" ] || bad "2 workers: missing $f"
done
[ "$(grep -c '^Saved final weights' "$W/two.log")" -eq 1 ] && ok "one set of adapter files, written once" || bad "final save lines: $(grep -c '^Saved final' "$W/two.log")"
cmp -s "$W/one/adapter_config.json" "$W/two/adapter_config.json" && ok "same adapter config" || bad "adapter configs differ"

# 3 workers (uneven shards of 4 rows) and a resume at iteration 4 with 2 workers
$L --threads 2 --workers 3 --iters 4 --adapter-path "$W/three" > "$W/three.log" 2> "$W/three.err" || bad "3 workers failed: $(cat "$W/three.err")"
losses "$W/three.log" > "$W/three.l"
head -6 "$W/one.l" > "$W/one4.l"
cmp -s "$W/one4.l" "$W/three.l" && ok "3 workers (shards of 1, 1, 2 rows) print the same losses" || bad "3 workers differ: $(diff "$W/one4.l" "$W/three.l" | head -4)"
$L --threads 2 --workers 2 --adapter-path "$W/res" --resume-adapter-file "$W/two/0000004_adapters.safetensors" > "$W/res.log" 2> "$W/res.err" \
  || bad "2-worker resume failed: $(cat "$W/res.err")"
losses "$W/two.log" | awk -F'[ :]' '$2 > 4' > "$W/two2.l"
losses "$W/res.log" > "$W/res.l"
grep -q '^Resuming from iteration 4' "$W/res.log" && [ -s "$W/res.l" ] && cmp -s "$W/two2.l" "$W/res.l" && ok "2-worker resume continues the run" \
  || bad "2-worker resume differs: $(diff "$W/two2.l" "$W/res.l" | head -4)"

# --test on rank 0 after data-parallel training (batches of each worker's rows: the same rows; the loss to its printed digits, the ppl = exp(loss) only to ~1e-6)
$L --threads 2 --workers 2 --iters 2 --test --adapter-path "$W/t2" > "$W/t2.log" 2>&1 || bad "--test with workers failed"
$L --threads 1 --iters 2 --test --adapter-path "$W/t1" > "$W/t1.log" 2>&1 || bad "--test failed"
a=$(grep -o '^Test loss [0-9.]*' "$W/t1.log"); b=$(grep -o '^Test loss [0-9.]*' "$W/t2.log")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "same test loss ($a)" || bad "test loss '$a' vs '$b'"

# full fine-tuning: every weight's gradient summed in the one flat buffer
F="$ANVIL lora --model $M --train --data $D --device cpu --fine-tune-type full --optimizer sgd --learning-rate 1e-3 --batch-size 4 \
  --max-seq-length 32 --steps-per-report 1 --steps-per-eval 3 --val-batches 2 --save-every 100 --seed 3 --iters 3"
$F --threads 1 --adapter-path "$W/f1" > "$W/f1.log" 2>&1 || bad "full, 1 worker failed"
$F --threads 2 --workers 2 --adapter-path "$W/f2" > "$W/f2.log" 2>&1 || bad "full, 2 workers failed: $(tail -2 "$W/f2.log")"
losses "$W/f1.log" > "$W/f1.l"; losses "$W/f2.log" > "$W/f2.l"
[ -s "$W/f1.l" ] && cmp -s "$W/f1.l" "$W/f2.l" && [ -f "$W/f2/model.safetensors" ] && ok "full fine-tuning: 2 workers print the 1-worker losses" \
  || bad "full fine-tuning differs: $(diff "$W/f1.l" "$W/f2.l" | head -4)"

# errors: one line each, before any work
B="$ANVIL lora --model $M --train --data $D --iters 1 --adapter-path $W/bad"
expect_error "--gpus with --device cpu" "cannot be mixed with --device cpu" $B --device cpu --gpus 2
expect_error "--gpus without CUDA or GPUs" "^anvil lora: --gpus 2: (this anvil was built without CUDA|no CUDA GPU found|only 1 GPU on this host)" $B --gpus 2
expect_error "--gpus bad list" "expected a count N or a list" $B --gpus 0,x
expect_error "--gpus twice the same" "listed twice" $B --gpus 0,0
expect_error "--workers with --gpus" "cannot be combined" $B --workers 2 --gpus 2
expect_error "--workers on cuda" "on GPUs use --gpus" $B --device cuda --workers 2
expect_error "more workers than rows" "at least the number of workers" $B --device cpu --workers 3 --batch-size 2
expect_error "--dump-grads with workers" "dump-grads" $B --device cpu --workers 2 --dump-grads "$W/g.safetensors"
expect_error "--nnodes without --gpus" "go with --gpus" $B --device cpu --nnodes 2
[ ! -e "$W/bad" ] && ok "nothing written by the refused runs" || bad "a refused run wrote $W/bad"
finish
