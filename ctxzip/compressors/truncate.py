"""``truncate``: keep the head, the tail, or head and tail (drop the middle) to the budget. A baseline."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError
from ..registry import register
from ..types import CompressionRequest
from ..units import Units


@register("truncate")
class TruncateCompressor(BaseCompressor):
    version = "1"

    @dataclasses.dataclass(frozen=True)
    class Config:
        side: str = "head"  # keep the head, the tail, or "middle" = keep head and tail, drop the middle

        def __post_init__(self) -> None:
            if self.side not in ("head", "tail", "middle"):
                raise ConfigError(f"truncate: side must be 'head', 'tail' or 'middle', got {self.side!r}")

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        side = self.options(request).side
        sizes = [len(u) for u in docs]
        total = sum(sizes)
        pos = np.arange(total, dtype=np.float64)
        if side == "head":
            flat = -pos
        elif side == "tail":
            flat = pos
        else:
            flat = -np.minimum(pos, total - 1 - pos)
        return list(np.split(flat, np.cumsum(sizes)[:-1])) if docs else []
