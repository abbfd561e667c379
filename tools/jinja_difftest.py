#!/usr/bin/env python3
"""Differential test: random small templates rendered by Python jinja2 (configured
as transformers does) and by `lazymoe template`; prints the ones that disagree.

Not part of `make test` (needs python3 + jinja2). Usage: tools/jinja_difftest.py [N] [SEED]
Outputs are compared exactly; for errors only "both failed" is required.
"""
import copy
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_template_fixtures import NOW, make_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOMS = ["1", "0", "-3", "2.5", "0.1", "1e-7", "'a'", "'Hello World'", "''", "' x '", "true", "false", "none",
         "[1, 2, 3]", "[]", "['b', 'A', 'a']", "{'k': 1, 'j': [1]}", "{}", "(1, 'x')", "m", "m.role", "m.content",
         "m['tool_calls']", "msgs", "msgs[0]", "msgs|length", "undefined_name", "ns.count", "loop_var"]
BINOPS = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">=", "and", "or", "in", "not in"]
FILTERS = ["length", "upper", "lower", "trim", "first", "last", "list", "string", "int", "float", "abs", "title",
           "capitalize", "tojson", "join(',')", "default('D')", "default('D', true)", "reverse|list", "sort|list",
           "unique|list", "items|list", "map('string')|list", "select|list", "reject|list", "round", "wordcount",
           "indent(2)", "replace('a', 'b')", "selectattr('role')|list", "map(attribute='role')|list", "count",
           "dictsort", "sum", "min", "max", "batch(2)|list", "tojson(indent=2)", "escape", "safe"]
TESTS = ["defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable",
         "sequence", "boolean", "true", "false", "odd", "even", "divisibleby 2", "equalto 1", "in [1, 'a']"]
METHODS = ["strip()", "strip('a')", "split()", "split('l')", "startswith('H')", "endswith('d')", "upper()",
           "replace('l', 'L')", "find('o')", "count('l')", "items()|list", "keys()|list", "get('k')", "get('z', 5)",
           "title()", "lstrip()", "rstrip('d')", "rsplit(' ', 1)"]


def expr(rnd, depth=0):
    r = rnd.random()
    if depth > 2 or r < 0.3:
        return rnd.choice(ATOMS)
    if r < 0.45:
        return f"({expr(rnd, depth + 1)} {rnd.choice(BINOPS)} {expr(rnd, depth + 1)})"
    if r < 0.6:
        return f"{expr(rnd, depth + 1)}|{rnd.choice(FILTERS)}"
    if r < 0.7:
        return f"({expr(rnd, depth + 1)} is {'not ' if rnd.random() < 0.3 else ''}{rnd.choice(TESTS)})"
    if r < 0.8:
        return f"{rnd.choice(ATOMS)}.{rnd.choice(METHODS)}"
    if r < 0.87:
        return f"({expr(rnd, depth + 1)} if {expr(rnd, depth + 1)} else {expr(rnd, depth + 1)})"
    if r < 0.93:
        return expr(rnd, depth + 1) + "[" + rnd.choice(["0", "-1", "1:", "::-1", ":2", "'k'"]) + "]"
    return f"not {expr(rnd, depth + 1)}"


def stmt(rnd, depth=0):
    r = rnd.random()
    if depth > 2 or r < 0.4:
        return "{{ " + expr(rnd) + " }}" + rnd.choice(["", " ", "\n", "\n  "])
    if r < 0.55:
        return "{% if " + expr(rnd) + " %}" + stmt(rnd, depth + 1) + "{% else %}" + stmt(rnd, depth + 1) + "{% endif %}\n"
    if r < 0.7:
        return ("{% for loop_var in " + rnd.choice(["msgs", "[3, 1, 2]", "'ab'", "{'x': 1}", "range(3)", "none",
                                                       "undefined_name"]) + " %}" + "{{ loop.index }}{{ loop.first }}"
                + stmt(rnd, depth + 1) + "{% set ns.count = ns.count + 1 %}{% endfor %}\n")
    if r < 0.8:
        return "{%- set v = " + expr(rnd) + " -%}\n  {{ v }}"
    if r < 0.9:
        return "{% macro mac(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ mac(" + expr(rnd) + ") }}"
    return "  {% filter upper %}" + stmt(rnd, depth + 1) + "{% endfilter %}\n"


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rnd = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    env = make_env()
    msgs = [{"role": "user", "content": "Hello World"}, {"role": "assistant", "content": "", "tool_calls": [1]}]
    ctx = {"messages": msgs, "tools": None, "documents": None, "add_generation_prompt": False}
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        lines, srcs, expected = [], [], []
        for i in range(n):
            src = "{% set ns = namespace(count=0) %}{% set msgs = messages %}{% set m = messages[0] %}" + \
                  "".join(stmt(rnd) for _ in range(rnd.randint(1, 3))) + "{{ ns.count }}"
            srcs.append(src)
            try:
                expected.append(("text", env.from_string(src).render(**copy.deepcopy(ctx))))
            except Exception as e:  # noqa: BLE001
                expected.append(("error", f"{type(e).__name__}: {e}"))
        got = []
        for i, src in enumerate(srcs):
            d = os.path.join(tmp, str(i))
            os.makedirs(d)
            with open(os.path.join(d, "chat_template.jinja"), "w") as f:
                f.write(src)
            line = json.dumps({"id": i, "messages": msgs, "add_generation_prompt": False})
            out = subprocess.run([os.path.join(ROOT, "build", "lazymoe"), "template", d, "--jsonl", "-", "--now", str(NOW)],
                                 input=line + "\n", capture_output=True, text=True)
            got.append(json.loads(out.stdout) if out.stdout.strip() else {"error": "parse: " + out.stderr.strip()})
        for src, (kind, val), g in zip(srcs, expected, got):
            ok = ("error" in g) if kind == "error" else (g.get("text") == val)
            if not ok:
                bad += 1
                print("TEMPLATE:", src)
                print("  python:", kind, repr(val)[:300])
                print("  lazymoe:", repr(g)[:300])
    print(f"{n} templates, {bad} disagreements")


if __name__ == "__main__":
    main()
