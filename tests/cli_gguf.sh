# GGUF models on the command line: generate (greedy, raw and chat-templated), tokenize and template
# from a .gguf give what the safetensors directory gives; info reads it; damaged or foreign files
# give one-line errors. Writing: convert --out X.gguf / fuse --export-gguf files generate as their sources.
. tests/lib.sh
need_fixtures
G="$FX/gguf"
D="$G/tiny-v1024"
ids() { sed 's/.*"prompt_ids":\(\[[^]]*\]\).*"ids":\(\[[^]]*\]\).*/\1 \2/'; }
want=$("$ANVIL" generate --model "$D" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
wantc=$("$ANVIL" generate --model "$D" --prompt "Tell me a story" --max-tokens 16 --json 2>/dev/null | ids)
[ -n "$want" ] || bad "no reference output from the safetensors directory"
for t in f32 f16 bf16; do
  got=$("$ANVIL" generate --model "$G/tiny-v1024-$t.gguf" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
  [ "$got" = "$want" ] && ok "$t: greedy ids equal the safetensors directory's" || bad "$t: $got vs $want"
  got=$("$ANVIL" generate --model "$G/tiny-v1024-$t.gguf" --prompt "Tell me a story" --max-tokens 16 --json 2>/dev/null | ids)
  [ "$got" = "$wantc" ] && ok "$t: chat-templated greedy ids equal the safetensors directory's" || bad "$t chat: $got vs $wantc"
done
for t in q8_0 q4_0 q5_1; do
  n=$("$ANVIL" generate --model "$G/tiny-v1024-$t.gguf" --prompt "Once upon a time" --max-tokens 8 --json 2>/dev/null | grep -c '"generation_tokens":8')
  [ "$n" = 1 ] && ok "$t generates" || bad "$t does not generate"
done
# K-quant files (llama-quantize's Q2_K, Q3_K_M, Q4_K_M, Q5_K_M mixes, pure Q6_K): anvil's greedy text is
# llama.cpp's (llama-completion-k256-*.txt: its stdout, " " + prompt + 32 tokens + two newlines)
P="Once upon a time, there was a little llama who"
for t in q2_k q3_k_m q4_k_m q5_k_m q6_k; do
  want=$(cat "$G/llama-completion-k256-$t.txt"); want=${want#" $P"}
  got=$("$ANVIL" generate --model "$G/tiny-k256-$t.gguf" --prompt "$P" --max-tokens 32 --temp 0 --ignore-chat-template 2>/dev/null)
  got=${got%%==========*}
  [ -n "$want" ] && [ "$got" = "$want" ] && ok "$t: greedy text equals llama-completion's" || bad "$t: '$got' vs llama.cpp '$want'"
done
for text in "Hello world" "  two  spaces, tabs	and ünïcödé 你好" "</s> special <s> text" "123 4567.89"; do
  a=$("$ANVIL" tokenize --model "$G/vocab-llama2.gguf" --text "$text")
  b=$("$ANVIL" tokenize --model "$FX/llama2-tokenizer" --spm --text "$text")
  [ "$a" = "$b" ] && ok "tokenize '$text' as tokenizer.model does" || bad "tokenize '$text': $a vs $b"
done
msg='[{"role": "user", "content": "hi there"}]'
a=$(echo "$msg" | "$ANVIL" template --model "$G/tiny-v1024-q4_0.gguf" --messages /dev/stdin)
b=$(echo "$msg" | "$ANVIL" template --model "$D" --messages /dev/stdin)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "template from tokenizer.chat_template" || bad "template: '$a' vs '$b'"
"$ANVIL" info --model "$G/tiny-v1024-q8_0.gguf" | grep -q "vocab: *1024" && ok "info reads a GGUF file" || bad "info"
head -c 5000 "$G/tiny-v1024-f16.gguf" > "$AV_TMP/trunc.gguf"
expect_error "truncated GGUF" "trunc.gguf: .*(past the end|exceeds|truncated)" "$ANVIL" generate --model "$AV_TMP/trunc.gguf" --prompt hi
printf 'not gguf at all' > "$AV_TMP/x.gguf"
expect_error "not a GGUF file" "x.gguf: not a GGUF file" "$ANVIL" generate --model "$AV_TMP/x.gguf" --prompt hi
expect_error "vocab-only file" "vocab-llama2.gguf: missing tensor 'token_embd.weight'" "$ANVIL" generate --model "$G/vocab-llama2.gguf" --prompt hi --ignore-chat-template
# writing: convert --out X.gguf / fuse --export-gguf give files that generate what their sources do
for t in q8_0 q4_0; do
  "$ANVIL" convert --model "$D" --out "$AV_TMP/w-$t.gguf" --outtype $t > /dev/null || bad "convert --outtype $t failed"
  a=$("$ANVIL" generate --model "$AV_TMP/w-$t.gguf" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
  b=$("$ANVIL" generate --model "$G/tiny-v1024-$t.gguf" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "convert --outtype $t: greedy ids equal llama.cpp's $t file's" || bad "convert $t: $a vs $b"
done
"$ANVIL" convert --model "$D" --out "$AV_TMP/w.gguf" > /dev/null &&
  "$ANVIL" info --model "$AV_TMP/w.gguf" | grep -q "vocab: *1024" && ok "convert --out X.gguf (f16 default) reads back" || bad "convert f16"
msg='[{"role": "user", "content": "hi there"}]'
a=$(echo "$msg" | "$ANVIL" template --model "$AV_TMP/w.gguf" --messages /dev/stdin)
b=$(echo "$msg" | "$ANVIL" template --model "$D" --messages /dev/stdin)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "written chat template renders as the directory's" || bad "written template: '$a' vs '$b'"
"$ANVIL" fuse --model "$D" --adapter-path "$FX/tiny-llama-lora" --export-gguf "$AV_TMP/fz.gguf" --outtype f32 > /dev/null || bad "fuse --export-gguf failed"
"$ANVIL" fuse --model "$D" --adapter-path "$FX/tiny-llama-lora" --save-path "$AV_TMP/fzdir" --dtype f32 > /dev/null || bad "fuse failed"
a=$("$ANVIL" generate --model "$AV_TMP/fz.gguf" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
b=$("$ANVIL" generate --model "$AV_TMP/fzdir" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "fuse --export-gguf generates as the fused directory" || bad "fuse gguf: $a vs $b"
expect_error "unsupported outtype" "outtype q5_k is not supported yet" "$ANVIL" convert --model "$D" --out "$AV_TMP/k.gguf" --outtype q5_k
expect_error "unknown outtype" "outtype must be f32, f16, bf16, q8_0, q4_0, q4_k or q6_k" "$ANVIL" convert --model "$D" --out "$AV_TMP/k.gguf" --outtype q3
expect_error "missing source" "nope" "$ANVIL" convert --model "$AV_TMP/nope" --out "$AV_TMP/k.gguf"
expect_error "HF tokenizer only" "has no llama.cpp name" "$ANVIL" convert --model "$FX/tiny-llama" --out "$AV_TMP/k.gguf"
[ ! -e "$AV_TMP/k.gguf" ] && ok "failed conversions leave no file" || bad "k.gguf left behind"
# llama.cpp's llama-perplexity on anvil-written GGUFs (llama-perplexity.json, -c 128) is what
# `anvil perplexity --llama-chunks --context 128` gives on the same files, within 0.1%; one file
# carries Llama-3 rope scaling as a rope_freqs tensor, and converting it back to a directory
# gives the rope_scaling that reproduces it
L3='"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64'
cp -r "$D" "$AV_TMP/l3" && sed -i "s/\"rope_type\": \"default\"/$L3/" "$AV_TMP/l3/config.json"
grep -q llama3 "$AV_TMP/l3/config.json" || bad "could not write the Llama-3 rope config"
for t in f32 f16 q8_0 q4_0 q6_k llama3-f32; do
  src=$D; ot=$t
  [ $t = llama3-f32 ] && src=$AV_TMP/l3 && ot=f32
  "$ANVIL" convert --model "$src" --out "$AV_TMP/p-$t.gguf" --outtype $ot >/dev/null 2>&1 || bad "convert --outtype $ot"
  got=$("$ANVIL" perplexity --model "$AV_TMP/p-$t.gguf" --text-file "$G/ppl-quotes.txt" --context 128 --llama-chunks --json 2>/dev/null |
        sed -n 's/.*"ppl":\([0-9.e+-]*\).*/\1/p')
  want=$(sed -n "s/.*\"$t\": \([0-9.]*\).*/\1/p" "$G/llama-perplexity.json")
  awk -v a="$got" -v b="$want" 'BEGIN { exit !(a > 0 && b > 0 && (a - b) / b < 1e-3 && (b - a) / b < 1e-3) }' &&
    ok "$t: perplexity $got, llama-perplexity $want" || bad "$t: perplexity '$got' vs llama-perplexity '$want'"
done
"$ANVIL" convert --model "$AV_TMP/p-llama3-f32.gguf" --out "$AV_TMP/l3-back" >/dev/null 2>&1 &&
  grep -q '"rope_type":.*"llama3"' "$AV_TMP/l3-back/config.json" || bad "GGUF with rope_freqs -> directory with llama3 rope_scaling"
a=$("$ANVIL" perplexity --device cpu --model "$AV_TMP/l3" --text-file "$G/ppl-quotes.txt" --context 128 --json 2>/dev/null | sed -n 's/.*"ppl":\([0-9.e+-]*\).*/\1/p')
b=$("$ANVIL" perplexity --device cpu --model "$AV_TMP/l3-back" --text-file "$G/ppl-quotes.txt" --context 128 --json 2>/dev/null | sed -n 's/.*"ppl":\([0-9.e+-]*\).*/\1/p')
awk -v a="$a" -v b="$b" 'BEGIN { exit !(a > 0 && b > 0 && (a - b) / b < 1e-5 && (b - a) / b < 1e-5) }' &&
  ok "Llama-3 rope: directory -> GGUF -> directory keeps the perplexity ($a, $b)" || bad "Llama-3 rope round trip: '$a' vs '$b'"
# byte-level BPE vocabularies (Llama-3, GPT-2, Qwen2 styles) go to GGUF (tokenizer.ggml.model gpt2 with
# merges and the pre-tokenizer's name) and back to a directory (tokenizer.json) with the same ids
sed 's/"vocab_size": 1024/"vocab_size": 704/' "$D/config.json" > "$AV_TMP/cfg704.json"
for v in llama3 gpt2 qwen2; do
  "$ANVIL" synth --config "$AV_TMP/cfg704.json" --tokenizer "$FX/tok_$v" --out "$AV_TMP/bpe-$v" --dtype f32 >/dev/null 2>&1 &&
  "$ANVIL" convert --model "$AV_TMP/bpe-$v" --out "$AV_TMP/bpe-$v.gguf" --outtype f16 >/dev/null 2>&1 &&
  "$ANVIL" convert --model "$AV_TMP/bpe-$v.gguf" --out "$AV_TMP/bpe-$v-back" >/dev/null 2>&1 || bad "$v: synth/convert"
  for text in "Hello world 12345 it's  naïve 日本語 x" "<|eot_id|>hi<|im_start|>user
hey" "tabs	and
newlines  "; do
    a=$("$ANVIL" tokenize --model "$AV_TMP/bpe-$v" --text "$text")
    b=$("$ANVIL" tokenize --model "$AV_TMP/bpe-$v.gguf" --text "$text")
    c=$("$ANVIL" tokenize --model "$AV_TMP/bpe-$v-back" --text "$text")
    [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" = "$c" ] && ok "$v: '$text' tokenizes alike from the directory, GGUF and back" || bad "$v '$text': $a / $b / $c"
  done
done
grep -q '"tokenizer_class":.*"PreTrainedTokenizerFast"' "$AV_TMP/bpe-llama3-back/tokenizer_config.json" && ok "BPE directory: fast tokenizer class" || bad "tokenizer class"
finish
