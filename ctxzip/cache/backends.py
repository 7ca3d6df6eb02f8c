"""Cache backends behind one interface: in-process LRU and an embedded SQLite file (many processes).

A backend stores opaque ``bytes`` under hex string keys. It may raise on any failure: the :class:`~ctxzip.cache.Cache`
in front of it turns failures into misses, counts them and backs off (a backend never fails a request).
Redis lives in :mod:`ctxzip.cache.redis_backend` (it needs ``redis``).
"""

from __future__ import annotations

import abc
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CacheError, ConfigError

__all__ = ["Backend", "MemoryBackend", "SQLiteBackend", "check_bound"]

logger = logging.getLogger("ctxzip.cache")

_SQLITE_SCHEMA = 1
_CHUNK = 500  # keys per SQL statement (SQLite's default variable limit is 32766 on 3.32+, 999 before)
_TOUCH_AFTER = 60.0  # refresh an entry's access time (for LRU eviction) at most once a minute


def check_bound(name: str, value: Any, *, allow_none: bool = True, minimum: float = 0.0) -> Any:
    """Validate a positive size or duration (``None`` = unbounded when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > minimum:
        hint = " or None for no bound" if allow_none else ""
        raise ConfigError(f"cache {name} must be a number > {minimum:g}{hint}, got {value!r}")
    return value


class Backend(abc.ABC):
    """Bytes by key. ``evictions`` counts entries this process removed to respect a size bound or a TTL."""

    kind: str = "backend"

    def __init__(self) -> None:
        self.evictions = 0

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored values of those ``keys`` that are present and not expired."""

    @abc.abstractmethod
    def set_many(self, items: Mapping[str, bytes]) -> None:
        """Store every item (replacing what was there)."""

    @abc.abstractmethod
    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove keys (used for values that fail to parse)."""

    @abc.abstractmethod
    def clear(self) -> int:
        """Remove every entry; returns how many there were."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Numbers about what is stored: ``entries``, ``bytes`` and backend-specific figures."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (the backend reconnects on next use)."""

    @property
    def description(self) -> str:
        return self.kind


# ---------------------------------------------------------------------------------------------------- memory


class MemoryBackend(Backend):
    """In-process LRU bounded by total bytes and entries, with an optional TTL. Thread-safe."""

    kind = "memory"

    def __init__(self, *, max_bytes: float | None = 256 * 2**20, max_entries: int | None = None,
                 ttl: float | None = None) -> None:
        super().__init__()
        self.max_bytes = check_bound("max_bytes", max_bytes)
        self.max_entries = check_bound("max_entries", max_entries)
        self.ttl = check_bound("ttl", ttl)
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        out = {}
        with self._lock:
            for key in keys:
                item = self._data.get(key)
                if item is None:
                    continue
                value, expires = item
                if expires is not None and expires <= now:
                    self._drop(key)
                    self.evictions += 1
                    continue
                self._data.move_to_end(key)
                out[key] = value
        return out

    def _drop(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self._bytes -= len(value)

    def set_many(self, items: Mapping[str, bytes]) -> None:
        expires = None if self.ttl is None else time.time() + self.ttl
        with self._lock:
            for key, value in items.items():
                if key in self._data:
                    self._drop(key)
                if self.max_bytes is not None and len(value) > self.max_bytes:
                    continue
                self._data[key] = (bytes(value), expires)
                self._bytes += len(value)
            while self._data and (
                (self.max_bytes is not None and self._bytes > self.max_bytes)
                or (self.max_entries is not None and len(self._data) > self.max_entries)
            ):
                oldest = next(iter(self._data))
                self._drop(oldest)
                self.evictions += 1

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                if key in self._data:
                    self._drop(key)

    def clear(self) -> int:
        with self._lock:
            n = len(self._data)
            self._data.clear()
            self._bytes = 0
        return n

    def close(self) -> None:
        """Nothing to release: the entries live as long as the object."""

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._data), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "max_entries": self.max_entries, "ttl": self.ttl}


# ---------------------------------------------------------------------------------------------------- sqlite

_DDL = """
CREATE TABLE IF NOT EXISTS entries (
    key      TEXT PRIMARY KEY,
    value    BLOB NOT NULL,
    size     INTEGER NOT NULL,
    expires  REAL,
    accessed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_accessed ON entries (accessed);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
"""


def default_sqlite_path() -> Path:
    from ..paths import cache_dir

    return cache_dir("cache") / "cache.sqlite3"


class SQLiteBackend(Backend):
    """An embedded SQLite file in WAL mode, shared safely by several processes and threads.

    Bounds: ``max_bytes`` (stored value bytes; least recently used entries are evicted down to 90% of it) and
    ``ttl`` (seconds; expired entries are misses and are purged). Writers wait at most ``timeout`` seconds for the
    file lock. A file that is not a SQLite database (or is corrupted) raises once; on the next attempt it is moved
    aside (``<name>.corrupt-<time>``) and a fresh file is created.
    """

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_bytes: float | None = 2**30,
                 ttl: float | None = 30 * 86400.0, timeout: float = 2.0, check_every: int = 64) -> None:
        super().__init__()
        self.path = Path(path).expanduser() if path is not None else default_sqlite_path()
        self.max_bytes = check_bound("max_bytes", max_bytes)
        self.ttl = check_bound("ttl", ttl)
        self.timeout = check_bound("timeout", timeout, allow_none=False)
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ConfigError(f"cache check_every must be a positive integer, got {check_every!r}")
        self.check_every = check_every
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.RLock()
        self._corrupt = False
        self._writes = 0

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    # ------------------------------------------------------------------ connection
    def _quarantine(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{self.path}{suffix}")
            if p.exists():
                target = p.with_name(f"{p.name}.corrupt-{stamp}-{os.getpid()}")
                try:
                    p.replace(target)
                except OSError as exc:
                    logger.warning("ctxzip cache: could not move corrupt %s aside (%s)", p, exc)
                    p.unlink(missing_ok=True)
        logger.warning("ctxzip cache: %s was corrupt; moved aside and starting a fresh cache file", self.path)
        self._corrupt = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None
        if self._corrupt:
            self._quarantine()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:  # new file: idempotent DDL, so processes creating it at once do not conflict
                conn.executescript(_DDL)
                conn.execute(f"PRAGMA user_version = {_SQLITE_SCHEMA}")
            elif version != _SQLITE_SCHEMA:
                raise CacheError(
                    f"cache file {self.path} has schema {version}, this ctxzip uses {_SQLITE_SCHEMA}; "
                    "run `ctxzip cache clear` or point CTXZIP_CACHE=sqlite:<new file>"
                )
        except sqlite3.OperationalError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._corrupt = True
            raise CacheError(f"cache file {self.path} is not a usable SQLite database ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _run(self, fn: Any) -> Any:
        with self._lock:
            conn = self._connect()
            try:
                return fn(conn)
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as exc:
                self._corrupt = True
                self.close()
                raise CacheError(f"cache file {self.path} is corrupt ({exc})") from exc

    # ------------------------------------------------------------------ operations
    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}

        def op(conn: sqlite3.Connection) -> dict[str, bytes]:
            now = time.time()
            out: dict[str, bytes] = {}
            stale: list[str] = []
            for i in range(0, len(keys), _CHUNK):
                part = list(keys[i : i + _CHUNK])
                rows = conn.execute(
                    f"SELECT key, value, expires, accessed FROM entries WHERE key IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                for key, value, expires, accessed in rows:
                    if expires is not None and expires <= now:
                        continue
                    out[key] = bytes(value)
                    if accessed < now - _TOUCH_AFTER:
                        stale.append(key)
            if stale:
                conn.executemany("UPDATE entries SET accessed = ? WHERE key = ?", [(now, k) for k in stale])
            return out

        return self._run(op)

    def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        now = time.time()
        expires = None if self.ttl is None else now + self.ttl
        rows = [(k, sqlite3.Binary(v), len(v), expires, now) for k, v in items.items()]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO entries (key, value, size, expires, accessed) VALUES (?, ?, ?, ?, ?)", rows
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._writes += len(rows)
            if self._writes >= self.check_every:
                self._writes = 0
                self._maintain(conn)

        self._run(op)

    def _maintain(self, conn: sqlite3.Connection) -> None:
        """Purge expired entries and evict least recently used ones above ``max_bytes``."""
        removed = conn.execute("DELETE FROM entries WHERE expires IS NOT NULL AND expires <= ?", (time.time(),)).rowcount
        self.evictions += max(0, removed)
        if self.max_bytes is None:
            return
        total = int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
        if total <= self.max_bytes:
            return
        goal = total - 0.9 * self.max_bytes
        freed = 0
        while freed < goal:
            rows = conn.execute("SELECT key, size FROM entries ORDER BY accessed LIMIT 500").fetchall()
            if not rows:
                break
            victims = []
            for key, size in rows:
                victims.append(key)
                freed += size
                if freed >= goal:
                    break
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(victims), _CHUNK):
                    part = victims[i : i + _CHUNK]
                    conn.execute(f"DELETE FROM entries WHERE key IN ({','.join('?' * len(part))})", part)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.evictions += len(victims)

    def maintain(self) -> None:
        """Apply the TTL and size bounds now (also done every ``check_every`` writes)."""
        self._run(self._maintain)

    def delete_many(self, keys: Sequence[str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for i in range(0, len(keys), _CHUNK):
                part = list(keys[i : i + _CHUNK])
                conn.execute(f"DELETE FROM entries WHERE key IN ({','.join('?' * len(part))})", part)

        if keys:
            self._run(op)

    def clear(self) -> int:
        return int(self._run(lambda conn: conn.execute("DELETE FROM entries").rowcount))

    def info(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            n, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
            return {"entries": int(n), "bytes": int(size), "path": str(self.path),
                    "file_bytes": sum(Path(f"{self.path}{s}").stat().st_size
                                      for s in ("", "-wal") if Path(f"{self.path}{s}").exists()),
                    "max_bytes": self.max_bytes, "ttl": self.ttl}

        return self._run(op)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
