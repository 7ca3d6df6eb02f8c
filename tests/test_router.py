"""Content routing (method="auto"): detection, route choice, the whole-request budget, structure preservation."""

from __future__ import annotations

import ast
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mixed_fixture import FORCED, PROTECTED, PY_FILE, QUESTION, documents

import ctxzip
from ctxzip.errors import ConfigError
from ctxzip.router import DEFAULT_ROUTES, Router, _water_fill, detect, detect_body

# baselines only, so these tests need no model
FAST = {"prose": ["truncate"], "prose_question": [{"method": "random", "config": {"seed": 1}}], "code": ["truncate"]}


@pytest.mark.parametrize(
    "text, kind",
    [
        (json.dumps({"a": [1, 2, {"b": "c"}]}), "json"),
        ("[1, 2, 3]", "json"),
        (PY_FILE, "code"),
        ("function f(a) {\n  const b = a + 1;\n  return b;\n}\nlet x = f(2);\n", "code"),
        ("#include <stdio.h>\nint main(void) {\n  printf(\"hi\");\n  return 0;\n}\n", "code"),
        ("\n".join(f"2024-05-01 10:00:{i:02d} INFO handled request {i}" for i in range(6)), "logs"),
        ("Alice: hi\nBob: hello there\nAlice: how are you?\nBob: fine", "chat"),
        ("The committee met on Tuesday. It approved the budget and discussed the new library.", "prose"),
        ("hello", "prose"),
        ("", "prose"),
        ("{not json at all", "prose"),
    ],
)
def test_detect(text, kind):
    assert detect(text)[0] == kind


_JSON = json.dumps({"status": "ok", "items": [{"id": i, "note": f"item {i} is fine"} for i in range(5)]}, indent=2)


@pytest.mark.parametrize(
    "before, body, after, kind",
    [
        ("Here is our retry helper:\n", PY_FILE, "", "code"),
        ("", PY_FILE, "\nCan you review it before Friday?", "code"),
        ("Look at this:\n```python\n", PY_FILE.rstrip("\n"), "\n```\nWhy does it hang?", "code"),
        ("The tool said:\n~~~json\n", _JSON, "\n~~~", "json"),
        ("In C:\n```\n", "int add(int a, int b) {\n  return a + b;\n}\nint x = add(1, 2);", "\n```", "code"),
    ],
)
def test_code_or_json_pasted_with_a_few_prose_lines_is_found_with_its_body(before, body, after, kind):
    text = before + body + after
    ctype, reason, span = detect_body(text)
    assert ctype == kind and span is not None, reason
    assert text[span[0] : span[1]].strip() == body.strip()
    assert detect(text)[0] == kind


@pytest.mark.parametrize(
    "text",
    [
        "```python\nx = 1\ny = 2\n```\nand\n```python\nz = 3\nw = 4\n```",  # two fences: not one body
        "One\nTwo\nThree\nFour\nFive\nx = 1\ny = 2",  # too much prose around the code
        "The committee met on Tuesday.\nIt approved the budget.\nNote: this\nThen it adjourned.",
        "```\nJust some words in a fence.\nNothing else here.\n```",  # a fenced body that is not code
    ],
)
def test_prose_is_not_taken_for_embedded_code(text):
    assert detect_body(text)[2] is None


def test_embedded_code_is_compressed_alone_and_the_prose_around_it_is_kept():
    before, after = "Look at this helper:\n```python\n", "\n```\nWhy does it hang on Fridays?"
    docs = [before + PY_FILE.rstrip("\n") + after, *documents()[4:]]
    for rate in (0.3, 0.5):
        r = ctxzip.compress(docs, method="auto", config={"routes": FAST}, rate=rate)
        assert r.routes[0] == "code:truncate" and r.details["routes"][0]["body"]
        out = r.documents[0].text
        assert out.startswith(before) and out.endswith(after)
        assert len(out) < len(docs[0])
        budget = round(rate * r.origin_tokens)
        assert abs(r.compressed_tokens - budget) <= 0.05 * budget, (r.compressed_tokens, budget)
        for d in r.documents:  # truncate keeps a subsequence, and the spans include the kept wrapping
            assert "".join(docs[d.index][s.start : s.end] for s in d.spans) == d.text


def test_plan_resolves_first_available_candidate_and_is_visible_in_routes():
    docs = documents()
    r = ctxzip.compress(docs, method="auto", config={"routes": FAST}, rate=0.4)
    types = [x.split(":")[0] for x in r.routes]
    assert types == ["prose", "chat", "json", "code", "prose", "prose"]
    methods = [x.split(":")[1] for x in r.routes]
    assert methods == ["truncate", "truncate", "json-values", "truncate", "truncate", "truncate"]
    assert [d["type"] for d in r.details["routes"]] == types
    assert all(d["reason"] for d in r.details["routes"])
    rq = ctxzip.compress(docs, method="auto", config={"routes": FAST}, rate=0.4, question=QUESTION)
    assert rq.routes[0] == "prose:random" and rq.routes[2] == "json:json-values"


def _cut_from_stdlib(module: str, first: int, last: int) -> str:
    """About lines ``first..last`` of a standard-library source, the way a retriever or a context budget cuts
    files: the window starts at the first indented line from ``first`` on, i.e. inside a block."""
    import importlib
    import inspect

    lines = inspect.getsource(importlib.import_module(module)).splitlines(keepends=True)
    start = next(i for i in range(first, len(lines)) if lines[i][:1] in (" ", "\t") and lines[i].strip())
    return "".join(lines[start:last])


@pytest.mark.parametrize(
    "module, first, last",
    [
        ("email.feedparser", 150, 260),  # inside a class, cut mid-method at both ends
        ("json.decoder", 20, 120),  # constants, a cut-off function and its docstring
        ("email._parseaddr", 40, 140),  # mostly comments and docstrings at the top
    ],
)
def test_python_cut_out_of_a_file_is_code_although_ast_rejects_it(module, first, last):
    text = _cut_from_stdlib(module, first, last)
    with pytest.raises(SyntaxError):
        ast.parse(text)
    ctype, reason = detect(text)
    assert ctype == "code", reason


def test_a_window_that_starts_inside_a_docstring_is_code():
    import inspect
    import json.decoder

    lines = inspect.getsource(json.decoder).splitlines(keepends=True)
    start = next(i for i, ln in enumerate(lines) if ln.startswith("class JSONDecoder")) + 3  # in its docstring
    text = "".join(lines[start : start + 150])
    ctype, reason = detect(text)
    assert ctype == "code", reason


@pytest.mark.parametrize(
    "text",
    [
        # hard-wrapped prose whose lines start with Python keywords now and then
        "The library will open in May if the budget passes.\nfor now the branches keep their hours, and\n"
        "return dates for loans are moved by a week. The board (and the mayor) agreed that\n"
        "with the new hours staff rotate weekly; the union was consulted.\nNobody objected at the meeting.\n"
        "Minutes were approved without changes.\nThe next meeting is on the 4th.",
        # Markdown: headings are '#' lines, a short list, one assignment-like line
        "# Release notes\n\n## Fixed\n\n- the importer no longer hangs\n- timeout = 30 s by default\n"
        "- the docs build again\n\nThanks to everyone who reported these.\nMore in the changelog.",
    ],
)
def test_prose_with_code_words_is_not_code(text):
    assert detect(text)[0] != "code", detect(text)[1]


@pytest.mark.parametrize(
    "doc, reason",
    [
        ({"text": "    x = f(a\n  )\nnot parseable here", "title": "pkg/utils.py"}, "names a python file"),
        ({"text": "some text that says nothing", "language": "go"}, "metadata language 'go'"),
    ],
)
def test_a_document_that_declares_its_language_takes_the_code_route(doc, reason):
    router = Router(routes=FAST)
    plan = router.plan(ctxzip.CompressionRequest.create([doc, "Plain words about the weather today."], rate=0.5))
    assert plan[0]["type"] == "code" and reason in plan[0]["reason"]
    assert plan[1]["type"] == "prose"


def test_default_routes_fall_back_to_what_is_installed():
    router = Router()
    installed = set(ctxzip.list_compressors())
    label, _ = router.resolve("prose")
    expected = next(
        c if isinstance(c, str) else c["method"]
        for c in DEFAULT_ROUTES["prose"]
        if (c if isinstance(c, str) else c["method"]) in installed
    )
    assert label == expected
    assert router.resolve("json")[0] == "json-values"


@pytest.mark.parametrize("rate", [0.25, 0.4, 0.6])
def test_mixed_fixture_meets_budget_keeps_protected_spans_and_valid_json(rate):
    docs = documents()
    r = ctxzip.compress(
        docs, method="auto", config={"routes": FAST}, rate=rate, question=QUESTION, protect={"force": [FORCED]}
    )
    budget = round(rate * r.origin_tokens)
    assert abs(r.compressed_tokens - budget) <= 0.05 * budget, (r.compressed_tokens, budget)
    for s in PROTECTED:
        assert r.text.count(s) >= 1, s
    json.loads(r.documents[2].text)
    for d in r.documents:  # every route's output is a subsequence here
        assert "".join(docs[d.index][s.start : s.end] for s in d.spans) == d.text


def test_json_route_keeps_question_relevant_members():
    data = {f"key-{i:03d}": f"value number {i} with some padding words to make it longer" for i in range(60)}
    text = json.dumps(data)
    r = ctxzip.compress(text, method="auto", rate=0.15, question="What is the value of key-042?")
    out = json.loads(r.text)
    assert "key-042" in out and out["key-042"].startswith("value number 42")
    assert len(out) < 60


def test_json_route_without_question_shortens_values_evenly():
    data = {"items": [{"id": i, "text": "alpha beta gamma delta epsilon zeta eta theta iota kappa"} for i in range(10)]}
    r = ctxzip.compress(json.dumps(data), method="auto", rate=0.6)
    out = json.loads(r.text)
    assert len(out["items"]) == 10  # members survive, their values are shortened
    assert all(item["text"].startswith("alpha") for item in out["items"] if "text" in item)


def test_logs_route_keeps_errors():
    lines = [f"2024-05-01 10:00:{i:02d} INFO request {i} served in 12ms" for i in range(40)]
    lines.insert(17, "2024-05-01 10:00:17 ERROR payment gateway timeout for order 991")
    r = ctxzip.compress("\n".join(lines), method="auto", rate=0.3)
    assert r.routes == ("logs:log-lines",)
    assert "ERROR payment gateway timeout for order 991" in r.text


def test_weights_give_a_type_a_larger_share():
    docs = documents()
    plain = ctxzip.compress(docs, method="auto", config={"routes": FAST}, rate=0.3)
    heavy = ctxzip.compress(docs, method="auto", config={"routes": FAST, "weights": {"code": 3.0}}, rate=0.3)
    assert heavy.documents[3].compressed_tokens > plain.documents[3].compressed_tokens
    budget = round(0.3 * heavy.origin_tokens)
    assert abs(heavy.compressed_tokens - budget) <= 0.05 * budget


@pytest.mark.parametrize(
    "config, match",
    [
        ({"routes": {"pictures": ["truncate"]}}, "unknown route"),
        ({"routes": {"prose": []}}, "non-empty list"),
        ({"routes": {"prose": [42]}}, "route candidate"),
        ({"weights": {"code": -1}}, "positive number"),
        ({"weights": {"poetry": 1}}, "unknown content type"),
        ({"colour": "red"}, "unknown option"),
    ],
)
def test_bad_router_config(config, match):
    with pytest.raises(ConfigError, match=match):
        Router(**config)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcde"), st.integers(1, 500), min_size=1),
    st.floats(0.05, 1.0),
)
def test_water_fill_respects_caps_and_total(sizes, frac):
    weights = {g: 1.0 + (ord(g) % 3) for g in sizes}
    budget = frac * sum(sizes.values())
    out = _water_fill(sizes, weights, budget)
    assert all(0 <= out[g] <= sizes[g] for g in sizes)
    assert abs(sum(out.values()) - budget) <= len(sizes)


@pytest.mark.slow
@pytest.mark.skipif("codezip" not in ctxzip.list_compressors(), reason="codezip is not installed here")
def test_mixed_fixture_python_still_parses_with_codezip():
    docs = documents()
    routes = {**FAST, "code": ["codezip"]}
    r = ctxzip.compress(docs, method="auto", config={"routes": routes}, rate=0.4, question=QUESTION)
    assert r.routes[3] == "code:codezip"
    ast.parse(r.documents[3].text)
    json.loads(r.documents[2].text)
    budget = round(0.4 * r.origin_tokens)
    assert abs(r.compressed_tokens - budget) <= 0.05 * budget


def test_a_language_that_is_not_a_known_name_falls_back_to_the_text():
    router = Router(routes=FAST)
    docs = [{"text": "Plain words about the weather.", "language": 3}, {"text": "More words.", "language": "klingon"}]
    plan = router.plan(ctxzip.CompressionRequest.create(docs, rate=0.5))
    assert [p["type"] for p in plan] == ["prose", "prose"]
