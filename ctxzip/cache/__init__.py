"""The cache of compressed segments: repeated work is free.

The expensive part of a compressor is scoring; selecting to a budget is cheap. So the cache keeps, per document,
the unit scores a compressor computed (one entry serves every rate, and a request sharing 19 of its 20 documents
with an earlier one scores one), plus whole results of identical requests. Keys are SHA-256 over canonical JSON of
everything that changes a value (:mod:`ctxzip.cache.keys`).

Turning it on (off by default)
    * per call: ``ctxzip.compress(..., cache="sqlite")`` (or ``True`` for the default cache, ``False`` for none, a
      spec string, or a :class:`Cache`);
    * per process: ``ctxzip.cache.configure("redis://cache:6379/0")``, or the environment
      ``CTXZIP_CACHE=memory | sqlite[:PATH] | redis://HOST:PORT/DB`` (``1``/``on`` = the default SQLite file).

Specs take options as a query string: ``sqlite:/var/cache/ctxzip.sqlite3?max_bytes=2G&ttl=7d``,
``memory?max_bytes=64M``, ``redis://h:6379/0?ttl=1d&prefix=app1:``; ``near=0.97`` turns on near-duplicate reuse
(FAISS over MiniLM embeddings; changes outputs, see ``docs/cache.md``), ``results=0`` / ``scores=0`` switch a layer
off, ``retry_after=5`` is the back-off after a backend failure.

Backends: in-process LRU (``memory``), an embedded SQLite file in WAL mode shared by several processes
(``sqlite``, default ``<user cache dir>/ctxzip/cache/cache.sqlite3``), Redis shared by several replicas.
A failing backend never fails a request (see :class:`Cache`). :func:`stats` gives the counters the report and the
sidecar's ``/metrics`` read.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError
from .backends import Backend, MemoryBackend, SQLiteBackend, default_sqlite_path
from .front import LAYERS, Cache, CacheStats
from .keys import SCHEMA_VERSION

__all__ = [
    "Cache",
    "CacheStats",
    "Backend",
    "MemoryBackend",
    "SQLiteBackend",
    "CACHE_ENV",
    "LAYERS",
    "SCHEMA_VERSION",
    "open_cache",
    "configure",
    "configured",
    "resolve",
    "stats",
    "stats_by_cache",
    "default_sqlite_path",
    "warm",
]

logger = logging.getLogger("ctxzip.cache")

#: Environment variable naming the process-wide cache: ``memory``, ``sqlite[:PATH]``, ``redis://...``, ``1``/``off``.
CACHE_ENV = "CTXZIP_CACHE"

_TRUE = {"1", "true", "yes", "on", "default"}
_FALSE = {"", "0", "false", "no", "off", "none"}
_UNSET = object()

_open: dict[str, Cache] = {}  # spec -> cache (one per spec per process)
_extra: list[Cache] = []  # caches given as objects (counted by stats())
_lock = threading.RLock()
_configured: Any = _UNSET  # configure()'s choice: a Cache, None (off) or _UNSET (use the environment)
_env_seen: tuple[str, Cache | None] | None = None

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_KNOWN = {"max_bytes", "max_entries", "ttl", "retry_after", "results", "scores", "near", "prefix", "timeout",
          "connect_timeout", "check_every"}


def _num(name: str, raw: str) -> float | None:
    if raw.strip().lower() in ("none", "inf", "unbounded"):
        return None
    rx, units = (_SIZE, _SIZE_UNITS) if name in ("max_bytes", "max_entries") else (_TIME, _TIME_UNITS)
    m = rx.match(raw)
    if m is None:
        raise ConfigError(
            f"cache option {name}={raw!r} is not a number; write e.g. max_bytes=512M, ttl=7d, retry_after=5"
        )
    value = float(m.group(1)) * units[m.group(2).lower()]
    return int(value) if name in ("max_bytes", "max_entries", "check_every") else value


def _flag(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"cache option {name}={raw!r} must be 1 or 0")


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    if "?" not in spec:
        return spec, {}
    base, query = spec.split("?", 1)
    return base, dict(parse_qsl(query, keep_blank_values=True))


def open_cache(spec: str, **options: Any) -> Cache:
    """Build a new :class:`Cache` from a spec (see the module doc); keyword options override the query string.

    Raises :class:`ConfigError` for a malformed spec. Opening never touches the backend: a Redis that is down
    or a corrupt file shows up as a counted failure on first use, not here.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"cache spec must be 'memory', 'sqlite[:PATH]' or 'redis://HOST:PORT/DB', got {spec!r}")
    spec = spec.strip()
    lowered = spec.lower()
    if lowered.startswith(("redis://", "rediss://", "unix://")):
        parts = urlsplit(spec)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        ours = {k: v for k, v in query.items() if k in _KNOWN}
        rest = {k: v for k, v in query.items() if k not in _KNOWN}
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
        kind = "redis"
    else:
        base, ours = _split_options(spec)
        unknown = sorted(set(ours) - _KNOWN)
        if unknown:
            raise ConfigError(f"unknown cache option(s) {unknown} in {spec!r}; known: {', '.join(sorted(_KNOWN))}")
        head, _, rest_path = base.partition(":")
        kind = head.lower()
        if kind not in ("memory", "sqlite"):
            raise ConfigError(
                f"unknown cache {spec!r}: use 'memory', 'sqlite', 'sqlite:/path/cache.sqlite3' or 'redis://host:6379/0'"
            )
        if kind == "memory" and rest_path:
            raise ConfigError(f"the memory cache takes no path ({spec!r}); options go after '?', e.g. memory?max_bytes=64M")
    opts: dict[str, Any] = {}
    for k, v in ours.items():
        if k in ("results", "scores"):
            opts[k] = _flag(k, v)
        elif k == "prefix":
            opts[k] = v
        elif k == "near":
            opts[k] = float(v) if v.strip().lower() not in _FALSE else None
        else:
            opts[k] = _num(k, v)
    opts.update(options)
    front = {k: opts.pop(k) for k in ("retry_after", "results", "scores") if k in opts}
    near = opts.pop("near", None)
    try:
        if kind == "memory":
            backend: Backend = MemoryBackend(**opts)
        elif kind == "sqlite":
            path = rest_path or None
            backend = SQLiteBackend(path, **opts)
        else:
            from .redis_backend import RedisBackend

            backend = RedisBackend(base, **opts)
    except TypeError as exc:
        raise ConfigError(f"cache {spec!r}: {exc}") from None
    near_index = None
    if near is not None:
        from .near import NearDuplicates

        near_index = NearDuplicates(threshold=near)
    shown = re.sub(r"//[^/@]*@", "//***@", spec) if kind == "redis" else spec  # never show a password
    return Cache(backend, near=near_index, spec=shown, **front)


def _shared(spec: str) -> Cache:
    with _lock:
        cache = _open.get(spec)
        if cache is None:
            cache = _open[spec] = open_cache(spec)
        return cache


def _default_spec() -> str:
    return "sqlite"


def _from_env() -> Cache | None:
    global _env_seen
    raw = os.environ.get(CACHE_ENV, "").strip()
    seen = _env_seen
    if seen is not None and seen[0] == raw:
        return seen[1]
    cache: Cache | None
    if raw.lower() in _FALSE:
        cache = None
    else:
        try:
            cache = _shared(_default_spec() if raw.lower() in _TRUE else raw)
        except ConfigError as exc:
            logger.warning("ctxzip cache: %s=%r is not usable (%s); running without a cache", CACHE_ENV, raw, exc)
            cache = None
    _env_seen = (raw, cache)
    return cache


def configure(spec: Any = True, **options: Any) -> Cache | None:
    """Set the process-wide cache: a spec string, a :class:`Cache`, ``True`` (the default SQLite file),
    ``False``/``None`` (off), or ``"env"`` to follow ``CTXZIP_CACHE`` again. Returns the cache now in use."""
    global _configured
    with _lock:
        if isinstance(spec, str) and spec.strip().lower() == "env":
            _configured = _UNSET
            return _from_env()
        if spec is None or spec is False:
            _configured = None
        elif spec is True:
            _configured = open_cache(_default_spec(), **options) if options else _shared(_default_spec())
        elif isinstance(spec, Cache):
            if spec not in _extra and spec not in _open.values():
                _extra.append(spec)
            _configured = spec
        elif isinstance(spec, str):
            if options:
                _configured = open_cache(spec, **options)
                _extra.append(_configured)
            else:
                _configured = _shared(spec)
        else:
            raise ConfigError(f"configure() takes a cache spec string, a Cache, True or False; got {type(spec).__name__}")
        return _configured


def configured() -> Cache | None:
    """The process-wide cache (from :func:`configure` or ``CTXZIP_CACHE``), or None when off."""
    if _configured is not _UNSET:
        return _configured
    return _from_env()


def resolve(option: Any = _UNSET) -> Cache | None:
    """The cache for one call given its ``cache=`` option (absent: the process-wide cache)."""
    if option is _UNSET or option is None:
        return configured()
    if option is False:
        return None
    if option is True:
        return configured() or _shared(_default_spec())
    if isinstance(option, Cache):
        with _lock:
            if option not in _extra and option not in _open.values():
                _extra.append(option)
        return option
    if isinstance(option, str):
        low = option.strip().lower()
        if low in _FALSE:
            return None
        if low in _TRUE:
            return configured() or _shared(_default_spec())
        return _shared(option.strip())
    raise ConfigError(
        f"cache= must be True, False, a spec ('memory', 'sqlite[:PATH]', 'redis://host:6379/0') or a "
        f"ctxzip.cache.Cache, got {type(option).__name__}"
    )


def _all() -> list[Cache]:
    with _lock:
        caches = list(_open.values()) + list(_extra)
    seen: dict[int, Cache] = {}
    for c in caches:
        seen[id(c)] = c
    return list(seen.values())


def stats_by_cache() -> dict[str, CacheStats]:
    """Counters of every cache this process opened, by spec."""
    out: dict[str, CacheStats] = {}
    for c in _all():
        out[c.spec] = out[c.spec] + c.stats() if c.spec in out else c.stats()
    return out


def stats() -> CacheStats:
    """The sum of the counters of every cache this process opened (zeros when none was)."""
    total = CacheStats()
    for s in stats_by_cache().values():
        total = total + s
    return total


def _reset_for_tests() -> None:
    """Close and forget every cache and the configured one (tests)."""
    global _configured, _env_seen
    with _lock:
        for c in _all():
            c.close()
        _open.clear()
        _extra.clear()
        _configured = _UNSET
        _env_seen = None


def warm(*args: Any, **kwargs: Any) -> Any:
    """See :func:`ctxzip.cache.hooks.warm`."""
    from .hooks import warm as _warm

    return _warm(*args, **kwargs)
