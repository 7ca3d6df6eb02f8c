"""The one-call API: :func:`compress` and :func:`acompress`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .errors import ConfigError, InputError
from .registry import compressor_class, list_compressors
from .types import CompressionRequest, CompressionResult

__all__ = ["compress", "acompress", "shared_compressor"]

_instances: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
_lock = threading.Lock()


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def shared_compressor(method: str, **config: Any) -> Any:
    """One instance per (method, config) per process, so models load once."""
    cls = compressor_class(method)
    key = (method, _freeze(config))
    with _lock:
        inst = _instances.get(key)
        if inst is None:
            inst = cls(**config)
            _instances[key] = inst
    return inst


def _resolve_method(method: str) -> str:
    if not isinstance(method, str):
        raise ConfigError(f"method must be a compressor name, got {type(method).__name__}")
    if method == "auto" and "auto" not in list_compressors():
        for fallback in ("lingua2", "embed-rank", "truncate"):
            if fallback in list_compressors():
                return fallback
    return method


def compress(
    context: Any,
    *,
    question: str | None = None,
    instruction: str | None = None,
    rate: float | None = None,
    target_tokens: int | None = None,
    method: str = "auto",
    target_model: str = "gpt-4o",
    protect: Any = None,
    config: dict[str, Any] | None = None,
    **options: Any,
) -> CompressionResult:
    """Compress ``context`` (a string or a list of documents) to ``rate`` or ``target_tokens``.

    ``config`` configures the compressor instance (shared per process); ``options`` are per-call options
    (any of the compressor's config fields, plus ``seed``, ``strict``, ``route``, ``max_chars``, ...).
    A context without any text (``""``, ``[]``, only whitespace) raises :class:`InputError`.
    """
    request = CompressionRequest.create(
        context,
        question=question,
        instruction=instruction,
        rate=rate,
        target_tokens=target_tokens,
        target_model=target_model,
        protect=protect,
        **options,
    )
    if not any(d.text.strip() for d in request.documents):
        n = len(request.documents)
        what = "no documents" if n == 0 else "no text in its document" if n == 1 else f"no text in any of its {n} documents"
        raise InputError(
            f"context is empty ({what}): there is nothing to compress; skip the call when there is no context "
            "(e.g. retrieval found nothing)"
        )
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"config must be a dict of compressor settings, got {type(config).__name__}")
    compressor = shared_compressor(_resolve_method(method), **(config or {}))
    result: CompressionResult
    if request.options.get("reversible"):  # store originals, add [#hash] markers (ctxzip.reversible)
        from .reversible import compress_reversible

        result = compress_reversible(compressor, request, namespace=request.options.get("namespace", "default"))
    else:
        result = compressor.compress(request)
    _record(result, request)
    return result


def _record(result: CompressionResult, request: CompressionRequest) -> None:
    try:
        from . import ledger
    except ImportError:
        return
    ledger.record(
        result,
        route=request.options.get("route"),
        app=request.options.get("app"),
        provider=request.options.get("provider"),
        ledger=request.options.get("ledger"),
    )


async def acompress(context: Any, **kwargs: Any) -> CompressionResult:
    """Async twin of :func:`compress` (runs the work in a thread)."""
    return await asyncio.to_thread(compress, context, **kwargs)
