"""The model layer: resolve a spec to weights, load each model once per process, score tokens.

>>> from ctxzip.models import load_causal_lm, CausalLMScorer
>>> scorer = CausalLMScorer(load_causal_lm("smollm2-135m"))
>>> [s.mean_nll for s in scorer.token_nll(["The cat sat on the mat."])]  # doctest: +SKIP

Importing this package does not import torch or transformers; loading a model does.
"""

from __future__ import annotations

from .convert import ensure_converted
from .loading import (
    DTYPES,
    LoadedLM,
    clear_shared,
    load_causal_lm,
    load_encoder,
    pick_device,
    resolve_dtype,
    shared,
)
from .scorer import CausalLMScorer, PrefixStream, TokenScores
from .specs import (
    DEFAULT_CAUSAL_LM,
    DEFAULT_ENCODER,
    ModelRef,
    ModelSpec,
    list_models,
    register_model,
    resolve,
)

__all__ = [
    "DEFAULT_CAUSAL_LM",
    "DEFAULT_ENCODER",
    "DTYPES",
    "resolve_dtype",
    "ModelRef",
    "ModelSpec",
    "LoadedLM",
    "TokenScores",
    "CausalLMScorer",
    "PrefixStream",
    "resolve",
    "list_models",
    "register_model",
    "ensure_converted",
    "load_causal_lm",
    "load_encoder",
    "shared",
    "clear_shared",
    "pick_device",
]
