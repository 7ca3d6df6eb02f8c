"""The :class:`Cache` in front of a backend: counts, batches, and turns backend failures into misses.

A failing backend (Redis down, SQLite file locked for too long or corrupt, disk full) never fails a request: the
operation returns "nothing cached", a warning is logged (once per outage), ``errors`` is counted and the backend is
left alone for ``retry_after`` seconds (operations in that window are counted as ``skipped``). The first operation
after the window tries the backend again; when it works the cache is back (logged at INFO).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import ConfigError
from .backends import Backend

__all__ = ["Cache", "CacheStats", "LAYERS"]

logger = logging.getLogger("ctxzip.cache")

LAYERS = ("scores", "result")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """Counters of one cache (or the sum of several), since the process started or the last reset.

    ``hits``/``misses`` count documents looked up in the scores layer plus whole results looked up in the result
    layer (also shown apart as ``result_hits``/``result_misses``); ``near_hits`` are misses served from a
    near-duplicate's scores. ``evictions`` are entries this process removed for a size bound or a TTL. ``errors``
    are failed backend operations and values that did not parse; ``skipped`` are operations not tried while the
    backend was backing off; ``degraded`` is how many caches are backing off now.
    """

    hits: int = 0
    misses: int = 0
    result_hits: int = 0
    result_misses: int = 0
    near_hits: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    evictions: int = 0
    errors: int = 0
    skipped: int = 0
    degraded: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """hits / lookups (0.0 before any lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})

    def to_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["lookups"] = self.lookups
        out["hit_rate"] = self.hit_rate
        return out


class Cache:
    """A backend plus counters and failure handling. Use :func:`ctxzip.cache.open_cache` to build one from a spec.

    ``scores`` / ``results`` switch the two layers (per-document scores; whole results of identical requests).
    ``near`` (a :class:`~ctxzip.cache.near.NearDuplicates`) reuses a near-duplicate document's scores; off by default.
    """

    def __init__(self, backend: Backend, *, retry_after: float = 5.0, scores: bool = True, results: bool = True,
                 near: Any = None, spec: str | None = None) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"Cache needs a ctxzip.cache Backend, got {type(backend).__name__}")
        self.backend = backend
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or not retry_after >= 0:
            raise ConfigError(f"cache retry_after must be a number of seconds >= 0, got {retry_after!r}")
        self.retry_after = float(retry_after)
        self.scores = bool(scores)
        self.results = bool(results)
        self.near = near
        self.spec = spec or backend.description
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((f.name for f in dataclasses.fields(CacheStats)), 0)
        self._down_until = 0.0
        self._degraded = False
        self._last_error = ""

    def __repr__(self) -> str:
        return f"Cache({self.spec!r})"

    # ------------------------------------------------------------------ failure handling
    @property
    def degraded(self) -> bool:
        """True while the backend is failing (requests run without the cache)."""
        return self._degraded

    @property
    def last_error(self) -> str:
        return self._last_error

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                self._counts[k] += v

    def _guard(self, what: str, fn: Callable[[], T], default: T) -> tuple[T, bool]:
        """Run a backend operation; returns (value, ok)."""
        if self._degraded and time.monotonic() < self._down_until:
            self._count(skipped=1)
            return default, False
        try:
            value = fn()
        except Exception as exc:  # a cache must never fail the request: every backend failure is a miss
            self._count(errors=1)
            self._last_error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                first = not self._degraded
                self._degraded = True
                self._down_until = time.monotonic() + self.retry_after
            log = logger.warning if first else logger.debug
            log("ctxzip cache %s: %s failed (%s); continuing without the cache, retrying in %gs",
                self.spec, what, self._last_error, self.retry_after)
            return default, False
        if self._degraded:
            with self._lock:
                self._degraded = False
            logger.info("ctxzip cache %s is back", self.spec)
        return value, True

    # ------------------------------------------------------------------ operations
    def get_many(self, keys: Sequence[str], *, layer: str = "scores") -> dict[str, bytes]:
        """Values of the ``keys`` that are cached (an empty dict when the backend fails). Counts hits and misses."""
        keys = list(keys)
        if not keys:
            return {}
        found, _ = self._guard("read", lambda: self.backend.get_many(keys), {})
        hits = sum(1 for k in keys if k in found)
        n_read = sum(len(v) for v in found.values())
        if layer == "result":
            self._count(hits=hits, misses=len(keys) - hits, result_hits=hits, result_misses=len(keys) - hits,
                        bytes_read=n_read)
        else:
            self._count(hits=hits, misses=len(keys) - hits, bytes_read=n_read)
        return found

    def set_many(self, items: Mapping[str, bytes]) -> bool:
        """Store values; False when the backend failed (nothing raised)."""
        if not items:
            return True
        before = self.backend.evictions
        _, ok = self._guard("write", lambda: self.backend.set_many(items), None)
        if ok:
            self._count(writes=len(items), bytes_written=sum(len(v) for v in items.values()),
                        evictions=self.backend.evictions - before)
        return ok

    def reject(self, keys: Sequence[str], *, layer: str = "scores") -> None:
        """Values of ``keys`` did not parse: count them as errors and misses (not hits) and delete them."""
        if not keys:
            return
        n = len(keys)
        inc = {"errors": n, "hits": -n, "misses": n}
        if layer == "result":
            inc.update(result_hits=-n, result_misses=n)
        self._count(**inc)
        logger.warning("ctxzip cache %s: %d cached value(s) did not parse; recomputing", self.spec, n)
        self._guard("delete", lambda: self.backend.delete_many(list(keys)), None)

    def count_near(self, n: int) -> None:
        self._count(near_hits=n)

    def clear(self) -> int:
        """Remove every entry (raises :class:`~ctxzip.errors.CacheError` when the backend fails: asked for)."""
        from ..errors import CacheError

        try:
            n = self.backend.clear()
        except Exception as exc:
            raise CacheError(f"could not clear {self.spec}: {type(exc).__name__}: {exc}") from exc
        if self.near is not None:
            self.near.clear()
        return n

    def info(self) -> dict[str, Any]:
        """What the backend stores (entries, bytes, ...) plus this process's counters; never raises."""
        data, ok = self._guard("info", self.backend.info, {})
        out: dict[str, Any] = {"spec": self.spec, "backend": self.backend.kind, "available": ok, **data}
        out["counters"] = self.stats().to_dict()
        if not ok and self._last_error:
            out["error"] = self._last_error
        return out

    def stats(self) -> CacheStats:
        with self._lock:
            counts = dict(self._counts)
        counts["degraded"] = int(self._degraded)
        return CacheStats(**counts)

    def reset_stats(self) -> None:
        with self._lock:
            for k in self._counts:
                self._counts[k] = 0

    def close(self) -> None:
        try:
            self.backend.close()
        except Exception as exc:  # closing a dead connection is not an error worth raising
            logger.debug("ctxzip cache %s: close failed (%s)", self.spec, exc)
