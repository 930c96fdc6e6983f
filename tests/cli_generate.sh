# generate: batched mode (--prompts-file/--batch-size) equals one-at-a-time generation for every
# prompt (greedy: different prompt lengths, batch larger and smaller than the file; sampled: the
# same --seed gives the same ids, with top-k/min-p/penalty too); stop strings are never printed;
# chat-template wrapping; bad flags give one-line errors; --max-kv-size generates past the cache as MLX-LM.
. tests/lib.sh
# Reference comparisons pass --dtype f32: on a GPU that selects the exact-f32 path (a no-op on the CPU).
need_fixtures
M="$FX/tiny-llama"
P="$AV_TMP/prompts.txt"
printf 'Hello there\nOnce upon a time, there was a little llama who\n{"prompt": "Tell me a joke"}\nA\n' > "$P"
i=0
while IFS= read -r line; do
  case "$line" in '{'*) line=$(echo "$line" | sed 's/{"prompt": "\(.*\)"}/\1/') ;; esac
  "$ANVIL" generate --dtype f32 --model "$M" --prompt "$line" --max-tokens 12 --json 2>/dev/null | sed 's/.*"ids":\(\[[^]]*\]\).*/\1/' > "$AV_TMP/single_$i"
  i=$((i + 1))
done < "$P"
for bs in 1 3 8; do
  "$ANVIL" generate --dtype f32 --model "$M" --prompts-file "$P" --batch-size $bs --max-tokens 12 --json > "$AV_TMP/batch_$bs" 2>"$AV_TMP/batch_err"
  n=$(grep -c '"index"' "$AV_TMP/batch_$bs")
  [ "$n" -eq 4 ] || bad "batch $bs: $n results: $(cat "$AV_TMP/batch_err")"
  same=1
  for i in 0 1 2 3; do
    got=$(grep "\"index\":$i," "$AV_TMP/batch_$bs" | sed 's/.*"ids":\(\[[^]]*\]\).*/\1/')
    [ "$got" = "$(cat "$AV_TMP/single_$i")" ] || { same=0; bad "batch $bs prompt $i: $got vs $(cat "$AV_TMP/single_$i")"; }
  done
  [ $same = 1 ] && ok "batch size $bs: every sequence equals its single-prompt greedy run"
done
grep -q 'Generation: .* tokens-per-sec (all sequences)' "$AV_TMP/batch_err" && ok "batch summary on stderr" || bad "no batch summary"
# stop string: text is cut before it and the stop string itself never appears
full=$("$ANVIL" generate --model "$M" --prompt "Hello there" --max-tokens 12 --ignore-chat-template 2>/dev/null | head -1)
stop=$(echo "$full" | cut -c5-8)
cut=$("$ANVIL" generate --model "$M" --prompt "Hello there" --max-tokens 12 --ignore-chat-template --stop "$stop" 2>/dev/null | head -1)
case "$cut" in *"$stop"*) bad "stop string printed: '$cut' (stop '$stop')" ;; *) [ -n "$stop" ] && ok "stop string '$stop' cut the output ('$cut')" ;; esac
# --chat-template FILE overrides the model's template
printf '[[{{ messages[0].content }}]]' > "$AV_TMP/t.jinja"
a=$("$ANVIL" generate --model "$M" --prompt "hi there" --chat-template "$AV_TMP/t.jinja" --max-tokens 1 --json 2>/dev/null | sed 's/.*"prompt_ids":\(\[[^]]*\]\).*/\1/')
b=$("$ANVIL" tokenize --model "$M" --text "[[hi there]]" --no-bos)
[ "$a" = "$b" ] && ok "--chat-template renders the given template ($a)" || bad "--chat-template: $a vs $b"
c=$("$ANVIL" generate --model "$M" --prompt "hi there" --max-tokens 1 --json 2>/dev/null | sed 's/.*"prompt_ids":\(\[[^]]*\]\).*/\1/')
d=$("$ANVIL" template --model "$M" --messages /dev/stdin <<EOT | "$ANVIL" tokenize --model "$M" --file /dev/stdin --no-bos
[{"role": "user", "content": "hi there"}]
EOT
)
[ "$c" = "$d" ] && ok "generate wraps the prompt with the model's own template" || bad "chat wrap: $c vs $d"
expect_error "no prompt" "exactly one of --prompt" "$ANVIL" generate --model "$M"
expect_error "missing prompts file" "nofile.*cannot open" "$ANVIL" generate --model "$M" --prompts-file "$AV_TMP/nofile"
printf '{"text": 1}\n' > "$AV_TMP/badp.jsonl"
expect_error "bad prompts line" "badp.jsonl:1" "$ANVIL" generate --model "$M" --prompts-file "$AV_TMP/badp.jsonl"
# seeded sampling: --prompts-file gives each prompt the ids --prompt gives it with the same --seed (exact f32:
# a GPU's bf16 batched products round differently from its one-row ones, and a sampled id may follow)
ids_of() { sed 's/.*"ids":\(\[[^]]*\]\).*/\1/'; }
for flags in "--temp 0.8 --seed 7" "--temp 0.8 --top-p 0.9 --seed 3" "--temp 0.7 --top-k 5 --min-p 0.05 --repetition-penalty 1.3 --seed 11"; do
  "$ANVIL" generate --dtype f32 --model "$M" --prompts-file "$P" --batch-size 3 --max-tokens 10 $flags --json > "$AV_TMP/sampled" 2>"$AV_TMP/sampled_err" \
    || bad "sampled batch ($flags): $(cat "$AV_TMP/sampled_err")"
  same=1; i=0
  while IFS= read -r line; do
    case "$line" in '{'*) line=$(echo "$line" | sed 's/{"prompt": "\(.*\)"}/\1/') ;; esac
    one=$("$ANVIL" generate --dtype f32 --model "$M" --prompt "$line" --max-tokens 10 $flags --json 2>/dev/null | ids_of)
    got=$(grep "\"index\":$i," "$AV_TMP/sampled" | ids_of)
    [ -n "$one" ] && [ "$got" = "$one" ] || { same=0; bad "sampled ($flags) prompt $i: batch $got vs single $one"; }
    i=$((i + 1))
  done < "$P"
  [ $same = 1 ] && ok "$flags: --prompts-file and --prompt give the same ids for every prompt"
  case "$flags" in *top-k*) want=1 ;; *) want=3 ;; esac # temperature + top-p: decoded together on the device sampler's path
  grep -q "in batches of $want" "$AV_TMP/sampled_err" && ok "$flags: decoded in batches of $want" || bad "$flags: $(grep Prompts "$AV_TMP/sampled_err")"
done
a=$("$ANVIL" generate --model "$M" --prompt "Hello there" --max-tokens 10 --temp 0.8 --seed 1 --json 2>/dev/null | ids_of)
b=$("$ANVIL" generate --model "$M" --prompt "Hello there" --max-tokens 10 --temp 0.8 --seed 2 --json 2>/dev/null | ids_of)
[ "$a" != "$b" ] && ok "different seeds sample differently" || bad "seeds 1 and 2 gave the same ids $a"
expect_error "bad dtype" "dtype" "$ANVIL" generate --model "$M" --prompt hi --dtype f8
# --no-graphs (debugging): the same tokens, decoded op by op (greedy and sampled, one prompt and a batch)
for flags in "--temp 0" "--temp 0.8 --seed 5"; do
  a=$("$ANVIL" generate --dtype f32 --model "$M" --prompt "Hello there" --max-tokens 8 $flags --json 2>/dev/null | ids_of)
  b=$("$ANVIL" generate --dtype f32 --model "$M" --prompt "Hello there" --max-tokens 8 $flags --no-graphs --json 2>/dev/null | ids_of)
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "--no-graphs ($flags): same ids" || bad "--no-graphs ($flags): $b vs $a"
done
"$ANVIL" generate --dtype f32 --model "$M" --prompts-file "$P" --batch-size 3 --max-tokens 6 --json > "$AV_TMP/g1" 2>/dev/null
"$ANVIL" generate --dtype f32 --model "$M" --prompts-file "$P" --batch-size 3 --max-tokens 6 --no-graphs --json > "$AV_TMP/g2" 2>/dev/null
cmp -s "$AV_TMP/g1" "$AV_TMP/g2" || [ "$(ids_of < "$AV_TMP/g1")" = "$(ids_of < "$AV_TMP/g2")" ] && ok "--no-graphs batched: same ids" \
  || bad "--no-graphs batched differs"
# --max-kv-size: MLX-LM's rotating cache (keep 4); greedy ids equal MLX-LM's own for prompts shorter and
# longer than the cache, 48 tokens (the ring wraps several times): tests/fixtures/kv_rotate/cli.tsv
tab=$(printf '\t')
while IFS="$tab" read -r kv text want; do
  got=$("$ANVIL" generate --dtype f32 --model "$M" --prompt "$text" --ignore-chat-template --max-kv-size "$kv" --max-tokens 48 --json 2>/dev/null | ids_of)
  [ "$got" = "[$want]" ] && ok "--max-kv-size $kv: MLX-LM's ids (${#text}-char prompt)" || bad "--max-kv-size $kv: $got vs [$want]"
done < "$FX/kv_rotate/cli.tsv"
expect_error "--max-kv-size below 8" 'max-kv-size: 5 is out of range \[8' "$ANVIL" generate --model "$M" --prompt hi --max-kv-size 5
finish
