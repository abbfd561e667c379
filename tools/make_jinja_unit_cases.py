#!/usr/bin/env python3
"""Writes tests/fixtures/templates/unit_cases.json for tests/test_jinja.c.

Each case is a small template rendered by Python jinja2 configured as transformers
configures it; the expected text (or the fact that it fails) comes from jinja2
itself, not from the C code under test. Cases in DEVIATIONS are where lazymoe
deliberately differs; their expectation is written by hand.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_template_fixtures import make_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTX = {"msgs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
       "d": {"a": 1, "b": [1, 2], "c": {"x": "y"}}, "l": [3, 1, 2], "s": "Hello World", "n": None, "t": True,
       "f": 1.5, "i": 7, "words": ["b", "A", "c", "a"],
       "users": [{"name": "x", "age": 3}, {"name": "y", "age": 1, "admin": True}]}

CASES = [
    # whitespace control
    ("ws_trim_blocks", "{% if true %}\nyes\n{% endif %}\nend"),
    ("ws_lstrip_blocks", "  {% if true %}\n  x\n  {% endif %}\nend"),
    ("ws_minus_var", "a  {{- 'b' -}}  c"),
    ("ws_minus_block", "a\n  {%- if true -%}\n  b\n  {%- endif -%}\n  c"),
    ("ws_plus_lstrip", "  {%+ if true %}x{% endif %}"),
    ("ws_plus_trim", "{% if true +%}\nx{% endif %}"),
    ("ws_comment", "a {# c #}\nb  {#- x -#}  c"),
    ("ws_comment_lstrip", "  {# c #}\nx"),
    ("ws_var_no_trim", "{{ 'a' }}\nb"),
    ("ws_block_mid_line", "x {% if true %}y{% endif %} z\n"),
    ("ws_crlf", "{% if true %}\r\nA\r\n{% endif %}\r\nB"),
    ("raw_block", "{% raw %}{{ x }}{% if %}{% endraw %}!"),
    # expressions
    ("literals", "{{ 1 }} {{ 1.5 }} {{ 'a' }} {{ \"b\" }} {{ true }} {{ True }} {{ none }} {{ None }} {{ [1, 'a', none] }} {{ {'k': 1} }} {{ (1,) }} {{ (1, 2) }} {{ () }}"),
    ("string_escapes", r"{{ 'a\nb\t\'c\' \"d\" \\ \u00e9 \x41' }}"),
    ("string_adjacent", "{{ 'a' 'b' }}"),
    ("arith", "{{ 1 + 2 }} {{ 7 - 10 }} {{ 3 * 4 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 1.5 + 1 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}"),
    ("floats", "{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 3.0 }} {{ -0.5 }} {{ 2.5e-10 }} {{ 123456789.123 }} {{ 1/3 }}"),
    ("concat", "{{ 'a' ~ 1 ~ none ~ true ~ [1] ~ 1.0 }}"),
    ("compare", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ [1,2] == [1,2] }} {{ true == 1 }} {{ [1, 2] < [1, 3] }}"),
    ("logic", "{{ true and 'x' }} {{ false or 'y' }} {{ not 0 }} {{ 0 or '' or 'z' }} {{ 1 and 0 }} {{ not (1 and 2) }}"),
    ("in_operator", "{{ 'a' in 'cat' }} {{ 2 in l }} {{ 'a' in d }} {{ 'z' not in d }} {{ 'x' in undefined_var }} {{ '' in 'x' }}"),
    ("cond_expr", "{{ 'y' if t else 'n' }} {{ 'y' if n else 'n' }} [{{ 'y' if false }}] {{ 1 if false else 2 if true else 3 }}"),
    ("attr_and_subscript", "{{ d.a }} {{ d['b'][1] }} {{ d.c.x }} {{ msgs[0].role }} {{ msgs[-1]['content'] }} [{{ d.missing }}] [{{ l[10] }}] {{ d.b.1 }}"),
    ("slices", "{{ l[1:] }} {{ l[:1] }} {{ l[::-1] }} {{ s[::-1] }} {{ s[6:] }} {{ s[-5:-1] }} {{ l[::2] }} {{ 'héllo'[1:3] }} {{ l[5:] }} {{ l[-100:1] }}"),
    ("unary", "{{ -i }} {{ -(1.5) }} {{ +3 }} {{ -i|abs }} {{ - 2 ** 2 }}"),
    ("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ 'a' ~ 2 * 3 }} {{ not true == false }}"),
    ("output_tuple", "{{ 1, 'a' }}"),
    ("print_repr", "{{ ['it\\'s', \"q\\\"\", 'a\\nb', 'x\"y\\'z'] }} {{ {'a': none, 'b': [true, 1.0]} }} {{ d.items()|list }} {{ namespace(a=1) }}"),
    # statements
    ("if_elif_else", "{% for x in [1,2,3,4] %}{% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}many{% endif %},{% endfor %}"),
    ("for_loop_vars", "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}"),
    ("for_prev_next", "{% for x in l %}{{ loop.previtem|default('-') }}{{ x }}{{ loop.nextitem|default('-') }} {% endfor %}"),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}one{% else %}no{% endfor %}"),
    ("for_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for (a, b) in [[1, 2]] %}{{ a + b }}{% endfor %}"),
    ("for_dict_and_string", "{% for k in d %}{{ k }}{% endfor %} {% for c in 'héy' %}{{ c }}.{% endfor %}"),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.index }}{{ loop.length }},{% endfor %}"),
    ("break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
    ("nested_loops", "{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }};{% endfor %}"),
    ("loop_cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}"),
    ("loop_scope_per_iteration", "{% for x in [1, 2] %}[{{ y }}]{% set y = x %}{{ y }}{% endfor %}[{{ y }}]"),
    ("set_scoping", "{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}{% for i in l %}{% set x = 5 %}{% endfor %}{{ x }}"),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}"),
    ("set_block", "{% set x %}  hi {{ 1 }}\n{% endset %}[{{ x }}]"),
    ("set_block_filter", "{% set x | upper | replace('B', '-') %}abc{% endset %}{{ x }}"),
    ("namespace", "{% set ns = namespace(a=1, b='x') %}{% for i in l %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}{{ ns.zz is defined }}"),
    ("macro_defaults", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Bob') }} {{ greet('Al', greeting='Hi') }} {{ greet('X', 'Yo') }} [{{ greet() }}]"),
    ("macro_recursive", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }}"),
    ("macro_sees_globals", "{% macro m() %}{{ g }}{{ s }}{% endmacro %}{% set g = 'late' %}{{ m() }}"),
    ("macro_returns_string", "{% macro m() %}object | object{% endmacro %}{% set r = m() %}{{ r == 'object | object' }} {{ m()|length }}"),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 + 1 }}{% endcall %}"),
    ("call_block_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) each([1,2]) %}[{{ x }}]{% endcall %}"),
    ("filter_block", "{% filter upper %}hello {{ s }}{% endfilter %}"),
    ("filter_block_chain", "{% filter trim | replace('a', 'b') %}  aaa  {% endfilter %}!"),
    ("err_raise_exception", "a{{ raise_exception('boom: bad role') }}"),
    ("strftime_now", "{{ strftime_now('%Y-%m-%d') }} {{ strftime_now('%d %b %Y') }}"),
    ("globals_misc", "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(3, 0, -1)|list }} {{ dict(a=1, b=2) }} {{ namespace(a=1).a }}"),
    # filters
    ("f_tojson", "{{ d|tojson }} {{ 'é\"\\n<'|tojson }} {{ [1.0, 2.5, none, true, 1e-7, 10000000000000000.0]|tojson }} {{ {}|tojson }} {{ []|tojson }} {{ users|tojson }}"),
    ("f_tojson_indent", "{{ d|tojson(indent=2) }}\n{{ {'a': [], 'b': {}}|tojson(indent=4) }}"),
    ("f_tojson_options", "{{ {'b': 1, 'a': 'é😀'}|tojson(sort_keys=true) }} {{ {'b': 1}|tojson(separators=(',', ':')) }} {{ 'é😀'|tojson(true) }}"),
    ("f_string_case", "{{ '  x  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ s|upper }}|{{ s|lower }}|{{ 'hello wORLD-foo (bar)'|title }}|{{ 'hELLO'|capitalize }}"),
    ("f_length", "{{ l|length }} {{ s|count }} {{ d|length }} {{ 'héllo'|length }} {{ undefined_var|length }}"),
    ("f_first_last", "{{ l|first }} {{ l|last }} {{ s|first }} {{ s|last }} [{{ []|first }}]"),
    ("f_join", "{{ l|join(', ') }} {{ users|join('/', attribute='name') }} {{ [1,2]|join }} [{{ undefined_var|join(',') }}]"),
    ("f_default", "{{ undefined_var|default('dflt') }} {{ n|default('x') }} {{ ''|default('e', true) }} {{ ''|d('e2', boolean=true) }} {{ 0|default(5) }} [{{ undefined_var|d }}]"),
    ("f_replace", "{{ 'aaa'|replace('a', 'b', 2) }} {{ s|replace('World', 'There') }} {{ 'abc'|replace('', '-') }}"),
    ("f_list_items", "{{ 'ab'|list }} {{ d|items|list }} {{ d|list }} {{ undefined_var|items|list }}"),
    ("f_select_reject", "{{ users|selectattr('admin')|map(attribute='name')|list }} {{ users|rejectattr('admin')|map(attribute='name')|list }} {{ users|selectattr('age', 'equalto', 3)|map(attribute='name')|join }} {{ [1,2,3,4]|select('even')|list }} {{ [1,2,3,4]|reject('odd')|list }} {{ [0,1,'',2]|select|list }} {{ users|selectattr('age', '>', 1)|list|length }}"),
    ("f_map", "{{ words|map('upper')|list }} {{ users|map(attribute='age')|sum }} {{ users|map(attribute='missing', default='?')|list }} {{ ['a', 'b']|map('replace', 'a', 'z')|join }}"),
    ("f_conversions", "{{ '42'|int + 1 }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(9) }} {{ 3.9|int }} {{ '1.5'|float }} {{ 2|float }} {{ 'q'|float }} {{ -3|abs }} {{ 1|string ~ 2 }} {{ ' 12 '|int }} {{ '0x1A'|int(0, 16) }} {{ true|int }}"),
    ("f_round", "{{ 2.5|round }} {{ 3.5|round }} {{ 2.567|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(method='floor') }} {{ 3|round }} {{ -2.5|round }}"),
    ("f_sort", "{{ words|sort }} {{ words|sort(case_sensitive=true) }} {{ l|sort(reverse=true) }} {{ users|sort(attribute='age')|map(attribute='name')|join }} {{ [[2, 'b'], [1, 'z'], [2, 'a']]|sort }}"),
    ("f_unique_reverse", "{{ ['a','A','b','a']|unique|list }} {{ l|reverse|list }} {{ s|reverse }} {{ 'héy'|reverse }}"),
    ("f_escape_safe", "{{ '<a href=\"x\">&\\'</a>'|escape }} {{ '<b>'|safe }} {{ '<i>'|e }}"),
    ("f_indent", "[{{ 'a\nb\n\nc'|indent }}] [{{ 'a\nb'|indent(2, true) }}] [{{ 'a\n\nb\n'|indent(2, blank=true) }}] [{{ 'x\ny'|indent('> ') }}] [{{ 'one'|indent }}]"),
    ("f_wordcount_batch", "{{ 'hello big  world'|wordcount }} {{ range(5)|batch(2)|list }} {{ range(5)|batch(2, 0)|list }}"),
    ("f_min_max_sum", "{{ l|min }} {{ l|max }} {{ words|max }} {{ l|sum }} {{ users|sum(attribute='age') }} {{ [1.5, 2]|sum }}"),
    ("f_dictsort", "{{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }}"),
    ("f_center", "[{{ 'ab'|center(7) }}] [{{ 'abc'|center(8) }}]"),
    # tests
    ("tests_types", "{{ x is defined }} {{ d is defined }} {{ x is undefined }} {{ n is none }} {{ s is string }} {{ i is number }} {{ f is number }} {{ t is number }} {{ i is integer }} {{ f is integer }} {{ t is integer }} {{ f is float }} {{ d is mapping }} {{ l is mapping }} {{ l is iterable }} {{ s is iterable }} {{ i is iterable }} {{ x is iterable }} {{ l is sequence }} {{ d is sequence }} {{ t is boolean }} {{ i is boolean }}"),
    ("tests_values", "{{ t is true }} {{ t is false }} {{ 1 is true }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ 1 is equalto 1 }} {{ 1 is eq 2 }} {{ 2 is ne 2 }} {{ 1 is lt 2 }} {{ 1 is ge 2 }} {{ n is not none }} {{ s is not string }} {{ 'A' is upper }} {{ 'a' is lower }} {{ 2 is in [1, 2] }} {{ n is sameas none }}"),
    ("tests_odd_even_numbers", "{{ 2.5 is odd }} {{ 3.0 is odd }} {{ -3 is odd }} {{ -4 is even }} {{ 4.0 is even }} {{ 7 is divisibleby(-7) }}"),
    ("undefined_in_containers", "{{ [x, 1] }} {{ {'a': x} }} {{ 'ab'|map(attribute='nope')|list }}"),
    ("tests_defined_attr", "{{ d.zz is defined }} {{ msgs[0].role is defined }} {{ msgs[5] is defined }} {{ d.a is not defined }}"),
    ("tests_callable", "{{ range is callable }} {{ s.upper is callable }} {{ s is callable }}"),
    # methods
    ("str_methods_strip_split", "{{ '  a b  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\n\nhi\n'.lstrip('\n') }}|{{ 'hi\n\n'.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a/b/c'.rsplit('/', 1) }}|{{ 'x</think>y'.split('</think>')[-1] }}|{{ 'l1\nl2\r\nl3'.splitlines() }}"),
    ("str_methods_other", "{{ s.startswith('Hell') }}|{{ s.endswith(('x', 'ld')) }}|{{ s.replace('l', 'L') }}|{{ s.upper() }}{{ s.lower() }}|{{ \"they're bob's\".title() }}|{{ s.find('World') }}{{ s.find('zz') }}|{{ 'banana'.count('an') }}|{{ '{} and {}'.format(1, 'x') }}|{{ '{0}{name}'.format('a', name='b') }}|{{ '-'.join(['a','b']) }}|{{ s.capitalize() }}|{{ '12'.isdigit() }}{{ 'a1'.isdigit() }}|{{ 'héllo'.find('l') }}"),
    ("dict_methods", "{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ {'items': 1}['items'] }}"),
    ("generator_semantics", "{{ (l|map('string')|list)|length }} {{ 'yes' if [1]|select('odd') }} {{ 'yes' if []|select('odd') else 'no' }} {{ none|selectattr('x')|list }} {{ l|select('odd')|first }} {{ l|map('string')|join('-') }} {% for x in l|reject('odd') %}{{ x }}{% endfor %}"),
    ("subscript_failures_are_undefined", "[{{ (l|select)[0] }}][{{ n[1] }}][{{ i[0] }}]"),
    ("markup_concat", "{{ '<a>'|safe + '<b>' }} {{ '<b>' + '<a>'|safe }} {{ ('<x>'|safe + '&')|length }} {{ '<a>'|escape|escape }} {{ '<a>'|safe ~ '<b>' }} {{ '<a>'|forceescape|forceescape }}"),
    # undefined and None
    ("undefined_soft", "[{{ x }}][{{ x|string }}][{{ x ~ 'a' }}]{% for i in x %}no{% endfor %}{% if not x %}falsy{% endif %}{{ x == x }}{{ x|default('d') }}"),
    ("none_attribute_is_undefined", "[{{ n.foo }}][{{ d.a.b }}][{{ s.nope }}]"),
    # errors
    ("err_undefined_attr", "{{ x.y }}"),
    ("err_undefined_call", "{{ x() }}"),
    ("err_undefined_arith", "{{ x + 1 }}"),
    ("err_iterate_none", "{% for a in n %}{% endfor %}"),
    ("err_unknown_filter", "{{ 1|nosuchfilter }}"),
    ("err_unknown_test", "{{ 1 is nosuchtest }}"),
    ("err_unclosed_if", "{% if true %}x"),
    ("err_syntax", "{{ 1 + }}"),
    ("err_unknown_tag", "{% frobnicate %}"),
    ("err_div_zero", "{{ 1 / 0 }}"),
    ("err_str_plus_int", "{{ 'a' + 1 }}"),
    ("err_break_outside_loop", "{% break %}"),
    ("err_stray_endfor", "{% endfor %}"),
    ("err_unpack", "{% set a, b = [1, 2, 3] %}"),
    ("err_assign_non_namespace", "{% set d.a = 1 %}"),
    ("err_tojson_undefined", "{{ x|tojson }}"),
    ("err_compare_types", "{{ 1 < 'a' }}"),
    ("err_macro_too_many_args", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}"),
    ("err_not_callable", "{{ s() }}"),
    ("err_unclosed_string", "{{ 'abc }}"),
    ("err_unclosed_comment", "{# abc"),
    ("err_int_of_undefined", "{{ d.missing|int }}"),
    ("err_slice_none", "{{ n[1:] }}"),
    ("err_slice_generator", "{{ (l|select)[1:] }}"),
    ("err_generator_length", "{{ l|map('string')|length }}"),
    ("err_generator_tojson", "{{ l|select|tojson }}"),

]

# Where lazymoe deliberately differs from transformers' immutable sandbox.
DEVIATIONS = {
    "list_append": ("{% set ns = namespace(items=[]) %}{% for x in l %}{% set _ = ns.items.append(x * 2) %}{% endfor %}{{ ns.items }}",
                    "[6, 2, 4]"),
}


def main():
    env = make_env()
    out = {"context": CTX, "cases": []}
    for name, src in CASES:
        case = {"name": name, "template": src}
        try:
            case["expected"] = env.from_string(src).render(**CTX)
        except Exception as e:  # noqa: BLE001
            case["error"] = f"{type(e).__name__}: {e}"
        out["cases"].append(case)
    for name, (src, expected) in DEVIATIONS.items():
        out["cases"].append({"name": name, "template": src, "expected": expected, "deviation": True})
    path = os.path.join(ROOT, "tests", "fixtures", "templates", "unit_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for c in out["cases"]:
        if "error" in c and not c["name"].startswith("err_"):
            print("unexpected error:", c["name"], c["error"])
        if "error" not in c and c["name"].startswith("err_"):
            print("expected an error:", c["name"], repr(c.get("expected")))
    print(len(out["cases"]), "cases")


if __name__ == "__main__":
    main()
