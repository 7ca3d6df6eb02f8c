"""Near-duplicate reuse (off by default): a document whose exact scores are not cached borrows the scores of the
most similar document scored before under the same key context, when their MiniLM cosine similarity is at least
``threshold``.

How: every document scored in this process is embedded (``ctxzip.models.load_encoder``, default ``minilm-l6``)
into a FAISS inner-product index (normalised vectors, so inner product = cosine), one index per score context
(compressor, config, weights, tokenizer, protection, question). A miss is embedded and searched; above the
threshold, the neighbour's unit scores are carried over word by word along a diff of the two word sequences
(``difflib``); words the neighbour lacks get the neighbour's median score.

Risk: the output is no longer exactly what the compressor would produce: new or changed words are scored by
proxy (a changed number or name may be dropped or kept against the model's judgement). Use it only for corpora
with many near-identical chunks (boilerplate, re-crawled pages), with a high threshold (default 0.97). The index
lives in the process (not shared through Redis or SQLite) and embedding a miss costs a MiniLM forward pass, which
only pays off for compressors much more expensive than that (causal-LM scoring).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..units import Units

__all__ = ["NearDuplicates", "transfer_scores"]


def transfer_scores(src_words: Sequence[str], src_scores: np.ndarray, words: Sequence[str]) -> np.ndarray:
    """Scores for ``words`` from a similar word sequence: equal runs copy, the rest get the median source score."""
    finite = src_scores[np.isfinite(src_scores)]
    fill = float(np.median(finite)) if finite.size else 0.0
    out = np.full(len(words), fill, dtype=np.float64)
    matcher = difflib.SequenceMatcher(None, list(src_words), list(words), autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        if size:
            out[b : b + size] = src_scores[a : a + size]
    return out


class NearDuplicates:
    """Per-process FAISS index of scored documents (see the module doc)."""

    def __init__(self, threshold: float = 0.97, *, model: str = "minilm-l6", max_items: int = 100_000) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise ConfigError(f"near-duplicate threshold must be a cosine similarity in (0, 1], e.g. 0.97; got {threshold!r}")
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigError(f"max_items must be a positive integer, got {max_items!r}")
        self.threshold = float(threshold)
        self.model = model
        self.max_items = max_items
        self._lock = threading.Lock()
        self._index: dict[str, tuple[Any, list[tuple[list[str], np.ndarray]]]] = {}

    def _embed(self, docs: Sequence[Units]) -> np.ndarray:
        from ..models import load_encoder

        enc = load_encoder(self.model)
        emb = enc.encode([u.text for u in docs], normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(emb, dtype=np.float32)

    @staticmethod
    def _words(u: Units) -> list[str]:
        return [t.strip() for t in u.texts()]

    def lookup(self, context: str, docs: Sequence[Units]) -> list[np.ndarray | None]:
        """For each document, borrowed scores (a near-duplicate was found) or None."""
        with self._lock:
            entry = self._index.get(context)
        if entry is None or not docs:
            return [None] * len(docs)
        index, items = entry
        sims, ids = index.search(self._embed(docs), 1)
        out: list[np.ndarray | None] = []
        for u, sim, i in zip(docs, sims[:, 0].tolist(), ids[:, 0].tolist(), strict=True):
            if i < 0 or sim < self.threshold:
                out.append(None)
                continue
            src_words, src_scores = items[i]
            out.append(transfer_scores(src_words, src_scores, self._words(u)))
        return out

    def add(self, context: str, docs: Sequence[Units], scores: Sequence[np.ndarray]) -> None:
        if not docs:
            return
        from .._lazy import require

        faiss = require("faiss", feature="near-duplicate cache reuse")
        emb = self._embed(docs)
        with self._lock:
            entry = self._index.get(context)
            if entry is None or len(entry[1]) + len(docs) > self.max_items:
                entry = (faiss.IndexFlatIP(emb.shape[1]), [])
                self._index[context] = entry
            index, items = entry
            index.add(emb)
            items.extend((self._words(u), np.asarray(s, dtype=np.float64)) for u, s in zip(docs, scores, strict=True))

    def clear(self) -> None:
        with self._lock:
            self._index.clear()
