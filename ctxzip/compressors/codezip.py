"""``codezip``: LongCodeZip (Shi et al., 2025) for source code: keep the functions that matter, then the blocks
inside them that matter, and mark what was cut with the language's own comment syntax.

**Chunking** (:mod:`ctxzip.code_chunking`): each document is split by its syntax (Python with :mod:`ast`;
JavaScript/TypeScript, Java, Go, Rust, C/C++ with tree-sitter) into function, class-header and top-level-code
chunks; unknown languages fall back to a regular-expression splitter.

**Query**: ``q`` is the request's instruction followed by its question (for code completion the question is the
code prefix of the line to complete; ``ctxzip bench`` passes the row's prefix), cut to its last
``max_query_tokens`` model tokens; without either, the last lines of the last document.

**Pinned lines** (a ctxzip addition to the paper, for completion, where the context ends at the completion
point): before any ranking, the last lines of the last document, up to ``tail_ratio`` (0.3) of the budget, and
that document's top-level imports, up to ``import_ratio`` (0.1) of the budget (nearest the end first), are kept
like protected lines. Tail lines inside a function are pinned one by one, so the fine stage keeps them with the
function's signature and the statement headers around them; a class header or top-level code chunk is pinned
only whole and only when it fits. The current file's last lines are what a completion continues, and its imports
name what it can call; the mutual information ranking below spends the rest of the budget. When the always-kept
lines overrun a small budget, pinned statements are released (earliest first) before the result leaves the
±5% band. ``tail_ratio=0, import_ratio=0`` is the paper's method as published.

**Coarse stage**: every function/code chunk ``c`` is scored by the approximated mutual information with the
query ``q``:
``PPL(q) - PPL(q | c)``, the perplexity drop of the query when the chunk precedes it, with ``PPL = exp(mean
token NLL)`` from the causal LM of the model layer (default ``smollm2-135m``). Chunks are taken greedily by that
score until the coarse budget (``budget / fine_ratio``) is spent; a method brings its class header (and closing
lines) along. Kept chunks stay in their original order.

**Fine stage**: inside each kept function of at least ``min_fine_lines`` lines:

* *one* forward pass over the function gives every token's NLL; grouped by line they are the per-line
  log-perplexities, and the function is cut into blocks before each line whose value spikes (a local maximum above
  ``mean + spike_k * std``, ``spike_k = 0.2``). Blocks only ever start at a statement boundary.
* a second pass over the function with the query before it gives the conditional NLLs; a block's value is its
  information gain from the query, ``sum(NLL(line) - NLL(line | q))`` over its tokens (the "contrastive
  perplexity" importance of the reference implementation, but one pass per function instead of one per line or
  block). The unconditioned pass is the coarse stage's own pass over the chunk (the chunk's tokens come before
  the query there), reused for every function that the coarse stage scored whole (``max_chunk_tokens``).
* each function gets a budget from its coarse score: ``ratio_i = r * (1 + beta * (2 * norm_i - 1))``
  (``beta = 0.5``, ``norm_i`` the min-max normalised score), rescaled so the ratios spend the fine budget.
* blocks are chosen by 0/1 knapsack on target-LLM token costs: exact dynamic programming when
  ``blocks x capacity <= dp_max_cells``; otherwise the weights are divided by the smallest factor that brings the
  table under that size and rounded *up*, so the choice is always feasible and within one scaled unit per block
  of the optimum.
* signatures (and a function's closing lines) and ``return`` statements (a Rust function's tail expression) are
  always kept, with the headers of the statements around them.

**Output**: every elided run of lines becomes one marker line ``# ...`` / ``// ...`` at the indentation of what
it replaces (consecutive elisions merge into one); the text after the comment prefix is the ``marker`` option
(default ``...``; ``marker="[... lines elided ...]"`` gives ``# [... lines elided ...]``), and the budget
accounting charges each marker its own token cost. Python output parses wherever the input parsed: a suite whose
statements were all elided gets an ``...`` statement instead of the comment. In other languages statements are
only ever elided whole, at statement boundaries. The output is therefore *not* a subsequence of the input
(``spans`` list the kept character ranges). Budgets are in target-LLM tokens and are met within 5% when the
always-kept lines fit: after rendering, the least valuable blocks or chunks are trimmed while over the budget, and
while under it the best elided chunks, blocks or single statements are added up to the top of a 3% band (an item
a little larger than the shortfall is a better fit than leaving the budget unspent).

Protection (decided for code, issue #11): what the *caller* names is honoured, the prose heuristics are not.
Caller-given ``force`` strings and ``patterns`` (regular expressions), and the opt-in ``numbers``/``ids``/
``identifiers`` rules, keep every line they touch: the line is never elided (inside a function, its statement
and the headers around it stay; a top-level chunk it touches stays whole). The default-on prose rules are not
applied to code, because on source they fire on nearly every file and pin code for the wrong reason:
``markdown`` (a ``# comment`` looks like a heading), ``paths`` (``total/self.count`` looks like a path),
``urls`` and ``emails`` (a link in a docstring would pin the whole docstring), ``code_blocks`` and ``json``
(a dict literal). A caller who wants URLs or paths kept in code names them with ``force`` or ``patterns``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base import BaseCompressor, make_result, resolve_budget
from ..code_chunking import CodeLayout, Node, chunk_code, comment_prefix, normalize_language, syntax_errors
from ..errors import BudgetError, ConfigError
from ..protect import protected_ranges
from ..registry import register
from ..select import DOC_SEPARATOR
from ..tokens import TokenCounter, get_counter
from ..types import CompressionRequest, CompressionResult
from ..units import Units

__all__ = ["CodeZipCompressor", "knapsack"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Text written after the comment prefix for every elided run. On code.dev (docs/benchmarks/codezip.md) the SmolLM2
# reader copied a bare "# ..." as its completion on 6 of 8 rows (edit similarity 0.047) and "[... lines elided ...]"
# raised the same rows to 0.247, but the longer marker costs ~6 more tokens per elision and breaks the 5% budget
# band on small files (coarser items), so it is an option, not the default.
DEFAULT_MARKER = "..."

# top-level import statements of the current file, per language (matched on unindented lines)
_IMPORTS = {
    "python": re.compile(r"(?:import|from)\s+[\w.]"),
    "javascript": re.compile(r"import\b|(?:const|let|var)\s+[^=]+=\s*require\("),
    "typescript": re.compile(r"import\b|(?:const|let|var)\s+[^=]+=\s*require\("),
    "tsx": re.compile(r"import\b"),
    "java": re.compile(r"import\s"),
    "go": re.compile(r"import\b"),
    "rust": re.compile(r"(?:pub(?:\([^)]*\))?\s+)?(?:use\s|extern\s+crate\s)"),
    "c": re.compile(r"#\s*include\b"),
    "cpp": re.compile(r"#\s*include\b|import\s"),
}


def knapsack(weights: Sequence[int], values: Sequence[float], capacity: int, *, max_cells: int = 2_000_000
             ) -> tuple[list[int], bool]:
    """0/1 knapsack: indices of the chosen items and whether the answer is exact.

    Exact dynamic programming over ``len(weights) x (capacity + 1)`` cells when that is at most ``max_cells``;
    otherwise weights and capacity are divided by ``s = ceil(cells / max_cells)`` (weights rounded up, capacity
    down), which keeps every answer feasible and loses at most ``s`` units of capacity per chosen item.
    Items with a non-positive value are never chosen.
    """
    n = len(weights)
    if n != len(values):
        raise ConfigError(f"knapsack: {n} weights but {len(values)} values")
    capacity = int(capacity)
    if n == 0 or capacity <= 0:
        return [i for i in range(n) if weights[i] <= 0 and values[i] > 0], True
    w = np.asarray(weights, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if np.any(w < 0):
        raise ConfigError("knapsack: weights must be non-negative")
    scale = 1
    cells = n * (capacity + 1)
    if cells > max_cells:
        scale = math.ceil(cells / max_cells)
    ws = -(-w // scale)
    cap = capacity // scale
    best = np.zeros(cap + 1, dtype=np.float64)
    take = np.zeros((n, cap + 1), dtype=bool)
    for i in range(n):
        if v[i] <= 0 or ws[i] > cap:
            continue
        wi = int(ws[i])
        cand = np.full(cap + 1, -np.inf)
        cand[wi:] = best[: cap + 1 - wi] + v[i]
        better = cand > best
        take[i] = better
        best = np.where(better, cand, best)
    chosen = []
    c = cap
    for i in range(n - 1, -1, -1):
        if take[i, c]:
            chosen.append(i)
            c -= int(ws[i])
    chosen.reverse()
    return chosen, scale == 1


# ------------------------------------------------------------------------------------------------ state


@dataclass(eq=False)
class _Func:
    """Fine-stage plan of one function chunk."""

    doc: int
    chunk: int
    first: int  # first line of the chunk
    nodes: list[Node]
    parent: list[int]
    own: list[np.ndarray]  # own lines (absolute line numbers) of each node
    forced: np.ndarray  # bool per node
    blocks: list[list[int]]  # node ids per block
    block_cost: np.ndarray
    block_value: np.ndarray
    forced_cost: float
    node_cost: np.ndarray
    node_gain: np.ndarray
    base_forced: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # forced without the pins
    pin_nodes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # nodes holding pinned lines
    score: float = 0.0
    selected: set[int] = field(default_factory=set)
    extra: set[int] = field(default_factory=set)  # single statements added to fill the budget

    def release_pin(self, k: int) -> None:
        """Stop pinning node ``k``: it is kept only if a block or a kept descendant brings it back."""
        self.pin_nodes[k] = False
        forced = self.base_forced | self.pin_nodes
        for j in range(len(self.nodes) - 1, 0, -1):
            if forced[j]:
                forced[self.parent[j]] = True
        self.forced = forced
        self.forced_cost = float(self.node_cost[forced].sum())

    def kept_nodes(self) -> np.ndarray:
        keep = self.forced.copy()
        for b in self.selected:
            keep[self.blocks[b]] = True
        keep[list(self.extra)] = True
        for k in range(len(self.nodes) - 1, 0, -1):  # closure: a kept node keeps its ancestors
            if keep[k]:
                keep[self.parent[k]] = True
        # A compound statement kept for its header alone (its block was chosen, none of its body's statements)
        # would render as `if x:` over an elided suite (`...` in Python); drop it whole instead. Bottom-up
        # (pre-order reversed), so a parent left with no kept statement goes too. On code.dev the reader copied
        # those `...` suites as its completion, and they carry nothing the query needs.
        has_kept_child = np.zeros(len(self.nodes), dtype=bool)
        for k in range(len(self.nodes) - 1, 0, -1):
            if keep[k] and self.nodes[k].children and not has_kept_child[k] and not self.forced[k]:
                keep[k] = False
            if keep[k]:
                has_kept_child[self.parent[k]] = True
        return keep

    def kept_lines(self) -> np.ndarray:
        keep = self.kept_nodes()
        parts = [self.own[k] for k in np.flatnonzero(keep)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class _Doc:
    layout: CodeLayout
    comment: str  # the full marker line text without indentation, e.g. "# ..."
    line_cost: np.ndarray  # target tokens per line
    line_start: np.ndarray  # char offset of each line
    protected: np.ndarray  # bool per line: the caller's protection rules
    chunk_cost: np.ndarray
    scoreable: np.ndarray  # bool per chunk
    pinned: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # bool per line: tail and imports

    @property
    def kept(self) -> np.ndarray:
        """Lines every selection keeps: protected or pinned."""
        return self.protected | self.pinned if self.pinned.shape == self.protected.shape else self.protected


@register("codezip")
class CodeZipCompressor(BaseCompressor):
    version = "2"
    question_aware = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: str = "smollm2-135m"  # any causal LM of the model layer (e.g. "gemma-3-270m", a local path)
        language: str | None = None  # None/"auto": per document from metadata "language", title, content
        fine_ratio: float = 0.6  # share of the coarse selection's tokens the fine stage keeps; 1.0 = coarse only
        beta: float = 0.5  # how strongly a function's coarse score moves its fine budget
        spike_k: float = 0.2  # block boundary: per-line log-perplexity above mean + spike_k * std
        min_fine_lines: int = 5  # smaller functions are kept whole
        dp_max_cells: int = 2_000_000  # exact knapsack up to this many DP cells
        max_query_tokens: int = 128  # the query's last N model tokens condition the scores
        max_chunk_tokens: int = 384  # a chunk's first N model tokens are scored
        batch_size: int = 8
        dtype: str = "auto"  # bfloat16 where the device runs it natively, else float32 (models.resolve_dtype)
        device: str | None = None
        merge_chars: int = 800  # consecutive small top-level code chunks are merged up to this size
        tail_ratio: float = 0.3  # share of the budget pinned to the lines right before the completion point
        import_ratio: float = 0.1  # share of the budget for the current file's (the last document's) imports
        marker: str = DEFAULT_MARKER  # elision text after the language's comment prefix: "# ..." / "// ..."

        def __post_init__(self) -> None:
            if not isinstance(self.model, str) or not self.model.strip():
                raise ConfigError(f"codezip: model must be a model name or path such as 'smollm2-135m', got {self.model!r}")
            normalize_language(self.language)
            for name in ("fine_ratio", "beta"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"codezip: {name} must be a number, got {v!r}")
            if not 0.0 < self.fine_ratio <= 1.0:
                raise ConfigError(f"codezip: fine_ratio must be in (0, 1] (1.0 turns the fine stage off), got {self.fine_ratio!r}")
            for name in ("tail_ratio", "import_ratio"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 0.5:
                    raise ConfigError(f"codezip: {name} must be a number in [0, 0.5) (0 = nothing pinned), got {v!r}")
            if self.tail_ratio + self.import_ratio >= 0.5:
                raise ConfigError("codezip: tail_ratio + import_ratio must stay below 0.5 (the ranking needs the rest)")
            if not 0.0 <= self.beta <= 1.0:
                raise ConfigError(f"codezip: beta must be in [0, 1] (0 = same ratio for every function), got {self.beta!r}")
            if isinstance(self.spike_k, bool) or not isinstance(self.spike_k, (int, float)) or not math.isfinite(self.spike_k):
                raise ConfigError(f"codezip: spike_k must be a finite number (e.g. 0.2), got {self.spike_k!r}")
            for name, lo in (("min_fine_lines", 1), ("dp_max_cells", 1000), ("max_query_tokens", 8),
                             ("max_chunk_tokens", 8), ("batch_size", 1), ("merge_chars", 0)):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    raise ConfigError(f"codezip: {name} must be an integer >= {lo}, got {v!r}")
            if not isinstance(self.marker, str) or not self.marker.strip() or "\n" in self.marker or "\r" in self.marker:
                raise ConfigError(
                    f"codezip: marker must be non-empty single-line text written after the comment prefix "
                    f"(e.g. '...' gives '# ...', '[... lines elided ...]' gives '# [... lines elided ...]'), got {self.marker!r}"
                )
            if self.dtype not in _DTYPES:
                raise ConfigError(f"codezip: dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
            if self.device is not None and not isinstance(self.device, str):
                raise ConfigError(f"codezip: device must be None, 'cpu' or 'cuda[:N]', got {self.device!r}")

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._scorers: dict[tuple[str, str, str | None, int], Any] = {}

    # -------------------------------------------------------------------------------------------- model

    def _scorer(self, cfg: Any) -> Any:
        key = (cfg.model, cfg.dtype, cfg.device, cfg.batch_size)
        if key not in self._scorers:
            from ..models import CausalLMScorer, load_causal_lm

            lm = load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device)
            self._scorers[key] = CausalLMScorer(lm, batch_size=cfg.batch_size)
        return self._scorers[key]

    def load(self) -> None:
        self._scorer(self.config)

    # -------------------------------------------------------------------------------------------- helpers

    def _language(self, cfg: Any, request: CompressionRequest, i: int) -> tuple[str | None, str | None]:
        doc = request.documents[i]
        hint = cfg.language
        if hint is None:
            meta = doc.metadata.get("language")
            hint = meta if isinstance(meta, str) else None
        return hint, doc.title

    def _layouts(self, request: CompressionRequest, cfg: Any) -> list[CodeLayout]:
        out = []
        for i, d in enumerate(request.documents):
            hint, title = self._language(cfg, request, i)
            out.append(chunk_code(d.text, hint, filename=title, merge_chars=cfg.merge_chars))
        return out

    @staticmethod
    def _query(request: CompressionRequest, layouts: Sequence[CodeLayout]) -> str:
        parts = [p.strip("\n") for p in (request.instruction, request.question) if p and p.strip()]
        if parts:
            return "\n".join(parts)
        for lay in reversed(layouts):  # no query: the code right before the completion point
            code = [ln for ln in lay.lines if ln.strip()]
            if code:
                return "".join(code[-20:]).rstrip("\n")
        return ""

    @staticmethod
    def _tail_tokens(scorer: Any, text: str, n: int) -> str:
        if not text:
            return text
        ids, starts, _ = scorer.encode([text])[0]
        if len(ids) <= n:
            return text
        return text[int(starts[len(ids) - n]) :]

    @staticmethod
    def _head_tokens(scorer: Any, texts: list[str], n: int) -> list[str]:
        out = []
        for t, (ids, _, ends) in zip(texts, scorer.encode(texts), strict=True):
            out.append(t if len(ids) <= n else t[: int(ends[n - 1])])
        return out

    def _coarse_scores(self, scorer: Any, cfg: Any, docs: list[_Doc], query: str,
                       plain: dict[tuple[int, int], Any] | None = None) -> list[np.ndarray]:
        """``PPL(q) - PPL(q | chunk)`` per chunk (``-inf`` for chunks that are not scored).

        The chunk's own tokens in that pass are scored given only the chunk before them: for every chunk scored
        whole, those token NLLs are stored in ``plain`` (keyed ``(doc, chunk)``) and the fine stage reuses them
        as its unconditioned pass."""
        items = [(d, int(c)) for d, doc in enumerate(docs) for c in np.flatnonzero(doc.scoreable)]
        out = [np.full(len(doc.layout.chunks), -np.inf) for doc in docs]
        if not items or not query.strip():
            for d, c in items:
                out[d][c] = 0.0
            return out
        whole = [docs[d].layout.chunk_text(c) for d, c in items]
        heads = self._head_tokens(scorer, whole, cfg.max_chunk_tokens)
        texts = [t if t.endswith("\n") else t + "\n" for t in heads]
        base = scorer.token_nll([query])[0].mean_nll
        scores = scorer.token_nll(texts, suffixes=query)
        ppl0 = math.exp(min(base, 50.0))
        for (d, c), s, w, t in zip(items, scores, whole, texts, strict=True):
            m = s.suffix_mean_nll
            out[d][c] = ppl0 - math.exp(min(m, 50.0)) if math.isfinite(m) else -np.inf
            if plain is not None and t == w:
                plain[(d, c)] = s
        return out

    @staticmethod
    def _pin(cfg: Any, docs: list[_Doc], budget: int) -> dict[str, int]:
        """Mark the lines every selection keeps, on top of the protected ones (``doc.protected``):

        * the *tail*: the last lines of the last document, the code right before the completion point, within
          ``tail_ratio * budget`` target tokens. Lines of a function are pinned one by one (the fine stage keeps
          them, the function's signature and the statement headers around them); a class header or top-level
          code chunk only whole, and only when it fits what is left.
        * the top-level import statements of the last document, within ``import_ratio * budget``: the top-level
          code chunks holding them, nearest the completion point first, each only when it fits what is left.
        """
        last = next((i for i in range(len(docs) - 1, -1, -1) if docs[i].layout.lines), None)
        stats = {"tail_lines": 0, "tail_tokens": 0, "import_lines": 0, "import_tokens": 0}
        if last is None:
            return stats
        doc = docs[last]
        lay = doc.layout
        doc.pinned = np.zeros(len(lay.lines), dtype=bool)
        chunk_of = np.zeros(len(lay.lines), dtype=np.int64)
        for c in lay.chunks:
            chunk_of[c.first : c.last + 1] = c.index
        room = cfg.tail_ratio * budget
        i = len(lay.lines) - 1
        head_end: dict[int, int] = {}  # function chunk -> first line of its body (its head is charged once)
        while i >= 0 and room > 0:
            c = lay.chunks[int(chunk_of[i])]
            if c.kind == "function" and c.body is not None:
                if c.index not in head_end:
                    # a pinned statement keeps the function's head (comments above, decorators, signature)
                    end = min([n.first for n in c.body.children if n.first > c.first] + [i + 1])
                    head = float(doc.line_cost[c.first : end].sum())
                    if head > room:
                        break
                    room -= head
                    head_end[c.index] = end
                if i >= head_end[c.index]:
                    cost = float(doc.line_cost[i])
                    if cost > room:
                        break
                    room -= cost
                doc.pinned[i] = True
                stats["tail_lines"] += 1
                i -= 1
                continue
            cost = float(doc.line_cost[c.first : i + 1].sum())
            if cost > room:
                break
            doc.pinned[c.first : i + 1] = True
            room -= cost
            stats["tail_lines"] += i + 1 - c.first
            i = c.first - 1
        stats["tail_tokens"] = int(round(cfg.tail_ratio * budget - room))
        room = cfg.import_ratio * budget
        if room > 0 and lay.language in _IMPORTS:
            rx = _IMPORTS[lay.language]
            rows = [i for i, line in enumerate(lay.lines)
                    if line[:1] not in (" ", "\t") and not lay.trivia[i] and rx.match(line)]
            for i in reversed(rows):  # nearest the completion point first
                c = lay.chunks[int(chunk_of[i])]
                if c.kind != "code" or c.parent is not None:
                    continue
                kept = doc.kept[c.first : c.last + 1]
                if not kept.all():
                    cost = float(doc.line_cost[c.first : c.last + 1][~kept].sum())
                    if cost > room:
                        continue
                    doc.pinned[c.first : c.last + 1] = True
                    room -= cost
                stats["import_lines"] += 1
            stats["import_tokens"] = int(round(cfg.import_ratio * budget - room))
        return stats

    # -------------------------------------------------------------------------------------------- fine stage

    @staticmethod
    def _line_values(lay: CodeLayout, first: int, last: int, ts: Any) -> np.ndarray:
        """Sum of token values per line of ``first..last`` (``ts``: (starts, values) over the chunk text)."""
        starts, vals = ts
        offs = np.cumsum([0] + [len(lay.lines[i]) for i in range(first, last + 1)])
        line = np.searchsorted(offs, starts, side="right") - 1
        line = np.clip(line, 0, last - first)
        good = np.isfinite(vals)
        sums = np.bincount(line[good], weights=vals[good], minlength=last - first + 1)
        counts = np.bincount(line[good], minlength=last - first + 1)
        return sums, counts

    def _plan_function(self, cfg: Any, doc: _Doc, d: int, ci: int, nll: Any, cond: Any) -> _Func | None:
        lay = doc.layout
        ch = lay.chunks[ci]
        root = ch.body
        if root is None:
            return None
        nodes = root.walk()
        parent = [0] * len(nodes)
        index = {id(n): k for k, n in enumerate(nodes)}
        for k, n in enumerate(nodes):
            for c in n.children:
                parent[index[id(c)]] = k
        n_lines = ch.last - ch.first + 1
        owner = np.zeros(n_lines, dtype=np.int64)
        for k, n in enumerate(nodes):  # pre-order: children overwrite their parents
            if k == 0:
                continue
            owner[n.first - ch.first : n.last - ch.first + 1] = k
        trivia = np.asarray(lay.trivia[ch.first : ch.last + 1], dtype=bool)
        starts_at = {n.first - ch.first: k for k, n in enumerate(nodes) if k}
        code_rows = np.flatnonzero(~trivia)
        for r in np.flatnonzero(trivia):
            k = owner[r]
            if k != 0 and not nodes[k].children:
                continue  # inside a simple statement (e.g. a blank line in a call)
            nxt = code_rows[code_rows > r]
            if nxt.size and int(nxt[0]) in starts_at:
                owner[r] = starts_at[int(nxt[0])]
        own = [np.flatnonzero(owner == k) + ch.first for k in range(len(nodes))]
        base = np.array([k == 0 or n.is_return for k, n in enumerate(nodes)], dtype=bool)
        base[np.unique(owner[np.flatnonzero(doc.protected[ch.first : ch.last + 1])])] = True
        pin_nodes = np.zeros(len(nodes), dtype=bool)
        pin_nodes[np.unique(owner[np.flatnonzero(doc.kept[ch.first : ch.last + 1])])] = True
        pin_nodes &= ~base
        for k in range(len(nodes) - 1, 0, -1):
            if base[k]:
                base[parent[k]] = True
        forced = base | pin_nodes
        for k in range(len(nodes) - 1, 0, -1):
            if forced[k]:
                forced[parent[k]] = True
        cost = np.array([float(doc.line_cost[o].sum()) for o in own])

        u_sum, u_cnt = self._line_values(lay, ch.first, ch.last, nll)
        c_sum, _ = self._line_values(lay, ch.first, ch.last, cond)
        line_gain = u_sum - c_sum
        gain = np.array([float(line_gain[o - ch.first].sum()) for o in own])
        # per-line log-perplexity over code lines; spikes start blocks
        ppl = np.where(u_cnt > 0, u_sum / np.maximum(u_cnt, 1), np.nan)
        rows = [r for r in code_rows.tolist() if np.isfinite(ppl[r])]
        spikes: set[int] = set()
        if len(rows) >= 3:
            vals = ppl[rows]
            thr = float(vals.mean() + cfg.spike_k * vals.std())
            for j in range(len(rows)):
                left = vals[j - 1] if j > 0 else -np.inf
                right = vals[j + 1] if j + 1 < len(rows) else -np.inf
                if vals[j] > thr and vals[j] >= left and vals[j] >= right and owner[rows[j]] != 0:
                    spikes.add(nodes[int(owner[rows[j]])].first - ch.first)  # the statement holding the spike
        blocks: list[list[int]] = []
        cur: list[int] = []
        for k in range(1, len(nodes)):
            if forced[k]:
                if cur:
                    blocks.append(cur)
                    cur = []
                continue
            row = nodes[k].first - ch.first
            if cur and row in spikes:
                blocks.append(cur)
                cur = []
            cur.append(k)
        if cur:
            blocks.append(cur)
        block_cost = np.zeros(len(blocks))
        block_value = np.zeros(len(blocks))
        for b, ks in enumerate(blocks):
            members = set(ks)
            extra = set()
            for k in ks:
                p = parent[k]
                while not forced[p] and p not in members and p not in extra:
                    extra.add(p)
                    p = parent[p]
            block_cost[b] = cost[ks].sum() + sum(cost[p] for p in extra)
            block_value[b] = gain[ks].sum()
        forced_cost = float(cost[forced].sum())
        return _Func(d, ci, ch.first, nodes, parent, own, forced, blocks, block_cost, block_value, forced_cost,
                     cost, gain, base, pin_nodes)


    @staticmethod
    def _fine_select(func: _Func, budget: float, max_cells: int) -> bool:
        """Choose blocks for a function budget (target tokens, forced lines included); True when exact."""
        if not func.blocks:
            func.selected = set()
            return True
        cap = int(math.floor(budget - func.forced_cost))
        cost = func.block_cost
        dens = func.block_value / np.maximum(cost, 1.0)
        # shift values by a per-token constant so every block is worth something and the budget gets spent;
        # the order of blocks by value density is unchanged
        shift = max(0.0, -float(dens.min())) + 1e-3
        values = func.block_value + shift * cost
        chosen, exact = knapsack(np.ceil(cost).astype(np.int64).tolist(), values.tolist(), cap, max_cells=max_cells)
        func.selected = set(chosen)
        return exact

    @staticmethod
    def _allocate(funcs: list[_Func], costs: np.ndarray, total: float, beta: float) -> np.ndarray:
        """Per-function budgets summing to about ``total``: ratio_i = r * (1 + beta * (2 * norm_i - 1))."""
        if not funcs:
            return np.zeros(0)
        full = np.asarray(costs, dtype=np.float64)
        floor = np.array([f.forced_cost for f in funcs])
        if total >= full.sum():
            return full.copy()
        scores = np.array([f.score for f in funcs], dtype=np.float64)
        finite = np.isfinite(scores)
        norm = np.full(len(funcs), 0.5)
        if finite.sum() >= 2 and np.ptp(scores[finite]) > 0:
            lo, hi = scores[finite].min(), scores[finite].max()
            norm[finite] = (scores[finite] - lo) / (hi - lo)
            norm[~finite] = 0.0
        weight = 1.0 + beta * (2.0 * norm - 1.0)
        r = total / max(full.sum(), 1e-9)
        budgets = full * np.clip(r * weight, 0.0, 1.0)
        for _ in range(8):  # rescale the free part so the budgets spend ``total``
            budgets = np.clip(np.maximum(budgets, floor), floor, full)
            got = budgets.sum()
            if abs(got - total) <= 1.0:
                break
            free = budgets - floor
            room = full - budgets
            if got > total and free.sum() > 0:
                budgets = budgets - free * min(1.0, (got - total) / free.sum())
            elif got < total and room.sum() > 0:
                budgets = budgets + room * min(1.0, (total - got) / room.sum())
            else:
                break
        return np.clip(np.maximum(budgets, floor), floor, full)

    # -------------------------------------------------------------------------------------------- rendering

    @staticmethod
    def _render(doc: _Doc, keep: np.ndarray) -> tuple[str, list[tuple[int, int]], int]:
        """Kept lines, one marker per elided run; returns (text, kept char spans, markers)."""
        lay = doc.layout
        lines = lay.lines
        n = len(lines)
        if not keep.any():
            return "", [], 0
        code = np.array([bool(ln.strip()) for ln in lines], dtype=bool)
        fill_at: dict[int, str] = {}
        for f in lay.fills:
            if keep[f.header] and not keep[f.first : f.last + 1][code[f.first : f.last + 1]].any():
                fill_at[f.first] = f.indent
        out: list[str] = []
        spans: list[tuple[int, int]] = []
        markers = 0
        i = 0
        while i < n:
            if keep[i]:
                out.append(lines[i])
                a, b = int(doc.line_start[i]), int(doc.line_start[i]) + len(lines[i])
                if spans and spans[-1][1] == a:
                    spans[-1] = (spans[-1][0], b)
                else:
                    spans.append((a, b))
                i += 1
                continue
            j = i
            while j < n and not keep[j]:
                j += 1
            run = range(i, j)
            code_rows = [r for r in run if code[r]]
            if not code_rows:  # only blank lines were dropped: keep them, they cost nothing
                for r in run:
                    out.append(lines[r])
                i = j
                continue
            fill = next((fill_at[r] for r in run if r in fill_at), None)
            if out and not out[-1].endswith("\n"):
                out[-1] = out[-1] + "\n"
            if fill is not None:
                out.append(f"{fill}...\n")
            else:
                indent_src = lines[code_rows[0]]
                indent = indent_src[: len(indent_src) - len(indent_src.lstrip(" \t"))]
                out.append(f"{indent}{doc.comment}\n")
            markers += 1
            i = j
        text = "".join(out)
        if text.endswith("\n") and not lay.text.endswith("\n"):
            text = text[:-1]
        return text, spans, markers

    # -------------------------------------------------------------------------------------------- compress

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        """Each unit gets the coarse score of the chunk it lies in (for pipelines that select units)."""
        cfg = self.options(request)
        counter = get_counter(request.target_model)
        layouts = [chunk_code(u.text, self._language(cfg, request, i)[0] if i < len(request.documents) else cfg.language,
                              merge_chars=cfg.merge_chars) for i, u in enumerate(docs)]
        states = [self._doc_state(lay, request, counter, cfg.marker) for lay in layouts]
        scorer = self._scorer(cfg)
        query = self._tail_tokens(scorer, self._query(request, layouts), cfg.max_query_tokens)
        chunk_scores = self._coarse_scores(scorer, cfg, states, query)
        out = []
        for u, st, sc in zip(docs, states, chunk_scores, strict=True):
            if len(u) == 0 or not st.layout.chunks:
                out.append(np.zeros(len(u)))
                continue
            line = np.searchsorted(st.line_start, u.starts, side="right") - 1
            chunk_of_line = np.zeros(len(st.layout.lines), dtype=np.int64)
            for c in st.layout.chunks:
                chunk_of_line[c.first : c.last + 1] = c.index
            s = sc[chunk_of_line[np.clip(line, 0, len(chunk_of_line) - 1)]]
            finite = np.isfinite(s)
            low = (s[finite].min() - 1.0) if finite.any() else 0.0
            out.append(np.where(finite, s, low))
        return out

    @staticmethod
    def _doc_state(lay: CodeLayout, request: CompressionRequest, counter: TokenCounter, marker: str = DEFAULT_MARKER) -> _Doc:
        lines = lay.lines
        line_cost = np.asarray(counter.count_batch(list(lines)), dtype=np.float64) if lines else np.zeros(0)
        line_start = np.concatenate([[0], np.cumsum([len(x) for x in lines])]).astype(np.int64)
        rules = dataclasses.replace(request.protect, markdown=False, paths=False, code_blocks=False, json=False,
                                    urls=False, emails=False)
        ranges = protected_ranges(lay.text, rules)
        protected = np.zeros(len(lines), dtype=bool)
        for a, b in ranges.tolist():
            la = int(np.searchsorted(line_start, a, side="right") - 1)
            lb = int(np.searchsorted(line_start, max(a, b - 1), side="right") - 1)
            protected[max(la, 0) : min(lb, len(lines) - 1) + 1] = True
        chunk_cost = np.array([line_cost[c.first : c.last + 1].sum() for c in lay.chunks], dtype=np.float64)
        scoreable = np.array(
            [c.kind in ("function", "code") and any(ln.strip() for ln in lines[c.first : c.last + 1])
             for c in lay.chunks], dtype=bool)
        return _Doc(lay, f"{comment_prefix(lay.language)} {marker.strip()}", line_cost, line_start, protected, chunk_cost, scoreable)

    def compress(self, request: CompressionRequest) -> CompressionResult:
        started = time.perf_counter()
        if not isinstance(request, CompressionRequest):
            raise ConfigError(
                f"{self.name}.compress() takes a CompressionRequest (build one with "
                f"CompressionRequest.create(...)) or use ctxzip.compress(); got {type(request).__name__}"
            )
        cfg = self.options(request)
        counter = get_counter(request.target_model)
        originals = [d.text for d in request.documents]
        origin_doc_tokens = counter.count_batch(originals)
        origin_tokens = counter.count(DOC_SEPARATOR.join(t for t in originals if t))
        whole = [[(0, len(t))] if t else [] for t in originals]
        if origin_tokens == 0:
            return make_result(request, texts=originals, spans=whole, counter=counter,
                               origin_doc_tokens=origin_doc_tokens, origin_tokens=0, method=self.name,
                               method_version=self.version, started=started)
        budget = resolve_budget(request, origin_tokens)
        if budget >= origin_tokens:
            return make_result(request, texts=originals, spans=whole, counter=counter,
                               origin_doc_tokens=origin_doc_tokens, origin_tokens=origin_tokens, method=self.name,
                               method_version=self.version, started=started, details={"under_budget": True})
        layouts = self._layouts(request, cfg)
        docs = [self._doc_state(lay, request, counter, cfg.marker) for lay in layouts]
        texts, spans, warnings, details = self._run(request, cfg, docs, counter, budget)
        result = make_result(
            request, texts=texts, spans=spans, counter=counter, origin_doc_tokens=origin_doc_tokens,
            origin_tokens=origin_tokens, method=self.name, method_version=self.version, started=started,
            warnings=warnings, details={"budget": budget, **details},
        )
        if request.options.get("strict") and abs(result.compressed_tokens - budget) > 0.05 * budget:
            raise BudgetError(
                f"{self.name} reached {result.compressed_tokens} tokens for a budget of {budget} "
                f"({'; '.join(result.warnings) or 'no feasible selection'})"
            )
        return result

    def _run(self, request: CompressionRequest, cfg: Any, docs: list[_Doc], counter: TokenCounter, budget: int
             ) -> tuple[list[str], list[list[tuple[int, int]]], list[str], dict[str, Any]]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        scorer = self._scorer(cfg)
        timings["load_s"] = time.perf_counter() - t0
        layouts = [d.layout for d in docs]
        query = self._tail_tokens(scorer, self._query(request, layouts), cfg.max_query_tokens)
        pins = self._pin(cfg, docs, budget)
        t0 = time.perf_counter()
        plain: dict[tuple[int, int], Any] = {}
        scores = self._coarse_scores(scorer, cfg, docs, query, plain)
        timings["coarse_s"] = time.perf_counter() - t0
        marker_cost = max(float(counter.count(f"    {d.comment}\n")) for d in docs) if docs else float(counter.count(f"    # {cfg.marker.strip()}\n"))
        sep_cost = float(counter.count(DOC_SEPARATOR))

        chunk_keep = [np.zeros(len(d.layout.chunks), dtype=bool) for d in docs]
        footers: list[dict[int, int]] = []
        for d in docs:
            f: dict[int, int] = {}
            for c in d.layout.chunks:
                if c.kind == "footer" and c.parent is not None:
                    f[c.parent] = c.index
            footers.append(f)

        def extra_cost(di: int, ci: int) -> float:
            doc = docs[di]
            cost = doc.chunk_cost[ci] + marker_cost
            if not chunk_keep[di].any():
                cost += sep_cost
            for h in doc.layout.ancestors(ci):
                if not chunk_keep[di][h]:
                    cost += doc.chunk_cost[h]
                    if h in footers[di]:
                        cost += doc.chunk_cost[footers[di][h]]
            return float(cost)

        def take(di: int, ci: int) -> None:
            chunk_keep[di][ci] = True
            for h in docs[di].layout.ancestors(ci):
                chunk_keep[di][h] = True
                if h in footers[di]:
                    chunk_keep[di][footers[di][h]] = True

        warnings: list[str] = []
        spent = 0.0
        # protected and pinned lines: their chunks are always kept. A function that is in only for some of its
        # lines is charged those lines (the fine stage elides the rest), so pins do not crowd out the ranking.
        for di, doc in enumerate(docs):
            for c in doc.layout.chunks:
                kept = doc.kept[c.first : c.last + 1]
                if kept.any() and not chunk_keep[di][c.index]:
                    cost = extra_cost(di, c.index)
                    if c.kind == "function" and c.body is not None and c.n_lines >= cfg.min_fine_lines:
                        cost -= float(doc.chunk_cost[c.index] - doc.line_cost[c.first : c.last + 1][kept].sum())
                    spent += cost
                    take(di, c.index)
        order = sorted(((float(scores[di][ci]), di, int(ci)) for di, d in enumerate(docs)
                        for ci in np.flatnonzero(d.scoreable)), key=lambda t: (-t[0], t[1], t[2]))
        coarse_budget = min(float(sum(d.chunk_cost.sum() for d in docs)), budget / cfg.fine_ratio)
        for _s, di, ci in order:
            if chunk_keep[di][ci]:
                continue
            c = extra_cost(di, ci)
            if spent + c <= coarse_budget:
                take(di, ci)
                spent += c

        # ---------------------------------------------------------------- fine stage
        funcs: dict[tuple[int, int], _Func] = {}
        t0 = time.perf_counter()
        cand = [(di, int(ci)) for di, d in enumerate(docs) for ci in np.flatnonzero(chunk_keep[di])
                if d.layout.chunks[ci].kind == "function" and d.layout.chunks[ci].body is not None
                and d.layout.chunks[ci].n_lines >= cfg.min_fine_lines]
        fixed = sum(float(docs[di].chunk_cost[chunk_keep[di]].sum()) for di in range(len(docs)))
        cand_cost = np.array([docs[di].chunk_cost[ci] for di, ci in cand], dtype=np.float64)
        fixed -= float(cand_cost.sum())
        n_markers = sum(int(np.count_nonzero(np.diff(np.concatenate([[0], k.astype(int), [0]])) == 1)) for k in chunk_keep)
        fine_total = budget - fixed - marker_cost * (n_markers + 1) - sep_cost * len(docs)
        exact_all = True
        if cand and fine_total < cand_cost.sum():
            funcs.update(self._plan_many(cfg, scorer, docs, cand, query, scores, plain))
            plist = list(funcs.values())
            pcost = np.array([docs[f.doc].chunk_cost[f.chunk] for f in plist])
            # each elided block run adds a marker: reserve about one per two blocks
            alloc = self._allocate(plist, pcost, max(0.0, fine_total - float(cand_cost.sum() - pcost.sum())), cfg.beta)
            for f, b in zip(plist, alloc, strict=True):
                b_eff = b - marker_cost * max(0, len(f.blocks) // 3) if b < docs[f.doc].chunk_cost[f.chunk] else b
                if b >= docs[f.doc].chunk_cost[f.chunk]:
                    f.selected = set(range(len(f.blocks)))
                else:
                    exact_all &= self._fine_select(f, max(b_eff, f.forced_cost), cfg.dp_max_cells)
        timings["fine_s"] = time.perf_counter() - t0

        # ---------------------------------------------------------------- render and fit the budget
        def line_keep(di: int) -> np.ndarray:
            doc = docs[di]
            keep = np.zeros(len(doc.layout.lines), dtype=bool)
            for ci in np.flatnonzero(chunk_keep[di]):
                c = doc.layout.chunks[ci]
                f = funcs.get((di, int(ci)))
                if f is None:
                    keep[c.first : c.last + 1] = True
                else:
                    keep[f.kept_lines()] = True
                    # lines before the function's first statement tree line (leading comments) go with it
            return keep

        base_errors: dict[int, int] = {}
        no_fine: set[int] = set()

        def render_all() -> tuple[list[str], list[list[tuple[int, int]]], int, int]:
            texts, spans, markers = [], [], 0
            for di, doc in enumerate(docs):
                t, s, m = self._render(doc, line_keep(di))
                lay = doc.layout
                if t and lay.parsed:
                    if di not in base_errors:
                        base_errors[di] = syntax_errors(lay.text, lay.language)
                    if syntax_errors(t, lay.language) > base_errors[di]:
                        # safety net: keep this document's functions whole rather than emit broken syntax
                        for key in [k for k in funcs if k[0] == di]:
                            del funcs[key]
                        no_fine.add(di)
                        warnings.append(f"document {di}: fine-grained elisions broke its syntax; kept functions whole")
                        t, s, m = self._render(doc, line_keep(di))
                texts.append(t)
                spans.append(s)
                markers += m
            joined = DOC_SEPARATOR.join(t for t in texts if t)
            return texts, spans, counter.count(joined), markers

        texts, spans, got, markers = render_all()
        tol = 0.03 * budget
        best = (abs(got - budget), texts, spans, got, markers)
        for _ in range(12):
            if abs(got - budget) <= tol:
                break
            if got > budget:
                need = got - budget
                if not self._trim(docs, funcs, chunk_keep, scores, need, footers) \
                        and not self._release_pins(docs, funcs, chunk_keep, need):
                    break
            else:
                # fill up to the top of the tolerance band: an item that lands a little over the budget is a
                # better fit than none when only items larger than ``budget - got`` are left
                room = budget + tol - got
                if not self._grow(docs, funcs, chunk_keep, scores, room, marker_cost, extra_cost, take):
                    if not self._grow_partial(cfg, scorer, docs, funcs, chunk_keep, scores, room, query,
                                              extra_cost, take, no_fine, plain):
                        break
            texts, spans, got, markers = render_all()
            if abs(got - budget) < best[0]:
                best = (abs(got - budget), texts, spans, got, markers)
        _, texts, spans, got, markers = best
        if got > budget * 1.05:
            warnings.append(f"the always-kept lines (signatures, returns, protected spans) need {got} tokens, over "
                            f"the budget of {budget}")
        elif got < budget * 0.95:
            warnings.append(f"reached {got} tokens of a budget of {budget}: the remaining chunks do not fit")
        details = {
            "languages": sorted({d.layout.language for d in docs}),
            "parsers": sorted({d.layout.parser for d in docs}),
            "chunks": int(sum(len(d.layout.chunks) for d in docs)),
            "kept_chunks": int(sum(int(k.sum()) for k in chunk_keep)),
            "fine_functions": len(funcs),
            "markers": markers,
            "knapsack_exact": exact_all,
            "coarse_budget": coarse_budget,
            "query_chars": len(query),
            **pins,
            **timings,
        }
        return texts, spans, warnings, details

    def _plan_many(self, cfg: Any, scorer: Any, docs: list[_Doc], items: list[tuple[int, int]], query: str,
                   scores: list[np.ndarray], plain: dict[tuple[int, int], Any]) -> dict[tuple[int, int], _Func]:
        """Fine-stage plans of function chunks: one unconditioned pass (reused from the coarse stage where it
        scored the whole chunk) and one query-conditioned pass each."""
        out: dict[tuple[int, int], _Func] = {}
        if not items:
            return out
        texts = [docs[di].layout.chunk_text(ci) for di, ci in items]
        todo = [k for k, key in enumerate(items) if key not in plain]
        fresh = dict(zip(todo, scorer.token_nll([texts[k] for k in todo]), strict=True)) if todo else {}
        unc = [fresh[k] if k in fresh else plain[key] for k, key in enumerate(items)]
        cond = scorer.token_nll(texts, prefixes=query + "\n\n") if query else unc
        for k, (di, ci) in enumerate(items):
            f = self._plan_function(cfg, docs[di], di, ci, (unc[k].starts, unc[k].nll.astype(np.float64)),
                                    (cond[k].starts, cond[k].nll.astype(np.float64)))
            if f is not None:
                f.score = float(scores[di][ci])
                out[(di, ci)] = f
        return out

    def _grow_partial(self, cfg: Any, scorer: Any, docs: list[_Doc], funcs: dict[tuple[int, int], _Func],
                      chunk_keep: list[np.ndarray], scores: list[np.ndarray], room: float, query: str,
                      extra_cost: Any, take: Any, no_fine: set[int], plain: dict[tuple[int, int], Any]) -> bool:
        """No whole chunk fits: add the best elided function in part (its signature, returns, best blocks)."""
        order = sorted(((float(scores[di][ci]), di, int(ci)) for di, d in enumerate(docs)
                        for ci in np.flatnonzero(d.scoreable & ~chunk_keep[di])
                        if d.layout.chunks[ci].kind == "function" and d.layout.chunks[ci].body is not None
                        and di not in no_fine),
                       key=lambda t: -t[0])
        for _s, di, ci in order[:8]:
            key = (di, ci)
            f = funcs.get(key) or self._plan_many(cfg, scorer, docs, [key], query, scores, plain).get(key)
            if f is None:
                continue
            overhead = extra_cost(di, ci) - docs[di].chunk_cost[ci]  # headers, marker, separator
            if f.forced_cost + overhead > room:
                continue
            self._fine_select(f, room - overhead, cfg.dp_max_cells)
            funcs[key] = f
            take(di, ci)
            return True
        return False

    @staticmethod
    def _trim(docs: list[_Doc], funcs: dict[tuple[int, int], _Func], chunk_keep: list[np.ndarray],
              scores: list[np.ndarray], need: float, footers: list[dict[int, int]]) -> bool:
        """Drop the least valuable kept blocks (then whole chunks) worth about ``need`` tokens. Pinned tail and
        import statements are released (earliest first) only after every other item of about the right size."""
        cands: list[tuple[float, float, Any]] = []
        for f in funcs.values():
            if not chunk_keep[f.doc][f.chunk]:
                continue
            for k in np.flatnonzero(f.pin_nodes).tolist():
                cands.append((2.0, float(f.nodes[k].first), ("pin", f, k, f.node_cost[k])))
            for k in f.extra:
                cands.append((-1.0, f.node_gain[k] / max(f.node_cost[k], 1.0), ("stmt", f, k, f.node_cost[k])))
            for b in f.selected:
                dens = f.block_value[b] / max(f.block_cost[b], 1.0)
                cands.append((0.0, dens, ("block", f, b, f.block_cost[b])))
        for di, doc in enumerate(docs):
            for ci in np.flatnonzero(chunk_keep[di]):
                c = doc.layout.chunks[ci]
                if c.kind not in ("function", "code") or doc.kept[c.first : c.last + 1].any():
                    continue
                cands.append((1.0, float(scores[di][ci]), ("chunk", di, int(ci), float(doc.chunk_cost[ci]))))
        if not cands:
            return False
        cands.sort(key=lambda t: (t[0], t[1]))
        removed = 0.0
        # least valuable first; an item much larger than what is left to remove waits for a second pass
        is_small = [c[2][-1] <= need * 1.5 + 2 for c in cands]
        ordered = [c for c, sm in zip(cands, is_small, strict=True) if sm]
        ordered += [c for c, sm in zip(cands, is_small, strict=True) if not sm]
        for _tier, _v, item in ordered:
            if removed >= need:
                break
            if item[0] == "stmt" and item[2] not in item[1].extra or item[0] == "block" and item[2] not in item[1].selected:
                continue
            if item[0] == "chunk" and not chunk_keep[item[1]][item[2]]:
                continue
            if item[0] == "pin":
                _, f, k, _cost = item
                if not f.pin_nodes[k]:
                    continue
                before = f.forced_cost
                f.release_pin(k)
                docs[f.doc].pinned[f.own[k]] = False
                removed += max(0.0, before - f.forced_cost)
            elif item[0] == "stmt":
                _, f, k, cost = item
                f.extra.discard(k)
                removed += cost
            elif item[0] == "block":
                _, f, b, cost = item
                f.selected.discard(b)
                removed += cost
            else:
                _, di, ci, cost = item
                chunk_keep[di][ci] = False
                removed += cost
                # a container whose members are all gone goes too
                for h in docs[di].layout.ancestors(ci):
                    members = [c.index for c in docs[di].layout.chunks if c.parent == h and c.kind != "footer"]
                    if not any(chunk_keep[di][m] for m in members):
                        chunk_keep[di][h] = False
                        if h in footers[di]:
                            chunk_keep[di][footers[di][h]] = False
        return removed > 0

    @staticmethod
    def _release_pins(docs: list[_Doc], funcs: dict[tuple[int, int], _Func], chunk_keep: list[np.ndarray],
                      need: float) -> bool:
        """Over budget with nothing left to trim: stop pinning tail and import lines, earliest first, until about
        ``need`` tokens are freed (the caller's protected lines stay)."""
        freed = 0.0
        for di, doc in enumerate(docs):
            if doc.pinned.shape != doc.protected.shape or not doc.pinned.any():
                continue
            lay = doc.layout
            for c in lay.chunks:
                if freed >= need:
                    return True
                if not doc.pinned[c.first : c.last + 1].any():
                    continue
                f = funcs.get((di, c.index))
                if f is not None:
                    for k in sorted(np.flatnonzero(f.pin_nodes).tolist(), key=lambda j: f.nodes[j].first):
                        if freed >= need:
                            break
                        before = f.forced_cost
                        f.release_pin(k)
                        doc.pinned[f.own[k]] = False
                        freed += max(0.0, before - f.forced_cost)
                    if f.pin_nodes.any():
                        continue
                doc.pinned[c.first : c.last + 1] = False
                if f is None and chunk_keep[di][c.index] and c.kind in ("function", "code") \
                        and not doc.protected[c.first : c.last + 1].any():
                    chunk_keep[di][c.index] = False
                    freed += float(doc.chunk_cost[c.index])
        return freed > 0

    @staticmethod
    def _grow(docs: list[_Doc], funcs: dict[tuple[int, int], _Func], chunk_keep: list[np.ndarray],
              scores: list[np.ndarray], room: float, marker_cost: float, extra_cost: Any, take: Any) -> bool:
        """Add the most valuable elided chunks (then blocks) that fit in about ``room`` tokens."""
        added = 0.0
        order = sorted(((float(scores[di][ci]), di, int(ci)) for di, d in enumerate(docs)
                        for ci in np.flatnonzero(d.scoreable & ~chunk_keep[di])), key=lambda t: -t[0])
        for _s, di, ci in order:
            c = extra_cost(di, ci)
            if added + c <= room:
                take(di, ci)
                added += c
        blocks = []
        for f in funcs.values():
            if not chunk_keep[f.doc][f.chunk]:
                continue
            for b in range(len(f.blocks)):
                if b not in f.selected:
                    blocks.append((f.block_value[b] / max(f.block_cost[b], 1.0), f, b))
        blocks.sort(key=lambda t: -t[0])
        for _d, f, b in blocks:
            c = f.block_cost[b]
            if added + c <= room:
                f.selected.add(b)
                added += c
        if added > 0:
            return True
        # single statements (with the headers around them) of kept functions
        stmts = []
        for f in funcs.values():
            if not chunk_keep[f.doc][f.chunk]:
                continue
            kept = f.kept_nodes()
            for k in np.flatnonzero(~kept):
                if f.nodes[k].children:  # a header alone is dropped again (kept_nodes); its statements bring it
                    continue
                c = f.node_cost[k]
                p = f.parent[k]
                while not kept[p]:
                    c += f.node_cost[p]
                    p = f.parent[p]
                stmts.append((f.node_gain[k] / max(f.node_cost[k], 1.0), c, f, int(k)))
        stmts.sort(key=lambda t: -t[0])
        for _d, c, f, k in stmts:
            if added + c <= room and not f.kept_nodes()[k]:
                f.extra.add(k)
                added += c
        return added > 0
