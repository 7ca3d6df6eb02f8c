"""codezip: syntax chunking per language, budgets, elision markers, parse-ability, knapsack, relevance."""

from __future__ import annotations

import ast
import itertools
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_codezip_sources import FILENAMES, FUNCTIONS, SOURCES

from ctxzip.code_chunking import chunk_code, comment_prefix, detect_language, syntax_errors
from ctxzip.compressors.codezip import DEFAULT_MARKER
from ctxzip.errors import ConfigError
from ctxzip.registry import get_compressor
from ctxzip.tokens import get_counter
from ctxzip.types import CompressionRequest

LANGS = sorted(SOURCES)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    from ctxzip.models.testing import make_tiny_causal_lm

    return str(make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), max_position_embeddings=512))


def _compress(model, text, *, rate, filename="x", question="", config=None, **opts):
    comp = get_compressor("codezip", model=model, **(config or {}))
    req = CompressionRequest.create(
        [{"title": filename, "text": text}], question=question or None, rate=rate, **opts
    )
    return req, comp.compress(req)


def _marker_line(language: str, marker: str = DEFAULT_MARKER) -> str:
    """The elision marker line (without indentation) for ``language`` and the configured marker text."""
    return f"{comment_prefix(language)} {marker}"


def _kept_lines_in_order(original: str, compressed: str, marker_line: str) -> bool:
    """Every output line that is not an elision marker is an original line, in the original order."""
    orig = iter(original.splitlines())
    for line in compressed.splitlines():
        s = line.strip()
        if s in (marker_line, "..."):
            continue
        for o in orig:
            if o == line:
                break
        else:
            return False
    return True


# ----------------------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("language", LANGS)
def test_chunks_cover_every_line_and_find_the_functions(language):
    src = SOURCES[language]
    lay = chunk_code(src, filename=FILENAMES[language])
    assert lay.language == language
    assert lay.parser == ("ast" if language == "python" else "tree-sitter")
    assert "".join(lay.lines) == src
    assert lay.chunks[0].first == 0 and lay.chunks[-1].last == len(lay.lines) - 1
    for a, b in zip(lay.chunks, lay.chunks[1:]):
        assert b.first == a.last + 1
    names = {c.name for c in lay.chunks if c.kind == "function"}
    assert FUNCTIONS[language] <= names
    for c in lay.chunks:
        if c.kind == "function":
            nodes = c.body.walk()
            assert nodes[0].first <= nodes[0].last
            for n in nodes:
                for ch in n.children:
                    assert n.first < ch.first <= ch.last <= n.last


def test_methods_hang_under_their_class_header():
    lay = chunk_code(SOURCES["java"], "java")
    header = [c for c in lay.chunks if c.kind == "class"]
    assert [c.name for c in header] == ["Inventory"]
    methods = [c for c in lay.chunks if c.kind == "function"]
    assert all(m.parent == header[0].index for m in methods)
    assert any(c.kind == "footer" and c.parent == header[0].index for c in lay.chunks)


def test_returns_are_marked():
    lay = chunk_code(SOURCES["go"], "go")
    take = next(c for c in lay.chunks if c.name == "Take")
    rets = [n for n in take.body.walk() if n.is_return]
    assert [lay.lines[n.first].strip() for n in rets] == ["return ErrLimited", "return nil"]
    rust = chunk_code(SOURCES["rust"], "rust")
    top = next(c for c in rust.chunks if c.name == "top")
    assert [rust.lines[n.first].strip() for n in top.body.walk() if n.is_return] == ["items"]


def test_detect_language():
    assert detect_language("x = 1", hint="py") == "python"
    assert detect_language("", filename="a/b/c.rs") == "rust"
    assert detect_language("package main\n\nfunc main() {\n}\n") == "go"
    assert detect_language("def f(x):\n    return x\n") == "python"
    assert detect_language("hello there, nothing to see") == "unknown"
    for lang in LANGS:
        assert detect_language(SOURCES[lang]) == lang or lang in ("c", "typescript")


def test_unknown_language_uses_the_regex_fallback():
    text = "proc a {} {\n  puts 1\n}\n\nproc b {} {\n  puts 2\n}\n"
    lay = chunk_code(text, "tcl")
    assert lay.parser == "regex" and not lay.parsed
    assert len(lay.chunks) == 2 and "".join(lay.lines) == text


def test_python_that_ast_rejects_uses_tree_sitter():
    src = SOURCES["python"] + "\n\ndef cut_off(x):\n    if x ==\n"
    lay = chunk_code(src, "python")
    assert lay.parser == "tree-sitter"
    assert {"render", "from_dicts", "cut_off"} <= {c.name for c in lay.chunks if c.kind == "function"}
    assert syntax_errors(src, "python") >= 1


def test_import_ctxzip_stays_light():
    code = (
        "import sys, ctxzip, ctxzip.code_chunking, ctxzip.compressors.codezip;"
        "print(any(m in sys.modules for m in ('torch', 'transformers', 'tree_sitter')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------- knapsack


def test_knapsack_matches_brute_force():
    from ctxzip.compressors.codezip import knapsack

    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 8)
        w = [rng.randint(1, 20) for _ in range(n)]
        v = [rng.uniform(0.1, 10) for _ in range(n)]
        cap = rng.randint(0, 60)
        chosen, exact = knapsack(w, v, cap)
        assert exact
        assert sum(w[i] for i in chosen) <= cap
        best = max(
            sum(v[i] for i in s)
            for r in range(n + 1)
            for s in itertools.combinations(range(n), r)
            if sum(w[i] for i in s) <= cap
        )
        assert sum(v[i] for i in chosen) == pytest.approx(best)


def test_knapsack_approximation_stays_feasible():
    from ctxzip.compressors.codezip import knapsack

    rng = random.Random(1)
    w = [rng.randint(1, 500) for _ in range(300)]
    v = [rng.uniform(0, 5) for _ in range(300)]
    chosen, exact = knapsack(w, v, 20_000, max_cells=100_000)
    assert not exact
    assert sum(w[i] for i in chosen) <= 20_000
    assert len(chosen) > 0


# ----------------------------------------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(ConfigError, match="fine_ratio"):
        get_compressor("codezip", fine_ratio=0)
    with pytest.raises(ConfigError, match="beta"):
        get_compressor("codezip", beta=2)
    with pytest.raises(ConfigError, match="dtype"):
        get_compressor("codezip", dtype="int4")
    with pytest.raises(ConfigError, match="min_fine_lines"):
        get_compressor("codezip", min_fine_lines=0)
    with pytest.raises(ConfigError, match="tail_ratio"):
        get_compressor("codezip", tail_ratio=0.5)
    with pytest.raises(ConfigError, match="import_ratio"):
        get_compressor("codezip", import_ratio=True)
    with pytest.raises(ConfigError, match="below 0.5"):
        get_compressor("codezip", tail_ratio=0.3, import_ratio=0.3)
    with pytest.raises(ConfigError, match="unknown option"):
        get_compressor("codezip", ratio=0.5)
    for bad in ("", "   ", "a\nb", "x\r", 3, None):
        with pytest.raises(ConfigError, match="marker"):
            get_compressor("codezip", marker=bad)
    assert get_compressor("codezip", marker="[lines omitted]").config.marker == "[lines omitted]"


# ----------------------------------------------------------------------------------------------- compression


@pytest.mark.parametrize("language", LANGS)
def test_compress_each_language(tiny_model, language):
    src = SOURCES[language]
    req, res = _compress(tiny_model, src, rate=0.45, filename=FILENAMES[language], question="def main():")
    budget = res.details["budget"]
    assert abs(res.compressed_tokens - budget) <= 0.05 * budget, (res.compressed_tokens, budget, res.warnings)
    out = res.text
    marker = _marker_line(language)
    assert marker in out or "..." in out
    assert _kept_lines_in_order(src, out, marker)
    # never two markers in a row
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    for a, b in zip(lines, lines[1:]):
        assert not (a in (marker, "...") and b in (marker, "..."))
    assert syntax_errors(out, language) == 0
    # kept spans point at original text
    for span in res.spans:
        assert src[span.start : span.end] in out
    # every kept function keeps its signature line and its returns
    lay = chunk_code(src, filename=FILENAMES[language])
    out_lines = set(out.splitlines())
    for c in lay.chunks:
        if c.kind != "function":
            continue
        sig = next(i for i in range(c.first, c.last + 1) if lay.lines[i].strip() and not lay.trivia[i])
        if lay.lines[sig].rstrip("\n") in out_lines and c.body is not None:
            for n in c.body.walk():
                if n.is_return:
                    assert lay.lines[n.first].rstrip("\n") in out_lines


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.25, 0.35, 0.5, 0.7])
def test_python_output_parses_at_every_rate(tiny_model, rate):
    src = SOURCES["python"]
    _, res = _compress(tiny_model, src, rate=rate, filename="table.py", question="table.render()")
    ast.parse(res.text)
    budget = res.details["budget"]
    assert abs(res.compressed_tokens - budget) <= 0.05 * budget


def test_python_emptied_suites_get_ellipsis(tiny_model):
    src = SOURCES["python"]
    # a small budget forces whole bodies out while signatures stay
    _, res = _compress(tiny_model, src, rate=0.3, filename="table.py", question="x", fine_ratio=0.4)
    ast.parse(res.text)
    assert f"# {DEFAULT_MARKER}" in res.text


def _header_only_statements(tree: ast.AST) -> list[int]:
    """Line numbers of compound statements (not def/class) whose every suite is empty or a lone ``...``."""
    def empty(suite):
        return all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is Ellipsis
                   for s in suite)

    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
            suites = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            suites += [h.body for h in getattr(node, "handlers", [])]
            if all(empty(s) for s in suites):
                out.append(node.lineno)
    return out


@pytest.mark.parametrize("rate", [0.15, 0.3, 0.5])
def test_no_statement_is_kept_for_its_header_alone(tiny_model, rate):
    import email._parseaddr as real  # a real module full of if/while/try statements

    src = Path(real.__file__).read_text(encoding="utf-8")
    assert not _header_only_statements(ast.parse(src))
    _, res = _compress(tiny_model, src, rate=rate, filename="_parseaddr.py", question="def getaddrlist(self):")
    tree = ast.parse(res.text)
    assert _header_only_statements(tree) == [], res.text
    budget = res.details["budget"]
    assert abs(res.compressed_tokens - budget) <= 0.05 * budget, (res.compressed_tokens, budget, res.warnings)


@pytest.mark.parametrize("language", ["python", "c"])
@pytest.mark.parametrize("text", ["[... lines elided ...]", "[lines omitted]"])
def test_custom_marker_is_used_and_budgets_hold(tiny_model, language, text):
    src = SOURCES[language]
    _, res = _compress(tiny_model, src, rate=0.45, filename=FILENAMES[language], question="def main():",
                       config={"marker": text})
    budget = res.details["budget"]
    assert res.compressed_tokens <= 1.05 * budget, (res.compressed_tokens, budget, res.warnings)
    if language == "python":
        assert abs(res.compressed_tokens - budget) <= 0.05 * budget, (res.compressed_tokens, budget, res.warnings)
    else:
        # the small C sample has few, coarse items: with a longer marker it can fall short of the band, but
        # never silently (known gap, see docs/benchmarks/codezip.md)
        assert res.compressed_tokens >= 0.95 * budget or res.warnings, (res.compressed_tokens, budget)
    marker = _marker_line(language, text)
    assert res.details["markers"] > 0
    lines = [ln.strip() for ln in res.text.splitlines() if ln.strip()]
    assert marker in lines
    assert _marker_line(language) not in lines  # the default wording is gone
    assert _kept_lines_in_order(src, res.text, marker)
    for a, b in zip(lines, lines[1:]):
        assert not (a in (marker, "...") and b in (marker, "..."))
    assert syntax_errors(res.text, language) == 0


def test_under_budget_and_empty_inputs(tiny_model):
    comp = get_compressor("codezip", model=tiny_model)
    res = comp.compress(CompressionRequest.create("def f():\n    return 1\n", rate=1.0))
    assert res.text == "def f():\n    return 1\n"
    res = comp.compress(CompressionRequest.create("", rate=0.5))
    assert res.text == ""


def test_multi_document_budget_and_order(tiny_model):
    docs = [{"title": FILENAMES[k], "text": SOURCES[k]} for k in ("go", "python", "c")]
    comp = get_compressor("codezip", model=tiny_model)
    req = CompressionRequest.create(docs, question="buffer_append", rate=0.3)
    res = comp.compress(req)
    budget = res.details["budget"]
    assert abs(res.compressed_tokens - budget) <= 0.05 * budget
    counter = get_counter("gpt-4o")
    assert res.compressed_tokens == counter.count(res.text)
    for d in res.documents:
        if d.text:
            lang = ("go", "python", "c")[d.index]
            assert syntax_errors(d.text, lang) == 0


def test_protected_lines_are_kept(tiny_model):
    src = SOURCES["python"]
    _, res = _compress(tiny_model, src, rate=0.2, filename="table.py", question="q",
                       protect={"force": ["cells.append(f\"{value:>{col.width}.2f}\")"]})
    assert 'cells.append(f"{value:>{col.width}.2f}")' in res.text
    ast.parse(res.text)


_PROSE_TRAPS = '''import os
from pathlib import Path

# Setup
# See docs/guide.md and https://example.com/setup, mail admin@example.com


def mean(total, count):
    return total/count


def load(path):
    text = Path(path).read_text()
    rows = [ln.split(",") for ln in text.splitlines()]
    cfg = {"retries": 3, "timeout": 30}
    return rows, cfg


def keep_me(x):
    y = x * 2
    z = y + SECRET_TOKEN_42
    w = z - 1
    return w


def helper(a, b):
    c = a + b
    d = c * c
    return d
'''


def test_prose_protection_rules_do_not_apply_to_code():
    from ctxzip.code_chunking import chunk_code as _chunk
    from ctxzip.compressors.codezip import CodeZipCompressor

    req = CompressionRequest.create(_PROSE_TRAPS, rate=0.3)  # default rules: markdown, paths, urls, emails, json on
    lay = _chunk(_PROSE_TRAPS, "python")
    st = CodeZipCompressor._doc_state(lay, req, get_counter("gpt-4o"))
    assert not st.protected.any()  # '# Setup' is a comment, total/count a division, the link a comment

    req = CompressionRequest.create(_PROSE_TRAPS, rate=0.3,
                                    protect={"force": ["Path(path).read_text()"], "patterns": [r"SECRET_\w+"]})
    st = CodeZipCompressor._doc_state(lay, req, get_counter("gpt-4o"))
    pinned = {lay.lines[i].strip() for i in np.flatnonzero(st.protected)}
    assert pinned == {"text = Path(path).read_text()", "z = y + SECRET_TOKEN_42"}


def test_user_force_strings_and_patterns_are_kept(tiny_model):
    req, res = _compress(tiny_model, _PROSE_TRAPS * 3, rate=0.4, filename="traps.py", question="q", tail_ratio=0.0,
                         import_ratio=0.0, protect={"force": ["Path(path).read_text()"], "patterns": [r"SECRET_\w+"]})
    assert res.text.count("text = Path(path).read_text()") == 3
    assert res.text.count("z = y + SECRET_TOKEN_42") == 3
    ast.parse(res.text)
    budget = res.details["budget"]
    assert res.compressed_tokens <= 1.05 * budget


def test_tail_and_imports_are_pinned(tiny_model):
    other = {"title": FILENAMES["python"], "text": SOURCES["python"]}
    current = {"title": "traps.py", "text": _PROSE_TRAPS * 2}
    comp = get_compressor("codezip", model=tiny_model)
    req = CompressionRequest.create([other, current], question="def run(rows):\n    total = ", rate=0.3)
    res = comp.compress(req)
    budget = res.details["budget"]
    assert abs(res.compressed_tokens - budget) <= 0.05 * budget
    cur = res.documents[-1].text
    assert cur.startswith("import os\nfrom pathlib import Path\n")
    assert cur.rstrip().endswith("def helper(a, b):\n    c = a + b\n    d = c * c\n    return d")
    assert res.details["tail_lines"] > 0 and res.details["import_lines"] == 4  # both copies
    assert 0 < res.details["tail_tokens"] <= 0.3 * budget
    assert 0 < res.details["import_tokens"] <= 0.1 * budget
    ast.parse(cur)
    # turned off: nothing is pinned
    res = comp.compress(CompressionRequest.create([other, current], question="x", rate=0.3,
                                                  tail_ratio=0.0, import_ratio=0.0))
    assert res.details["tail_lines"] == 0 and res.details["import_lines"] == 0


def test_score_gives_one_score_per_unit(tiny_model):
    from ctxzip.units import segment

    comp = get_compressor("codezip", model=tiny_model)
    req = CompressionRequest.create(SOURCES["go"], question="Take a token", rate=0.5)
    units = [segment(SOURCES["go"], req.protect, get_counter("gpt-4o"))]
    scores = comp.score(req, units)
    assert scores[0].shape == (len(units[0]),)
    assert np.isfinite(scores[0]).all()


# ----------------------------------------------------------------------------------------------- real model

_RELEVANT_CASE = '''import math


def parse_header(line):
    key, _, value = line.partition(":")
    key = key.strip().lower()
    value = value.strip()
    if not key:
        raise ValueError("empty header name")
    return key, value


def format_bytes(n):
    units = ["B", "KB", "MB", "GB", "TB"]
    i = 0
    size = float(n)
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.1f} {units[i]}"


def haversine_distance(lat1, lon1, lat2, lon2):
    radius = 6371.0
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = math.radians(lat2 - lat1)
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * radius * math.asin(math.sqrt(a))


def slugify(text):
    out = []
    for ch in text.lower():
        if ch.isalnum():
            out.append(ch)
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")


def retry(fn, attempts=3):
    last = None
    for _ in range(attempts):
        try:
            return fn()
        except OSError as exc:
            last = exc
    raise last
'''


@pytest.mark.slow
def test_instruction_relevant_function_is_kept():
    pytest.importorskip("torch")
    comp = get_compressor("codezip", model="smollm2-135m")
    req = CompressionRequest.create(
        _RELEVANT_CASE,
        instruction="Complete the next line of code.",
        question="def distance_between_cities(a, b):\n    # great-circle distance in km\n    return haversine_distance(",
        rate=0.3,
    )
    res = comp.compress(req)
    assert "def haversine_distance(lat1, lon1, lat2, lon2):" in res.text
    ast.parse(res.text)
    budget = res.details["budget"]
    assert abs(res.compressed_tokens - budget) <= 0.05 * budget
