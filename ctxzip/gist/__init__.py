"""gist: soft compression of text segments into decoder input embeddings (ARC-Encoder / CompLLM style).

A segment (at most ``max_segment_tokens`` tokens, compressed independently so it can be cached) becomes
``ceil(n / factor)`` vectors that a frozen local decoder reads in place of token embeddings::

    import ctxzip.gist
    ctx = ctxzip.gist.compress(["first passage ...", "second passage ..."], factor=4, cache="memory")
    out = ctxzip.gist.generate(None, ctx, "Who wrote it?", max_new_tokens=16)   # default: shipped SmolLM2

Importing this package imports neither torch nor transformers.
"""

from __future__ import annotations

from .config import GistConfig, TrainConfig

__all__ = ["GistConfig", "TrainConfig", "compress", "generate", "load_gist", "GistModel", "CompressedContext",
           "CompressedSegment", "GistGeneration", "SHIPPED_WEIGHTS"]


def __getattr__(name: str):  # lazy: the API module imports numpy only, the model module torch
    if name in ("compress", "generate", "load_gist", "GistModel", "CompressedContext", "CompressedSegment",
                "GistGeneration", "SHIPPED_WEIGHTS"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctxzip.gist' has no attribute {name!r}")
