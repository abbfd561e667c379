#!/usr/bin/env python3
"""Writes the tiny GLM-4.5/4.6 and MiniMax-M2 model directories the server tests use
(tests/fixtures/server_glm with GLM-4.6's template, server_glm45 with GLM-4.5's,
server_minimax; tests/node/server_families.test.mjs) and the prompts those tests expect the
server to build.

Each directory: the random glm4_moe / minimax_m2 weights and config of the transformers
goldens (symlinks into tests/fixtures/golden), the published chat template (a symlink into
tests/fixtures/templates/models), and a tokenizer that can write the family's markup: the
byte-level BPE of tests/fixtures/textgen cut to fewer merges so that the family's added
tokens fit the goldens' 320-token vocabulary. Role and sequence markers are special;
reasoning and tool-call markup are added but not special, so decoding keeps them for the
parser. generation_config.json names the family's end-of-turn tokens.

expected_prompts.json: {id: text} for the conversations the server tests send back, rendered
here with Python jinja2 the way transformers renders (tools/make_template_fixtures.py's
environment). The node test tokenizes each with `lazymoe tokenize` and compares the count
with the prompt_tokens the server reports. Run from the repository root; rerun after
changing a conversation here or in the test.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_template_fixtures import make_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 320  # the golden fixtures' vocab_size

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]
ASK = {"role": "user", "content": "Weather in Paris?"}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}
RESULT = {"role": "tool", "content": "{\"sky\":\"sunny\",\"celsius\":21}"}
REASONING = "The user wants the weather in Paris."
CLOCK = [{"type": "function", "function": {
    "name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}]


def conversations(text_before_call):
    """The follow-up conversations of the server tests (template form: what the server
    hands the template after converting the SDK's messages)."""
    call_turn = {"role": "assistant", "content": text_before_call, "reasoning_content": REASONING, "tool_calls": [CALL]}
    no_reasoning = {k: v for k, v in call_turn.items() if k != "reasoning_content"}
    return {
        # the tool result goes back with the call and its reasoning
        "tool_round_trip": ([ASK, call_turn, RESULT], WEATHER),
        "tool_round_trip_no_reasoning": ([ASK, no_reasoning, RESULT], WEATHER),
        # a later user turn: reasoning before it is dropped by both templates
        "later_turn": ([ASK, {"role": "assistant", "content": "Sunny.", "reasoning_content": "Old thoughts."},
                        {"role": "user", "content": "Thanks. And Oslo?"}], None),
        "later_turn_no_reasoning": ([ASK, {"role": "assistant", "content": "Sunny."},
                                     {"role": "user", "content": "Thanks. And Oslo?"}], None),
        # a tool without parameters: the call comes back with arguments {} (GLM-4.5's
        # template iterates tc.arguments.items() with no `or {}`: null would raise)
        "no_argument_round_trip": ([{"role": "user", "content": "Time?"},
                                    {"role": "assistant", "content": "", "tool_calls": [
                                        {"type": "function", "function": {"name": "get_time", "arguments": {}}}]},
                                    {"role": "tool", "content": "12:00"}], CLOCK),
    }


FAMILIES = {
    "server_glm": {
        "golden": "glm4_moe_f32",
        "template": "zai-org-GLM-4.6",
        "special": ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "markup": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
                   "</arg_value>", "<tool_response>", "</tool_response>"],
        # GLM-4.5's generation_config: <|endoftext|>, <|user|>, <|observation|>
        "eos": ["<|endoftext|>", "<|user|>", "<|observation|>"],
        "tokenizer_config": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None},
        "text_before_call": "Let me check.",
    },
    "server_glm45": {
        "golden": "glm4_moe_f32",
        "template": "zai-org-GLM-4.5",
        "special": ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "markup": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
                   "</arg_value>", "<tool_response>", "</tool_response>"],
        # GLM-4.5's generation_config: <|endoftext|>, <|user|>, <|observation|>
        "eos": ["<|endoftext|>", "<|user|>", "<|observation|>"],
        "tokenizer_config": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None},
        "text_before_call": "Let me check.",
    },
    "server_minimax": {
        "golden": "minimax_m2_f32",
        "template": "MiniMaxAI-MiniMax-M2",
        "special": ["]~!b[", "]~b]", "[e~["],
        "markup": ["<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>"],
        "eos": ["[e~["],
        "tokenizer_config": {"bos_token": "]~!b[", "eos_token": "[e~[", "pad_token": None},
        "text_before_call": "Let me check.",
    },
}


def symlink(target, link):
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)


def main():
    base = json.load(open(os.path.join(FIX, "textgen", "tokenizer.json"), encoding="utf-8"))
    env = make_env()
    for name, fam in FAMILIES.items():
        out = os.path.join(FIX, name)
        os.makedirs(out, exist_ok=True)
        added = [(t, True) for t in fam["special"]] + [(t, False) for t in fam["markup"]]
        first_added = VOCAB - len(added)
        tok = json.loads(json.dumps(base))
        # textgen's merge i made token 256 + i: keep the merges whose tokens stay below the added ones
        tok["model"]["merges"] = base["model"]["merges"][:first_added - 256]
        tok["model"]["vocab"] = {k: v for k, v in base["model"]["vocab"].items() if v < first_added}
        tok["added_tokens"] = [{"id": first_added + i, "content": c, "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": s} for i, (c, s) in enumerate(added)]
        ids = {c: first_added + i for i, (c, _) in enumerate(added)}
        with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False, indent=1)
        cfg = {"add_bos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": 4096,
               "tokenizer_class": "PreTrainedTokenizerFast", **fam["tokenizer_config"]}
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)
        with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump({"eos_token_id": [ids[t] for t in fam["eos"]]}, f)
        golden = os.path.join("..", "golden", fam["golden"])
        symlink(os.path.join(golden, "config.json"), os.path.join(out, "config.json"))
        symlink(os.path.join(golden, "model.safetensors"), os.path.join(out, "model.safetensors"))
        symlink(os.path.join("..", "templates", "models", fam["template"], "chat_template.jinja"),
                os.path.join(out, "chat_template.jinja"))
        tmpl = env.from_string(open(os.path.join(out, "chat_template.jinja"), encoding="utf-8").read())
        special = {k: v for k, v in fam["tokenizer_config"].items() if isinstance(v, str)}
        expected = {}
        for cid, (messages, tools) in conversations(fam["text_before_call"]).items():
            expected[cid] = tmpl.render(messages=messages, tools=tools, documents=None, add_generation_prompt=True,
                                        **special)
        with open(os.path.join(out, "expected_prompts.json"), "w", encoding="utf-8") as f:
            json.dump(expected, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
