"""The compressor registry: names → classes, imported lazily so that ``import ctxzip`` stays light."""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import UnknownNameError

__all__ = ["register", "get_compressor", "list_compressors", "compressor_class"]

# name -> module that registers it on import
_BUILTIN: dict[str, str] = {
    "truncate": "ctxzip.compressors.truncate",
    "random": "ctxzip.compressors.random_",
    "embed-rank": "ctxzip.compressors.embed_rank",
    "lingua": "ctxzip.compressors.lingua",
    "longlingua": "ctxzip.compressors.longlingua",
    "lingua2": "ctxzip.compressors.lingua2",
    "codezip": "ctxzip.compressors.codezip",
    "gemfilter": "ctxzip.compressors.gemfilter",
    "pipeline": "ctxzip.pipeline",
    "auto": "ctxzip.router",
}

_classes: dict[str, type] = {}
_lock = threading.Lock()
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("mine")`` makes ``get_compressor("mine")`` work."""

    def deco(cls: T) -> T:
        cls.name = name  # type: ignore[attr-defined]
        _classes[name] = cls
        return cls

    return deco


def _available(name: str) -> bool:
    if name in _classes:
        return True
    module = _BUILTIN.get(name)
    if module is None:
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def list_compressors() -> list[str]:
    """Names of every compressor that can be created here (built-in and registered)."""
    return sorted({n for n in _BUILTIN if _available(n)} | set(_classes))


def compressor_class(name: str) -> type:
    if not isinstance(name, str):
        raise UnknownNameError("compressor", repr(name), list_compressors())
    with _lock:
        if name not in _classes and name in _BUILTIN and _available(name):
            importlib.import_module(_BUILTIN[name])
        cls = _classes.get(name)
    if cls is None:
        raise UnknownNameError("compressor", name, list_compressors())
    return cls


def get_compressor(name: str, **config: Any) -> Any:
    """Create the compressor registered as ``name``; unknown names fail with the list of valid ones."""
    return compressor_class(name)(**config)
