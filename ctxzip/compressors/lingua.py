"""``lingua``: LLMLingua (Jiang et al., EMNLP 2023), question-agnostic prompt compression with a small causal LM.

The procedure, in ctxzip's terms (documents are the paper's demonstrations):

1. **Budget controller, document level.** Each document's perplexity under the small LM is computed in one
   batched pass. Documents are taken from the highest perplexity down (the most informative first) until their
   target-LLM tokens reach the budget plus ``context_budget`` (LLMLingua's ``"+100"``, here a number); the rest
   are dropped. A single document skips this step.
2. **Token level.** The kept documents are compressed to the budget, each at the same ratio
   ``τ = budget / kept tokens``:

   * ``mode="iterative"`` (the paper's ITPC): the kept text is cut into segments of about ``iterative_size``
     model tokens at word boundaries; each segment is scored *conditioned on the already-compressed prefix*
     (a KV-cached :class:`~ctxzip.models.PrefixStream`), its words are ranked by NLL and the top ``τ`` share
     (in target tokens) is kept and appended to the prefix before the next segment is scored.
   * ``mode="single"``: the NLLs of step 1 are reused as they are (no conditioning on the compressed prefix):
     no further model pass, noticeably faster, slightly less coherent selections.

Scores are computed on model tokens and mapped to words (:func:`ctxzip.units.reduce_by_units`, ``word_score``
= ``max``/``mean``/``sum`` of the word's token NLLs). Each segment's quota becomes a per-word score (how deep
inside its segment's quota the word ranks), so the shared budgeted selector reproduces the per-segment
decisions while meeting the global budget exactly. The helpers here are shared with ``longlingua``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError
from ..registry import register
from ..select import DOC_SEPARATOR, Selection, select_to_budget
from ..tokens import TokenCounter
from ..types import CompressionRequest
from ..units import Units, reduce_by_units

__all__ = [
    "LinguaCompressor",
    "Segment",
    "SegTokens",
    "split_segments",
    "encode_segments",
    "quota_scores",
    "iterative_scores",
    "shared_scorer",
]

_WORD_SCORES = ("max", "mean", "sum")
_MODES = ("iterative", "single")


# ---------------------------------------------------------------------------------------------- segments


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of units ``[u0, u1)`` of document ``doc`` (characters ``[start, end)``), costing ``cost`` tokens."""

    doc: int
    u0: int
    u1: int
    start: int
    end: int
    cost: int


def split_segments(docs: Sequence[Units], chunk_tokens: int = 0, size: int | None = None) -> list[Segment]:
    """One segment per non-empty document; documents over ``2 * chunk_tokens`` target tokens are cut into chunks
    of whole sentences of about ``size`` tokens (default ``chunk_tokens``; a sentence longer than twice that is
    cut between words)."""
    out: list[Segment] = []
    size = chunk_tokens if size is None else max(1, min(size, chunk_tokens))
    for d, u in enumerate(docs):
        n = len(u)
        if n == 0:
            continue
        costs = u.costs
        total = int(costs.sum())
        if chunk_tokens <= 0 or total <= 2 * chunk_tokens:
            out.append(Segment(d, 0, n, int(u.starts[0]), int(u.ends[-1]), total))
            continue
        bounds = [0]
        acc = 0
        sent = u.sentence
        for i in range(n):
            acc += int(costs[i])
            at_sentence_end = i + 1 == n or sent[i + 1] != sent[i]
            if (acc >= size and at_sentence_end) or acc >= 2 * size:
                bounds.append(i + 1)
                acc = 0
        if bounds[-1] != n:
            if acc < size // 2 and len(bounds) > 1:
                bounds[-1] = n  # fold a short tail into the previous chunk
            else:
                bounds.append(n)
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            out.append(Segment(d, a, b, int(u.starts[a]), int(u.ends[b - 1]), int(costs[a:b].sum())))
    return out


@dataclasses.dataclass(frozen=True)
class SegTokens:
    """Model tokens of one segment: ids and character offsets in *document* coordinates."""

    ids: list[int]
    starts: np.ndarray
    ends: np.ndarray


def encode_segments(scorer: Any, docs: Sequence[Units], segs: Sequence[Segment]) -> list[SegTokens]:
    texts = [docs[s.doc].text[s.start : s.end] for s in segs]
    out = []
    for s, (ids, starts, ends) in zip(segs, scorer.encode(texts), strict=True):
        out.append(SegTokens(ids, starts + s.start, ends + s.start))
    return out


def token_units(units: Units, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Unit index of each token (the unit holding the token's last character; -1 if none)."""
    n = len(units)
    if n == 0 or starts.size == 0:
        return np.full(starts.shape[0], -1, dtype=np.int64)
    anchor = np.maximum(ends - 1, starts)
    unit = np.searchsorted(units.starts, anchor, side="right") - 1
    ok = (unit >= 0) & (anchor < units.ends[np.clip(unit, 0, n - 1)])
    return np.where(ok, unit, -1)


def reduce_to_units(
    units: Units, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], how: str
) -> np.ndarray:
    """Per-unit scores from token scores of several segments (``(starts, ends, scores)`` in doc coordinates)."""
    if not parts:
        return np.full(len(units), np.nan)
    starts = np.concatenate([p[0] for p in parts])
    ends = np.concatenate([p[1] for p in parts])
    scores = np.concatenate([p[2] for p in parts])
    return reduce_by_units(units, starts, ends, scores, how=how)


# ---------------------------------------------------------------------------------------------- quotas


def _order_in_segment(fine: np.ndarray) -> np.ndarray:
    """Indices by descending score; words without a score (no model token) last, in text order."""
    key = np.where(np.isfinite(fine), fine, -np.inf)
    return np.argsort(-key, kind="stable")


def quota_scores(
    docs: Sequence[Units],
    segs: Sequence[Segment],
    fine: Sequence[np.ndarray],
    quotas: dict[int, float],
    rank: Sequence[int],
) -> list[np.ndarray]:
    """Turn per-segment quotas into per-unit scores for the global budgeted selector.

    Inside a kept segment (``quotas[i]`` target tokens), units ranked by their fine score get
    ``(quota - tokens ranked above them) / quota``: positive inside the quota, so a global threshold near 0 keeps
    each segment's quota, and moving the threshold scales every quota by the same factor. Units of dropped
    segments score far below (best-ranked segments first, text order inside), reached only if the budget
    cannot be met otherwise.
    """
    out = [np.full(len(u), -np.inf) for u in docs]
    position = {s: r for r, s in enumerate(rank)}
    for i, seg in enumerate(segs):
        u = docs[seg.doc]
        sl = slice(seg.u0, seg.u1)
        n = seg.u1 - seg.u0
        if i in quotas:
            sel = u.selectable[sl] & ~u.forced[sl]
            costs = np.where(sel, u.costs[sl], 0).astype(np.float64)
            order = _order_in_segment(np.where(sel, fine[seg.doc][sl], -np.inf))
            above = np.empty(n)
            above[order] = np.concatenate(([0.0], np.cumsum(costs[order])[:-1]))
            out[seg.doc][sl] = (quotas[i] - above) / max(quotas[i], 1.0)
        else:
            r = position.get(i, len(rank))
            out[seg.doc][sl] = -1e6 - 1e3 * r - np.arange(n) / max(n, 1)
    return out


def dynamic_ratios(n: int, delta: float) -> list[float]:
    """LongLLMLingua's rank-dependent offsets: ``+delta`` for the best of ``n`` down to ``-delta`` for the worst."""
    if n <= 1 or delta == 0:
        return [0.0] * n
    return [delta - 2.0 * delta * k / (n - 1) for k in range(n)]


def fill_quotas(kept: Sequence[int], segs: Sequence[Segment], budget: float, offsets: Sequence[float]) -> dict[int, float]:
    """Quota (target tokens) of each kept segment: ``clip(τ + offset, 0, 1) * cost`` with ``τ = budget/kept``."""
    total = sum(segs[i].cost for i in kept)
    tau = budget / max(total, 1)
    return {i: float(np.clip(tau + off, 0.0, 1.0)) * segs[i].cost for i, off in zip(kept, offsets, strict=True)}


def take_until(order: Sequence[int], segs: Sequence[Segment], limit: float) -> list[int]:
    """Segments in ``order`` until their cost reaches ``limit`` (the one crossing it included; at least one)."""
    kept, acc = [], 0
    for i in order:
        kept.append(i)
        acc += segs[i].cost
        if acc >= limit:
            break
    return kept


# ---------------------------------------------------------------------------------------------- iterative


def iterative_scores(
    scorer: Any,
    docs: Sequence[Units],
    segs: Sequence[Segment],
    toks: dict[int, SegTokens],
    order: Sequence[int],
    ratios: dict[int, float],
    heads: Sequence[Sequence[int]],
    combine: Callable[[list[np.ndarray]], np.ndarray],
    *,
    iterative_size: int,
    how: str,
) -> list[np.ndarray]:
    """LLMLingua's iterative token-level pass over the segments ``order`` (in that order).

    One :class:`PrefixStream` per head (``[[]]`` for plain NLL, ``[[], question]`` for the contrastive score);
    ``combine`` turns their per-token NLLs into a token score. Every piece of about ``iterative_size`` model
    tokens is scored given the compressed prefix, its top ``ratios[segment]`` share of words (in target tokens)
    is committed to every stream, and the word scores are returned (``nan`` where unscored).
    """
    streams = [scorer.stream(h) for h in heads]
    sep = scorer.ids(DOC_SEPARATOR)
    fine = [np.full(len(u), np.nan) for u in docs]
    first = True
    for i in order:
        seg, tk = segs[i], toks[i]
        u = docs[seg.doc]
        if not tk.ids:
            continue
        if not first:
            for st in streams:
                st.commit(sep)
        first = False
        tu = token_units(u, tk.starts, tk.ends)
        ratio = ratios[i]
        # pieces end at word boundaries: cut where the unit changes after >= iterative_size tokens
        cuts = [0]
        for t in range(1, len(tk.ids)):
            if t - cuts[-1] >= iterative_size and tu[t] != tu[t - 1]:
                cuts.append(t)
            elif t - cuts[-1] >= 2 * iterative_size:
                cuts.append(t)
        cuts.append(len(tk.ids))
        for a, b in zip(cuts[:-1], cuts[1:], strict=False):
            ids = tk.ids[a:b]
            nlls = [st.score(ids)[0] for st in streams]
            score = combine(nlls)
            word = reduce_by_units(u, tk.starts[a:b], tk.ends[a:b], score, how=how)
            units_here = np.unique(tu[a:b][tu[a:b] >= 0])
            fine[seg.doc][units_here] = word[units_here]
            # keep the top `ratio` share of this piece's words (forced words always), commit their tokens
            cost = u.costs[units_here].astype(np.float64)
            forced = u.forced[units_here]
            order_w = _order_in_segment(np.where(forced, np.inf, word[units_here]))
            room = ratio * cost.sum()
            csum = np.cumsum(cost[order_w])
            n_keep = int(np.searchsorted(csum, room, side="right"))
            keep_units = set(units_here[order_w[:n_keep]].tolist()) | set(units_here[forced].tolist())
            kept_ids = [tid for tid, un in zip(ids, tu[a:b].tolist(), strict=True) if un in keep_units]
            for st in streams:
                st.commit(kept_ids)
    return fine


# ---------------------------------------------------------------------------------------------- models


def shared_scorer(model: str, dtype: str, quantize: str | None, device: str | None, window: int | None,
                  batch_size: int) -> Any:
    """The process-wide :class:`~ctxzip.models.CausalLMScorer` for these settings (loaded once)."""
    from ..models import CausalLMScorer, load_causal_lm, shared

    lm = load_causal_lm(model, dtype=dtype, quantize=quantize, device=device)
    key = ("lingua-scorer", lm.fingerprint, lm.device, window, batch_size)
    return shared(key, lambda: CausalLMScorer(lm, window=window, batch_size=batch_size))


def check_common(cfg: Any, who: str) -> None:
    """Validation shared by the ``lingua`` and ``longlingua`` configs."""
    if cfg.mode not in _MODES:
        raise ConfigError(f"{who}: mode must be 'iterative' (the paper's) or 'single' (faster), got {cfg.mode!r}")
    if cfg.word_score not in _WORD_SCORES:
        raise ConfigError(f"{who}: word_score must be one of {', '.join(_WORD_SCORES)}, got {cfg.word_score!r}")
    if not isinstance(cfg.iterative_size, int) or cfg.iterative_size < 16:
        raise ConfigError(f"{who}: iterative_size must be an integer >= 16 (model tokens), got {cfg.iterative_size!r}")
    if isinstance(cfg.context_budget, bool) or not isinstance(cfg.context_budget, (int, float)):
        raise ConfigError(
            f"{who}: context_budget must be a number of tokens (e.g. 100 for LLMLingua's '+100'), got "
            f"{cfg.context_budget!r}"
        )
    if not isinstance(cfg.chunk_tokens, int) or cfg.chunk_tokens < 0:
        raise ConfigError(f"{who}: chunk_tokens must be an integer >= 0 (0 = whole documents), got {cfg.chunk_tokens!r}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"{who}: batch_size must be a positive integer, got {cfg.batch_size!r}")
    if not isinstance(cfg.model, str) or not cfg.model:
        raise ConfigError(f"{who}: model must be a model spec such as 'smollm2-135m', got {cfg.model!r}")


# ---------------------------------------------------------------------------------------------- compressor


@register("lingua")
class LinguaCompressor(BaseCompressor):
    """LLMLingua: perplexity budget controller over documents, then iterative token-level compression."""

    version = "1"
    question_aware = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: str = "smollm2-135m"
        dtype: str = "float32"
        quantize: str | None = None
        device: str | None = None
        mode: str = "iterative"
        iterative_size: int = 200
        context_budget: float = 100.0
        context_filter: bool = True
        chunk_tokens: int = 0
        word_score: str = "max"
        window: int | None = None
        batch_size: int = 16

        def __post_init__(self) -> None:
            check_common(self, "lingua")

    def _scorer(self, cfg: Any) -> Any:
        return shared_scorer(cfg.model, cfg.dtype, cfg.quantize, cfg.device, cfg.window, cfg.batch_size)

    def load(self) -> None:
        self._scorer(self.config)

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        """Plain per-word NLL scores (single pass, no budget controller): the fine score of ``mode='single'``."""
        cfg = self.options(request)
        scorer = self._scorer(cfg)
        segs = split_segments(docs, 0)
        toks = encode_segments(scorer, docs, segs)
        nll = scorer.score_ids([t.ids for t in toks])
        parts: list[list] = [[] for _ in docs]
        for s, t, (v, _) in zip(segs, toks, nll, strict=True):
            parts[s.doc].append((t.starts, t.ends, v))
        return [
            np.nan_to_num(reduce_to_units(u, p, cfg.word_score), nan=-1e3) for u, p in zip(docs, parts, strict=True)
        ]

    def select(self, request: CompressionRequest, docs: list[Units], budget: int, counter: TokenCounter) -> Selection:
        cfg = self.options(request)
        scorer = self._scorer(cfg)
        segs = split_segments(docs, cfg.chunk_tokens)
        toks = encode_segments(scorer, docs, segs)
        # one batched pass: every segment's own NLL (the budget controller's perplexity, and single mode's score)
        nll = [v for v, _ in scorer.score_ids([t.ids for t in toks])]
        ppl = [float(np.nanmean(v)) if np.isfinite(v).any() else -np.inf for v in nll]
        rank = sorted(range(len(segs)), key=lambda i: -ppl[i])
        if cfg.context_filter and len(segs) > 1:
            kept = take_until(rank, segs, budget + float(cfg.context_budget))
        else:
            kept = list(rank)
        quotas = fill_quotas(kept, segs, budget, [0.0] * len(kept))
        if cfg.mode == "iterative":
            order = sorted(kept)  # LLMLingua keeps the original order
            ratios = {i: quotas[i] / max(segs[i].cost, 1) for i in kept}
            fine = iterative_scores(
                scorer, docs, segs, {i: toks[i] for i in kept}, order, ratios, [[]], lambda n: n[0],
                iterative_size=cfg.iterative_size, how=cfg.word_score,
            )
        else:
            parts: list[list] = [[] for _ in docs]
            for i in kept:
                parts[segs[i].doc].append((toks[i].starts, toks[i].ends, nll[i]))
            fine = [reduce_to_units(u, p, cfg.word_score) for u, p in zip(docs, parts, strict=True)]
        scores = quota_scores(docs, segs, fine, quotas, rank)
        return select_to_budget(docs, scores, budget, counter)
