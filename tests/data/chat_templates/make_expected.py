#!/usr/bin/env python3
"""Dev aid (tests never run it): renders the real chat templates in ../shared/fixtures/chat-templates
with transformers' own renderer (render_jinja_template, the code behind apply_chat_template) and
writes expected.json next to this script: one case per (template, conversation, arguments), with
the expected prompt or the expected error text.

    pip install transformers jinja2    # no torch needed
    python3 tests/data/chat_templates/make_expected.py [FIXTURES_DIR]
"""
import json
import os
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "..", "shared", "fixtures")
TDIR = os.path.join(FIX, "chat-templates")

# special tokens of each model (its tokenizer's special_tokens_map)
TOKENS = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": (None, "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}

SYS = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
U1 = {"role": "user", "content": "  What is the capital of France?  "}
A1 = {"role": "assistant", "content": "Paris."}
U2 = {"role": "user", "content": "And of Japan? Say it \"quoted\" with a back\\slash, naïve café, 東京 🗼.\n"}
CONVS = {
    "user": [U1],
    "sys_user": [SYS, U1],
    "multi": [U1, A1, U2],
    "sys_multi": [SYS, U1, A1, U2],
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Handles \"quotes\" and ünïcode.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Tōkyō"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
        },
        "return": {"type": "string"},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}},
}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo", "days": 2}}}
CALL_ID = dict(CALL, id="call12345")
TOOL_Q = {"role": "user", "content": "What's the weather in Tokyo?"}

cases = []


def case(name, template, messages, gen=True, args=None):
    bos, eos = TOKENS[template]
    cases.append({"name": name, "template": template, "messages": messages, "add_generation_prompt": gen,
                  "bos_token": bos, "eos_token": eos, "args": args or {}})


LLAMA = {"date_string": "26 Jul 2024"}
for t in TOKENS:
    args = dict(LLAMA) if "Llama-3" in t else {}
    for cname, conv in CONVS.items():
        for gen in (True, False):
            case(f"{t}:{cname}:{'gen' if gen else 'nogen'}", t, conv, gen, args)

# tools
Q = "Qwen-Qwen2.5-7B-Instruct.jinja"
case("qwen:tools", Q, [TOOL_Q], True, {"tools": [WEATHER, TIME]})
case("qwen:tools_sys", Q, [SYS, TOOL_Q], True, {"tools": [WEATHER]})
case("qwen:tool_calls", Q, [TOOL_Q, {"role": "assistant", "content": "", "tool_calls": [CALL, TIME | {"function": {"name": "get_time", "arguments": {}}}]},
                            {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "12:00"}], True, {"tools": [WEATHER, TIME]})
case("qwen:tool_calls_content", Q, [TOOL_Q, {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
                                    {"role": "tool", "content": "sunny"}, A1], False, {"tools": [WEATHER]})
for L in ("meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja"):
    short = "llama31" if "3.1" in L else "llama32"
    case(f"{short}:tools", L, [SYS, TOOL_Q], True, dict(LLAMA, tools=[WEATHER, TIME]))
    case(f"{short}:tools_in_system", L, [SYS, TOOL_Q], True, dict(LLAMA, tools=[WEATHER], tools_in_user_message=False))
    case(f"{short}:tool_call_flow", L, [TOOL_Q, {"role": "assistant", "tool_calls": [CALL]},
                                        {"role": "ipython", "content": {"temp": 21, "sky": "clear"}}], True, dict(LLAMA, tools=[WEATHER]))
    case(f"{short}:tool_result_str", L, [TOOL_Q, {"role": "assistant", "tool_calls": [CALL]},
                                         {"role": "tool", "content": "21 degrees"}], True, dict(LLAMA, tools=[WEATHER]))
    case(f"{short}:two_calls_raises", L, [TOOL_Q, {"role": "assistant", "tool_calls": [CALL, CALL]}], True, dict(LLAMA, tools=[WEATHER]))
    case(f"{short}:tools_no_user_raises", L, [SYS], True, dict(LLAMA, tools=[WEATHER]))
case("llama31:builtin_tools", "meta-llama-Llama-3.1-8B-Instruct.jinja",
     [TOOL_Q, {"role": "assistant", "tool_calls": [{"function": {"name": "brave_search", "arguments": {"query": "tokyo weather"}}}]}], True,
     dict(LLAMA, builtin_tools=["brave_search", "code_interpreter", "wolfram_alpha"]))
case("llama31:default_date", "meta-llama-Llama-3.1-8B-Instruct.jinja", [U1], True, {})

M = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
case("mistral:tools", M, [U1, A1, TOOL_Q], True, {"tools": [WEATHER, TIME]})
case("mistral:tool_calls", M, [TOOL_Q, {"role": "assistant", "tool_calls": [CALL_ID]},
                               {"role": "tool", "tool_call_id": "call12345", "content": "sunny"}, A1], True, {"tools": [WEATHER]})
case("mistral:tool_dict_content", M, [TOOL_Q, {"role": "assistant", "tool_calls": [CALL_ID]},
                                      {"role": "tool", "tool_call_id": "call12345", "content": {"content": {"temp": 21, "ok": True, "x": None}}}], True, {"tools": [WEATHER]})
case("mistral:bad_call_id_raises", M, [TOOL_Q, {"role": "assistant", "tool_calls": [dict(CALL, id="short")]}], True, {"tools": [WEATHER]})
case("mistral:not_alternating_raises", M, [U1, U2], True)
case("mistral:bad_role_raises", M, [U1, {"role": "narrator", "content": "x"}], True)

G = "google-gemma-2-2b-it.jinja"
case("gemma:system_raises", G, [SYS, U1], True)
case("gemma:not_alternating_raises", G, [U1, A1, A1], True)

D = "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"
case("deepseek:think", D, [SYS, U1, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nParis."}, U2], True)
case("deepseek:tool_flow", D, [TOOL_Q, {"role": "assistant", "content": None, "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}},
    {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
    {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "12:00"}, A1], True)

P = "microsoft-Phi-3.5-mini-instruct.jinja"
case("phi:empty_system", P, [{"role": "system", "content": ""}, U1], True)

for c in cases:
    with open(os.path.join(TDIR, c["template"]), encoding="utf-8") as f:
        src = f.read()
    kwargs = dict(c["args"])
    tools = kwargs.pop("tools", None)
    if c["bos_token"] is not None:
        kwargs["bos_token"] = c["bos_token"]
    if c["eos_token"] is not None:
        kwargs["eos_token"] = c["eos_token"]
    conv = _normalize_chat_messages(c["messages"])
    try:
        out, _ = render_jinja_template(conversations=[conv], tools=tools, chat_template=src,
                                       add_generation_prompt=c["add_generation_prompt"], **kwargs)
        c["expected"] = out[0]
    except jinja2.exceptions.TemplateError as e:
        c["error"] = str(e)

meta = {"transformers": transformers.__version__, "jinja2": jinja2.__version__, "cases": cases}
with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(f"{len(cases)} cases, {sum('error' in c for c in cases)} expected errors")
