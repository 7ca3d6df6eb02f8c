"""Shared settings of the framework components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctxzip.errors import ConfigError
from ctxzip.types import CompressionResult, DocumentResult


@dataclass(frozen=True)
class Settings:
    """What every component passes to :func:`ctxzip.compress`."""

    method: str = "auto"
    rate: float | None = 0.5
    target_tokens: int | None = None
    target_model: str = "gpt-4o"
    config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate is not None and self.target_tokens is not None:
            raise ConfigError("give either rate or target_tokens to the ctxzip component, not both")
        if self.rate is None and self.target_tokens is None:
            raise ConfigError("the ctxzip component needs rate=R (0 < R <= 1) or target_tokens=N")

    def kwargs(self) -> dict[str, Any]:
        return dict(
            rate=self.rate,
            target_tokens=self.target_tokens,
            method=self.method,
            target_model=self.target_model,
            config=dict(self.config) or None,
            **self.options,
        )


def stats(doc: DocumentResult, result: CompressionResult) -> dict[str, Any]:
    """The compression figures stored under the ``ctxzip`` metadata key of each output document/node."""
    return {
        "method": result.method,
        "origin_tokens": doc.origin_tokens,
        "compressed_tokens": doc.compressed_tokens,
        "kept_fraction": doc.kept_fraction,
        "request_rate": result.rate,
    }
