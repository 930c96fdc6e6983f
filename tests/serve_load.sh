# Load generator for tests/cli_serve.sh: sh tests/serve_load.sh PORT N OUTDIR sends N requests in
# waves of 50 concurrent curl clients, mixed: chat (shared prefixes), streamed completions,
# malformed JSON, an unknown field, oversized bodies and clients that disconnect mid-stream; every
# answer must have the status its kind calls for. Last line: a summary. Exit 1 on any mismatch.
PORT=$1; N=$2; OUT=$3
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
head -c 5000000 /dev/zero | tr '\0' ' ' > "$OUT/big.json"
one() { # i
  i=$1; k=$((i % 8)); f="$OUT/r$i"
  case $k in
    0|5) echo 200 > "$f.want"
       curl -s -o "$f.body" -w '%{http_code}' -d "{\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful llama.\"},{\"role\":\"user\",\"content\":\"Question $i\"}],\"max_tokens\":8}" "$URL/v1/chat/completions" > "$f.code" ;;
    1|6) echo 200 > "$f.want"
       curl -sN -o "$f.body" -w '%{http_code}' -d "{\"prompt\":\"Once upon a time $i\",\"max_tokens\":12,\"stream\":true,\"temperature\":0.9,\"seed\":$i}" "$URL/v1/completions" > "$f.code" ;;
    2) echo 400 > "$f.want"
       curl -s -o "$f.body" -w '%{http_code}' -d "{\"messages\":[{\"role\":\"user\",\"content\":\"x$i\"" "$URL/v1/chat/completions" > "$f.code" ;;
    3) if [ $((i % 24)) -eq 3 ]; then echo 413 > "$f.want"
         curl -s -o "$f.body" -w '%{http_code}' --data-binary @"$OUT/big.json" "$URL/v1/completions" > "$f.code"
       else echo 400 > "$f.want"
         curl -s -o "$f.body" -w '%{http_code}' -d '{"prompt":"x","best_of":3}' "$URL/v1/completions" > "$f.code"; fi ;;
    4|7) echo gone > "$f.want"
       curl -sN -o "$f.body" --max-time 0.3 -d "{\"prompt\":\"Tell me a story $i\",\"max_tokens\":1500,\"stream\":true,\"temperature\":1,\"seed\":$i}" "$URL/v1/completions" > /dev/null 2>&1
       echo gone > "$f.code" ;;
  esac
}
i=0
while [ $i -lt "$N" ]; do
  j=0
  while [ $j -lt 50 ] && [ $i -lt "$N" ]; do one $i & i=$((i + 1)); j=$((j + 1)); done
  wait
done
okn=0; bad=0; n400=0; n413=0; gone=0
i=0
while [ $i -lt "$N" ]; do
  f="$OUT/r$i"; want=$(cat "$f.want"); code=$(cat "$f.code" 2>/dev/null)
  if [ "$want" = gone ]; then gone=$((gone + 1))
  elif [ "$code" != "$want" ]; then bad=$((bad + 1)); echo "request $i: HTTP $code, want $want: $(head -c 200 "$f.body")"
  elif [ "$want" = 200 ] && ! grep -qE '"content":"|"text":"|\[DONE\]' "$f.body"; then bad=$((bad + 1)); echo "request $i: no text: $(head -c 200 "$f.body")"
  elif [ "$want" != 200 ] && ! grep -q '"error":{"message"' "$f.body"; then bad=$((bad + 1)); echo "request $i: no error object"
  else case $want in 200) okn=$((okn + 1)) ;; 400) n400=$((n400 + 1)) ;; 413) n413=$((n413 + 1)) ;; esac; fi
  i=$((i + 1))
done
echo "$N requests: $okn answered, $n400 rejected (400), $n413 too large (413), $gone disconnected, $bad wrong"
[ $bad -eq 0 ]
