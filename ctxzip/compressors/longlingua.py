"""``longlingua``: LongLLMLingua (Jiang et al., ACL 2024), question-aware compression for long contexts.

1. **Coarse, question-aware ranking** of the context's pieces (documents; documents longer than
   ``2 * chunk_tokens`` are cut into chunks of whole sentences of ``min(chunk_tokens, budget / 2)`` tokens, so
   that one long document can be ranked too and its best chunk always fits whole).
   ``rank_method``:

   * ``"embed"`` (default): cosine similarity of MiniLM sentence embeddings (``rank_model``) of the question and
     each piece. Measured on ``nq20`` this ranks the gold passage far better than a 135M LM's conditional
     perplexity (see ``docs/benchmarks/lingua.md``), and costs a fraction of an LM pass.
   * ``"lm"``: the paper's: the mean NLL of ``question + restrict`` (``"We can get the answer to this question in
     the given documents."``) *after* each piece; lower ranks higher. Its forward pass also yields each piece's
     own token NLLs, which the fine stage reuses as the unconditioned half of the contrastive score.
   * ``"bm25"``: Okapi BM25 of the question's words (no model).

   Pieces are kept in rank order until their target-LLM tokens reach the budget plus ``context_budget``
   (default 0: measured on ``nq20``, LLMLingua's ``+100`` kept the same answers at 0.25 and fewer at 0.05, at
   half the speed, because a 135M model's fine-grained choices are weaker than the ranking).
2. **Dynamic compression ratio**: kept piece ``k`` (of ``n``, by rank) gets the ratio ``τ + δτ·(1 − 2k/(n−1))``,
   clipped to [0, 1], with ``τ = budget / kept tokens`` and ``δτ = dynamic_ratio`` (0.3).
3. **Fine, question-aware contrastive perplexity**: each token's score is its NLL without the question minus
   its NLL with the question as prefix (``condition_compare=True``; with ``False`` the conditioned NLL alone),
   mapped to words. ``mode="single"`` scores all kept pieces in one batched pass; ``mode="iterative"`` is the
   paper's: pieces of ``iterative_size`` tokens, each conditioned on the already-compressed prefix in both
   streams (sequential, slower; see the benchmark page for the measured difference).
   ctxzip's addition, ``sentence_share`` (default 0.5): inside each kept piece, the sentences most relevant to
   the question (the rank method's relevance: MiniLM cosine for ``embed``, BM25 otherwise) are kept whole up to
   that share of the piece's quota, and the contrastive scores spend the rest. A 135M scorer otherwise drops
   single words of the very sentence that answers the question (measured on ``nq20`` at rate 0.05: answer recall
   0.70 without, 0.80 with; see ``docs/benchmarks/lingua.md``). ``sentence_share=0`` is the paper's stage alone.
4. **Reorder** the kept documents: ``original``, ``sort`` (by rank) or ``two_stage`` (best at both ends).
5. :func:`recover` maps spans of an LLM response that quote the compressed prompt back to the original text.

The question and the instruction are never compressed (they are not part of the documents).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import threading
from collections import defaultdict
from typing import Any

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError, InputError
from ..registry import register
from ..select import DOC_SEPARATOR, Selection, select_to_budget
from ..tokens import TokenCounter, get_counter
from ..types import CompressionRequest, CompressionResult
from ..units import Units
from .lingua import (
    Segment,
    check_common,
    dynamic_ratios,
    encode_segments,
    fill_quotas,
    iterative_scores,
    quota_scores,
    reduce_to_units,
    shared_scorer,
    split_segments,
    take_until,
)

__all__ = ["LongLinguaCompressor", "recover", "bm25_scores", "RANK_METHODS", "REORDERS", "RESTRICT"]

RANK_METHODS = ("embed", "lm", "bm25")
REORDERS = ("original", "sort", "two_stage")
RESTRICT = "We can get the answer to this question in the given documents."
_WORD = re.compile(r"\w+", re.UNICODE)


def bm25_scores(pieces: list[str], query: str, *, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 of ``query`` against each piece (lower-cased ``\\w+`` words; idf ``log(1 + (N-df+.5)/(df+.5))``)."""
    docs = [_WORD.findall(p.lower()) for p in pieces]
    terms = list(dict.fromkeys(_WORD.findall(query.lower())))
    n = len(docs)
    if n == 0 or not terms:
        return np.zeros(n)
    lengths = np.array([len(d) for d in docs], dtype=np.float64)
    avg = max(lengths.mean(), 1e-9)
    tf = np.zeros((n, len(terms)))
    index = {t: j for j, t in enumerate(terms)}
    for i, d in enumerate(docs):
        for w in d:
            j = index.get(w)
            if j is not None:
                tf[i, j] += 1
    df = (tf > 0).sum(axis=0)
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    denom = tf + k1 * (1 - b + b * lengths[:, None] / avg)
    return (idf * tf * (k1 + 1) / denom).sum(axis=1)


def _reorder(order_by_rank: list[int], how: str, n_docs: int) -> list[int]:
    """Document output order from documents sorted by rank (documents without a kept piece follow, in order)."""
    if how == "original":
        return list(range(n_docs))
    ranked = list(dict.fromkeys(order_by_rank))
    rest = [d for d in range(n_docs) if d not in set(ranked)]
    if how == "two_stage":
        ranked = ranked[0::2] + ranked[1::2][::-1]
    return ranked + rest


@register("longlingua")
class LongLinguaCompressor(BaseCompressor):
    """LongLLMLingua: question-aware coarse ranking, dynamic ratios, contrastive perplexity, reordering."""

    version = "1"
    question_aware = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: str = "smollm2-135m"
        dtype: str = "float32"
        quantize: str | None = None
        device: str | None = None
        rank_method: str = "embed"
        rank_model: str = "minilm-l6"
        mode: str = "single"
        iterative_size: int = 200
        context_budget: float = 0.0
        context_filter: bool = True
        dynamic_ratio: float = 0.3
        reorder: str = "sort"
        condition_compare: bool = True
        restrict: str = RESTRICT
        chunk_tokens: int = 160
        word_score: str = "max"
        sentence_share: float = 0.5
        window: int | None = None
        batch_size: int = 16

        def __post_init__(self) -> None:
            check_common(self, "longlingua")
            if self.rank_method not in RANK_METHODS:
                raise ConfigError(
                    f"longlingua: rank_method must be one of {', '.join(RANK_METHODS)}, got {self.rank_method!r}"
                )
            if self.reorder not in REORDERS:
                raise ConfigError(f"longlingua: reorder must be one of {', '.join(REORDERS)}, got {self.reorder!r}")
            if (
                isinstance(self.dynamic_ratio, bool)
                or not isinstance(self.dynamic_ratio, (int, float))
                or not 0.0 <= self.dynamic_ratio <= 1.0
            ):
                raise ConfigError(f"longlingua: dynamic_ratio (δτ) must be in [0, 1], got {self.dynamic_ratio!r}")
            if not isinstance(self.restrict, str):
                raise ConfigError("longlingua: restrict must be a string (empty for none)")
            if (
                isinstance(self.sentence_share, bool)
                or not isinstance(self.sentence_share, (int, float))
                or not 0.0 <= self.sentence_share <= 1.0
            ):
                raise ConfigError(
                    f"longlingua: sentence_share must be in [0, 1] (0 = the paper's token-level stage alone), "
                    f"got {self.sentence_share!r}"
                )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._local = threading.local()

    def _scorer(self, cfg: Any) -> Any:
        return shared_scorer(cfg.model, cfg.dtype, cfg.quantize, cfg.device, cfg.window, cfg.batch_size)

    def load(self) -> None:
        self._scorer(self.config)
        if self.config.rank_method == "embed":
            from ..models import load_encoder

            load_encoder(self.config.rank_model, device=self.config.device)

    # ------------------------------------------------------------------------------------------ ranking

    def _relevance(
        self, cfg: Any, scorer: Any, pieces: list[str], toks: list, query: str
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Relevance of each piece to the query (higher = better) and, for ``lm``, each piece's own NLLs."""
        if cfg.rank_method == "embed":
            from ..models import load_encoder

            enc = load_encoder(cfg.rank_model, device=cfg.device)
            emb = np.asarray(enc.encode(pieces + [query], batch_size=32, normalize_embeddings=True,
                                        convert_to_numpy=True), dtype=np.float64)
            return emb[:-1] @ emb[-1], None
        if cfg.rank_method == "bm25":
            return bm25_scores(pieces, query), None
        suffix = scorer.ids("\n\n" + (query + " " + cfg.restrict).strip())
        scored = scorer.score_ids([t.ids + suffix for t in toks])
        own = [v[: len(t.ids)] for t, (v, _) in zip(toks, scored, strict=True)]
        rel = np.array([-_nanmean(v[len(t.ids) :]) for t, (v, _) in zip(toks, scored, strict=True)])
        return rel, own

    def _sentence_relevance(self, cfg: Any, sentences: list[str], query: str) -> np.ndarray:
        if cfg.rank_method == "embed":
            from ..models import load_encoder

            enc = load_encoder(cfg.rank_model, device=cfg.device)
            emb = np.asarray(enc.encode(sentences + [query], batch_size=32, normalize_embeddings=True,
                                        convert_to_numpy=True), dtype=np.float64)
            return emb[:-1] @ emb[-1]
        return bm25_scores(sentences, query)

    def _sentence_tiers(
        self, cfg: Any, docs: list[Units], segs: list[Segment], kept: list[int], quotas: dict[int, float],
        fine: list[np.ndarray], query: str,
    ) -> list[np.ndarray]:
        """Lift the most question-relevant whole sentences of each kept piece above its token-level scores.

        Inside kept piece ``i``, sentences are ranked by relevance to the question (the rank method's: MiniLM
        cosine for ``embed``, BM25 otherwise); the best ones whose tokens fit in ``sentence_share * quota[i]`` are
        kept whole, and the contrastive token scores spend the rest of the quota. Dropping single words inside the
        sentence that answers the question is what costs a small scorer most (see ``docs/benchmarks/lingua.md``);
        ``sentence_share=0`` is the paper's token-level stage alone.
        """
        runs: list[tuple[int, int, int, int]] = []  # (piece, doc, first unit, end unit)
        for i in kept:
            seg = segs[i]
            sent = docs[seg.doc].sentence[seg.u0 : seg.u1]
            if sent.size == 0:
                continue
            cut = np.flatnonzero(np.concatenate(([True], sent[1:] != sent[:-1])))
            ends = np.concatenate((cut[1:], [sent.size]))
            runs.extend((i, seg.doc, seg.u0 + int(a), seg.u0 + int(b)) for a, b in zip(cut, ends, strict=True))
        if len(runs) < 2:
            return fine
        texts = [docs[d].text[int(docs[d].starts[a]) : int(docs[d].ends[b - 1])] for _, d, a, b in runs]
        rel = self._sentence_relevance(cfg, texts, query)
        out = [f.copy() for f in fine]
        by_piece: dict[int, list[int]] = defaultdict(list)
        for k, r in enumerate(runs):
            by_piece[r[0]].append(k)
        for i, ks in by_piece.items():
            room = float(cfg.sentence_share) * quotas.get(i, 0.0)
            for k in sorted(ks, key=lambda k: -rel[k]):
                _, d, a, b = runs[k]
                cost = float(docs[d].costs[a:b].sum())
                if cost > room:
                    continue
                room -= cost
                f = out[d][a:b]
                out[d][a:b] = np.where(np.isfinite(f), f, 0.0) + 1e6
        return out

    # ------------------------------------------------------------------------------------------ selection

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        """Per-word contrastive scores of every document (single pass, no ranking or quotas)."""
        cfg = self.options(request)
        scorer = self._scorer(cfg)
        segs = split_segments(docs, 0)
        toks = encode_segments(scorer, docs, segs)
        query = request.question or request.instruction or ""
        fine = self._fine_single(cfg, scorer, docs, segs, toks, list(range(len(segs))), query, None)
        return [np.nan_to_num(f, nan=-1e3) for f in fine]

    def _fine_single(
        self, cfg: Any, scorer: Any, docs: list[Units], segs: list[Segment], toks: list, kept: list[int],
        query: str, own: list[np.ndarray] | None,
    ) -> list[np.ndarray]:
        bodies = [toks[i].ids for i in kept]
        if query:
            head = scorer.ids(query + "\n\n")
            if cfg.condition_compare and own is None:
                # both streams at once: ctxzip.kernels.contrastive_nll on CUDA (CausalLMScorer.contrastive_ids)
                token_scores = scorer.contrastive_ids(bodies, head)
            else:
                cond = [v for v, _ in scorer.score_ids(bodies, [head] * len(bodies))]
                token_scores = [own[i] - c for i, c in zip(kept, cond, strict=True)] if cfg.condition_compare else cond
        else:
            token_scores = [own[i] for i in kept] if own is not None else [v for v, _ in scorer.score_ids(bodies)]
        parts: list[list] = [[] for _ in docs]
        for i, sc in zip(kept, token_scores, strict=True):
            parts[segs[i].doc].append((toks[i].starts, toks[i].ends, sc))
        return [reduce_to_units(u, p, cfg.word_score) for u, p in zip(docs, parts, strict=True)]

    def select(self, request: CompressionRequest, docs: list[Units], budget: int, counter: TokenCounter) -> Selection:
        cfg = self.options(request)
        scorer = self._scorer(cfg)
        query = (request.question or request.instruction or "").strip()
        # chunks of at most half the budget, so that the best chunk always fits whole
        segs = split_segments(docs, cfg.chunk_tokens, max(32, budget // 2))
        toks = encode_segments(scorer, docs, segs)
        pieces = [docs[s.doc].text[s.start : s.end] for s in segs]
        own: list[np.ndarray] | None = None
        if query:
            rel, own = self._relevance(cfg, scorer, pieces, toks, query)
        else:  # no question: LLMLingua's question-agnostic ranking, most perplexing first
            own = [v for v, _ in scorer.score_ids([t.ids for t in toks])]
            rel = np.array([_nanmean(v) for v in own])
        rel = np.where(np.isfinite(rel), rel, -np.inf)
        rank = [int(i) for i in np.argsort(-rel, kind="stable")]
        if cfg.context_filter and len(segs) > 1:
            kept = take_until(rank, segs, budget + float(cfg.context_budget))
        else:
            kept = list(rank)
        quotas = fill_quotas(kept, segs, budget, dynamic_ratios(len(kept), float(cfg.dynamic_ratio)))
        doc_order = _reorder([segs[i].doc for i in rank], cfg.reorder, len(docs))
        position = {d: k for k, d in enumerate(doc_order)}
        if cfg.mode == "iterative":
            order = sorted(kept, key=lambda i: (position[segs[i].doc], segs[i].u0))
            ratios = {i: quotas[i] / max(segs[i].cost, 1) for i in kept}
            if query and cfg.condition_compare:
                heads, combine = [[], scorer.ids(query + "\n\n")], (lambda n: n[0] - n[1])
            elif query:
                heads, combine = [scorer.ids(query + "\n\n")], (lambda n: n[0])
            else:
                heads, combine = [[]], (lambda n: n[0])
            fine = iterative_scores(
                scorer, docs, segs, {i: toks[i] for i in kept}, order, ratios, heads, combine,
                iterative_size=cfg.iterative_size, how=cfg.word_score,
            )
        else:
            fine = self._fine_single(cfg, scorer, docs, segs, toks, kept, query, own)
        if query and cfg.sentence_share > 0:
            fine = self._sentence_tiers(cfg, docs, segs, kept, quotas, fine, query)
        scores = quota_scores(docs, segs, fine, quotas, rank)
        self._local.info = {
            "doc_order": doc_order,
            "ranking": [segs[i].doc for i in rank],
            "kept_pieces": len(kept),
            "pieces": len(segs),
            "rank_method": cfg.rank_method if query else "perplexity",
            "mode": cfg.mode,
        }
        return select_to_budget(docs, scores, budget, counter)

    def compress(self, request: CompressionRequest) -> CompressionResult:
        self._local.info = None
        result = super().compress(request)
        info = getattr(self._local, "info", None)
        self._local.info = None
        if not info:
            return result
        cfg = self.options(request)
        details = {**result.details, **{k: v for k, v in info.items() if k != "doc_order"}}
        if cfg.reorder == "original":
            return dataclasses.replace(result, details=details)
        order = info["doc_order"]
        text = DOC_SEPARATOR.join(result.documents[d].text for d in order if result.documents[d].text)
        details["order"] = order
        return dataclasses.replace(
            result, text=text, compressed_tokens=get_counter(request.target_model).count(text), details=details
        )

    # ------------------------------------------------------------------------------------------ recover

    def recover(self, original: str, compressed: str, response: str) -> str:
        """See :func:`recover`."""
        return recover(original, compressed, response)


def _nanmean(v: np.ndarray) -> float:
    finite = v[np.isfinite(v)]
    return float(finite.mean()) if finite.size else math.nan


def recover(original: str, compressed: str, response: str, *, max_gap: int = 10) -> str:
    """Restore the original wording of the parts of ``response`` that quote the compressed prompt.

    LongLLMLingua's subsequence recovery, on words: every maximal run of response words that occurs verbatim in
    ``compressed`` is located in ``original`` as the shortest window containing the run's words in order (with
    gaps of at most ``max_gap`` words, most words matched first) and replaced by that window's original text.
    Words not found in the compressed prompt are left as they are.
    """
    for name, value in (("original", original), ("compressed", compressed), ("response", response)):
        if not isinstance(value, str):
            raise InputError(f"recover(): {name} must be a string, got {type(value).__name__}")
    words = response.split(" ")
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", original)]
    orig_words = [original[a:b] for a, b in spans]
    where: dict[str, list[int]] = defaultdict(list)
    for i, w in enumerate(orig_words):
        where[w].append(i)

    def locate(run: list[str]) -> str | None:
        best: tuple[int, int, int] | None = None  # (matched, -width, start) maximised
        best_span = None
        for first in where.get(run[0], []):
            last, matched = first, 1
            for w in run[1:]:
                cand = where.get(w, [])
                k = bisect.bisect_right(cand, last)
                if k < len(cand) and cand[k] - last <= max_gap:
                    last = cand[k]
                    matched += 1
            key = (matched, -(last - first))
            if best is None or key > best[:2]:
                best = (matched, -(last - first), first)
                best_span = (first, last)
        if best_span is None or best is None or best[0] < max(1, len(run) // 2):
            return None
        return original[spans[best_span[0]][0] : spans[best_span[1]][1]]

    out: list[str] = []
    i = 0
    while i < len(words):
        if not words[i] or words[i] not in compressed:
            out.append(words[i])
            i += 1
            continue
        j = i
        while j + 1 < len(words) and " ".join(words[i : j + 2]) in compressed:
            j += 1
        run = words[i : j + 1]
        found = locate(run)
        out.append(found if found is not None else " ".join(run))
        i = j + 1
    return " ".join(out)
