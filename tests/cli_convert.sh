#!/bin/sh
# anvil convert / quantize: tiny-llama at 8 and 4 bits gives complete MLX-layout directories (config
# "quantization", packed weights, tokenizer files, smaller weights) whose perplexity is close to the
# original (8-bit within 1%, 4-bit within 10%); --dtype without -q re-casts only; --de-quantize gives
# the 4-bit model's perplexity; a mixed recipe writes per-layer entries; bad flags and
# inputs fail with one line and leave no output behind.
. tests/lib.sh
need_fixtures
OUT="$AV_TMP/convert.$$"
rm -rf "$OUT"; mkdir -p "$OUT"
M="$FX/tiny-llama"

if "$ANVIL" convert --model "$M" --out "$OUT/q8" -q --q-bits 8 --q-group-size 32 > "$OUT/q8.log" 2>&1 &&
   "$ANVIL" quantize --model "$M" --out "$OUT/q4" > "$OUT/q4.log" 2>&1 &&
   "$ANVIL" convert --model "$M" --out "$OUT/f32" --dtype f32 > "$OUT/f32.log" 2>&1; then
  ok "convert runs"
else
  bad "convert failed: $(cat "$OUT"/*.log)"
fi
grep -q "Quantized 14 weight matrices to 8 bits (group size 32)" "$OUT/q8.log" && ok "q8 report" || bad "q8 report: $(cat "$OUT/q8.log")"
grep -q "Left 2 weight matrices unquantized" "$OUT/q4.log" && ok "reports unquantized down_proj" || bad "q4 report: $(cat "$OUT/q4.log")"
grep -qE "^Size: [0-9.]+ MB -> [0-9.]+ MB" "$OUT/q4.log" && ok "prints sizes" || bad "sizes: $(cat "$OUT/q4.log")"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json chat_template.jinja; do
  [ -f "$OUT/q4/$f" ] && ok "q4 has $f" || bad "q4 lacks $f"
done
grep -q '"bits":[[:space:]]*4' "$OUT/q4/config.json" && grep -q '"group_size":[[:space:]]*64' "$OUT/q4/config.json" &&
  ok "config quantization entry" || bad "config: $(cat "$OUT/q4/config.json")"
grep -q '"quantization"' "$OUT/f32/config.json" && bad "--dtype alone quantized" || ok "--dtype alone does not quantize"
sz() { wc -c < "$1/model.safetensors"; }
[ "$(sz "$OUT/q4")" -lt "$(sz "$OUT/q8")" ] && [ "$(sz "$OUT/q8")" -lt "$(sz "$M")" ] && ok "4-bit < 8-bit < bf16" || bad "sizes $(sz "$OUT/q4") $(sz "$OUT/q8") $(sz "$M")"
if ls "$OUT" | grep -q '\.tmp-'; then bad "temp directory left behind"; else ok "no temp directories"; fi

TXT="$OUT/text.txt"
printf 'The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.\n' > "$TXT"
ppl() { "$ANVIL" perplexity --device cpu --model "$1" --text-file "$TXT" --json 2>"$OUT/ppl.err" | sed -n 's/.*"ppl":\([^,}]*\).*/\1/p'; }
base=$(ppl "$M"); p8=$(ppl "$OUT/q8"); p4=$(ppl "$OUT/q4"); p32=$(ppl "$OUT/f32")
within() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= t) }'; }
within "$p8" "$base" 0.01 && ok "8-bit perplexity $p8 within 1% of $base" || bad "8-bit perplexity '$p8' vs '$base' $(cat "$OUT/ppl.err")"
within "$p4" "$base" 0.10 && ok "4-bit perplexity $p4 within 10% of $base" || bad "4-bit perplexity '$p4' vs '$base'"
"$ANVIL" convert --model "$OUT/q4" --out "$OUT/deq" --de-quantize --dtype f32 > "$OUT/deq.log" 2>&1 &&
  grep -q "De-quantized 14 weight matrices" "$OUT/deq.log" && ok "de-quantize runs" || bad "de-quantize: $(cat "$OUT/deq.log")"
grep -q '"quantization"' "$OUT/deq/config.json" && bad "de-quantized config keeps quantization" || ok "de-quantized config"
pdq=$(ppl "$OUT/deq")
within "$pdq" "$p4" 1e-5 && ok "de-quantized perplexity $pdq = 4-bit $p4" || bad "de-quantized perplexity '$pdq' vs 4-bit '$p4'"
"$ANVIL" quantize --model "$M" --out "$OUT/mixed" --quant-predicate mixed_3_6 > "$OUT/mixed.log" 2>&1 &&
  grep -q '"model.layers.1.self_attn.v_proj":' "$OUT/mixed/config.json" && ok "mixed recipe writes per-layer entries" || bad "mixed: $(cat "$OUT/mixed.log")"
within "$p32" "$base" 1e-5 && ok "f32 copy perplexity $p32 = $base" || bad "f32 copy perplexity '$p32' vs '$base'"

# errors: one line, non-zero, nothing written
expect_error "bits 7" "q-bits must be 2, 3, 4, 5, 6 or 8" "$ANVIL" convert --model "$M" --out "$OUT/bad1" -q --q-bits 7
expect_error "group 16" "q-group-size must be 32, 64 or 128" "$ANVIL" quantize --model "$M" --out "$OUT/bad2" --q-group-size 16
expect_error "bad recipe" "quant-predicate must be mixed_2_6" "$ANVIL" convert --model "$M" --out "$OUT/bad6" --quant-predicate mixed_5_5
expect_error "de-quantize a float model" "needs a quantized model" "$ANVIL" convert --model "$M" --out "$OUT/bad7" -d
expect_error "bad dtype" "dtype must be bf16, f16 or f32" "$ANVIL" convert --model "$M" --out "$OUT/bad3" --dtype int8
expect_error "missing --out" "out is required" "$ANVIL" convert --model "$M"
expect_error "missing model" "not found" "$ANVIL" convert --model "$OUT/nope" --out "$OUT/bad4" -q
expect_error "existing output" "already exists" "$ANVIL" convert --model "$M" --out "$OUT/q4" -q
expect_error "already quantized" "already quantized" "$ANVIL" convert --model "$OUT/q4" --out "$OUT/bad5" -q
# on a GPU the 4-bit model runs there (bf16 products: near the CPU's value); without one, one line says why
if pg=$("$ANVIL" perplexity --device cuda --model "$OUT/q4" --text-file "$TXT" --json 2>"$OUT/cuda.err" | sed -n 's/.*"ppl":\([^,}]*\).*/\1/p') && [ -n "$pg" ]; then
  within "$pg" "$p4" 0.01 && ok "4-bit on cuda: perplexity $pg within 1% of the CPU's $p4" || bad "4-bit on cuda: '$pg' vs CPU '$p4'"
else
  grep -q -E "no CUDA|not available|GPU" "$OUT/cuda.err" && ok "4-bit on cuda without a GPU: $(head -1 "$OUT/cuda.err")" || bad "4-bit on cuda: $(cat "$OUT/cuda.err")"
fi
for d in bad1 bad2 bad3 bad4 bad5 bad6 bad7; do [ -e "$OUT/$d" ] && bad "$d written"; done
if ls "$OUT" | grep -q '\.tmp-'; then bad "temp directory left behind after errors"; else ok "nothing written on errors"; fi
rm -rf "$OUT"
finish
