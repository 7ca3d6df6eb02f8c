"""Where the cache meets the compressors (called from :mod:`ctxzip.base`).

* :func:`run_compress` wraps the outermost ``compress()`` of a call: an identical request (same documents,
  question, budget, options, compressor config and weights) returns the stored result.
* :func:`cached_scores` wraps ``score()`` for compressors whose per-document scores depend only on that document
  (``cacheable_scores = True``): each document's scores are looked up, only the misses are scored (in one batch),
  and the new scores are stored.
* :func:`warm` scores documents into the cache ahead of time (``ctxzip cache warm``).

Which compressors cache per-document scores (``cacheable_scores``): ``lingua2`` (each document is tokenised and
classified on its own). Not: ``truncate`` (scores are global positions), ``random`` (seeded by the whole input),
``embed-rank`` (a global position term, and the centroid of all pieces without a question), ``lingua`` and
``longlingua`` (their ``select`` ranks pieces against each other and iterative mode conditions on the compressed
prefix), ``gemfilter`` (attention over the whole context), ``codezip`` (own ``compress``). Every compressor derived
from :class:`~ctxzip.base.BaseCompressor` gets the whole-result cache.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheError, ConfigError
from ..types import CompressionRequest, CompressionResult
from ..units import Units
from .codec import decode_result, decode_scores, encode_result, encode_scores
from .keys import result_key, score_context, score_key

__all__ = ["run_compress", "cached_scores", "warm", "WarmReport"]

logger = logging.getLogger("ctxzip.cache")


class _CallState:
    """Per outermost compress() call: how many documents were served from the cache."""

    __slots__ = ("hits",)

    def __init__(self) -> None:
        self.hits = 0


_STATE: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar("ctxzip_cache_call", default=None)
_warned: set[tuple[str, str]] = set()


def _cache_for(request: CompressionRequest) -> Any:
    from . import resolve

    if "cache" in request.options:
        return resolve(request.options["cache"])
    return resolve()


def _uncacheable(compressor: Any, exc: Exception) -> None:
    key = (compressor.name, str(exc))
    if key not in _warned:
        _warned.add(key)
        logger.warning("ctxzip cache: %s requests are not cached (%s)", compressor.name, exc)


def run_compress(compressor: Any, request: Any, fn: Callable[[Any, Any], CompressionResult]) -> CompressionResult:
    """Run ``fn(compressor, request)`` (an unwrapped ``compress``) behind the whole-result cache."""
    if _STATE.get() is not None or not isinstance(request, CompressionRequest):
        return fn(compressor, request)  # nested (a pipeline stage) or invalid input: no result caching here
    state = _CallState()
    token = _STATE.set(state)
    try:
        cache = _cache_for(request)
        if cache is None or not cache.results:
            return _with_hits(fn(compressor, request), state)
        started = time.perf_counter()
        try:
            key = result_key(compressor, request, compressor.options(request))
        except CacheError as exc:
            _uncacheable(compressor, exc)
            return _with_hits(fn(compressor, request), state)
        found = cache.get_many([key], layer="result")
        if key in found:
            try:
                return decode_result(found[key], request, time.perf_counter() - started)
            except CacheError:
                cache.reject([key], layer="result")
        result = _with_hits(fn(compressor, request), state)
        try:
            blob = encode_result(result)
        except CacheError as exc:
            logger.debug("ctxzip cache: result not stored (%s)", exc)
        else:
            cache.set_many({key: blob})
        return result
    finally:
        _STATE.reset(token)


def _with_hits(result: CompressionResult, state: _CallState) -> CompressionResult:
    if state.hits and result.cache_hits != state.hits:
        return dataclasses.replace(result, cache_hits=state.hits)
    return result


def _content_type(u: Units) -> str:
    return "json" if u.is_json else "text"


def _check(compressor: Any, docs: Sequence[Units], scores: Sequence[Any]) -> list[np.ndarray] | None:
    if len(scores) != len(docs):
        return None
    out = []
    for u, s in zip(docs, scores, strict=True):
        arr = np.asarray(s, dtype=np.float64)
        if arr.shape != (len(u),):
            return None
        out.append(arr)
    return out


def cached_scores(compressor: Any, request: CompressionRequest, docs: list[Units], counter: Any,
                  cache: Any = None) -> list[np.ndarray]:
    """``compressor.score(request, docs)`` with per-document lookups (scores only the misses, in one batch)."""
    if cache is None:
        cache = _cache_for(request)
    if cache is None or not cache.scores or not docs:
        return compressor.score(request, docs)
    try:
        context = score_context(compressor, request, counter, compressor.options(request))
    except CacheError as exc:
        _uncacheable(compressor, exc)
        return compressor.score(request, docs)
    keys = [score_key(context, u.text, _content_type(u)) for u in docs]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    found = cache.get_many(list(first), layer="scores")
    have: dict[str, np.ndarray] = {}
    bad = []
    for k, blob in found.items():
        try:
            have[k] = decode_scores(blob, len(docs[first[k]]))
        except CacheError:
            bad.append(k)
    cache.reject(bad)
    served = sum(1 for k in keys if k in have)
    todo = [k for k in first if k not in have]
    if todo and cache.near is not None:
        near = cache.near.lookup(context, [docs[first[k]] for k in todo])
        for k, arr in zip(list(todo), near, strict=True):
            if arr is not None:
                have[k] = arr
        n_near = sum(1 for a in near if a is not None)
        if n_near:
            cache.count_near(n_near)
            served = sum(1 for k in keys if k in have)
            todo = [k for k in todo if k not in have]
    if todo:
        fresh = compressor.score(request, [docs[first[k]] for k in todo])
        checked = _check(compressor, [docs[first[k]] for k in todo], fresh)
        if checked is None:  # wrong shapes: let the caller raise its usual error, store nothing
            result = dict(zip(todo, fresh, strict=False))
            return [result[k] if k in result else have[k] for k in keys]
        cache.set_many({k: encode_scores(a) for k, a in zip(todo, checked, strict=True)})
        if cache.near is not None:
            cache.near.add(context, [docs[first[k]] for k in todo], checked)
        have.update(zip(todo, checked, strict=True))
    state = _STATE.get()
    if state is not None:
        state.hits += served
    return [have[k] for k in keys]


# ---------------------------------------------------------------------------------------------------------- warm


@dataclass(frozen=True)
class WarmReport:
    """What :func:`warm` did: documents seen, already cached, scored now, and seconds spent."""

    documents: int
    cached: int
    scored: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def warm(
    method: str,
    documents: Sequence[Any],
    *,
    question: str | None = None,
    instruction: str | None = None,
    target_model: str = "gpt-4o",
    protect: Any = None,
    config: dict[str, Any] | None = None,
    cache: Any = True,
    batch: int = 32,
    **options: Any,
) -> WarmReport:
    """Score ``documents`` into the cache so later requests with them only select (no model work).

    Only compressors with per-document scores (``cacheable_scores``) can be warmed; the key is the same as a
    request's with the same question (question-aware compressors), target model, protection rules and config.
    """
    from ..api import shared_compressor
    from ..tokens import get_counter
    from ..units import segment
    from . import resolve

    target = resolve(cache)
    if target is None:
        raise ConfigError("warm needs a cache: pass cache='sqlite' (or memory, redis://...) or set CTXZIP_CACHE")
    compressor = shared_compressor(method, **(config or {}))
    if not getattr(compressor, "cacheable_scores", False):
        raise ConfigError(
            f"{method} does not cache per-document scores (they depend on the other documents), so there is "
            "nothing to warm; warm works for: lingua2"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    started = time.perf_counter()
    counter = get_counter(target_model)
    total = cached = scored = 0
    for i in range(0, len(documents), batch):
        request = CompressionRequest.create(
            list(documents[i : i + batch]), question=question, instruction=instruction, rate=1.0,
            target_model=target_model, protect=protect, **options,
        )
        units = [segment(d.text, request.protect, counter) for d in request.documents if d.text.strip()]
        before = target.stats()
        if units:
            cached_scores(compressor, request, units, counter, cache=target)
        after = target.stats()
        total += len(request.documents)
        cached += after.hits - before.hits
        scored += after.misses - before.misses
    return WarmReport(documents=total, cached=cached, scored=scored, seconds=time.perf_counter() - started)
