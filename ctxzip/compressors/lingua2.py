"""``lingua2``: LLMLingua-2 (Pan et al., 2024): a bidirectional encoder labels every word keep or drop.

Procedure, per call:

1. Each document is tokenised once by the classifier's fast tokenizer (no special tokens), with character
   offsets and word ids. Its tokens are cut into chunks of at most ``max_seq_len - 2`` tokens, each ending at
   the last ``chunk_end_tokens`` token (``"."``, or a token followed by a line break for ``"\\n"``) inside the
   window, if there is one.
2. Chunks of every document are batched together (sorted by length) through the classifier; the keep
   probability of a token is ``softmax(logits)[..., 1]``.
3. A word's probability is the ``mean`` (or ``first``) of its subword probabilities, words being the
   tokenizer's own word ids (never guessed from the model name). On CUDA the ``mean`` is pooled on the device
   by :func:`ctxzip.kernels.word_topk` (Triton); on CPU by NumPy in float64, as in :func:`merge_words`.
4. Word probabilities are mapped onto ctxzip's units (words with their leading whitespace) by character
   offsets (:func:`ctxzip.units.reduce_by_units`), so the budget in target-LLM tokens, protected spans and the
   subsequence guarantee come from the core selector, which keeps the most probable units to the budget.

Options follow the paper's implementation: ``force_tokens`` (units holding one of them are kept first),
``force_reserve_digit`` (units holding a digit are kept first), ``drop_consecutive`` (a forced unit that
repeats the previous unit's force token is not forced), ``use_context_level_filter`` (first drop whole
documents by mean word probability, keeping ``context_level_rate`` of the tokens, by default ``(rate + 1) / 2``)
and ``return_word_labels`` (per-document words, probabilities and keep labels in ``result.details``; the
probabilities are the classifier's over each whole document, also where the coarse stage classified pieces).
All post-processing is vectorised NumPy; the default model is ctxzip's distilled MiniLM student.

**Question-aware coarse stage** (``coarse="question"``, the default; it acts only when the request has a
``question`` and the context makes at least two pieces). The LLMLingua-2 paper pairs its token classifier with
LongLLMLingua's coarse-grained, question-aware compression when a question is available; here, before step 1:

a. The context is cut into pieces: documents, and documents over ``2 * coarse_chunk_tokens`` target tokens into
   runs of whole lines (a line is a chat or meeting turn) of about ``min(coarse_chunk_tokens, budget / 2)``
   tokens (cut at sentence ends, then between words, only when a line is longer than twice that).
b. Pieces are ranked by relevance to the question (``rank_method="bm25"``, the default: Okapi BM25 over
   lower-cased, lightly stemmed words, question words such as "what"/"did" dropped from the query, no model;
   ``"embed"``: cosine of MiniLM sentence embeddings, ``rank_model``, more accurate but 5-9x slower on CPU). A
   piece's relevance is raised by ``rank_smooth`` times its best same-document neighbour's (the turn next to the
   one that matches the question often holds the answer). Pieces are taken best first until their tokens reach
   ``coarse_keep`` times the budget; the other pieces are dropped.
c. Only the kept pieces are classified (steps 1-4), and the classifier's keep probabilities choose the words
   inside them to the budget. The output keeps the original order.

``coarse="none"`` is the question-agnostic token classification alone (and the paper's optional
``use_context_level_filter``); without a question, ``coarse="question"`` behaves exactly like it. The measured
choice of the defaults is in ``docs/benchmarks/lingua2.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError
from ..registry import register
from ..select import Selection, select_to_budget
from ..tokens import TokenCounter
from ..types import CompressionRequest, CompressionResult
from ..units import Units, reduce_by_units, segment

__all__ = [
    "Lingua2Compressor", "WordProbs", "Piece", "chunk_bounds", "merge_words", "split_pieces", "COARSE_MODES",
    "bm25_text", "light_stem", "smooth_neighbours",
]

_FORCED_BONUS = 2.0  # forced units score prob + this: above every unforced unit, still inside the budget
COARSE_MODES = ("question", "none")
_RANK_METHODS = ("embed", "bm25")


@dataclasses.dataclass(frozen=True)
class WordProbs:
    """The classifier's words of one document: character spans and keep probabilities (float64 arrays)."""

    starts: np.ndarray
    ends: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return int(self.starts.shape[0])


def merge_words(
    word_ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, probs: np.ndarray, how: str = "mean"
) -> WordProbs:
    """Merge subword probabilities into word probabilities (vectorised).

    ``word_ids`` (``-1`` for tokens outside any word) must be non-decreasing over the tokens that have one, as
    a fast tokenizer's word ids are. A word spans from its first token's start to its last token's end.
    """
    if how not in ("mean", "first"):
        raise ConfigError(f"lingua2: token_to_word must be 'mean' or 'first', got {how!r}")
    ok = (word_ids >= 0) & np.isfinite(probs) & (ends > starts)
    w, s, e, p = word_ids[ok], starts[ok], ends[ok], probs[ok]
    if w.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return WordProbs(empty, empty.copy(), np.zeros(0, dtype=np.float64))
    first = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
    w_starts = np.minimum.reduceat(s, first)
    w_ends = np.maximum.reduceat(e, first)
    if how == "first":
        w_probs = p[first].astype(np.float64)
    else:
        counts = np.diff(np.concatenate((first, [w.size])))
        w_probs = np.add.reduceat(p.astype(np.float64), first) / counts
    return WordProbs(w_starts.astype(np.int64), w_ends.astype(np.int64), w_probs)


class _WordPool:
    """Word sums and subword counts of one document, accumulated chunk by chunk from on-device word means.

    ``ids`` is the document's word id per token, ``-1`` where :func:`merge_words` would skip the token (no word,
    or an empty character span), so a word's mean covers the same subwords on both paths.
    """

    def __init__(self, ids: np.ndarray, n_words: int):
        self.ids = ids
        self.sums = np.zeros(n_words, dtype=np.float64)
        self.counts = np.zeros(n_words, dtype=np.float64)

    @classmethod
    def of(cls, word_ids: np.ndarray, offs: np.ndarray) -> _WordPool:
        ids = np.where((word_ids >= 0) & (offs[:, 1] > offs[:, 0]), word_ids, -1)
        return cls(ids, int(ids.max()) + 1 if ids.size else 0)

    def words(self, word_ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> WordProbs:
        """The :class:`WordProbs` of :func:`merge_words` (``how="mean"``), with the pooled means."""
        ok = self.ids >= 0
        w, s, e = word_ids[ok], starts[ok], ends[ok]
        if w.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return WordProbs(empty, empty.copy(), np.zeros(0, dtype=np.float64))
        first = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
        wid = w[first]
        return WordProbs(
            np.minimum.reduceat(s, first).astype(np.int64),
            np.maximum.reduceat(e, first).astype(np.int64),
            self.sums[wid] / np.maximum(self.counts[wid], 1.0),
        )


def _pool_batch(keep: Any, batch: list[tuple[int, int, int]], width: int, pooled: list[_WordPool]) -> None:
    """Per-word means of one batch's keep probabilities ``[B, width]`` with :func:`ctxzip.kernels.word_topk`.

    Row ``r`` holds ``[CLS] + tokens a..b + [SEP] + padding`` of document ``d``; its subwords get word indices
    local to the chunk (``-1`` for special tokens, padding and skipped tokens). The kernel's word means (only
    ``keep=0``: ctxzip selects units to a token budget, not words to a count) are turned back into sums with the
    subword counts, so a word cut by a chunk boundary gets the mean over all its subwords.
    """
    from .._lazy import require
    from ..kernels.word_topk import word_topk

    torch = require("torch", feature="lingua2")
    local = np.full((len(batch), width), -1, dtype=np.int64)
    bases = []
    for r, (d, a, b) in enumerate(batch):
        ids = pooled[d].ids[a:b]
        valid = ids >= 0
        base = int(ids[valid].min()) if valid.any() else 0
        local[r, 1 : b - a + 1] = np.where(valid, ids - base, -1)
        bases.append(base)
    means, _ = word_topk(keep, torch.from_numpy(local).to(keep.device), keep=0)
    means = means.cpu().numpy().astype(np.float64)
    for r, (d, _, _) in enumerate(batch):
        row = local[r]
        counts = np.bincount(row[row >= 0], minlength=means.shape[1]).astype(np.float64)
        present = np.flatnonzero(counts)
        pool = pooled[d]
        pool.sums[bases[r] + present] += means[r, present] * counts[present]
        pool.counts[bases[r] + present] += counts[present]


def chunk_bounds(n_tokens: int, is_end: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Cut ``n_tokens`` tokens into ``[a, b)`` chunks of at most ``max_tokens``, each ending right after the
    last token flagged in ``is_end`` inside its window when there is one (the paper's chunking)."""
    if max_tokens < 1:
        raise ConfigError(f"lingua2: chunks need room for at least one token, got {max_tokens}")
    ends = np.flatnonzero(is_end[:n_tokens]) + 1  # candidate cut positions (exclusive ends)
    out = []
    a = 0
    while a < n_tokens:
        limit = a + max_tokens
        if limit >= n_tokens:
            out.append((a, n_tokens))
            break
        k = int(np.searchsorted(ends, limit, side="right")) - 1
        b = int(ends[k]) if k >= 0 and ends[k] > a else limit
        out.append((a, b))
        a = b
    return out


@dataclasses.dataclass(frozen=True)
class Piece:
    """Units ``[u0, u1)`` of document ``doc`` (characters ``[start, end)``), costing ``cost`` target tokens."""

    doc: int
    u0: int
    u1: int
    start: int
    end: int
    cost: int


def split_pieces(docs: Sequence[Units], chunk_tokens: int, size: int | None = None) -> list[Piece]:
    """The coarse stage's pieces: one per non-empty document; a document over ``2 * chunk_tokens`` tokens is cut
    into runs of about ``size`` tokens (default ``chunk_tokens``) ending at a line break (a turn of a chat or a
    meeting) when there is one, else at a sentence end, else between words once a run reaches ``2 * size``."""
    out: list[Piece] = []
    size = chunk_tokens if size is None else max(1, min(size, chunk_tokens))
    for d, u in enumerate(docs):
        n = len(u)
        if n == 0:
            continue
        costs = u.costs.astype(np.int64)
        total = int(costs.sum())
        if chunk_tokens <= 0 or total <= 2 * chunk_tokens:
            out.append(Piece(d, 0, n, int(u.starts[0]), int(u.ends[-1]), total))
            continue
        # line_end[i] / sent_end[i]: cutting right after unit i ends a line / a sentence
        line_end = np.zeros(n, dtype=bool)
        nl = np.flatnonzero(np.frombuffer(u.text.encode("utf-32-le"), dtype=np.uint32) == 10)
        if nl.size:
            idx = np.searchsorted(u.starts, nl, side="right") - 1  # unit whose span (or following gap) holds it
            ok = idx >= 0
            idx, pos = idx[ok], nl[ok]
            # in the gap after unit idx: the line ends after idx; in idx's leading whitespace: after idx - 1
            before = np.where(pos >= u.ends[idx], idx, idx - 1)
            line_end[before[before >= 0]] = True
        sent_end = np.zeros(n, dtype=bool)
        sent_end[:-1] = u.sentence[1:] != u.sentence[:-1]
        line_end[-1] = sent_end[-1] = True
        bounds = [0]
        a = 0
        csum = np.concatenate(([0], np.cumsum(costs)))
        while a < n:
            if csum[n] - csum[a] <= 2 * size:
                bounds.append(n)
                break
            # the first line end at or after ``size`` tokens, if it comes before 2 * size; else a sentence end
            lo = int(np.searchsorted(csum, csum[a] + size, side="left")) - 1  # unit where the run reaches size
            hi = int(np.searchsorted(csum, csum[a] + 2 * size, side="left")) - 1
            lo, hi = max(lo, a), min(max(hi, a), n - 1)
            cut = -1
            for flags in (line_end, sent_end):
                hits = np.flatnonzero(flags[lo : hi + 1])
                if hits.size:
                    cut = lo + int(hits[0])
                    break
            if cut < 0:
                cut = hi
            bounds.append(cut + 1)
            a = cut + 1
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out.append(Piece(d, a, b, int(u.starts[a]), int(u.ends[b - 1]), int(costs[a:b].sum())))
    return out


_WORD = re.compile(r"\w+")
# question words that say what is asked, not what it is about (dropped from the BM25 query only)
_STOPWORDS = frozenset(
    "a an the is are was were be been am do does did what which who whom whose when where why how of in on at to "
    "for from by with about as and or but not that this these those it its into than then there their they them "
    "he she his her him i you your we our my me".split()
)
_SUFFIXES = (("ingly", ""), ("edly", ""), ("ings", ""), ("ing", ""), ("ies", "y"), ("ied", "y"), ("ness", ""),
             ("ment", ""), ("ed", ""), ("es", ""), ("ly", ""), ("s", ""))


@functools.lru_cache(maxsize=1 << 16)
def light_stem(word: str) -> str:
    """A light English suffix stripper ("painting", "painted", "paints" -> "paint"), so BM25 matches word forms;
    a stem keeps at least three letters. Words are expected lower-cased."""
    if word.endswith("'s"):
        word = word[:-2]
    for suffix, repl in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + repl
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":  # "running" -> "runn" -> "run"
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):  # "race"/"racing" -> "rac"
        word = word[:-1]
    return word


def bm25_text(text: str, drop_stopwords: bool = False) -> str:
    """Lower-cased, stemmed words of ``text`` joined by spaces (the BM25 view of a piece or of the question);
    with ``drop_stopwords`` question words are dropped unless nothing else is left."""
    words = _WORD.findall(text.lower())
    if drop_stopwords:
        words = [w for w in words if w not in _STOPWORDS] or words
    return " ".join(light_stem(w) for w in words)


def smooth_neighbours(rel: np.ndarray, pieces: Sequence[Piece], share: float) -> np.ndarray:
    """``rel + share * max(previous, next)`` over pieces of the same document (a turn next to the one that
    matches the question often holds the answer); pieces at a document's edge have one neighbour."""
    rel = np.asarray(rel, dtype=np.float64)
    if share <= 0 or rel.size < 2:
        return rel
    doc = np.array([p.doc for p in pieces])
    same = doc[1:] == doc[:-1]
    base = np.where(np.isfinite(rel), rel, 0.0)
    prev = np.concatenate(([-np.inf], np.where(same, base[:-1], -np.inf)))
    nxt = np.concatenate((np.where(same, base[1:], -np.inf), [-np.inf]))
    best = np.maximum(prev, nxt)
    return np.where(np.isfinite(best), rel + share * best, rel)


def _positions_to_units(units: Units, positions: np.ndarray) -> np.ndarray:
    """Boolean mask of units containing any of the character ``positions``."""
    mask = np.zeros(len(units), dtype=bool)
    if positions.size == 0 or len(units) == 0:
        return mask
    idx = np.searchsorted(units.starts, positions, side="right") - 1
    valid = (idx >= 0) & (positions < units.ends[np.clip(idx, 0, len(units) - 1)])
    mask[idx[valid]] = True
    return mask


def _force_regex(tokens: Sequence[str]) -> re.Pattern[str] | None:
    parts = []
    for t in sorted(set(tokens), key=len, reverse=True):
        esc = re.escape(t)
        # word-like tokens match whole words only; punctuation and whitespace match anywhere
        parts.append(rf"(?<!\w){esc}(?!\w)" if re.fullmatch(r"\w+", t) else esc)
    return re.compile("|".join(parts)) if parts else None


@register("lingua2")
class Lingua2Compressor(BaseCompressor):
    version = "2"
    # score() is question-agnostic, so per-document scores stay shareable across questions in the segment cache
    # (ctxzip.cache keys them by the question only for question_aware compressors). The question acts in
    # select() (coarse="question"), whose results the result cache keys by the question as for every compressor.
    question_aware = False
    cacheable_scores = True  # each document is tokenised and classified on its own (ctxzip.cache)

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: str = "ctxzip-lingua2"  # shipped student, a student dir, a HF token-classification checkpoint
        device: str | None = None  # None: CUDA when available
        quantize: str | None = None  # "int8": dynamic int8 quantisation (CPU)
        max_seq_len: int = 512  # classifier tokens per chunk, special tokens included
        chunk_end_tokens: tuple[str, ...] = (".", "\n")
        token_to_word: str = "mean"  # subword -> word probability: "mean" or "first"
        unit_reduce: str = "mean"  # classifier words -> ctxzip unit: "mean", "max" or "first"
        force_tokens: tuple[str, ...] = ()
        force_reserve_digit: bool = False
        drop_consecutive: bool = False
        use_context_level_filter: bool = False
        context_level_rate: float | None = None  # share of tokens the document filter keeps; None: (rate+1)/2
        return_word_labels: bool = False
        batch_size: int = 16
        coarse: str = "question"  # "question": question-aware piece ranking first (when there is a question)
        coarse_keep: float = 1.0  # the coarse stage keeps pieces until their tokens reach this multiple of the budget
        coarse_chunk_tokens: int = 160  # documents over twice this are cut into pieces of whole lines
        rank_method: str = "bm25"  # "bm25" (Okapi BM25, no model: keeps the speed target) or "embed" (MiniLM cosine)
        rank_model: str = "minilm-l6"  # sentence encoder of rank_method="embed"
        rank_smooth: float = 0.5  # a piece's relevance += this * its best same-document neighbour's relevance

        def __post_init__(self) -> None:
            if not isinstance(self.model, str) or not self.model.strip():
                raise ConfigError(f"lingua2: model must be 'ctxzip-lingua2', a path or a HF id, got {self.model!r}")
            if self.quantize not in (None, "int8"):
                raise ConfigError(f"lingua2: quantize must be None or 'int8', got {self.quantize!r}")
            if isinstance(self.max_seq_len, bool) or not isinstance(self.max_seq_len, int) or not (
                8 <= self.max_seq_len <= 512
            ):
                raise ConfigError(f"lingua2: max_seq_len must be an integer in [8, 512], got {self.max_seq_len!r}")
            for name in ("chunk_end_tokens", "force_tokens"):
                value = getattr(self, name)
                if isinstance(value, str):
                    raise ConfigError(f"lingua2: {name} must be a list of strings, e.g. ['.', '\\n'], not one string")
                value = tuple(value)
                if not all(isinstance(t, str) and t for t in value):
                    raise ConfigError(f"lingua2: {name} must hold non-empty strings, got {value!r}")
                object.__setattr__(self, name, value)
            if self.token_to_word not in ("mean", "first"):
                raise ConfigError(f"lingua2: token_to_word must be 'mean' or 'first', got {self.token_to_word!r}")
            if self.unit_reduce not in ("mean", "max", "first"):
                raise ConfigError(f"lingua2: unit_reduce must be 'mean', 'max' or 'first', got {self.unit_reduce!r}")
            for name in ("force_reserve_digit", "drop_consecutive", "use_context_level_filter", "return_word_labels"):
                if not isinstance(getattr(self, name), bool):
                    raise ConfigError(f"lingua2: {name} must be True or False, got {getattr(self, name)!r}")
            rate = self.context_level_rate
            if rate is not None and (
                isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) <= 1.0
            ):
                raise ConfigError(f"lingua2: context_level_rate must be in (0, 1] or None, got {rate!r}")
            if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
                raise ConfigError(f"lingua2: batch_size must be a positive integer, got {self.batch_size!r}")
            if self.coarse not in COARSE_MODES:
                raise ConfigError(f"lingua2: coarse must be one of {', '.join(COARSE_MODES)}, got {self.coarse!r}")
            keep = self.coarse_keep
            if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 1.0 <= float(keep) <= 100.0:
                raise ConfigError(f"lingua2: coarse_keep (a multiple of the budget) must be in [1, 100], got {keep!r}")
            chunk = self.coarse_chunk_tokens
            if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
                raise ConfigError(
                    f"lingua2: coarse_chunk_tokens must be an integer >= 0 (0: whole documents), got {chunk!r}"
                )
            if self.rank_method not in _RANK_METHODS:
                raise ConfigError(
                    f"lingua2: rank_method must be one of {', '.join(_RANK_METHODS)}, got {self.rank_method!r}"
                )
            if not isinstance(self.rank_model, str) or not self.rank_model.strip():
                raise ConfigError(f"lingua2: rank_model must be a sentence-encoder name, got {self.rank_model!r}")
            smooth = self.rank_smooth
            if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0.0 <= float(smooth) <= 1.0:
                raise ConfigError(f"lingua2: rank_smooth (a neighbour's share) must be in [0, 1], got {smooth!r}")

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._local = threading.local()

    # ------------------------------------------------------------------------------------------ model

    def _classifier(self, cfg: Any) -> Any:
        from ..models.token_classifier import load_token_classifier

        return load_token_classifier(cfg.model, device=cfg.device, quantize=cfg.quantize)

    def load(self) -> None:
        self._classifier(self.config)
        if self.config.coarse == "question" and self.config.rank_method == "embed":
            self._encoder(self.config)

    def _encoder(self, cfg: Any) -> Any:
        from ..models import load_encoder

        return load_encoder(cfg.rank_model, device=cfg.device)

    # ------------------------------------------------------------------------------------------ probabilities

    def word_probs(self, texts: Sequence[str], cfg: Any = None) -> list[WordProbs]:
        """The classifier's word keep-probabilities of each text (the model's view, before unit mapping)."""
        cfg = cfg or self.config
        clf = self._classifier(cfg)
        timer = self._timer()
        t0 = time.perf_counter()
        backend = clf.backend
        encs = backend.encode_batch(list(texts), add_special_tokens=False)
        seqs = []
        for text, enc in zip(texts, encs, strict=True):
            ids = np.asarray(enc.ids, dtype=np.int64)
            offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            wids = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
            seqs.append((text, ids, offs, wids))
        timer["tokenize"] = timer.get("tokenize", 0.0) + time.perf_counter() - t0

        t0 = time.perf_counter()
        room = min(cfg.max_seq_len, clf.max_length) - 2
        end_ids = set()
        nl = "\n" in cfg.chunk_end_tokens
        for tok in cfg.chunk_end_tokens:
            if tok != "\n":
                tid = backend.token_to_id(tok)
                if tid is not None:
                    end_ids.add(tid)
        end_arr = np.asarray(sorted(end_ids), dtype=np.int64)
        chunks: list[tuple[int, int, int]] = []  # (doc, a, b)
        for d, (text, ids, offs, _) in enumerate(seqs):
            n = ids.shape[0]
            if n == 0:
                continue
            is_end = np.isin(ids, end_arr) if end_arr.size else np.zeros(n, dtype=bool)
            if nl and n > room:
                breaks = np.cumsum(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == 10)
                breaks = np.concatenate(([0], breaks))
                nxt = np.concatenate((offs[1:, 0], [len(text)]))
                is_end |= breaks[np.maximum(nxt, offs[:, 1])] > breaks[offs[:, 1]]
            chunks.extend((d, a, b) for a, b in chunk_bounds(n, is_end, room))
        probs = [np.full(s[1].shape[0], np.nan, dtype=np.float32) for s in seqs]
        # per-document word sums / subword counts, filled instead of ``probs`` when word_topk pools on the device
        pooled = [_WordPool.of(wids, offs) for _, _, offs, wids in seqs] if cfg.token_to_word == "mean" else None
        timer["post"] = timer.get("post", 0.0) + time.perf_counter() - t0

        t0 = time.perf_counter()
        on_device = self._run(clf, seqs, chunks, probs, cfg.batch_size, pooled)
        timer["encoder"] = timer.get("encoder", 0.0) + time.perf_counter() - t0

        t0 = time.perf_counter()
        if on_device and pooled is not None:
            out = [pool.words(wids, offs[:, 0], offs[:, 1]) for (_, _, offs, wids), pool in zip(seqs, pooled, strict=True)]
        else:
            out = [
                merge_words(wids, offs[:, 0], offs[:, 1], p, cfg.token_to_word)
                for (_, _, offs, wids), p in zip(seqs, probs, strict=True)
            ]
        timer["post"] += time.perf_counter() - t0
        return out

    def _run(
        self, clf: Any, seqs: list, chunks: list[tuple[int, int, int]], probs: list[np.ndarray], bs: int,
        pooled: list[_WordPool] | None = None,
    ) -> bool:
        """Classify every chunk; fill ``probs`` (per-token keep probabilities), or ``pooled``.

        With ``pooled`` (``token_to_word="mean"``) and when :func:`ctxzip.kernels.choose_backend` picks Triton
        for the probabilities' device (CUDA, or ``CTXZIP_KERNELS=triton`` under ``TRITON_INTERPRET=1``), each batch's
        subword probabilities are averaged per word on the device by :func:`ctxzip.kernels.word_topk` and only the
        word means reach the host, accumulated into ``pooled``; returns True then. Otherwise (CPU by default) the
        per-token probabilities go to ``probs`` for :func:`merge_words`, as before the kernel existed.
        """
        if not chunks:
            return False
        from .._lazy import require

        torch = require("torch", feature="lingua2")
        on_device: bool | None = None
        tok = clf.tokenizer
        cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        order = sorted(range(len(chunks)), key=lambda i: chunks[i][2] - chunks[i][1], reverse=True)
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                batch = [chunks[i] for i in order[s : s + bs]]
                width = max(b - a for _, a, b in batch) + 2
                ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for r, (d, a, b) in enumerate(batch):
                    n = b - a
                    ids[r, 0] = cls_id
                    ids[r, 1 : n + 1] = seqs[d][1][a:b]
                    ids[r, n + 1] = sep_id
                    mask[r, : n + 2] = 1
                logits = clf.model(
                    input_ids=torch.from_numpy(ids).to(clf.device),
                    attention_mask=torch.from_numpy(mask).to(clf.device),
                ).logits
                keep_t = torch.softmax(logits.float(), dim=-1)[..., 1]
                if on_device is None:
                    from ..kernels._dispatch import choose_backend

                    on_device = pooled is not None and choose_backend(keep_t) == "triton"
                if on_device and pooled is not None:
                    _pool_batch(keep_t, batch, width, pooled)
                    continue
                keep = keep_t.cpu().numpy()
                for r, (d, a, b) in enumerate(batch):
                    probs[d][a:b] = keep[r, 1 : b - a + 1]
        return bool(on_device)

    # ------------------------------------------------------------------------------------------ units

    def _timer(self) -> dict[str, float]:
        timer = getattr(self._local, "timer", None)
        if timer is None:
            timer = {}
            self._local.timer = timer
        return timer

    def _unit_probs(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        cache: dict[int, np.ndarray] = getattr(self._local, "probs", None) or {}
        todo = [u for u in docs if id(u) not in cache]
        if todo:
            cfg = self.options(request)
            words = self.word_probs([u.text for u in todo], cfg)
            t0 = time.perf_counter()
            for u, w in zip(todo, words, strict=True):
                p = reduce_by_units(u, w.starts, w.ends, w.probs, how=cfg.unit_reduce)
                cache[id(u)] = np.nan_to_num(p, nan=0.0)
            self._timer()["post"] = self._timer().get("post", 0.0) + time.perf_counter() - t0
            self._local.probs = cache
        return [cache[id(u)] for u in docs]

    def _forced(self, cfg: Any, u: Units) -> np.ndarray:
        """Units forced by force_tokens / force_reserve_digit (after drop_consecutive)."""
        forced = np.zeros(len(u), dtype=bool)
        rx = _force_regex(cfg.force_tokens)
        if rx is not None:
            pos = np.fromiter((m.start() for m in rx.finditer(u.text)), dtype=np.int64)
            by_token = _positions_to_units(u, pos)
            if cfg.drop_consecutive and by_token.any():
                idx = np.flatnonzero(by_token)
                stripped = np.array([u.text[int(u.starts[i]) : int(u.ends[i])].strip() for i in idx], dtype=object)
                only = np.array([s in cfg.force_tokens for s in stripped], dtype=bool)
                repeat = np.zeros(idx.size, dtype=bool)
                repeat[1:] = only[1:] & (idx[1:] == idx[:-1] + 1) & (stripped[1:] == stripped[:-1])
                by_token[idx[repeat]] = False
            forced |= by_token
        if cfg.force_reserve_digit:
            pos = np.fromiter((m.start() for m in re.finditer(r"\d", u.text)), dtype=np.int64)
            forced |= _positions_to_units(u, pos)
        return forced

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        cfg = self.options(request)
        probs = self._unit_probs(request, docs)
        out = []
        for u, p in zip(docs, probs, strict=True):
            s = p.copy()
            if cfg.force_tokens or cfg.force_reserve_digit:
                f = self._forced(cfg, u)
                s[f] += _FORCED_BONUS
            out.append(s)
        return out

    def coarse(self, request: CompressionRequest, docs: list[Units], budget: int) -> list[bool] | None:
        cfg = self.options(request)
        if not cfg.use_context_level_filter or len(docs) < 2:
            return None
        probs = self._unit_probs(request, docs)
        costs = np.array([u.total_cost for u in docs], dtype=np.float64)
        total = float(costs.sum())
        if total <= 0:
            return None
        rate = cfg.context_level_rate
        if rate is None:
            rate = (min(1.0, budget / total) + 1.0) / 2.0
        mean = np.array(
            [float(np.mean(p)) if p.size else -np.inf for p in probs], dtype=np.float64
        )
        order = np.argsort(-mean, kind="stable")
        csum = np.cumsum(costs[order])
        n_keep = int(np.searchsorted(csum, rate * total, side="left")) + 1
        keep = np.zeros(len(docs), dtype=bool)
        keep[order[: max(1, n_keep)]] = True
        keep |= np.array([bool(u.forced.any()) for u in docs])  # documents with protected spans stay
        return keep.tolist()

    # ------------------------------------------------------------------------------------------ question coarse

    def _relevance(self, cfg: Any, texts: list[str], query: str) -> np.ndarray:
        """Relevance of each piece to the question, higher is better."""
        t0 = time.perf_counter()
        timer = self._timer()
        if cfg.rank_method == "bm25":
            from .longlingua import bm25_scores

            scores = bm25_scores([bm25_text(t) for t in texts], bm25_text(query, drop_stopwords=True))
            timer["rank"] = timer.get("rank", 0.0) + time.perf_counter() - t0
            return scores
        enc = self._encoder(cfg)
        t0 = time.perf_counter()  # the encoder's first load is not ranking time
        emb = np.asarray(
            enc.encode(texts + [query], batch_size=32, normalize_embeddings=True, convert_to_numpy=True),
            dtype=np.float64,
        )
        timer["rank"] = timer.get("rank", 0.0) + time.perf_counter() - t0
        return emb[:-1] @ emb[-1]

    def _question_plan(
        self, request: CompressionRequest, cfg: Any, docs: list[Units], budget: int
    ) -> tuple[list[Piece], list[int], list[int]] | None:
        """``(pieces, ranking, kept)`` of the question-aware coarse stage, or None where it does not apply."""
        query = (request.question or "").strip()
        if cfg.coarse != "question" or not query:
            return None
        pieces = split_pieces(docs, cfg.coarse_chunk_tokens, max(32, budget // 2))
        if len(pieces) < 2:
            return None
        rel = self._relevance(cfg, [docs[p.doc].text[p.start : p.end] for p in pieces], query)
        rel = smooth_neighbours(np.where(np.isfinite(rel), rel, -np.inf), pieces, float(cfg.rank_smooth))
        rank = [int(i) for i in np.argsort(-rel, kind="stable")]
        limit = float(cfg.coarse_keep) * budget
        kept, acc = [], 0
        for i in rank:
            kept.append(i)
            acc += pieces[i].cost
            if acc >= limit:
                break
        return pieces, rank, sorted(kept)

    def _piece_scores(
        self, cfg: Any, docs: list[Units], pieces: list[Piece], kept: list[int]
    ) -> list[np.ndarray]:
        """Keep probabilities of the units inside the kept pieces (classified piece by piece); -inf elsewhere."""
        texts = [docs[pieces[i].doc].text[pieces[i].start : pieces[i].end] for i in kept]
        words = self.word_probs(texts, cfg)
        t0 = time.perf_counter()
        by_doc: dict[int, list[tuple[Piece, WordProbs]]] = {}
        for i, w in zip(kept, words, strict=True):
            by_doc.setdefault(pieces[i].doc, []).append((pieces[i], w))
        out = [np.full(len(u), -np.inf) for u in docs]
        for d, items in by_doc.items():
            u = docs[d]
            starts = np.concatenate([w.starts + p.start for p, w in items])
            ends = np.concatenate([w.ends + p.start for p, w in items])
            probs = np.concatenate([w.probs for _, w in items])
            p = np.nan_to_num(reduce_by_units(u, starts, ends, probs, how=cfg.unit_reduce), nan=0.0)
            inside = np.zeros(len(u), dtype=bool)
            for piece, _ in items:
                inside[piece.u0 : piece.u1] = True
            if cfg.force_tokens or cfg.force_reserve_digit:
                p = p + np.where(self._forced(cfg, u), _FORCED_BONUS, 0.0)
            out[d] = np.where(inside, p, -np.inf)
        timer = self._timer()
        timer["post"] = timer.get("post", 0.0) + time.perf_counter() - t0
        return out

    def select(self, request: CompressionRequest, docs: list[Units], budget: int, counter: TokenCounter) -> Selection:
        cfg = self.options(request)
        plan = self._question_plan(request, cfg, docs, budget)
        if plan is None:
            sel = super().select(request, docs, budget, counter)
        else:
            pieces, rank, kept = plan
            scores = self._piece_scores(cfg, docs, pieces, kept)
            sel = select_to_budget(docs, scores, budget, counter)
            self._local.coarse = {
                "pieces": len(pieces),
                "kept_pieces": len(kept),
                "rank_method": cfg.rank_method,
                "kept_docs": sorted({pieces[i].doc for i in kept}),
            }
        self._local.selection = (docs, sel)
        return sel

    # ------------------------------------------------------------------------------------------ results

    def compress(self, request: CompressionRequest) -> CompressionResult:
        self._local.probs = {}
        self._local.timer = {}
        self._local.selection = None
        self._local.coarse = None
        try:
            result = super().compress(request)
            cfg = self.options(request)
            details = dict(result.details)
            timer = self._local.timer
            if timer:
                details["seconds"] = {k: round(v, 6) for k, v in timer.items()}
            if self._local.coarse:
                details["coarse"] = self._local.coarse
            if cfg.return_word_labels:
                details["word_labels"] = self._word_labels(request, cfg)
            if len(details) != len(result.details):
                result = dataclasses.replace(result, details=details)
            return result
        finally:
            self._local.probs = {}
            self._local.selection = None
            self._local.coarse = None

    def _word_labels(self, request: CompressionRequest, cfg: Any) -> list[dict[str, list]]:
        stash = self._local.selection
        if stash is None:  # under budget: every word kept
            from ..tokens import get_counter

            counter = get_counter(request.target_model)
            docs = [segment(d.text, request.protect, counter) for d in request.documents]
            keeps = [np.ones(len(u), dtype=bool) for u in docs]
        else:
            docs, sel = stash
            keeps = sel.keep
        probs = self._unit_probs(request, docs)
        return [
            {
                "words": u.texts(),
                "probs": np.round(p, 6).tolist(),
                "labels": k.astype(np.int64).tolist(),
            }
            for u, p, k in zip(docs, probs, keeps, strict=True)
        ]
