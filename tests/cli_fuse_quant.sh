#!/bin/sh
# anvil fuse on a quantized base (tiny-llama at 4 bits, group 64; the fixture's PEFT adapter): the
# default output is de-quantized and equals, bit for bit in f32, fusing onto `convert --de-quantize`;
# in bf16 its perplexity is that of base + adapter (1e-3: one rounding); config.json loses
# "quantization". --requantize (also on a mixed_3_6 base) keeps the base's quantization config,
# loads, and prints the KL it costs. Bad combinations fail with one line and write nothing.
. tests/lib.sh
need_fixtures
OUT="$AV_TMP/fuseq.$$"
rm -rf "$OUT"; mkdir -p "$OUT"
M="$FX/tiny-llama"; A="$FX/tiny-llama-lora"
TXT="$OUT/text.txt"
printf 'The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.\n' > "$TXT"
nll() { "$ANVIL" perplexity --device cpu "$@" --text-file "$TXT" --json 2>/dev/null | sed -n 's/.*"mean_nll":\([^,}]*\).*/\1/p'; }
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= t) }'; }

"$ANVIL" quantize --model "$M" --out "$OUT/q4" > /dev/null 2>&1 &&
"$ANVIL" quantize --model "$M" --out "$OUT/mixed" --quant-predicate mixed_3_6 > /dev/null 2>&1 &&
"$ANVIL" convert --model "$OUT/q4" --out "$OUT/deq32" --de-quantize --dtype f32 > /dev/null 2>&1 &&
"$ANVIL" convert --model "$OUT/q4" --out "$OUT/deq" --de-quantize > /dev/null 2>&1 && ok "quantized and de-quantized bases" || bad "convert failed"

# de-quantized fuse
if "$ANVIL" fuse --model "$OUT/q4" --adapter-path "$A" --save-path "$OUT/f32" --dtype f32 > "$OUT/f32.log" 2>&1 &&
   "$ANVIL" fuse --model "$OUT/deq32" --adapter-path "$A" --save-path "$OUT/ref32" > /dev/null 2>&1 &&
   "$ANVIL" fuse --model "$OUT/q4" --adapter-path "$A" --save-path "$OUT/bf16" > "$OUT/bf16.log" 2>&1 &&
   "$ANVIL" fuse --model "$OUT/deq" --adapter-path "$A" --save-path "$OUT/refbf16" > /dev/null 2>&1; then
  ok "fuse on a quantized base runs"
else
  bad "fuse failed: $(cat "$OUT"/*.log)"
fi
grep -q "Fused 14 adapters .* (de-quantized from 4 bits)" "$OUT/bf16.log" && ok "reports de-quantization" || bad "report: $(cat "$OUT/bf16.log")"
cmp -s "$OUT/f32/model.safetensors" "$OUT/ref32/model.safetensors" && ok "f32: = fuse onto convert --de-quantize, bit for bit" ||
  bad "f32 fused weights differ from fusing onto the de-quantized base"
grep -q '"quantization' "$OUT/bf16/config.json" && bad "de-quantized config keeps quantization" || ok "config without quantization"
grep -q '"float32"' "$OUT/f32/config.json" && ok "f32 config dtype" || bad "f32 config: $(cat "$OUT/f32/config.json")"
for f in tokenizer.json tokenizer_config.json chat_template.jinja; do [ -f "$OUT/bf16/$f" ] && ok "has $f" || bad "lacks $f"; done
ref=$(nll --model "$OUT/q4" --adapter-path "$A"); b16=$(nll --model "$OUT/bf16"); rb=$(nll --model "$OUT/refbf16")
near "$b16" "$ref" 1e-3 && ok "bf16 fused NLL $b16 ~ quantized base + adapter $ref" || bad "bf16 fused NLL '$b16' vs '$ref'"
near "$b16" "$rb" 1e-3 && ok "bf16 fused NLL ~ fuse onto the de-quantized base $rb" || bad "bf16 '$b16' vs de-quantized route '$rb'"

# --requantize: the base's quantization config, loadable, KL printed
if "$ANVIL" fuse --model "$OUT/q4" --adapter-path "$A" --save-path "$OUT/rq" --requantize > "$OUT/rq.log" 2>&1 &&
   "$ANVIL" fuse --model "$OUT/mixed" --adapter-path "$A" --save-path "$OUT/rqm" --requantize --kl-text "$TXT" --kl-tokens 12 > "$OUT/rqm.log" 2>&1; then
  ok "--requantize runs"
else
  bad "--requantize failed: $(cat "$OUT/rq.log" "$OUT/rqm.log")"
fi
cmp -s "$OUT/rq/config.json" "$OUT/q4/config.json" && cmp -s "$OUT/rqm/config.json" "$OUT/mixed/config.json" &&
  ok "requantized configs = the bases' (per-layer entries kept)" || bad "requantized config differs"
kl=$(sed -n 's/.*KL(fused || requantized) mean \([^,]*\),.*/\1/p' "$OUT/rq.log")
awk -v k="$kl" 'BEGIN { exit !(k != "" && k > 0 && k < 0.05) }' && ok "requantization KL $kl printed" || bad "KL report: $(cat "$OUT/rq.log")"
grep -q "over 11 positions of $TXT" "$OUT/rqm.log" && ok "--kl-text / --kl-tokens" || bad "mixed report: $(cat "$OUT/rqm.log")"
rq=$(nll --model "$OUT/rq"); rqm=$(nll --model "$OUT/rqm")
[ -n "$rq" ] && [ -n "$rqm" ] && ok "requantized models load (NLL $rq, $rqm)" || bad "requantized models do not load"
if ls "$OUT" | grep -q '\.tmp-'; then bad "temp directory left behind"; else ok "no temp directories"; fi

# errors: one line, non-zero, nothing written
expect_error "requantize a float base" "needs a quantized base" "$ANVIL" fuse --model "$M" --adapter-path "$A" --save-path "$OUT/e1" --requantize
expect_error "requantize with --dtype" "drop --dtype" "$ANVIL" fuse --model "$OUT/q4" --adapter-path "$A" --save-path "$OUT/e2" --requantize --dtype f32
expect_error "missing --kl-text" "nope" "$ANVIL" fuse --model "$OUT/q4" --adapter-path "$A" --save-path "$OUT/e3" --requantize --kl-text "$OUT/nope"
expect_error "--kl-text without --requantize" "needs --requantize" "$ANVIL" fuse --model "$OUT/q4" --adapter-path "$A" --save-path "$OUT/e4" --kl-text "$TXT"
for d in e1 e2 e3 e4; do [ -e "$OUT/$d" ] && bad "$d written"; done
if ls "$OUT" | grep -q '\.tmp-'; then bad "temp directory left behind after errors"; else ok "nothing written on errors"; fi
rm -rf "$OUT"
finish
