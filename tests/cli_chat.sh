# anvil chat end to end: under a pseudo-terminal (script(1)), three turns with /stats after each;
# turn 3 must reuse the whole cached conversation up to turn 2's prompt and process only the
# rest. Also the non-interactive mode, /save + /load, /reset, a full context (oldest turns dropped) and
# --max-kv-size (MLX-LM's rotating cache: nothing dropped).
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
command -v script >/dev/null || skip_all "script(1) not installed"
printf 'Hello there\n/stats\nHow are you?\n/stats\nTell me more.\n/stats\n/save %s/conv.json\n/exit\n' "$AV_TMP" > "$AV_TMP/chat_in.txt"
timeout 120 script -q -e -c "$ANVIL chat --model $M --max-tokens 8" /dev/null < "$AV_TMP/chat_in.txt" | tr -d '\r' > "$AV_TMP/chat_out.txt"
rc=$?
[ $rc -eq 0 ] && ok "chat under a pty exits 0" || bad "chat under a pty rc=$rc: $(tail -5 "$AV_TMP/chat_out.txt")"
grep -q '^anvil chat' "$AV_TMP/chat_out.txt" && ok "interactive banner (tty detected)" || bad "no interactive banner"
stats=$(grep '^last turn: prompt tokens' "$AV_TMP/chat_out.txt" | sed 's/[^0-9 ]//g' | tr -s ' ')
n=$(echo "$stats" | grep -c .)
[ "$n" -eq 3 ] && ok "three /stats lines" || bad "expected 3 stats lines, got $n"
set -- $(echo "$stats" | sed -n 2p); P2=$1
set -- $(echo "$stats" | sed -n 3p); P3=$1; X3=$2; R3=$3
[ "$X3" -eq $((P3 - R3)) ] && ok "turn 3: processed ($X3) = prompt ($P3) - reused ($R3)" || bad "turn 3 accounting: $P3 $X3 $R3"
[ "$R3" -ge "$P2" ] && ok "turn 3 reused the cache through turn 2's prompt ($R3 >= $P2)" || bad "turn 3 reused only $R3 < $P2"
[ $((X3 * 2)) -lt "$P3" ] && ok "turn 3 processed only its new tokens ($X3 of $P3)" || bad "turn 3 processed $X3 of $P3"
grep -q '"assistant"' "$AV_TMP/conv.json" && ok "/save wrote the conversation" || bad "/save"
# non-interactive: each stdin line is a turn; /load restores a conversation
printf '/load %s/conv.json\n/stats\n/reset\nHi\n' "$AV_TMP" | "$ANVIL" chat --model "$M" --max-tokens 4 > "$AV_TMP/chat2.txt" 2>&1
grep -q 'loaded 6 messages' "$AV_TMP/chat2.txt" && ok "/load" || bad "/load: $(cat "$AV_TMP/chat2.txt")"
grep -q 'new conversation' "$AV_TMP/chat2.txt" && ok "/reset" || bad "/reset"
# without --max-kv-size a small context (a copy of the model with 60 positions) fills up: the oldest
# turns are dropped (system prompt kept) and the user is told
cp -rL "$M" "$AV_TMP/ctx60"
sed -i 's/"max_position_embeddings": 2048/"max_position_embeddings": 60/' "$AV_TMP/ctx60/config.json"
turns='first turn here\nsecond turn here\nthird turn here\nfourth turn here\n/stats\n'
printf "$turns" | "$ANVIL" chat --model "$AV_TMP/ctx60" --max-tokens 8 --system-prompt "Be brief." > "$AV_TMP/chat3.txt" 2>&1
grep -q 'context full: dropped' "$AV_TMP/chat3.txt" && ok "context full: oldest turns dropped and reported" || bad "no context-full notice: $(tail -3 "$AV_TMP/chat3.txt")"
grep -q '^turns: 4' "$AV_TMP/chat3.txt" && ok "all four turns answered in a 60-token context" || bad "turns: $(grep turns "$AV_TMP/chat3.txt")"
# --max-kv-size 24: MLX-LM's rotating cache; no message is dropped, the conversation runs past 24 tokens
printf "$turns" | "$ANVIL" chat --model "$M" --max-tokens 8 --max-kv-size 24 --system-prompt "Be brief." > "$AV_TMP/chat4.txt" 2>&1
grep -q 'context full' "$AV_TMP/chat4.txt" && bad "--max-kv-size dropped messages: $(grep context "$AV_TMP/chat4.txt")" || ok "--max-kv-size: no message dropped"
grep -qE '^turns: 4, messages: 9, cached tokens: 24/24 \(rotating cache, [0-9]+ tokens seen\)' "$AV_TMP/chat4.txt" \
  && ok "--max-kv-size: four turns, every message kept, 24 rows cached" || bad "rotating /stats: $(grep turns "$AV_TMP/chat4.txt")"
printf "$turns" | "$ANVIL" chat --model "$M" --max-tokens 8 --max-kv-size 24 --system-prompt "Be brief." > "$AV_TMP/chat5.txt" 2>&1
strip() { grep -vE '^(last turn speed|peak memory)' "$1"; }
[ "$(strip "$AV_TMP/chat4.txt")" = "$(strip "$AV_TMP/chat5.txt")" ] && ok "--max-kv-size: the same replies again" || bad "rotating chat not reproducible"
expect_error "--max-kv-size below 8" 'max-kv-size: 7 is out of range \[8' "$ANVIL" chat --model "$M" --max-kv-size 7
expect_error "chat missing model" "nope" "$ANVIL" chat --model "$AV_TMP/nope"
finish
