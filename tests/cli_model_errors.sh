# Bad model inputs: each must give one stderr line naming the file and the problem, a non-zero
# exit, and no crash. Corrupt models are derived from the tiny-llama fixture in $AV_TMP.
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
mk() { d="$AV_TMP/$1"; rm -rf "$d"; mkdir -p "$d"; cp "$M"/config.json "$M"/tokenizer.json "$M"/tokenizer_config.json "$d"/; echo "$d"; }
gen() { "$ANVIL" generate --model "$1" --prompt hi --max-tokens 2 --ignore-chat-template; }

expect_error "missing model dir" "nope.*(not found|no such)" gen "$AV_TMP/nope"
d=$(mk nosafe); expect_error "no weights" "no model.safetensors" gen "$d"
d=$(mk badarch); cp "$M/model.safetensors" "$d"/
sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' "$d/config.json"
expect_error "unsupported architecture" "config.json.*unsupported architecture 'GPT2LMHeadModel'" gen "$d"
d=$(mk badjson); cp "$M/model.safetensors" "$d"/; echo '{"hidden_size": 64,' > "$d/config.json"
expect_error "malformed config" "config.json.*invalid JSON" gen "$d"
d=$(mk trunc); head -c 100000 "$M/model.safetensors" > "$d/model.safetensors"
expect_error "truncated safetensors" "model.safetensors.*(truncated|past the end)" gen "$d"
d=$(mk hdr); printf '\377\377\377\377\000\000\000\000{}' > "$d/model.safetensors"
expect_error "header length lies" "model.safetensors.*header length" gen "$d"
d=$(mk empty); : > "$d/model.safetensors"
expect_error "empty safetensors" "model.safetensors.*empty" gen "$d"
# unknown dtype: rewrite one dtype string in the header (same length keeps offsets valid)
d=$(mk dtype); sed 's/"dtype":"BF16"/"dtype":"XF16"/' "$M/model.safetensors" > "$d/model.safetensors"
expect_error "unknown dtype" "model.safetensors.*unknown dtype 'XF16'" gen "$d"
# shape mismatch: config says a different intermediate size
d=$(mk shape); cp "$M/model.safetensors" "$d"/; sed -i 's/"intermediate_size": 176/"intermediate_size": 180/' "$d/config.json"
expect_error "shape mismatch" "model.safetensors.*shape \[176,64\] but config.json implies \[180,64\]" gen "$d"
# sharded index naming a missing shard
d=$(mk shard); printf '{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}' > "$d/model.safetensors.index.json"
expect_error "missing shard" "model-00001-of-00002.safetensors" gen "$d"
expect_error "absurd flag" "max-tokens" "$ANVIL" generate --model "$M" --prompt hi --max-tokens -5
expect_error "unknown flag" "unknown option" "$ANVIL" generate --model "$M" --prompt hi --bogus
expect_error "perplexity missing file" "nofile" "$ANVIL" perplexity --model "$M" --text-file "$AV_TMP/nofile"
expect_error "info missing dir" "nope" "$ANVIL" info --model "$AV_TMP/nope"
finish
