"""Where the sidecar compresses: worker processes (the default) or threads of the server process.

With ``compress_workers: N`` (N >= 1) compression runs in N processes started with the ``spawn`` context; each
lowers its priority by ``compress_nice``, keeps to ``compress_threads`` torch threads, loads its models once
(``preload``, in the pool initializer) and reports on a queue, so ``/readyz`` turns 200 only when every worker is
loaded. The server's event loop then shares no GIL with compression: it stays free for
``/livez``, the proxy and I/O. Reversible compression's originals go to a SQLite file shared by the workers and
the server (``/v1/retrieve``). A worker that dies breaks a ``ProcessPoolExecutor``; the pool is then rebuilt on the
next request. :meth:`CompressPool.shutdown` stops the workers (terminating any still busy after a grace period).

With ``compress_workers: 0`` compression runs in ``workers`` threads of the server process (tests, tiny setups).
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .config import ServiceConfig

__all__ = ["CompressPool", "BrokenProcessPool"]

log = logging.getLogger("ctxzip.service")


class CompressPool:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.processes = config.compress_workers
        #: compressions that run at once (beyond them, requests wait in the bounded queue)
        self.concurrency = self.processes or config.workers
        self.ready = threading.Event()
        self.ready_error: str | None = None
        self.originals_path: str | None = config.originals_path
        self._tmpdir: str | None = None
        self._lock = threading.Lock()
        self._executor: concurrent.futures.Executor | None = None
        self._ready_q: Any = None
        self._generation = 0
        self._stopped = False
        self._worker_cache: dict[int, dict[str, float]] = {}
        self._watcher: threading.Thread | None = None

    # -------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Start the workers (idempotent). Returns at once; :attr:`ready` is set once their models are loaded."""
        with self._lock:
            if self._executor is None and not self._stopped:
                self._start_locked()

    def _start_locked(self) -> None:
        cfg = self.config
        if not self.processes:
            self._executor = concurrent.futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="ctxzip-compress")
            if self.originals_path:
                from ctxzip import reversible

                reversible.set_default_store(reversible.SQLiteStore(self.originals_path))
            if cfg.preload:
                threading.Thread(target=self._preload_here, name="ctxzip-preload", daemon=True).start()
            else:
                self.ready.set()
            return
        from . import worker

        if self.originals_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="ctxzip-serve-")
            self.originals_path = os.path.join(self._tmpdir, "originals.sqlite")
        # create the file (tables, WAL mode) before the workers start, so that they only open it
        worker.open_store(self.originals_path)
        ctx = multiprocessing.get_context("spawn")
        self._ready_q = ctx.Queue()
        self._generation += 1
        self.ready.clear()
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.processes, mp_context=ctx, initializer=worker.init_worker,
            initargs=(tuple(cfg.preload), self.originals_path, self._ready_q, cfg.compress_threads, cfg.compress_nice),
        )
        for _ in range(self.processes):  # spawn every worker now, not on the first requests
            self._executor.submit(worker.ping)
        self._watcher = threading.Thread(target=self._await_workers, args=(self._ready_q, self._generation),
                                         name="ctxzip-workers-ready", daemon=True)
        self._watcher.start()

    def _preload_here(self) -> None:
        try:
            from ctxzip.api import shared_compressor

            for name in self.config.preload:
                shared_compressor(name).load()
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            self.ready_error = f"{type(exc).__name__}: {exc}"
            log.error("preloading models failed: %s", self.ready_error)

    def _await_workers(self, ready_q: Any, generation: int) -> None:
        loaded: set[int] = set()
        while len(loaded) < self.processes:
            if self._stopped or generation != self._generation:
                return
            try:
                pid, error = ready_q.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):  # the queue was closed by shutdown
                return
            if error:
                self.ready_error = f"worker {pid}: {error}"
                log.error("a compression worker could not load its models: %s", error)
                return
            loaded.add(pid)
        if generation == self._generation and not self._stopped:
            self.ready_error = None
            self.ready.set()
            log.info("%d compression worker process(es) ready", self.processes)

    # -------------------------------------------------------------- work
    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        """Submit ``fn(*args)`` (a picklable, module-level function in process mode)."""
        self.start()
        with self._lock:
            if self._executor is None:
                raise RuntimeError("the compression pool is shut down")
            try:
                return self._executor.submit(fn, *args)
            except BrokenProcessPool:
                log.error("a compression worker process died; starting a new pool")
                self.ready_error = "a compression worker process died; restarting the workers"
                old, old_q = self._executor, self._ready_q
                self._start_locked()
                threading.Thread(target=self._stop_executor, args=(old, 1.0, old_q), daemon=True).start()
                return self._executor.submit(fn, *args)

    def note_worker_cache(self, pid: int, counters: dict[str, float]) -> None:
        """Keep the latest segment-cache counters a worker process reported (for /metrics)."""
        if pid != os.getpid():
            self._worker_cache[pid] = counters

    def worker_cache_counters(self) -> dict[str, float]:
        """The sum of the cache counters last reported by each worker process."""
        total: dict[str, float] = {}
        for counters in list(self._worker_cache.values()):
            for k, v in counters.items():
                total[k] = total.get(k, 0) + v
        return total

    def pids(self) -> list[int]:
        """Process ids of the live worker processes (empty in thread mode)."""
        procs = getattr(self._executor, "_processes", None) or {}
        return [p.pid for p in list(procs.values()) if p.pid is not None]

    # -------------------------------------------------------------- shutdown
    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop the workers: idle ones at once, busy ones after ``grace_s`` seconds (then terminated)."""
        with self._lock:
            self._stopped = True
            executor, self._executor = self._executor, None
            ready_q, self._ready_q = self._ready_q, None
            watcher = self._watcher
        if executor is not None:
            self._stop_executor(executor, grace_s)
        if watcher is not None:
            watcher.join(2.0)
        if ready_q is not None:
            ready_q.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @staticmethod
    def _stop_executor(executor: concurrent.futures.Executor, grace_s: float, ready_q: Any = None) -> None:
        if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            executor.shutdown(wait=False, cancel_futures=True)  # threads cannot be stopped; they end with their task
            return
        # ProcessPoolExecutor keeps its processes and manager thread privately (3.14 adds terminate_workers()).
        procs = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                log.warning("terminating compression worker %s, still busy at shutdown", p.pid)
                p.terminate()
        for p in procs:
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join(5.0)
        if manager is not None:
            manager.join(10.0)
        if ready_q is not None:
            ready_q.close()
