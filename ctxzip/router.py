"""``auto``: route each document to the compressor that suits its content.

Detection is cheap and runs per document (:func:`detect`):

=========  ===================================================================================================
type       detected when
=========  ===================================================================================================
json       the whole text parses as a JSON object or array
code       the document declares it (``metadata["language"]`` such as ``"python"``, or a title with a source
           extension such as ``utils.py``); Python that ``ast.parse`` accepts and that has statements (def,
           class, import, assignment, ...); or >= 3 lines that look like code and make >= 40% of the lines
           outside comments and triple-quoted strings: C-family/JS/Go/Rust/Java lines (``;``/``{``/``}`` line
           ends, keywords such as ``function``, ``const``, ``#include``, ``fn``, ``func``, ``public``) and Python
           statements (``name = ...``, ``name(...)``, ``elif ...:``, ``return``, ...), so a fragment cut out
           of a file, which ``ast`` rejects, is still code
logs       >= 3 lines of which >= 50% start with a timestamp or carry a log level (INFO, WARN, ERROR, ...)
chat       >= 3 lines of which >= 50% start with a speaker (``Name: text``)
prose      everything else
=========  ===================================================================================================

Code or JSON pasted with a few lines of prose around it (one Markdown fence, or Python after/before at most 3
lines) is found by :func:`detect_body`; its route compresses the body alone and keeps the lines around it whole.

Each type has a **route**: a list of candidates, the first one installed is used (``result.routes`` says, per
document, ``"<type>:<method>"``; ``result.details["routes"]`` adds the detection reason and token counts):

===============  ==========================================================================================
route            candidates (first available wins)
===============  ==========================================================================================
code             ``codezip`` → ``lingua`` → ``embed-rank`` (sentence = line level) → ``truncate``
json             ``json-values``: structure-preserving value compression (below)
logs             ``log-lines``: keeps error/warning and rare lines whole, drops repeated templates
prose_question   prose or chat with a question: ``lingua2`` (its question-aware BM25 coarse filter, then the
                 token classifier; thousands of tokens/s on a CPU) → ``longlingua`` → ``embed-rank`` →
                 ``truncate``. ``longlingua`` (SmolLM2 perplexities, tens to hundreds of tokens/s on a CPU) is
                 one ``routes={"prose_question": ["longlingua"]}`` away.
prose            prose or chat without a question: ``lingua2`` → ``lingua`` → ``embed-rank`` → ``truncate``
===============  ==========================================================================================

``json-values`` and ``log-lines`` are built in here and need no model. ``json-values`` ranks JSON members by
lexical overlap with the question (IDF-weighted, inherited by child members), then shallow before deep members
and the head words of each string value first, so values are shortened evenly and whole members are dropped
last; the document always stays valid JSON (see :mod:`ctxzip.units`). ``log-lines`` scores lines by level,
rarity of their template (digits masked) and overlap with the question.

**Budget.** The whole request's budget ``B`` is split over the routes in proportion to their tokens (the same
rate everywhere; ``weights={"code": 2.0}`` gives code twice the share, capped at its size, the rest re-spread).
Each route compresses its documents to its share; if the joined result is off ``B`` by more than 3%, the
routes that were compressed are re-run once with their shares corrected, so the total lands within ±5%.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .base import GENERAL_OPTIONS, BaseCompressor, make_result, resolve_budget
from .code_chunking import declared_language
from .errors import BudgetError, ConfigError, UnknownNameError
from .pipeline import Pipeline, Stage, first_available
from .registry import compressor_class, list_compressors, register
from .select import DOC_SEPARATOR
from .tokens import get_counter
from .types import CompressionRequest, CompressionResult
from .units import Units

__all__ = ["Router", "detect", "detect_body", "CONTENT_TYPES", "DEFAULT_ROUTES", "JsonValuesCompressor", "LogLinesCompressor"]

CONTENT_TYPES = ("code", "json", "logs", "chat", "prose")
ROUTE_KEYS = ("code", "json", "logs", "prose_question", "prose")

_SENT = {"granularity": "sentence"}
DEFAULT_ROUTES: dict[str, tuple[Any, ...]] = {
    "code": ("codezip", "lingua", {"method": "embed-rank", "config": _SENT}, "truncate"),
    "json": ("json-values",),
    "logs": ("log-lines",),
    # lingua2 alone: with a question it runs its own question-aware coarse filter (stemmed BM25). The former
    # first candidate, the pipeline embed-rank(sentence) -> lingua2, was worse and half as fast at rate 0.33
    # (docs/benchmarks/pipelines.md: nq20 20 rows answer 0.80 vs 0.85, qmsum 40 rows span 0.522 vs 0.622,
    # locomo 152 rows span 0.794 vs 0.870)
    "prose_question": (
        "lingua2",
        "longlingua",
        {"method": "embed-rank", "config": _SENT},
        "truncate",
    ),
    "prose": ("lingua2", "lingua", {"method": "embed-rank", "config": _SENT}, "truncate"),
}

# ------------------------------------------------------------------ detection

_PY_STATEMENTS = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign, ast.AugAssign,
    ast.AnnAssign, ast.If, ast.For, ast.While, ast.With, ast.Try, ast.Return,
)
_CODE_LINE = re.compile(
    r"(?:[;{}]\s*(?://.*)?$)|^\s*(?:function\b|const\b|let\b|var\b|import\b|export\b|#include\b|#define\b|"
    r"public\b|private\b|protected\b|package\b|func\b|fn\b|impl\b|struct\b|class\b|interface\b|return\b|"
    r"def\b|//|/\*|\*/|@\w+)"
)
# Python statements that a fragment cut out of a file (so ``ast`` rejects it) is made of; prose does not start
# its lines with ``name = value``, ``name(...)`` or ``elif ...:``. Counted with _CODE_LINE by _code_lines.
_PY_LINE = re.compile(
    r"^\s*(?:(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[(:]|(?:if|elif|while|with|for|except)\b.*:\s*(?:#.*)?$|"
    r"(?:else|try|finally)\s*:\s*(?:#.*)?$|(?:return|yield|raise)\b|import\s+[\w.]+|from\s+[.\w]+\s+import\b|"
    r"(?:pass|break|continue)\s*$|del\s+\w|"
    r"[A-Za-z_][\w.]*(?:\[[^\]]*\])*\s*(?:[-+*/%|&^@]|//|\*\*|<<|>>)?=(?!=)\s*\S|"
    r"[A-Za-z_][\w.]*\(.*\)\s*$)"
)
_TRIPLE = re.compile(r'"""|\'\'\'')
_LOG_LINE = re.compile(
    r"^\s*(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}|\[?\d{1,2}:\d{2}:\d{2}|[A-Z][a-z]{2}\s+\d{1,2} \d{2}:\d{2}:\d{2})"
    r"|\b(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL|SEVERE)\b"
)
_SPEAKER = re.compile(r"^\s*[A-Z][\w .'-]{0,30}:\s+\S")
_MAX_DETECT = 1_000_000
_MAX_EMBED = 200_000  # longest text searched for embedded code (a few ast.parse calls each)
_MAX_WRAP_LINES = 3  # non-empty prose lines allowed on each side of embedded code
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>```|~~~)[ \t]*[\w+#.-]*[ \t]*\n(?P<body>.*?)\n[ \t]*(?P=fence)[ \t]*$", re.S | re.M
)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def detect(text: str) -> tuple[str, str]:
    """``(content type, reason)`` of ``text``; the type is one of :data:`CONTENT_TYPES`."""
    ctype, reason, _ = detect_body(text)
    return ctype, reason


def detect_body(text: str) -> tuple[str, str, tuple[int, int] | None]:
    """``(content type, reason, body)``: ``body`` is the ``(start, end)`` character range of code or JSON embedded
    in a few lines of prose (see :func:`embedded_body`), else None (the type is the whole text's)."""
    stripped = text.strip()
    if not stripped:
        return "prose", "empty", None
    sample = text[:_MAX_DETECT]
    if stripped[0] in "{[" and len(text) <= 5_000_000:
        try:
            json.loads(text)
            return "json", "parses as JSON", None
        except ValueError:
            pass
    lines = _lines(sample)
    if len(lines) >= 2 and len(sample) == len(text) and _parses_as_python(text):
        return "code", "parses as Python", None
    embedded = embedded_body(text)
    if embedded is not None:
        return embedded
    if len(lines) >= 3:
        n = len(lines)
        logs = sum(1 for ln in lines if _LOG_LINE.search(ln))
        if logs >= 0.5 * n:
            return "logs", f"{logs}/{n} lines have a timestamp or log level", None
        speakers = sum(1 for ln in lines if _SPEAKER.match(ln))
        if speakers >= 0.5 * n:
            return "chat", f"{speakers}/{n} lines start with a speaker", None
        code, counted = _code_lines(lines)
        if code >= 3 and code >= 0.4 * counted:
            return "code", f"{code}/{counted} lines look like code (comments and docstrings aside)", None
    return "prose", "no code, JSON, log or chat structure", None


def _declared_language(doc: Any) -> str | None:
    """Why ``doc`` is code by what it says of itself (``metadata["language"]``, or a title with a source file
    extension such as ``utils.py``), else None. Such a document skips content detection."""
    meta = doc.metadata.get("language")
    lang = declared_language(meta if isinstance(meta, str) else None, doc.title or None)
    if lang is None:
        return None
    named = isinstance(meta, str) and declared_language(meta) == lang
    return f"metadata language {meta!r}" if named else f"title {doc.title!r} names a {lang} file"


def _code_lines(lines: Sequence[str]) -> tuple[int, int]:
    """``(lines that look like code, lines counted)``: comment lines (``#`` not followed by a C directive) and
    the lines inside triple-quoted strings are not counted, so a file cut out of a larger one (which ``ast``
    rejects) whose docstrings and comments outweigh its statements is still found to be code. A window that starts
    inside a string is recognised by its first unpaired triple quote closing one (:func:`_closes_string`)."""
    first = next((i for i, ln in enumerate(lines) if len(_TRIPLE.findall(ln)) % 2), None)
    # a quote on the first line that is not a comment opens a string (a module docstring), else it may close one
    lead = next((i for i, ln in enumerate(lines) if not ln.lstrip().startswith("#")), None)
    in_string = first is not None and first != lead and _closes_string(lines[first])
    code = counted = 0
    for ln in lines:
        quotes = len(_TRIPLE.findall(ln))
        if in_string or quotes:
            if quotes % 2:
                in_string = not in_string
            continue
        if _CODE_LINE.search(ln) or _PY_LINE.search(ln):
            code += 1
        elif ln.lstrip().startswith("#"):
            continue
        counted += 1
    return code, counted


def _closes_string(line: str) -> bool:
    """Whether the triple quote of ``line`` ends a string: code right after it (a closing ``, re.VERBOSE)``),
    text before it that does not open one (as ``x =``, ``f(`` or ``return`` do), or nothing on its line at all."""
    m = _TRIPLE.search(line)
    if m is None:
        return False
    before, after = line[: m.start()].strip(), line[m.end() :].strip()
    if after[:1] in (",", ")", "]", "}"):
        return True
    if not before or re.fullmatch(r"[rbfuRBFU]{1,2}", before):
        return not after  # a bare quote line: PEP 257 closes a multi-line docstring that way; openers carry text
    return not before.endswith(("=", "(", "[", "{", ",", ":", "return"))


def _parses_as_python(text: str) -> bool:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(n, _PY_STATEMENTS) for n in tree.body)


def embedded_body(text: str) -> tuple[str, str, tuple[int, int]] | None:
    """Code or JSON pasted with a few lines of prose around it, as chat messages carry it.

    Either the text holds exactly one Markdown fence (```` ``` ```` or ``~~~``) whose body is code or JSON by
    :func:`detect`, or dropping at most :data:`_MAX_WRAP_LINES` lines from its start and/or end leaves Python
    that parses. The body must hold at least half of the text's non-empty lines, and at most
    :data:`_MAX_WRAP_LINES` non-empty lines may lie outside it on each side. The router compresses the body
    alone and keeps the lines around it (and the fence lines) whole."""
    if len(text) > _MAX_EMBED or not text.strip():
        return None
    n_lines = len(_lines(text))
    fences = list(_FENCE.finditer(text))
    if len(fences) == 1:
        m = fences[0]
        start, end = m.start("body"), m.end("body")
        if _wrap_ok(text, start, end, n_lines):
            body = text[start:end]
            ctype, reason, inner = detect_body(body)
            if ctype in ("code", "json") and inner is None:
                return ctype, f"a fenced block {reason}", (start, end)
        return None
    if fences:
        return None
    starts = [0] + [m.end() for m in re.finditer("\n", text)]  # offsets of line starts
    n = len(starts)
    ends = [starts[k + 1] - 1 for k in range(n - 1)] + [len(text)]  # offsets of line ends (before the \n)
    options = sorted(
        ((a, b) for a in range(_MAX_WRAP_LINES + 1) for b in range(_MAX_WRAP_LINES + 1) if a + b),
        key=lambda ab: (ab[0] + ab[1], ab),
    )
    for a, b in options:
        if a + b >= n:
            continue
        start, end = starts[a], ends[n - 1 - b]
        if end <= start or not _wrap_ok(text, start, end, n_lines):
            continue
        body = text[start:end]
        if len(_lines(body)) >= 2 and _parses_as_python(body):
            return "code", f"parses as Python after {a} leading and {b} trailing line(s)", (start, end)
    return None


def _wrap_ok(text: str, start: int, end: int, n_lines: int) -> bool:
    before, body, after = _lines(text[:start]), _lines(text[start:end]), _lines(text[end:])
    return (
        len(before) <= _MAX_WRAP_LINES and len(after) <= _MAX_WRAP_LINES and bool(body)
        and 2 * len(body) >= n_lines
    )


# ------------------------------------------------------------------ built-in route compressors

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an the of to in on at by for with from and or not is are was were be been being do does did what which who "
    "whom whose when where why how that this these those it its as into about than then there their they them he "
    "she his her we our you your i me my key value associated".split()
)


def _terms(text: str) -> set[str]:
    return {w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if len(w) > 1 and w not in _STOP}


class JsonValuesCompressor(BaseCompressor):
    """Structure-preserving JSON compression: relevant members first, then shallow members, value heads first."""

    name: ClassVar[str] = "json-values"
    version = "1"
    question_aware = True

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        query = _terms(" ".join(x for x in (request.question, request.instruction) if x))
        return [self._score_doc(u, query) for u in docs]

    def _score_doc(self, u: Units, query: set[str]) -> np.ndarray:
        n = len(u)
        if n == 0:
            return np.zeros(0)
        if not u.is_json:
            return -np.arange(n, dtype=np.float64)
        n_members = int(u.member_parent.shape[0])
        owner = u.owner
        depth = np.zeros(n_members, dtype=np.int64)
        for m in range(n_members):  # parents come before children
            p = int(u.member_parent[m])
            depth[m] = depth[p] + 1 if p >= 0 else 0
        rel = np.zeros(n_members, dtype=np.float64)
        if query and n_members:
            texts = u.texts()
            member_terms: list[set[str]] = [set() for _ in range(n_members)]
            for i, t in enumerate(texts):
                if owner[i] >= 0:
                    member_terms[int(owner[i])] |= _terms(t)
            df = Counter(t for ts in member_terms for t in ts if t in query)
            for m, ts in enumerate(member_terms):
                hit = ts & query
                rel[m] = sum(math.log(1 + n_members / df[t]) for t in hit)
            for m in range(n_members):  # a relevant member makes its children relevant
                p = int(u.member_parent[m])
                if p >= 0:
                    rel[m] = max(rel[m], 0.5 * rel[p])
        # position of each unit inside its member's own content (0 = first word)
        pos = np.zeros(n, dtype=np.float64)
        seen: Counter[int] = Counter()
        for i in np.flatnonzero(~u.dependent).tolist():
            m = int(owner[i])
            pos[i] = seen[m]
            seen[m] += 1
        own = np.maximum(owner, 0)
        member_rel = np.where(owner >= 0, rel[own], 0.0)
        member_depth = np.where(owner >= 0, depth[own], 0)
        member_idx = np.where(owner >= 0, own, 0)
        return member_rel * 1e3 - pos - 0.5 * member_depth - 1e-4 * member_idx


_LEVELS = (
    (re.compile(r"\b(?:FATAL|CRITICAL|ERROR|SEVERE|Traceback|Exception|panic|failed|failure)\b", re.I), 3.0),
    (re.compile(r"\bWARN(?:ING)?\b", re.I), 2.0),
    (re.compile(r"\b(?:INFO|NOTICE)\b"), 0.5),
)
_MASK = re.compile(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}|\d+")


class LogLinesCompressor(BaseCompressor):
    """Log compression: keep error/warning lines and rare lines whole; repeated line templates go first."""

    name: ClassVar[str] = "log-lines"
    version = "1"
    question_aware = True

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        query = _terms(" ".join(x for x in (request.question, request.instruction) if x))
        return [self._score_doc(u, query) for u in docs]

    def _score_doc(self, u: Units, query: set[str]) -> np.ndarray:
        n = len(u)
        if n == 0:
            return np.zeros(0)
        text = u.text
        # line of each unit: the line of its first non-space character
        anchors = np.array(
            [s + (len(text[s:e]) - len(text[s:e].lstrip())) for s, e in zip(u.starts.tolist(), u.ends.tolist(), strict=True)],
            dtype=np.int64,
        )
        newlines = np.array([m.start() for m in re.finditer("\n", text)], dtype=np.int64)
        line = np.searchsorted(newlines, anchors, side="left") if newlines.size else np.zeros(n, dtype=np.int64)
        raw_lines = text.split("\n")
        templates = Counter(_MASK.sub("#", ln.strip()) for ln in raw_lines)
        n_lines = max(1, len(raw_lines))
        line_score = np.zeros(len(raw_lines), dtype=np.float64)
        prev_level = 0.0
        for i, ln in enumerate(raw_lines):
            level = next((w for rx, w in _LEVELS if rx.search(ln)), 0.0)
            if ln[:1] in (" ", "\t") and prev_level > level:  # traceback / continuation lines
                level = prev_level
            prev_level = level
            novelty = 1.0 / templates[_MASK.sub("#", ln.strip())]
            overlap = len(_terms(ln) & query) if query else 0
            line_score[i] = 2.0 * level + 3.0 * novelty + 2.0 * overlap + 0.1 * i / n_lines
        pos = np.zeros(n, dtype=np.float64)
        seen: Counter[int] = Counter()
        for i, ln_id in enumerate(line.tolist()):
            pos[i] = seen[ln_id]
            seen[ln_id] += 1
        return line_score[line] * 100.0 - 0.01 * pos


_INTERNAL: dict[str, type[BaseCompressor]] = {
    "json-values": JsonValuesCompressor,
    "log-lines": LogLinesCompressor,
}

# ------------------------------------------------------------------ route candidates


def _candidate_key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _candidate_label(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if "stages" in spec:
        return "pipeline(" + ">".join(_candidate_label(s) for s in spec["stages"]) + ")"
    m = spec["method"]
    return m if isinstance(m, str) else "|".join(m)


def _check_candidate(spec: Any, where: str) -> Any:
    if isinstance(spec, str) and spec:
        return spec
    if isinstance(spec, Mapping):
        if "stages" in spec:
            extra = sorted(set(spec) - {"stages", "headroom"})
            if extra:
                raise ConfigError(f"auto: {where}: a pipeline candidate has 'stages' (and 'headroom'), got {extra}")
            return dict(spec)
        if "method" in spec:
            Stage.coerce(dict(spec), 0)  # validates keys and values
            return dict(spec)
    raise ConfigError(
        f"auto: {where}: a route candidate is a compressor name, {{'method': name, 'config': {{...}}}} or "
        f"{{'stages': [...]}} (a pipeline); got {spec!r}"
    )


def _available(spec: Any) -> bool:
    names = set(list_compressors()) | set(_INTERNAL)
    if isinstance(spec, str):
        return spec in names
    if "stages" in spec:
        return all(_available(s) for s in spec["stages"])
    m = spec["method"]
    return any(x in names for x in ([m] if isinstance(m, str) else m))


@register("auto")
class Router:
    """Content-type routing over the whole request (see the module docstring)."""

    name: ClassVar[str] = "auto"
    # 2: prose_question routes to lingua2 alone; 3: code found by declared language / title and in cut-out fragments
    version: ClassVar[str] = "3"
    question_aware: ClassVar[bool] = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        routes: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
        weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

        def __post_init__(self) -> None:
            if not isinstance(self.routes, Mapping):
                raise ConfigError(f"auto: routes must be a mapping of route -> candidates, got {self.routes!r}")
            routes: dict[str, tuple[Any, ...]] = {}
            for key, cands in self.routes.items():
                if key not in ROUTE_KEYS:
                    raise ConfigError(f"auto: unknown route {key!r}; routes: {', '.join(ROUTE_KEYS)}")
                if isinstance(cands, (str, Mapping)):
                    cands = [cands]
                if not isinstance(cands, (list, tuple)) or not cands:
                    raise ConfigError(f"auto: routes[{key!r}] must be a non-empty list of candidates")
                routes[key] = tuple(_check_candidate(c, f"routes[{key!r}]") for c in cands)
            object.__setattr__(self, "routes", routes)
            if not isinstance(self.weights, Mapping):
                raise ConfigError(f"auto: weights must be a mapping of content type -> weight, got {self.weights!r}")
            for key, w in self.weights.items():
                if key not in CONTENT_TYPES:
                    raise ConfigError(f"auto: unknown content type {key!r} in weights; types: {', '.join(CONTENT_TYPES)}")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
                    raise ConfigError(f"auto: weights[{key!r}] must be a positive number, got {w!r}")
            object.__setattr__(self, "weights", dict(self.weights))

    def __init__(self, **config: Any) -> None:
        valid = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise ConfigError(f"auto: unknown option(s) {unknown}; valid options: {', '.join(sorted(valid))}")
        self.config = self.Config(**config)
        self._instances: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Router({self.config})"

    # -------------------------------------------------------------- routing
    def route_candidates(self, route: str) -> tuple[Any, ...]:
        return tuple(self.config.routes.get(route, DEFAULT_ROUTES[route]))

    def resolve(self, route: str) -> tuple[str, Any]:
        """(label, compressor) for a route: its first available candidate."""
        cands = self.route_candidates(route)
        for spec in cands:
            if not _available(spec):
                continue
            key = _candidate_key(spec)
            with self._lock:
                hit = self._instances.get(key)
                if hit is None:
                    hit = (_candidate_label(spec), self._build(spec))
                    self._instances[key] = hit
            return hit
        raise UnknownNameError(
            f"compressor for the {route!r} route", " or ".join(_candidate_label(c) for c in cands), list_compressors()
        )

    @staticmethod
    def _build(spec: Any) -> Any:
        if isinstance(spec, str):
            return _INTERNAL[spec]() if spec in _INTERNAL else compressor_class(spec)()
        if "stages" in spec:
            return Pipeline(list(spec["stages"]), headroom=spec.get("headroom", 2.0))
        m = spec["method"]
        name = m if isinstance(m, str) and m in _INTERNAL else first_available([m] if isinstance(m, str) else m)
        cls = _INTERNAL.get(name) or compressor_class(name)
        return cls(**dict(spec.get("config") or {}))

    def plan(self, request: CompressionRequest) -> list[dict[str, Any]]:
        """Per document: content type, detection reason, route and method label."""
        has_q = bool(request.question)
        out = []
        labels: dict[str, str] = {}  # one resolution per route (it checks which compressors are installed)
        for d in request.documents:
            declared = _declared_language(d)
            if declared is not None:
                ctype, reason, body = "code", declared, None
            else:
                ctype, reason, body = detect_body(d.text)
            if ctype == "json" and not request.protect.json:
                ctype, reason, body = "prose", "JSON protection is off", None
            route = ctype if ctype in ("code", "json", "logs") else ("prose_question" if has_q else "prose")
            if route not in labels:
                labels[route] = self.resolve(route)[0]
            entry = {"type": ctype, "reason": reason, "route": route, "method": labels[route]}
            if body is not None:
                entry["body"] = body  # the route compresses text[body[0]:body[1]], the rest is kept whole
            out.append(entry)
        return out

    # -------------------------------------------------------------- compression
    def compress(self, request: CompressionRequest) -> CompressionResult:
        started = time.perf_counter()
        if not isinstance(request, CompressionRequest):
            raise ConfigError(
                f"auto.compress() takes a CompressionRequest (CompressionRequest.create(...)); got {type(request).__name__}"
            )
        unknown = sorted(set(request.options) - GENERAL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"auto: unknown per-call option(s) {unknown}; configure routes with config={{'routes': ...}} "
                f"(general options: {', '.join(sorted(GENERAL_OPTIONS))})"
            )
        counter = get_counter(request.target_model)
        originals = [d.text for d in request.documents]
        doc_tokens = counter.count_batch(originals)
        origin_tokens = counter.count(DOC_SEPARATOR.join(t for t in originals if t))
        plan = self.plan(request)
        routes = [f"{p['type']}:{p['method']}" for p in plan]
        whole = [[(0, len(t))] if t else [] for t in originals]
        common = dict(
            counter=counter, origin_doc_tokens=doc_tokens, origin_tokens=origin_tokens, method=self.name,
            method_version=self.version, started=started, routes=routes,
        )
        if origin_tokens == 0:
            return make_result(request, texts=originals, spans=whole, **common)
        budget = resolve_budget(request, origin_tokens)
        if budget >= origin_tokens:
            return make_result(
                request, texts=originals, spans=whole, details={"under_budget": True, "routes": plan}, **common
            )

        groups: dict[str, list[int]] = {}
        for i, p in enumerate(plan):
            if originals[i]:
                groups.setdefault(p["route"], []).append(i)
        # embedded code/JSON: the route gets the body, the prose lines around it are kept whole
        bounds = [p.get("body") or (0, len(t)) for p, t in zip(plan, originals, strict=True)]
        inputs = [t[s:e] for t, (s, e) in zip(originals, bounds, strict=True)]
        embedded = [i for i, p in enumerate(plan) if "body" in p]
        body_tokens = list(doc_tokens)
        for i, n in zip(embedded, counter.count_batch([inputs[i] for i in embedded]), strict=True):
            body_tokens[i] = n
        wrap_tokens = sum(doc_tokens[i] - body_tokens[i] for i in embedded)
        sizes = {g: sum(body_tokens[i] for i in idx) for g, idx in groups.items()}
        weights = {
            g: float(self.config.weights.get(plan[idx[0]]["type"], 1.0)) for g, idx in groups.items()
        }
        # the budget counts the joined text; shares count documents on their own (no separators)
        targets = _water_fill(sizes, weights, budget * sum(doc_tokens) / origin_tokens - wrap_tokens)

        texts = list(originals)
        spans: list[list[tuple[int, int]]] = [list(s) for s in whole]
        outcome: dict[str, CompressionResult] = {}
        warnings: list[str] = []
        sub_opts = {k: v for k, v in request.options.items() if k not in ("strict", "reversible", "namespace")}

        def run(group: str, target: int) -> None:
            idx = groups[group]
            if target >= sizes[group]:
                for i in idx:
                    texts[i], spans[i] = originals[i], list(whole[i])
                outcome.pop(group, None)
                return
            _, comp = self.resolve(group)
            sub = CompressionRequest(
                documents=tuple(
                    dataclasses.replace(request.documents[i], text=inputs[i]) if "body" in plan[i]
                    else request.documents[i]
                    for i in idx
                ),
                question=request.question,
                instruction=request.instruction,
                target_tokens=max(1, target),
                target_model=request.target_model,
                protect=request.protect,
                options=sub_opts,
            )
            res = comp.compress(sub)
            outcome[group] = res
            for d, i in zip(res.documents, idx, strict=True):
                b0, b1 = bounds[i]
                texts[i] = originals[i][:b0] + d.text + originals[i][b1:]
                kept = [(b0 + s.start, b0 + s.end) for s in d.spans]
                kept = [x for x in [(0, b0), *kept, (b1, len(originals[i]))] if x[1] > x[0]]
                spans[i] = kept if "".join(originals[i][s:e] for s, e in kept) == texts[i] else []

        for g in groups:
            run(g, targets[g])
        total = counter.count(DOC_SEPARATOR.join(t for t in texts if t))
        rounds = 1
        if abs(total - budget) > 0.03 * budget:
            # one correction: move the error onto the routes that were compressed, in proportion to their output
            movable = {g: r.compressed_tokens for g, r in outcome.items()}
            mov_total = sum(movable.values())
            if mov_total > 0:
                err = total - budget
                for g, out in movable.items():
                    new = max(1, round(out - err * out / mov_total))
                    targets[g] = new
                    run(g, new)
                total = counter.count(DOC_SEPARATOR.join(t for t in texts if t))
                rounds = 2
        for g, r in outcome.items():
            warnings += [f"{g}: {w}" for w in r.warnings]
        details_routes = [
            {**p, "origin_tokens": doc_tokens[i], "compressed_tokens": counter.count(texts[i])}
            for i, p in enumerate(plan)
        ]
        result = make_result(
            request,
            texts=texts,
            spans=spans,
            warnings=warnings,
            details={"budget": budget, "routes": details_routes, "route_targets": dict(targets), "rounds": rounds},
            cache_hits=sum(r.cache_hits for r in outcome.values()),
            **common,
        )
        if request.options.get("strict") and abs(result.compressed_tokens - budget) > 0.05 * budget:
            raise BudgetError(
                f"auto reached {result.compressed_tokens} tokens for a budget of {budget} "
                f"({'; '.join(warnings) or 'no feasible selection'})"
            )
        return result

    def load(self) -> None:
        for route in ROUTE_KEYS:
            try:
                _, comp = self.resolve(route)
            except UnknownNameError:
                continue
            if callable(getattr(comp, "load", None)):
                comp.load()

    async def acompress(self, request: CompressionRequest) -> CompressionResult:
        import asyncio

        return await asyncio.to_thread(self.compress, request)


def _water_fill(sizes: Mapping[str, int], weights: Mapping[str, float], budget: float) -> dict[str, int]:
    """Split ``budget`` in proportion to ``weight * size``, capping each share at its size and re-spreading."""
    out: dict[str, float] = {}
    free = dict(sizes)
    left = float(budget)
    while free:
        denom = sum(weights[g] * s for g, s in free.items())
        if denom <= 0:
            break
        capped = {g: s for g, s in free.items() if left * weights[g] * s / denom >= s}
        if not capped:
            for g, s in free.items():
                out[g] = left * weights[g] * s / denom
            break
        for g, s in capped.items():
            out[g] = float(s)
            left -= s
            del free[g]
    return {g: int(round(out.get(g, 0.0))) for g in sizes}
