"""ctxzip: prompt and context compression for LLM applications.

>>> import ctxzip
>>> r = ctxzip.compress(documents, question="Who wrote it?", rate=0.33)   # doctest: +SKIP
>>> r.text, r.rate, r.origin_tokens, r.compressed_tokens                  # doctest: +SKIP

``import ctxzip`` is light: models, kernels, the service and the integrations load their heavy dependencies
only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .api import acompress, compress
from .base import BaseCompressor, Compressor
from .errors import (
    BudgetError,
    CacheError,
    ConfigError,
    CtxzipError,
    InputError,
    MissingDependencyError,
    ModelError,
    RetrievalError,
    UnknownNameError,
)
from .protect import ProtectionRules
from .registry import get_compressor, list_compressors, register
from .types import CompressionRequest, CompressionResult, Document, DocumentResult, Span

__version__ = "0.1.0"

__all__ = [
    "compress",
    "acompress",
    "compress_messages",
    "retrieve",
    "Pipeline",
    "get_compressor",
    "list_compressors",
    "register",
    "Compressor",
    "BaseCompressor",
    "CompressionRequest",
    "CompressionResult",
    "Document",
    "DocumentResult",
    "Span",
    "ProtectionRules",
    "CtxzipError",
    "InputError",
    "ConfigError",
    "UnknownNameError",
    "MissingDependencyError",
    "ModelError",
    "BudgetError",
    "CacheError",
    "RetrievalError",
    "__version__",
]

# names provided by modules that are imported on first use
_LAZY = {
    "compress_messages": ("ctxzip.messages", "compress_messages"),
    "Pipeline": ("ctxzip.pipeline", "Pipeline"),
    "retrieve": ("ctxzip.reversible", "retrieve"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ctxzip' has no attribute {name!r}")
