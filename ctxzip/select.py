"""Keep the best-scoring units within a token budget, measured with the target LLM's tokenizer.

The selector works on *costs* (each unit's own token count), then measures the rendered output with the real
tokenizer and corrects the budget until the result is within the tolerance (default ±3%, inside the ±5%
contract) or no further change is possible. Forced (protected) units are always kept; if they alone exceed the
budget, the result is over budget and a warning says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .tokens import TokenCounter
from .units import Units

__all__ = ["Selection", "select_to_budget", "DOC_SEPARATOR", "render_documents"]

DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Selection:
    keep: list[np.ndarray]
    texts: list[str]
    spans: list[list[tuple[int, int]]]
    tokens: int
    warnings: tuple[str, ...] = ()


def render_documents(docs: Sequence[Units], keep: Sequence[np.ndarray]) -> tuple[list[str], list[list]]:
    texts, spans = [], []
    for u, k in zip(docs, keep):
        t, s = u.render(k)
        texts.append(t)
        spans.append(s)
    return texts, spans


def _joined(texts: Sequence[str]) -> str:
    return DOC_SEPARATOR.join(t for t in texts if t)


def _take(order: np.ndarray, costs: np.ndarray, room: float, fill: int = 4000) -> np.ndarray:
    """Indices (into ``order``'s domain) of the best units that fit in ``room``.

    The prefix of ``order`` that fits is taken; then up to ``fill`` further candidates are scanned and taken when
    they still fit (so one expensive unit does not stop the selection early).
    """
    csum = np.cumsum(costs[order])
    n = int(np.searchsorted(csum, room, side="right"))
    taken = [order[:n]]
    left = room - (float(csum[n - 1]) if n else 0.0)
    extra = []
    if left >= 1:
        for i in order[n : n + fill].tolist():
            c = costs[i]
            if c <= left:
                extra.append(i)
                left -= c
                if left < 1:
                    break
    if extra:
        taken.append(np.array(extra, dtype=order.dtype))
    return np.concatenate(taken) if len(taken) > 1 else taken[0]


def _greedy(
    docs: Sequence[Units],
    scores: Sequence[np.ndarray],
    target: float,
    doc_targets: Sequence[float] | None,
) -> list[np.ndarray]:
    keeps = [u.forced.copy() for u in docs]
    if doc_targets is None:
        # one global ranking
        all_scores = []
        all_costs = []
        owners = []
        for d, (u, s) in enumerate(zip(docs, scores)):
            sel = u.selectable & ~u.forced
            idx = np.flatnonzero(sel)
            all_scores.append(np.asarray(s, dtype=np.float64)[idx])
            all_costs.append(u.costs[idx])
            owners.append(np.stack([np.full(idx.size, d), idx]))
        if not all_scores:
            return keeps
        sc = np.concatenate(all_scores)
        co = np.concatenate(all_costs)
        ow = np.concatenate(owners, axis=1) if owners else np.zeros((2, 0), dtype=np.int64)
        forced_cost = sum(int(u.costs[u.forced].sum()) for u in docs)
        room = target - forced_cost
        if room <= 0 or sc.size == 0:
            return keeps
        sc = np.where(np.isfinite(sc), sc, -np.inf)
        order = np.argsort(-sc, kind="stable")
        take = _take(order, co, room)
        for d, i in zip(ow[0, take].tolist(), ow[1, take].tolist()):
            keeps[d][i] = True
        return keeps
    for d, (u, s) in enumerate(zip(docs, scores)):
        sel = np.flatnonzero(u.selectable & ~u.forced)
        room = doc_targets[d] - int(u.costs[u.forced].sum())
        if room <= 0 or sel.size == 0:
            continue
        sc = np.asarray(s, dtype=np.float64)[sel]
        sc = np.where(np.isfinite(sc), sc, -np.inf)
        order = np.argsort(-sc, kind="stable")
        take = sel[_take(order, u.costs[sel], room)]
        keeps[d][take] = True
    return keeps


def select_to_budget(
    docs: Sequence[Units],
    scores: Sequence[np.ndarray],
    budget: int,
    counter: TokenCounter,
    *,
    doc_budgets: Sequence[int] | None = None,
    tolerance: float = 0.03,
    max_rounds: int = 8,
) -> Selection:
    """Choose units to keep so that the rendered, joined documents have about ``budget`` tokens.

    ``scores``: one array per document, one score per unit (higher = keep; ``-inf`` = never by choice).
    ``doc_budgets``: optional per-document budgets (they are scaled together to meet the global one).
    """
    if len(docs) != len(scores):
        raise ValueError("one score array per document is required")
    warnings: list[str] = []
    forced_keep = [u.close(u.forced.copy()) for u in docs]
    f_texts, _ = render_documents(docs, forced_keep)
    forced_tokens = counter.count(_joined(f_texts))
    if forced_tokens > budget:
        warnings.append(
            f"protected spans alone need {forced_tokens} tokens, over the budget of {budget}; "
            "kept only them (relax the protection rules or raise the budget)"
        )
        texts, spans = render_documents(docs, forced_keep)
        return Selection(forced_keep, texts, spans, forced_tokens, tuple(warnings))

    target = float(budget)
    best: tuple[float, list[np.ndarray], list[str], list, int] | None = None
    lo, hi = 0.0, None  # bracket on target for bisection once we overshoot and undershoot
    for _ in range(max_rounds):
        if doc_budgets is not None:
            total = max(1, sum(doc_budgets))
            doc_targets = [b * target / total for b in doc_budgets]
            raw = _greedy(docs, scores, target, doc_targets)
        else:
            raw = _greedy(docs, scores, target, None)
        keep = [u.close(k) for u, k in zip(docs, raw)]
        texts, spans = render_documents(docs, keep)
        tokens = counter.count(_joined(texts))
        err = abs(tokens - budget)
        if best is None or err < best[0]:
            best = (err, keep, texts, spans, tokens)
        if err <= tolerance * budget:
            break
        if tokens > budget:
            hi = target
        else:
            lo = target
        if hi is None:
            new = target * budget / max(tokens, 1)
        else:
            new = (lo + hi) / 2 if lo > 0 else target * budget / max(tokens, 1)
        if abs(new - target) < 0.5:
            break
        target = new
    if best is None:
        raise RuntimeError("selection produced no candidate")
    _, keep, texts, spans, tokens = best
    return Selection(keep, texts, spans, tokens, tuple(warnings))
