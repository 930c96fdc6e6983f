# anvil template: renders the model's chat template byte-exactly (TinyLlama's Zephyr golden from
# transformers), honours --no-generation-prompt / --chat-template / --chat-template-args, and
# fails with one stderr line on bad input or a template that raises.
. tests/lib.sh
need_fixtures
T="$AV_TMP/tpl.$$"
mkdir -p "$T"

# the golden file is itself {"messages": [...], "prompt": ...}
MSGS="$FX/chat_template_golden.json"
printf '<|system|>\nYou are a friendly assistant.</s>\n<|user|>\nGive me a quote about patience.</s>\n<|assistant|>\nPatience is bitter, but its fruit is sweet.</s>\n<|user|>\nAnother one?</s>\n' > "$T/nogen"
{ cat "$T/nogen"; printf '<|assistant|>\n'; } > "$T/gen"

check_out() { # desc expected-file cmd...
  desc=$1; want=$2; shift 2
  if "$@" > "$T/out" 2> "$T/err"; then
    if cmp -s "$T/out" "$want"; then ok "$desc"; else bad "$desc: output differs: $(od -c "$T/out" | tail -3)"; fi
  else bad "$desc: exit $?: $(cat "$T/err")"; fi
}

check_out "golden (chat_template.jinja)" "$T/gen" "$ANVIL" template --model "$FX/tiny-llama" --messages "$MSGS"
check_out "golden (template in tokenizer_config.json)" "$T/gen" "$ANVIL" template --model "$FX/tiny-llama-tied" --messages "$MSGS"
check_out "--no-generation-prompt" "$T/nogen" "$ANVIL" template --model "$FX/tiny-llama" --messages "$MSGS" --no-generation-prompt

# a plain array of messages, a template file and extra variables
printf '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "extra": null}]' > "$T/msgs.json"
printf '{{ bos_token }}{%% for m in messages %%}[{{ m.role }}:{{ m.content }}{{ m.extra is defined }}]{%% endfor %%}\n{%% if add_generation_prompt %%}GEN{%% endif %%}|{{ date_string }}|{{ tools | length if tools is not none else "none" }}\n' > "$T/t.jinja"
printf '<s>[user:hiFalse][assistant:yoFalse]GEN|26 Jul 2024|2' > "$T/want1"
check_out "--chat-template + --chat-template-args" "$T/want1" \
  "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/msgs.json" --chat-template "$T/t.jinja" \
  --chat-template-args '{"date_string": "26 Jul 2024", "tools": [{"a": 1}, {"b": 2}]}'
printf '[user:hiFalse][assistant:yoFalse]||none' > "$T/want2"
check_out "--chat-template without --model" "$T/want2" \
  "$ANVIL" template --messages "$T/msgs.json" --chat-template "$T/t.jinja" --no-generation-prompt
printf '<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n<start_of_turn>model\n' > "$T/want3"
if [ -f "$FX/chat_templates/google-gemma-2-2b-it.jinja" ]; then
  check_out "real template (Gemma-2)" "$T/want3" "$ANVIL" template --messages "$T/msgs.json" \
    --chat-template "$FX/chat_templates/google-gemma-2-2b-it.jinja" --chat-template-args '{"bos_token": "<bos>"}'
  printf '[{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]' > "$T/sys.json"
  expect_error "template raises (Gemma with a system message)" "System role not supported" \
    "$ANVIL" template --messages "$T/sys.json" --chat-template "$FX/chat_templates/google-gemma-2-2b-it.jinja"
else skip "no chat_templates fixtures"; fi

# errors: one line on stderr, non-zero exit, nothing on stdout
expect_error "missing messages file" "nope.json" "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/nope.json"
printf '[{"role": "user", "content": "hi"' > "$T/bad.json"
expect_error "malformed messages JSON" "invalid JSON" "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/bad.json"
printf '{"role": "user"}' > "$T/obj.json"
expect_error "messages not a list" "expected a JSON array" "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/obj.json"
printf '[]' > "$T/empty.json"
expect_error "empty conversation" "empty conversation" "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/empty.json"
printf 'line one\n{%% for m in messages %%}{{ raise_exception("Roles must alternate: " ~ m.role) }}{%% endfor %%}' > "$T/raise.jinja"
expect_error "template raises" "raise.jinja:2:[0-9]+: Roles must alternate: user" \
  "$ANVIL" template --messages "$T/msgs.json" --chat-template "$T/raise.jinja"
printf '{%% if messages %%}\n{{ messages | nosuch }}\n{%% endif %%}' > "$T/parse.jinja"
expect_error "template parse error" "parse.jinja:2:[0-9]+: No filter named 'nosuch'" \
  "$ANVIL" template --messages "$T/msgs.json" --chat-template "$T/parse.jinja"
expect_error "bad --chat-template-args" "expected a JSON object" \
  "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/msgs.json" --chat-template-args '[1'
expect_error "missing --chat-template file" "nope.jinja" \
  "$ANVIL" template --model "$FX/tiny-llama" --messages "$T/msgs.json" --chat-template "$T/nope.jinja"
mkdir -p "$T/empty_model"
expect_error "model without a template" "no chat template" "$ANVIL" template --model "$T/empty_model" --messages "$T/msgs.json"
expect_error "no --messages" "messages FILE is required" "$ANVIL" template --model "$FX/tiny-llama"
finish
