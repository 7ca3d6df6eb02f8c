"""``random``: keep randomly chosen words (seeded, so runs repeat). A baseline."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ..base import BaseCompressor
from ..errors import ConfigError
from ..registry import register
from ..types import CompressionRequest
from ..units import Units


@register("random")
class RandomCompressor(BaseCompressor):
    version = "1"

    @dataclasses.dataclass(frozen=True)
    class Config:
        seed: int = 0

        def __post_init__(self) -> None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise ConfigError(f"random: seed must be an integer, got {self.seed!r}")

    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        seed = int(request.options.get("seed", self.options(request).seed))
        # same input + seed -> same selection, independent of earlier calls
        digest = hashlib.sha256("\x00".join(u.text for u in docs).encode()).digest()
        rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
        return [rng.random(len(u)) for u in docs]
