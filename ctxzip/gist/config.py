"""Configuration of the gist encoder and of its training run (frozen, self-validating)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["GistConfig", "TrainConfig", "SCHEDULES"]

SCHEDULES = ("constant", "cosine")


def _pos_int(name: str, value: Any, *, minimum: int = 1, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")


@dataclass(frozen=True)
class GistConfig:
    """Shape of a gist encoder.

    A segment of at most ``max_segment_tokens`` tokens runs through the decoder's own embeddings and its first
    ``frozen_layers`` layers (frozen, shared with the decoder, never stored), then ``trainable_layers`` layers
    initialised from the next decoder layers; every ``factor`` positions are mean-pooled, and a small MLP
    projector (zero-initialised last layer) adds its output to the mean-pooled token embeddings of the same
    positions, so an untrained encoder already hands the decoder pooled embeddings. ``factors`` are the pooling
    factors the weights were trained for; ``causal=False`` makes the encoder's attention bidirectional.
    """

    decoder: str = "smollm2-135m"
    factor: int = 4
    factors: tuple[int, ...] = (4, 8)
    max_segment_tokens: int = 128
    frozen_layers: int = 2
    trainable_layers: int = 1
    projector_hidden: int = 1024
    causal: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.decoder, str) or not self.decoder.strip():
            raise ConfigError(f"decoder must name a causal LM such as 'smollm2-135m', got {self.decoder!r}")
        if isinstance(self.factors, list):
            object.__setattr__(self, "factors", tuple(self.factors))
        if not isinstance(self.factors, tuple) or not self.factors:
            raise ConfigError(f"factors must be a non-empty tuple of pooling factors such as (4, 8), got {self.factors!r}")
        for f in self.factors:
            _pos_int("each of factors", f, hint=" (use 4 or 8)")
        _pos_int("factor", self.factor, hint=" (use 4 or 8)")
        if self.factor not in self.factors:
            raise ConfigError(f"factor={self.factor} is not one of the trained factors {self.factors}; pick one of them")
        _pos_int("max_segment_tokens", self.max_segment_tokens, minimum=max(self.factors),
                 hint=f" (at least the largest factor, {max(self.factors)})")
        _pos_int("frozen_layers", self.frozen_layers, minimum=0)
        _pos_int("trainable_layers", self.trainable_layers, minimum=0)
        _pos_int("projector_hidden", self.projector_hidden)
        if not isinstance(self.causal, bool):
            raise ConfigError(f"causal must be True or False, got {self.causal!r}")

    def replace(self, **changes: Any) -> GistConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["factors"] = list(self.factors)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GistConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown gist config field(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "factors" in values:
            values["factors"] = tuple(values["factors"])
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: reconstruction (``recon_weight`` of the steps) + continuation (the rest)."""

    out_dir: str
    data_dir: str = "/work/shared/data"
    segment_tokens: int = 64
    continuation_tokens: int = 16
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.0
    recon_weight: float = 0.2
    max_minutes: float = 20.0
    max_steps: int = 100_000
    checkpoint_every: int = 10
    seed: int = 0
    threads: int = 2
    schedule: str = "constant"  # "cosine": from lr down to lr/10 at max_steps
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): a function of the step alone, so a resumed run matches."""
        scale = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            scale = (step + 1) / self.warmup_steps
        elif self.schedule == "cosine":
            span = max(1, self.max_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            scale = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
        return float(self.lr) * scale

    def __post_init__(self) -> None:
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ConfigError("out_dir must be a directory path for checkpoints and the loss log")
        _pos_int("segment_tokens", self.segment_tokens, minimum=8)
        _pos_int("continuation_tokens", self.continuation_tokens)
        _pos_int("batch_size", self.batch_size)
        _pos_int("max_steps", self.max_steps)
        _pos_int("checkpoint_every", self.checkpoint_every)
        _pos_int("threads", self.threads)
        _pos_int("seed", self.seed, minimum=0)
        _pos_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        for name in ("lr", "max_minutes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{name} must be a number > 0, got {v!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        rw = self.recon_weight
        if isinstance(rw, bool) or not isinstance(rw, (int, float)) or not 0.0 <= rw <= 1.0:
            raise ConfigError(f"recon_weight is the share of reconstruction steps, in [0, 1]; got {rw!r} (use 0.2)")
