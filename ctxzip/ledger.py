"""The savings ledger: one event per compression, written by the library (opt-in), the sidecar and the integrations.

The report (:mod:`ctxzip.report`, ``ctxzip report``) reads only the ledger.

Turning it on
    * library: ``CTXZIP_LEDGER=1`` (default file ``<user cache dir>/ctxzip/ledger/ledger.sqlite3``) or
      ``CTXZIP_LEDGER=/path/to/ledger.sqlite3``; or pass ``ledger=`` (a :class:`Ledger` or a path) to :func:`record`.
    * sidecar and integrations pass a ledger explicitly.

Storage
    An embedded SQLite file in WAL mode: many processes (sidecar workers) and threads may append at once;
    each append is one short autocommit ``INSERT`` that waits (``busy_timeout``) rather than fails on a lock.
    :meth:`Ledger.export_jsonl` / :meth:`Ledger.import_jsonl` move events to and from JSON Lines
    (one event per line, ids make imports idempotent); :func:`read_events` also reads a ``.jsonl`` file directly.

:func:`record` is cheap (one short insert, well under a millisecond) and never raises into the caller: a failing ledger logs a
warning and the compression goes on.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError, InputError

__all__ = [
    "LedgerEvent",
    "Ledger",
    "record",
    "suppressed",
    "default_ledger_path",
    "ledger_from_env",
    "read_events",
    "LEDGER_ENV",
]

logger = logging.getLogger("ctxzip.ledger")

#: Environment variable that turns the library's ledger on: ``1``/``true``/``yes``/``on`` (default file) or a path.
LEDGER_ENV = "CTXZIP_LEDGER"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_SCHEMA_VERSION = 1


def _utc(value: Any, what: str) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{what} must be an ISO 8601 time such as 2025-01-31T12:00:00Z, got {value!r}") from None
        return _utc(parsed, what)
    raise InputError(f"{what} must be a datetime, an ISO 8601 string or epoch seconds, got {type(value).__name__}")


def _opt_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"LedgerEvent.{name} must be a string or None, got {type(value).__name__}")
    return value


def _count(value: Any, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"LedgerEvent.{name} must be a non-negative integer{' or None' if optional else ''}, "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class LedgerEvent:
    """One compression, as the report needs it.

    ``tokens_before``/``tokens_after`` are input tokens of the prompt sent to ``target_model`` without and with
    compression, counted with the target model's tokenizer (``tokens_exact=False`` when that count is an estimate).

    ``cached_prefix_tokens`` is how many leading tokens of the *uncompressed* prompt the provider would have
    served from its prompt cache (billed at the cache-read price); ``None`` when the caller does not know.
    ``prefix_changed`` says whether compression changed that cached prefix, so that the compressed prompt's
    prefix had to be written to the provider cache again (cache-write premium) instead of being read from it;
    ``None`` means unknown and the report assumes the worst case (changed) whenever a cached prefix exists.
    ``cache_hit`` is a hit of ctxzip's own compression cache (not the provider's prompt cache).
    """

    time: datetime
    target_model: str | None
    tokens_before: int
    tokens_after: int
    method: str
    seconds: float
    route: str | None = None
    app: str | None = None
    provider: str | None = None
    cached_prefix_tokens: int | None = None
    prefix_changed: bool | None = None
    cache_hit: bool = False
    method_version: str | None = None
    tokenizer: str | None = None
    tokens_exact: bool = True
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _utc(self.time, "LedgerEvent.time"))
        for name in ("target_model", "route", "app", "provider", "method_version", "tokenizer"):
            object.__setattr__(self, name, _opt_str(getattr(self, name), name))
        if not isinstance(self.method, str) or not self.method:
            raise InputError(f"LedgerEvent.method must be the compressor name, got {self.method!r}")
        if not isinstance(self.id, str) or not self.id:
            raise InputError(f"LedgerEvent.id must be a non-empty string, got {self.id!r}")
        object.__setattr__(self, "tokens_before", _count(self.tokens_before, "tokens_before"))
        object.__setattr__(self, "tokens_after", _count(self.tokens_after, "tokens_after"))
        object.__setattr__(
            self, "cached_prefix_tokens", _count(self.cached_prefix_tokens, "cached_prefix_tokens", optional=True)
        )
        if (
            isinstance(self.seconds, bool)
            or not isinstance(self.seconds, (int, float))
            or not math.isfinite(self.seconds)
            or self.seconds < 0
        ):
            raise InputError(f"LedgerEvent.seconds must be a finite number >= 0, got {self.seconds!r}")
        object.__setattr__(self, "seconds", float(self.seconds))
        if self.prefix_changed is not None:
            object.__setattr__(self, "prefix_changed", bool(self.prefix_changed))
        object.__setattr__(self, "cache_hit", bool(self.cache_hit))
        object.__setattr__(self, "tokens_exact", bool(self.tokens_exact))

    @property
    def tokens_saved(self) -> int:
        """Input tokens removed by compression (negative if the output was longer)."""
        return self.tokens_before - self.tokens_after

    @property
    def ratio(self) -> float:
        """tokens_before / tokens_after (inf when everything was dropped, 1.0 for an empty prompt)."""
        if self.tokens_before == 0:
            return 1.0
        return math.inf if self.tokens_after == 0 else self.tokens_before / self.tokens_after

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``time`` as ISO 8601 UTC)."""
        out = dataclasses.asdict(self)
        out["time"] = self.time.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEvent:
        """Inverse of :meth:`to_dict`; unknown keys are refused so that typos do not vanish."""
        if not isinstance(data, dict):
            raise InputError(f"a ledger event must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown ledger event field(s) {unknown}; known fields: {sorted(names)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and
                         f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise InputError(f"ledger event is missing field(s) {missing}")
        return cls(**data)


_COLUMNS = (
    "id", "time", "route", "app", "target_model", "provider", "tokens_before", "tokens_after",
    "cached_prefix_tokens", "prefix_changed", "method", "method_version", "seconds", "cache_hit",
    "tokenizer", "tokens_exact",
)
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    route TEXT,
    app TEXT,
    target_model TEXT,
    provider TEXT,
    tokens_before INTEGER NOT NULL,
    tokens_after INTEGER NOT NULL,
    cached_prefix_tokens INTEGER,
    prefix_changed INTEGER,
    method TEXT NOT NULL,
    method_version TEXT,
    seconds REAL NOT NULL,
    cache_hit INTEGER NOT NULL,
    tokenizer TEXT,
    tokens_exact INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
"""


def _row(event: LedgerEvent) -> tuple[Any, ...]:
    return (
        event.id, event.time.timestamp(), event.route, event.app, event.target_model, event.provider,
        event.tokens_before, event.tokens_after, event.cached_prefix_tokens,
        None if event.prefix_changed is None else int(event.prefix_changed),
        event.method, event.method_version, event.seconds, int(event.cache_hit), event.tokenizer,
        int(event.tokens_exact),
    )


def _event(row: tuple[Any, ...]) -> LedgerEvent:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["time"] = datetime.fromtimestamp(d["time"], tz=timezone.utc)
    d["prefix_changed"] = None if d["prefix_changed"] is None else bool(d["prefix_changed"])
    d["cache_hit"] = bool(d["cache_hit"])
    d["tokens_exact"] = bool(d["tokens_exact"])
    return LedgerEvent(**d)


def default_ledger_path() -> Path:
    """``<ctxzip cache dir>/ledger/ledger.sqlite3`` (``CTXZIP_CACHE_DIR`` moves the cache dir)."""
    from .paths import cache_dir

    return cache_dir("ledger") / "ledger.sqlite3"


class Ledger:
    """An append-only SQLite ledger file, safe for many writer processes and threads.

    ``create=False`` refuses to create a missing file (the report uses it to say "no ledger here" instead of
    reporting on an empty new file).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True, timeout: float = 30.0):
        if path is None:
            path = default_ledger_path()
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"Ledger(path) must be a file path, got {type(path).__name__}")
        self.path = Path(path).expanduser()
        if str(self.path).endswith(".jsonl"):
            raise ConfigError(
                f"{self.path} is a JSON Lines file; the ledger itself is SQLite. Import it with "
                f"Ledger(<db path>).import_jsonl({str(self.path)!r}) or read it with read_events()"
            )
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"Ledger timeout must be a positive number of seconds, got {timeout!r}")
        if not create and not self.path.exists():
            raise InputError(
                f"no ledger at {self.path}; turn it on with CTXZIP_LEDGER=1 (or a path), or pass the ledger file"
            )
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross fork(): a worker forked from a parent that had the ledger open reopens it.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("ledger %s: SQLite refused WAL mode (%s); concurrent writers may wait", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise ConfigError(
                    f"ledger {self.path} has schema version {version}; this ctxzip reads version {_SCHEMA_VERSION}. "
                    "Upgrade ctxzip or point CTXZIP_LEDGER at a new file"
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InputError(f"{self.path} is not a usable ctxzip ledger ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def append(self, event: LedgerEvent) -> None:
        """Append one event (an event whose ``id`` is already there is ignored)."""
        if not isinstance(event, LedgerEvent):
            raise InputError(f"Ledger.append takes a LedgerEvent, got {type(event).__name__}")
        row = _row(event)
        with self._lock:
            self._connect().execute(_INSERT, row)

    def append_many(self, events: Iterable[LedgerEvent]) -> int:
        """Append events in one transaction; returns how many were new."""
        rows = []
        for event in events:
            if not isinstance(event, LedgerEvent):
                raise InputError(f"Ledger.append_many takes LedgerEvent objects, got {type(event).__name__}")
            rows.append(_row(event))
        with self._lock:
            conn = self._connect()
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return conn.total_changes - before

    def iter_events(self, since: datetime | str | None = None, until: datetime | str | None = None
                    ) -> Iterator[LedgerEvent]:
        """Events with ``since <= time < until``, oldest first."""
        where, params = [], []
        if since is not None:
            where.append("time >= ?")
            params.append(_utc(since, "since").timestamp())
        if until is not None:
            where.append("time < ?")
            params.append(_utc(until, "until").timestamp())
        sql = f"SELECT {', '.join(_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time, id"
        with self._lock:
            rows = self._connect().execute(sql, params).fetchall()
        for row in rows:
            yield _event(row)

    def events(self, since: datetime | str | None = None, until: datetime | str | None = None) -> list[LedgerEvent]:
        """All events with ``since <= time < until`` (both optional), oldest first."""
        return list(self.iter_events(since, until))

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def export_jsonl(self, path: str | os.PathLike[str], since: datetime | str | None = None) -> int:
        """Write events (since ``since``) to a JSON Lines file; returns the number written."""
        n = 0
        with open(path, "w", encoding="utf-8") as fh:
            for event in self.iter_events(since):
                fh.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                n += 1
        return n

    def import_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Append the events of a JSON Lines file; events already present (same id) are skipped.

        Returns how many were new.
        """
        return self.append_many(_read_jsonl(Path(path)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"


def _read_jsonl(path: Path) -> Iterator[LedgerEvent]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            try:
                yield LedgerEvent.from_dict(data)
            except InputError as exc:
                raise InputError(f"{path}:{lineno}: {exc}") from None


def read_events(path: str | os.PathLike[str], since: datetime | str | None = None) -> list[LedgerEvent]:
    """Events of a ledger file: SQLite, or JSON Lines when the name ends in ``.jsonl``. Oldest first."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"no ledger at {p}; turn it on with CTXZIP_LEDGER=1 (or a path), or pass the ledger file"
        )
    if p.suffix == ".jsonl":
        lo = None if since is None else _utc(since, "since")
        events = [e for e in _read_jsonl(p) if lo is None or e.time >= lo]
        events.sort(key=lambda e: (e.time, e.id))
        return events
    with Ledger(p, create=False) as ledger:
        return ledger.events(since)


# ---------------------------------------------------------------------------------------------------------------
# record(): the one call every surface makes

LedgerSpec = Union[Ledger, str, os.PathLike, bool, None]

_open: dict[str, Ledger] = {}
_open_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()
_suppress: contextvars.ContextVar[bool] = contextvars.ContextVar("ctxzip_ledger_suppress", default=False)


def ledger_from_env() -> Path | None:
    """The ledger file ``CTXZIP_LEDGER`` asks for, or None when it is unset or off."""
    raw = os.environ.get(LEDGER_ENV, "").strip()
    if raw.lower() in _FALSE:
        return None
    if raw.lower() in _TRUE:
        return default_ledger_path()
    return Path(raw).expanduser()


def _ledger_for_path(path: Path) -> Ledger:
    key = str(path)
    ledger = _open.get(key)
    if ledger is None:
        with _open_lock:
            ledger = _open.get(key)
            if ledger is None:
                ledger = _open[key] = Ledger(path)
    return ledger


def _resolve(ledger: LedgerSpec) -> Ledger | None:
    if ledger is False:
        return None
    if isinstance(ledger, Ledger):
        return ledger
    if ledger is None or ledger is True:
        path = default_ledger_path() if ledger is True else ledger_from_env()
        return None if path is None else _ledger_for_path(path)
    if isinstance(ledger, (str, os.PathLike)):
        return _ledger_for_path(Path(ledger).expanduser())
    raise ConfigError(f"ledger= must be a Ledger, a path, True, False or None, got {type(ledger).__name__}")


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Within this block :func:`record` writes nothing (used by what-if estimates so they do not pollute the ledger)."""
    token = _suppress.set(True)
    try:
        yield
    finally:
        _suppress.reset(token)


def record(
    result: Any,
    *,
    route: str | None = None,
    app: str | None = None,
    provider: str | None = None,
    cached_prefix_tokens: int | None = None,
    cache_hit: bool = False,
    ledger: LedgerSpec = None,
    prefix_changed: bool | None = None,
) -> LedgerEvent | None:
    """Append an event for a :class:`~ctxzip.types.CompressionResult` when the ledger is on.

    The ledger is on when ``ledger`` is a :class:`Ledger`, a path or True, or (``ledger=None``) when
    ``CTXZIP_LEDGER`` is set; ``ledger=False`` turns it off for this call. Returns the event written, or None when
    the ledger is off or writing failed (a warning is logged: recording never breaks a compression).
    ``prefix_changed`` (optional) tells the report whether compression changed the provider-cached prefix.
    """
    if _suppress.get():
        return None
    where = str(ledger) if isinstance(ledger, (str, os.PathLike)) else "(default)"
    try:
        target = _resolve(ledger)
        if target is None:
            return None
        where = str(target.path)
        event = LedgerEvent(
            time=datetime.now(timezone.utc),
            target_model=result.target_model,
            tokens_before=result.origin_tokens,
            tokens_after=result.compressed_tokens,
            method=result.method,
            seconds=result.seconds,
            route=route,
            app=app,
            provider=provider,
            cached_prefix_tokens=cached_prefix_tokens,
            prefix_changed=prefix_changed,
            cache_hit=bool(cache_hit) or getattr(result, "cache_hits", 0) > 0,
            method_version=getattr(result, "method_version", None),
            tokenizer=getattr(result, "tokenizer", None),
            tokens_exact=getattr(result, "tokens_exact", True),
        )
        target.append(event)
        return event
    except Exception as exc:  # recording must never break the caller's compression
        key = (where, type(exc).__name__)
        if key not in _warned:
            _warned.add(key)
            logger.warning("ctxzip ledger %s: event not recorded (%s: %s)", where, type(exc).__name__, exc)
        else:
            logger.debug("ctxzip ledger %s: event not recorded (%s: %s)", where, type(exc).__name__, exc)
        return None
