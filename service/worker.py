"""Compression tasks of the sidecar, run in its worker processes (or, with ``compress_workers: 0``, its threads).

Nothing here imports FastAPI: a spawned worker imports only ctxzip. Tasks take and return plain data (dicts,
lists, strings, numbers and the frozen :class:`~ctxzip.service.config.ServiceConfig`), so they cross a process
boundary; an exception comes back as an ``{"error": ...}`` envelope that the server turns into its HTTP answer.
Each task also writes the savings ledger event (file I/O stays off the server's event loop) and reports the
worker's segment-cache counters for ``/metrics``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any

import ctxzip
from ctxzip.errors import ConfigError, CtxzipError, UnknownNameError

from .config import ServiceConfig

__all__ = ["init_worker", "open_store", "ping", "describe", "call", "documents_task", "messages_task"]

log = logging.getLogger("ctxzip.service.worker")

_ledgers: dict[str | None, Any] = {}
_ledger_lock = threading.Lock()


# ------------------------------------------------------------------ process set-up
def init_worker(preload: tuple[str, ...], originals_path: str | None, ready: Any, threads: int = 1,
                nice: int = 0) -> None:
    """Initializer of a worker process: lower its priority, set its torch threads, share the originals store,
    load models once, report readiness.

    ``ready`` is a multiprocessing queue; the worker puts ``(pid, None)`` once its models are loaded, or
    ``(pid, "Error: ...")`` if loading failed (the worker still serves requests that need no such model).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    _exit_with_parent()
    atexit.register(_exit_now)  # registered last, so it runs first
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)
    # before torch is imported (a spawned worker has not imported it yet): OpenMP reads these at start-up
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    error: str | None = None
    try:
        if originals_path:
            from ctxzip import reversible

            reversible.set_default_store(open_store(originals_path))
        _set_torch_threads(threads)
        from ctxzip.api import shared_compressor

        for name in preload:
            shared_compressor(name).load()
    except Exception as exc:  # noqa: BLE001 - reported through /readyz
        error = f"{type(exc).__name__}: {exc}"
    ready.put((os.getpid(), error))


def open_store(path: str, attempts: int = 20) -> Any:
    """The shared SQLite store of reversible originals. Workers starting together contend for the file while one
    of them creates it (SQLite answers "database is locked" at once to a journal-mode change): retry a while."""
    import sqlite3

    from ctxzip import reversible

    for attempt in range(attempts - 1):
        try:
            return reversible.SQLiteStore(path)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    return reversible.SQLiteStore(path)


def _set_torch_threads(threads: int) -> None:
    """Pin torch's intra-op threads if torch is already imported; otherwise OMP_NUM_THREADS (set above) does it
    when a compressor first imports torch, and a worker that never needs torch never pays for importing it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _exit_with_parent() -> None:
    """End this worker when the server process dies, even by SIGKILL (no orphan holding models in memory)."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        wait([sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="ctxzip-parent-watch", daemon=True).start()


def _exit_now() -> None:
    """End the worker without the interpreter's teardown: collecting a loaded model's objects takes seconds, and
    a worker has nothing left to flush once the pool has told it to stop (results and the ledger are written)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def ping() -> int:
    """A no-op task: submitting one per worker starts the processes at once instead of on the first request."""
    return os.getpid()


def describe() -> dict[str, Any]:
    """This worker's pid, niceness and torch threads (for tests and diagnostics)."""
    torch = sys.modules.get("torch")
    return {"pid": os.getpid(), "nice": os.nice(0),
            "torch_threads": torch.get_num_threads() if torch is not None else None}


# ------------------------------------------------------------------ tasks
def call(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run ``task`` ("documents" or "messages") and return its outcome, or an error envelope; never raises."""
    try:
        fn = documents_task if task == "documents" else messages_task
        out = fn(**kwargs)
        out["pid"] = os.getpid()
        out["cache"] = _cache_counters()
        return out
    except UnknownNameError as exc:
        return {"error": {"class": "UnknownNameError", "message": str(exc), "kind": exc.kind, "name": exc.name,
                          "valid": list(exc.valid)}}
    except CtxzipError as exc:
        return {"error": {"class": type(exc).__name__, "message": str(exc)}}
    except Exception as exc:  # noqa: BLE001 - the server answers 500 (or fails open) with this description
        return {"error": {"class": type(exc).__name__, "message": str(exc), "internal": True,
                          "traceback": traceback.format_exc(limit=20)}}


def documents_task(
    context: Any, *, question: str | None, instruction: str | None, rate: float | None, target_tokens: int | None,
    method: str, target_model: str, options: dict[str, Any], namespace: str, ledger: tuple[bool, str | None],
    app: str | None,
) -> dict[str, Any]:
    """``POST /v1/compress`` with documents: :func:`ctxzip.compress`; returns the response body and figures."""
    if options.get("reversible"):  # originals belong to the caller's key, whatever the body says
        options = {**options, "namespace": namespace}
    result = ctxzip.compress(
        context, question=question, instruction=instruction, rate=rate, target_tokens=target_tokens,
        method=method, target_model=target_model, **options,
    )
    _record(ledger, route="/v1/compress", app=app, model=target_model, method=result.method,
            before=result.origin_tokens, after=result.compressed_tokens, seconds=result.seconds,
            cache_hit=result.cache_hits > 0)
    return {"body": result.to_dict(), "method": result.method, "before": result.origin_tokens,
            "after": result.compressed_tokens, "seconds": result.seconds, "cache_hits": result.cache_hits}


def messages_task(
    messages: list[dict[str, Any]], *, model: str, config: ServiceConfig, overrides: dict[str, Any], namespace: str,
    token_budget: int | None, route: str, app: str | None,
) -> dict[str, Any]:
    """Chat messages with the configured policy (overridable per request): the gateway summary and figures."""
    started = time.perf_counter()
    out = compress_messages(messages, model=model, config=config, overrides=overrides, namespace=namespace,
                            token_budget=token_budget)
    body = summary(out)
    seconds = float(getattr(out, "seconds", time.perf_counter() - started))
    method = str(getattr(out, "method", config.method))
    cache_hits = int(getattr(out, "cache_hits", 0))
    _record((config.ledger, config.ledger_path), route=route, app=app, model=model, method=method,
            before=body["tokens_before"], after=body["tokens_after"], seconds=seconds, cache_hit=cache_hits > 0)
    return {"body": body, "method": method, "before": body["tokens_before"], "after": body["tokens_after"],
            "seconds": seconds, "cache_hits": cache_hits}


def compress_messages(
    messages: list[dict[str, Any]], *, model: str, config: ServiceConfig, overrides: dict[str, Any], namespace: str,
    token_budget: int | None = None,
) -> Any:
    """:func:`ctxzip.compress_messages` with the service policy, ``overrides`` (a request's ``config``) on top."""
    over = dict(overrides)
    rate = over.pop("rate", config.rate)
    target = over.pop("target_tokens", token_budget if token_budget is not None else config.target_tokens)
    if token_budget is not None:
        target, rate = token_budget, None
    elif target is not None:
        rate = None
    policy = {**config.policy, **over.pop("policy", {})}
    method = over.pop("method", config.method)
    reversible = bool(over.pop("reversible", config.reversible))
    if over:
        raise ConfigError(
            f"unknown config key(s) {sorted(over)}; valid: rate, target_tokens, policy, method, reversible"
        )
    budget: dict[str, Any] = {"target_tokens": target} if target is not None else {"rate": rate}
    return ctxzip.compress_messages(
        messages, model=model, policy=policy or None, method=method, reversible=reversible, namespace=namespace,
        **budget,
    )


def summary(out: Any) -> dict[str, Any]:
    """The gateway response of a :class:`ctxzip.messages.MessagesResult`."""
    before = int(out.origin_tokens)
    after = int(out.compressed_tokens)
    transforms = [
        f"ctxzip:{s.action}:{'+'.join(s.routes) or out.method}:message[{s.index}]"
        for s in out.stats
        if s.action in ("compressed", "reused")
    ]
    return {
        "messages": [dict(m) for m in out.messages],
        "tokens_before": before,
        "tokens_after": after,
        "tokens_saved": before - after,
        "compression_ratio": (before / after) if after else 0.0,
        "transforms_applied": transforms,
        "ccr_hashes": [h for s in out.stats for h in s.hashes],
    }


# ------------------------------------------------------------------ ledger and cache counters
def _record(ledger: tuple[bool, str | None], *, route: str, app: str | None, model: str, method: str, before: int,
            after: int, seconds: float, cache_hit: bool) -> None:
    enabled, path = ledger
    if not enabled:
        return
    try:
        from ctxzip import ledger as ledger_mod

        with _ledger_lock:
            target = _ledgers.get(path)
            if target is None:
                target = _ledgers[path] = ledger_mod.Ledger(path)
        target.append(ledger_mod.LedgerEvent(
            time=datetime.now(timezone.utc), target_model=model, tokens_before=before, tokens_after=after,
            method=method, seconds=seconds, route=route, app=app, cache_hit=cache_hit,
        ))
    except Exception as exc:  # noqa: BLE001 - the ledger never fails a request
        log.warning("could not write the savings ledger: %s", exc)


def _cache_counters() -> dict[str, float]:
    """This process's segment-cache counters (numbers only), for the server's /metrics."""
    try:
        from ctxzip import cache

        stats = cache.stats()
    except Exception:  # noqa: BLE001 - counters are best effort
        return {}
    data = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(stats or {})
    return {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
