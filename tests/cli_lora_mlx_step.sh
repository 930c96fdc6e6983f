#!/bin/sh
# anvil lora, one iteration from MLX-LM's adapter, against MLX-LM's own training step
# (tests/fixtures/mlx_step: mlx_lm.tuner.trainer.train with iters=1 from the same initial adapter
# and the same two {"text"} rows). For Adam (MLX-LM's default optimizer, no flag), AdamW with bias
# correction (from a config file's optimizer_config) and SGD, the adapter anvil writes must match
# MLX-LM's within the bound of tests/test_mlx_step.c (which does the comparison: --compare), and
# the reported losses must be MLX-LM's. With MLX-LM's default --max-seq-length (2048) anvil gives the
# same adapter: it has no pad column to count (MLX-LM's default_loss would also count each row's
# prediction of the pad id after its last token; the fixture uses --max-seq-length 26 = row length).
. tests/lib.sh
need_fixtures
F="$FX/mlx_step"
CMP="$(dirname "$ANVIL")/tests/test_mlx_step"
[ -x "$CMP" ] || { echo "FAIL: $CMP not built"; exit 1; }
W="$AV_TMP/mlx_step"
mkdir -p "$W"
# the reference is exact f32 arithmetic: the CPU backend (a GPU computes in bf16)
L="$ANVIL lora --device cpu --model $FX/tiny-llama --train --data $F/data --resume-adapter-file $F/init --iters 1 --batch-size 2 \
  --steps-per-report 1 --threads 1"
cat > "$W/adamw.yaml" <<YAML
optimizer: adamw
optimizer_config:
  adamw: {bias_correction: true}
YAML

# MLX-LM's loss before the step: 10.412602425 (reference.safetensors metadata)
for case in adam adamw sgd; do
  case $case in
    adam) args="--learning-rate 1e-3" ;;
    adamw) args="--learning-rate 1e-3 -c $W/adamw.yaml" ;;
    sgd) args="--learning-rate 0.1 --optimizer sgd" ;;
  esac
  if $L $args --max-seq-length 26 --adapter-path "$W/$case" > "$W/$case.log" 2> "$W/$case.err"; then
    grep -q '^Iter 0: Val loss 10\.413,' "$W/$case.log" && grep -q '^Iter 1: Train loss 10\.413,' "$W/$case.log" \
      && ok "$case: losses are MLX-LM's (10.413)" || bad "$case: losses: $(grep '^Iter' "$W/$case.log")"
    if "$CMP" --compare "$case" "$W/$case/adapters.safetensors" > "$W/$case.cmp" 2>&1; then
      ok "$case: $(head -1 "$W/$case.cmp")"
    else
      bad "$case: adapter differs from MLX-LM's: $(head -3 "$W/$case.cmp")"
    fi
  else
    bad "$case: anvil lora failed: $(cat "$W/$case.err")"
  fi
done

# the wrong reference fails (the comparison has teeth)
"$CMP" --compare adamw "$W/adam/adapters.safetensors" > /dev/null 2>&1 && bad "adam's adapter passes as adamw's" || ok "adam's adapter is not adamw's"

# MLX-LM's default --max-seq-length: no padding is counted, same adapter bytes
if $L --learning-rate 1e-3 --adapter-path "$W/adam2048" > "$W/adam2048.log" 2>&1; then
  cmp -s "$W/adam/adapters.safetensors" "$W/adam2048/adapters.safetensors" && ok "--max-seq-length 2048: same adapter" \
    || bad "--max-seq-length 2048 changes the step"
else
  bad "default --max-seq-length run failed: $(tail -2 "$W/adam2048.log")"
fi
# an adapter_config.json without lora_parameters.keys (MLX-LM writes none for its default set): the
# projections come from the tensors in the file, and the adapter applies as with explicit keys
mkdir -p "$W/nokeys" && cp "$FX/mlx_step/init/adapters.safetensors" "$W/nokeys/"
printf '{"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": 4, "dropout": 0.0, "scale": 10.0}}' \
  > "$W/nokeys/adapter_config.json"
g() { "$ANVIL" generate --device cpu --model "$FX/tiny-llama" --prompt "Share a quote." --max-tokens 6 --json "$@" 2>/dev/null | sed 's/.*"ids":\(\[[^]]*\]\).*/\1/'; }
a=$(g --adapter-path "$FX/mlx_step/init"); b=$(g --adapter-path "$W/nokeys")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "config without keys: projections read from the weights ($b)" || bad "config without keys: '$b' vs '$a'"
finish
