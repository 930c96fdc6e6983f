# GGUF bases for every command: LoRA on a float GGUF and QLoRA on a Q4_0 one (a few steps on the
# quotes data), the adapters applying to the safetensors directory of the same weights exactly as to
# the GGUF (HF names, q/k rows in HF order); fuse --model X.gguf and convert --model X.gguf --out DIR
# (Q8_0/Q4_0 kept as MLX 8/4-bit, -d, -q) give directories that score as their sources; perplexity,
# bench, batched generate and chat run on GGUF files. References: anvil's own safetensors path.
. tests/lib.sh
need_fixtures
G="$FX/gguf"
D="$G/tiny-v1024"
Q="$AV_DATA/quotes"
[ -d "$Q" ] || { echo "FAIL: no data at $Q"; exit 1; }
W="$AV_TMP"
ids() { sed 's/.*"prompt_ids":\(\[[^]]*\]\).*"ids":\(\[[^]]*\]\).*/\1 \2/'; }
nll() { sed 's/.*"mean_nll":\([0-9.]*\).*/\1/'; }
printf 'The quick brown fox jumps over the lazy dog. Once upon a time there was a small house by the sea,\nand every morning the fisherman walked down to the water to look at the boats.\n' > "$W/t.txt"
ppl() { "$ANVIL" perplexity --device cpu --text-file "$W/t.txt" --json --threads 1 "$@" 2>/dev/null | nll; }
L="$ANVIL lora --train --data $Q --learning-rate 1e-2 --num-layers -1 --batch-size 2 --max-seq-length 48 \
  --steps-per-report 5 --steps-per-eval 10 --val-batches 2 --iters 10 --threads 1 --seed 3"

# a and b equal to 1e-6 relative: f32 and 16-bit weights take different (equally exact) GEMM paths
near() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(a != "" && d <= 1e-6 * m) }'; }

# 1. LoRA on the f32 GGUF (every projection, so q/k rows order matters)
if $L --model "$G/tiny-v1024-f32.gguf" --lora-keys all --adapter-path "$W/a" > "$W/a.log" 2>&1; then
  ok "lora on a float GGUF trains"
  head -c 8000 "$W/a/adapters.safetensors" | grep -q '"model.layers.0.self_attn.k_proj.lora_a"' && ok "adapter tensors under HF/MLX names" || bad "adapter names: $(head -c 300 "$W/a/adapters.safetensors")"
  a=$(ppl --model "$G/tiny-v1024-f32.gguf" --adapter-path "$W/a"); b=$(ppl --model "$D" --adapter-path "$W/a"); c=$(ppl --model "$D")
  near "$a" "$b" && ok "GGUF adapter on the safetensors directory scores as on the GGUF ($a, $b)" || bad "adapter ppl: gguf $a vs dir $b"
  [ "$a" != "$c" ] && ok "the adapter changes the model ($c -> $a)" || bad "adapter changed nothing"
  a=$("$ANVIL" generate --model "$G/tiny-v1024-f32.gguf" --adapter-path "$W/a" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
  b=$("$ANVIL" generate --model "$D" --adapter-path "$W/a" --prompt "Once upon a time" --ignore-chat-template --max-tokens 16 --json 2>/dev/null | ids)
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "generate --adapter-path: GGUF and directory give the same ids" || bad "adapter generate: $a vs $b"
  # fuse from the GGUF = fuse from the directory (both f32)
  "$ANVIL" fuse --model "$G/tiny-v1024-f32.gguf" --adapter-path "$W/a" --save-path "$W/fg" --dtype f32 > /dev/null || bad "fuse --model X.gguf failed"
  "$ANVIL" fuse --model "$D" --adapter-path "$W/a" --save-path "$W/fd" --dtype f32 > /dev/null || bad "fuse dir failed"
  a=$(ppl --model "$W/fg"); b=$(ppl --model "$W/fd"); c=$(ppl --model "$G/tiny-v1024-f32.gguf" --adapter-path "$W/a")
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "fuse --model X.gguf scores as the fused directory ($a)" || bad "fused: gguf $a, dir $b"
  awk "BEGIN{d=$a-$c; exit !(d < 1e-5 && d > -1e-5)}" && ok "the fused GGUF scores as base + adapter ($a vs $c)" || bad "fused $a vs adapter $c"
  for f in config.json model.safetensors tokenizer.model tokenizer_config.json; do [ -f "$W/fg/$f" ] || bad "fused GGUF dir lacks $f"; done
else bad "lora on a float GGUF: $(tail -3 "$W/a.log")"; fi

# 2. QLoRA on the Q4_0 GGUF; its adapter fused into a de-quantized (bf16) directory
if $L --model "$G/tiny-v1024-q4_0.gguf" --adapter-path "$W/q" > "$W/q.log" 2>&1; then
  ok "QLoRA on a Q4_0 GGUF trains"
  "$ANVIL" fuse --model "$G/tiny-v1024-q4_0.gguf" --adapter-path "$W/q" --save-path "$W/fq" > /dev/null || bad "fuse Q4_0 GGUF failed"
  grep -q '"torch_dtype":.*"bfloat16"' "$W/fq/config.json" && ! grep -q quantization "$W/fq/config.json" && ok "fused Q4_0 base is de-quantized (bf16)" || bad "fq config: $(cat "$W/fq/config.json")"
  a=$(ppl --model "$W/fq"); b=$(ppl --model "$G/tiny-v1024-q4_0.gguf" --adapter-path "$W/q")
  [ -n "$a" ] && awk "BEGIN{d=$a-$b; exit !(d < 0.01 && d > -0.01)}" && ok "fused Q4_0 + adapter scores as base + adapter ($a vs $b)" || bad "fused q4: $a vs $b"
else bad "QLoRA on a Q4_0 GGUF: $(tail -3 "$W/q.log")"; fi
expect_error "fuse --requantize on a GGUF base" "requantize is not supported for a GGUF base" \
  "$ANVIL" fuse --model "$G/tiny-v1024-q4_0.gguf" --adapter-path "$FX/nope" --save-path "$W/fr" --requantize

# 3. convert --model X.gguf --out DIR
for t in f32 f16 q8_0 q4_0; do
  "$ANVIL" convert --model "$G/tiny-v1024-$t.gguf" --out "$W/c-$t" > "$W/c-$t.log" || bad "convert $t.gguf -> dir failed"
  a=$(ppl --model "$W/c-$t"); b=$(ppl --model "$G/tiny-v1024-$t.gguf")
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "convert $t.gguf -> directory scores as the GGUF ($a)" || bad "convert $t: $a vs $b"
done
grep -q '"bits":.*8' "$W/c-q8_0/config.json" && grep -q '"group_size":.*32' "$W/c-q8_0/config.json" && ok "Q8_0 -> MLX 8-bit group 32" || bad "q8 config"
grep -q '"bits":.*4' "$W/c-q4_0/config.json" && grep -q 'Kept 14 packed' "$W/c-q4_0.log" && ok "Q4_0 -> MLX 4-bit, packed as loaded" || bad "q4 config: $(cat "$W/c-q4_0.log")"
"$ANVIL" convert --model "$G/tiny-v1024-q5_1.gguf" --out "$W/c-q5_1" > /dev/null && ! grep -q quantization "$W/c-q5_1/config.json" &&
  grep -q '"torch_dtype":.*"bfloat16"' "$W/c-q5_1/config.json" && ok "Q5_1 -> de-quantized to bf16" || bad "q5_1: $(cat "$W/c-q5_1/config.json")"
a=$(ppl --model "$W/c-q5_1"); b=$(ppl --model "$G/tiny-v1024-q5_1.gguf")
[ -n "$a" ] && awk "BEGIN{d=$a-$b; exit !(d < 0.01 && d > -0.01)}" && ok "de-quantized Q5_1 directory scores as the GGUF ($a vs $b)" || bad "q5_1 ppl: $a vs $b"
for text in "Hello world" "  two  spaces, tabs	and ünïcödé 你好" "</s> special <s> text"; do
  a=$("$ANVIL" tokenize --model "$G/tiny-v1024-q8_0.gguf" --text "$text"); b=$("$ANVIL" tokenize --model "$W/c-q8_0" --text "$text")
  [ -n "$a" ] && [ "$a" = "$b" ] && ok "written tokenizer.model tokenizes '$text' as the GGUF" || bad "tokenize '$text': $a vs $b"
done
msg='[{"role": "user", "content": "hi there"}]'
a=$(echo "$msg" | "$ANVIL" template --model "$W/c-q4_0" --messages /dev/stdin); b=$(echo "$msg" | "$ANVIL" template --model "$D" --messages /dev/stdin)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "written chat template renders as the directory's" || bad "template: '$a' vs '$b'"
"$ANVIL" convert --model "$G/tiny-v1024-q8_0.gguf" --out "$W/c-d" -d > /dev/null && ! grep -q quantization "$W/c-d/config.json" &&
  grep -q '"torch_dtype":.*"bfloat16"' "$W/c-d/config.json" && ok "convert -d: de-quantized to bf16" || bad "convert -d"
"$ANVIL" convert --model "$G/tiny-v1024-f32.gguf" --out "$W/c-q" -q --q-bits 4 --dtype bf16 > /dev/null || bad "convert -q from GGUF"
"$ANVIL" convert --model "$D" --out "$W/c-qd" -q --q-bits 4 --dtype bf16 > /dev/null || bad "convert -q from dir"
a=$(ppl --model "$W/c-q"); b=$(ppl --model "$W/c-qd")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "convert -q from the f32 GGUF = from the directory ($a)" || bad "convert -q: $a vs $b"
ls "$W" | grep -q tmp && bad "temporary directory left: $(ls "$W")" || ok "no temporary directory left"
expect_error "convert to an existing directory" "c-d: already exists" "$ANVIL" convert --model "$G/tiny-v1024-q8_0.gguf" --out "$W/c-d"

# 4. perplexity, bench, batched generate, chat on GGUF files
a=$(ppl --model "$G/tiny-v1024-f16.gguf"); b=$(ppl --model "$D")
near "$a" "$b" && ok "perplexity of the f16 GGUF = the directory's ($a, $b)" || bad "perplexity: $a vs $b"
"$ANVIL" bench --model "$G/tiny-v1024-q4_0.gguf" -p 16 -n 8 -r 1 -t 1 --json 2>/dev/null | grep -q '"tg_tps"' && ok "bench on a Q4_0 GGUF" || bad "bench"
printf 'Once upon a time\nHello there\nThe cat\n' > "$W/p.txt"
a=$("$ANVIL" generate --model "$G/tiny-v1024-f32.gguf" --prompts-file "$W/p.txt" --batch-size 2 --max-tokens 8 --ignore-chat-template --device cpu --threads 1 2>/dev/null | grep -v -E 'tokens-per-sec|Peak')
b=$("$ANVIL" generate --model "$D" --prompts-file "$W/p.txt" --batch-size 2 --max-tokens 8 --ignore-chat-template --device cpu --threads 1 2>/dev/null | grep -v -E 'tokens-per-sec|Peak')
[ -n "$a" ] && [ "$a" = "$b" ] && ok "batched generate on the GGUF = on the directory" || bad "batched: $a vs $b"
a=$(printf 'hi there\n/stats\n' | "$ANVIL" chat --device cpu --model "$G/tiny-v1024-f32.gguf" -m 8 -t 1 2>&1 | grep -v -E 'speed|peak memory')
b=$(printf 'hi there\n/stats\n' | "$ANVIL" chat --device cpu --model "$D" -m 8 -t 1 2>&1 | grep -v -E 'speed|peak memory')
echo "$a" | grep -q '^turns: 1' && [ "$a" = "$b" ] && ok "chat on the GGUF = on the directory" || bad "chat: $a vs $b"
finish
