#!/bin/sh
# anvil tokenize / detokenize: --jsonl equals HF ids (tokenizer.json) and sentencepiece ids
# (--spm) for every fixture text, --text/--file/--no-bos, detokenize round trip, and one-line
# errors with non-zero exit for bad inputs.
. "$(dirname "$0")/lib.sh"
need_fixtures
TOK="$FX/llama2-tokenizer"
PUB="$FX/tokenize_public.jsonl"

# every line: --jsonl output == hf_ids / sp_ids (spaces removed; a line without sp_ids has the same ids as hf_ids)
ids_col() { sed -n -e "s/.*\"$1\": \(\[[^]]*\]\).*/\1/p" -e t -e "s/.*\"hf_ids\": \(\[[^]]*\]\).*/\1/p" "$PUB" | tr -d ' '; }
ids_col hf_ids > "$AV_TMP/want_hf"
ids_col sp_ids > "$AV_TMP/want_sp"
if "$ANVIL" tokenize --model "$TOK" --jsonl "$PUB" > "$AV_TMP/got_hf" && cmp -s "$AV_TMP/got_hf" "$AV_TMP/want_hf" \
   && [ "$(wc -l < "$AV_TMP/got_hf")" -eq 1312 ]; then ok "--jsonl == hf_ids (1312 texts)"
else bad "--jsonl differs from hf_ids: $(diff "$AV_TMP/got_hf" "$AV_TMP/want_hf" | head -3)"; fi
if "$ANVIL" tokenize --model "$TOK" --spm --jsonl "$PUB" > "$AV_TMP/got_sp" && cmp -s "$AV_TMP/got_sp" "$AV_TMP/want_sp"; then ok "--spm --jsonl == sp_ids"
else bad "--spm --jsonl differs from sp_ids: $(diff "$AV_TMP/got_sp" "$AV_TMP/want_sp" | head -3)"; fi

check() { # desc expected cmd...
  desc=$1; want=$2; shift 2
  got=$("$@" 2> "$AV_TMP/err"); rc=$?
  if [ $rc -ne 0 ]; then bad "$desc: exit $rc: $(cat "$AV_TMP/err")"
  elif [ "$got" = "$want" ]; then ok "$desc"; else bad "$desc: got '$got' want '$want'"; fi
}
check "--text" "[1,15043,3186]" "$ANVIL" tokenize --model "$TOK" --text "Hello world"
check "--no-bos" "[15043,3186]" "$ANVIL" tokenize --model "$TOK" --text "Hello world" --no-bos
check "--spm --no-bos" "[263,29871,289]" "$ANVIL" tokenize --model "$TOK" --spm --no-bos --text "a  b"
printf 'Two\tlines\nhere \303\251\n' > "$AV_TMP/in.txt"
check "--file verbatim" "[1,7803,12,9012,13,4150,904,13]" "$ANVIL" tokenize --model "$TOK" --file "$AV_TMP/in.txt"
check "model dir with weights" "[1,15043,3186]" "$ANVIL" tokenize --model "$FX/tiny-llama" --text "Hello world"
if [ -d tests/fixtures/tok_llama3 ]; then
  check "byte-level tokenizer" "[0,42,458,81,666]" "$ANVIL" tokenize --model tests/fixtures/tok_llama3 --text "Hello world"
fi

# detokenize
check "detokenize [..]" "<s> Hello world" "$ANVIL" detokenize --model "$TOK" --ids "[1,15043,3186]"
check "detokenize --skip-special" "Hello world" "$ANVIL" detokenize --model "$TOK" --ids "1 15043 3186" --skip-special
check "detokenize --spm" "Hello world" "$ANVIL" detokenize --model "$TOK" --spm --ids "1,15043,3186" --skip-special
text='The quick brown fox — “jumps” over 13 lazy dogs. 😀'
ids=$("$ANVIL" tokenize --model "$TOK" --text "$text")
echo "$ids" > "$AV_TMP/ids.txt"
check "round trip" "$text" "$ANVIL" detokenize --model "$TOK" --file "$AV_TMP/ids.txt" --skip-special

# errors: one stderr line, non-zero exit
expect_error "missing model dir" "no such directory" "$ANVIL" tokenize --model "$AV_TMP/nope" --text hi
mkdir -p "$AV_TMP/empty"
expect_error "dir without tokenizer" "tokenizer" "$ANVIL" tokenize --model "$AV_TMP/empty" --text hi
printf '{"text": "ok"}\n{"prompt": "no text here"}\n' > "$AV_TMP/bad.jsonl"
expect_error "jsonl line without text" "bad.jsonl:2" "$ANVIL" tokenize --model "$TOK" --jsonl "$AV_TMP/bad.jsonl"
printf '{"text": "ok"}\n{"text": \n' > "$AV_TMP/bad2.jsonl"
expect_error "malformed jsonl line" "bad2.jsonl:2" "$ANVIL" tokenize --model "$TOK" --jsonl "$AV_TMP/bad2.jsonl"
expect_error "missing jsonl" "nope.jsonl" "$ANVIL" tokenize --model "$TOK" --jsonl "$AV_TMP/nope.jsonl"
expect_error "no input" "one of .*text" "$ANVIL" tokenize --model "$TOK"
expect_error "no --model" "model is required" "$ANVIL" tokenize --text hi
printf '{"model": {"type": "WordPiece", "vocab": {}}}' > "$AV_TMP/empty/tokenizer.json"
expect_error "unsupported model" "WordPiece" "$ANVIL" tokenize --model "$AV_TMP/empty" --text hi
expect_error "bad ids" "integers" "$ANVIL" detokenize --model "$TOK" --ids "1 two 3"
expect_error "id out of range" "out of range" "$ANVIL" detokenize --model "$TOK" --ids "[1, 99999]"
head -c 1000 "$TOK/tokenizer.model" > "$AV_TMP/empty/tokenizer.model"
expect_error "truncated tokenizer.model" "tokenizer.model" "$ANVIL" tokenize --model "$AV_TMP/empty" --spm --text hi
finish
