"""The one exception hierarchy of ctxzip.

Every error ctxzip raises on purpose derives from :class:`CtxzipError`, so callers can catch one class::

    CtxzipError
    ├── InputError          bad input: wrong type, invalid UTF-8, binary data, too large (also a ValueError)
    │   └── ConfigError     bad option or configuration value: rate outside (0, 1], both/neither budget (ValueError)
    ├── UnknownNameError    unknown compressor / model / tokenizer name; lists the valid ones (also a KeyError)
    ├── MissingDependencyError  an optional extra is not installed; says which ``pip install`` to run (ImportError)
    ├── ModelError          weights could not be resolved or loaded
    ├── BudgetError         a budget cannot be met (e.g. protected spans alone exceed it) when strict=True
    ├── CacheError          a cache backend failed (the cache degrades to "no cache"; raised only when asked)
    └── RetrievalError      unknown or foreign hash in reversible compression (also a KeyError)

Messages name the argument that is wrong and say how to fix the call.
"""

from __future__ import annotations

__all__ = [
    "CtxzipError",
    "InputError",
    "ConfigError",
    "UnknownNameError",
    "MissingDependencyError",
    "ModelError",
    "BudgetError",
    "CacheError",
    "RetrievalError",
]


class CtxzipError(Exception):
    """Base class of every error ctxzip raises on purpose."""


class InputError(CtxzipError, ValueError):
    """The input to compress is unusable: wrong type, invalid UTF-8, binary, too large."""


class ConfigError(InputError):
    """An option or configuration value is invalid."""


class UnknownNameError(CtxzipError, KeyError):
    """A name (compressor, model, tokenizer, ...) is not known. The message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        self.kind = kind
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind} names: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class MissingDependencyError(CtxzipError, ImportError):
    """An optional dependency is missing; the message gives the pip command to run."""


class ModelError(CtxzipError):
    """Model weights could not be found, converted or loaded."""


class BudgetError(CtxzipError):
    """The requested budget cannot be met (only raised with ``strict=True``)."""


class CacheError(CtxzipError):
    """A cache backend failed."""


class RetrievalError(CtxzipError, KeyError):
    """An original could not be retrieved: unknown hash, or issued to another key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "retrieval failed"
