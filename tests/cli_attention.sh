# --attention flash|standard|auto: generate gives the same greedy ids with each (a prompt longer than
# the 64 rows where auto switches to flash, and a short one), perplexity the same mean NLL within
# 1e-6 relative, a few CPU LoRA steps the same reported losses; chat takes the flag; a bad value is a
# one-line error.
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
D="$AV_DATA/quotes"
[ -d "$D" ] || { echo "FAIL: no data at $D"; exit 1; }
long="Once upon a time, there was a little llama who lived high in the mountains. Every morning she climbed to the top of the hill, looked at the clouds, counted the goats and sang a song about the river, the wind and the long road to the city by the sea."
ids_of() { sed 's/.*"ids":\(\[[^]]*\]\).*/\1/'; }
for p in "$long" "Hello there"; do
  ref=$("$ANVIL" generate --device cpu --model "$M" --prompt "$p" --max-tokens 16 --attention standard --json 2>/dev/null | ids_of)
  n=$("$ANVIL" generate --device cpu --model "$M" --prompt "$p" --max-tokens 1 --json 2>/dev/null | sed 's/.*"prompt_ids":\(\[[^]]*\]\).*/\1/' | tr ',' '\n' | wc -l)
  for a in flash auto; do
    got=$("$ANVIL" generate --device cpu --model "$M" --prompt "$p" --max-tokens 16 --attention $a --json 2>/dev/null | ids_of)
    [ -n "$ref" ] && [ "$got" = "$ref" ] && ok "generate --attention $a = standard ($n prompt tokens)" || bad "generate --attention $a ($n prompt tokens): $got vs $ref"
  done
done
TXT="$AV_TMP/ppl.txt"
for i in 1 2 3 4 5 6; do echo "$long"; done > "$TXT"
nll() { "$ANVIL" perplexity --device cpu --model "$M" --text-file "$TXT" --attention $1 --json 2>/dev/null | sed -n 's/.*"mean_nll":\([^,}]*\).*/\1/p'; }
s=$(nll standard); f=$(nll flash)
awk -v a="$f" -v b="$s" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b != "" && a != "" && d <= 1e-6 * (b < 0 ? -b : b)) }' \
  && ok "perplexity mean NLL flash $f, standard $s" || bad "perplexity mean NLL flash '$f' vs standard '$s'"
losses() {
  "$ANVIL" lora --device cpu --model "$M" --train --data "$D" --learning-rate 1e-2 --num-layers -1 --batch-size 2 --max-seq-length 160 \
    --iters 4 --steps-per-report 1 --steps-per-eval 4 --val-batches 2 --seed 3 --attention $1 --adapter-path "$AV_TMP/ad_$1" 2>&1 \
    | grep -E 'Train loss|Val loss' | sed 's/,.*//'
}
ls_=$(losses standard); lf=$(losses flash)
[ -n "$ls_" ] && [ "$(echo "$ls_" | wc -l)" -ge 5 ] && [ "$lf" = "$ls_" ] && ok "lora losses flash = standard: $(echo $lf | tr '\n' ' ')" \
  || bad "lora losses flash: $(echo $lf) vs standard: $(echo $ls_)"
out=$(printf 'hi\n' | "$ANVIL" chat --device cpu --model "$M" --max-tokens 4 --attention flash 2>&1) && ok "chat --attention flash" || bad "chat --attention flash: $out"
expect_error "generate bad --attention" "error: --attention: 'fast' is not flash, standard or auto" "$ANVIL" generate --model "$M" --prompt hi --attention fast
for a in standard flash; do
  "$ANVIL" bench --device cpu --model "$M" -p 96 -n 4 -r 1 --attention $a --json >/dev/null 2>&1 && ok "bench --attention $a" || bad "bench --attention $a"
done
expect_error "bench bad --attention" "error: --attention: 'fast'" "$ANVIL" bench --model "$M" -p 16 -n 4 --attention fast
expect_error "lora bad --attention" "error: --attention: 'fast'" "$ANVIL" lora --model "$M" --train --data "$D" --attention fast
finish
