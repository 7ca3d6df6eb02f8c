"""Prometheus metrics of the sidecar (one registry per app, so tests can build several apps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctxzip._lazy import require


class Metrics:
    def __init__(self) -> None:
        prom = require("prometheus_client", feature="the sidecar's /metrics")
        self.prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "ctxzip_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = prom.Histogram(
            "ctxzip_request_seconds",
            "request latency by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.tokens_in = prom.Counter("ctxzip_tokens_in_total", "tokens before compression", ["method"], registry=r)
        self.tokens_out = prom.Counter("ctxzip_tokens_out_total", "tokens after compression", ["method"], registry=r)
        self.tokens_saved = prom.Counter("ctxzip_tokens_saved_total", "tokens saved", ["method"], registry=r)
        self.compress_seconds = prom.Histogram(
            "ctxzip_compression_seconds",
            "compression time by method",
            ["method"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.cache_hits = prom.Counter("ctxzip_cache_hits_total", "segment cache hits", ["method"], registry=r)
        self.failures = prom.Counter(
            "ctxzip_compression_failures_total", "compressions that failed (proxy fell back or 502)", ["mode"], registry=r
        )
        self.rejected = prom.Counter("ctxzip_rejected_total", "requests rejected by the queue bound (429)", registry=r)
        self.queue = prom.Gauge("ctxzip_inflight", "compressions running or queued", registry=r)
        #: segment-cache counters of the compression worker processes (summed), added to this process's own
        self.worker_cache: Callable[[], dict[str, float]] | None = None
        r.register(_CacheCollector(prom, self))

    def observe_compression(self, method: str, before: int, after: int, seconds: float, cache_hits: int = 0) -> None:
        self.tokens_in.labels(method).inc(before)
        self.tokens_out.labels(method).inc(after)
        self.tokens_saved.labels(method).inc(max(0, before - after))
        self.compress_seconds.labels(method).observe(seconds)
        if cache_hits:
            self.cache_hits.labels(method).inc(cache_hits)

    def render(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST


class _CacheCollector:
    """Exposes the segment cache's own statistics (hits, misses, bytes, evictions, errors) when it exists: this
    process's, plus the last counters each compression worker process reported with its results."""

    def __init__(self, prom: Any, metrics: Metrics) -> None:
        from prometheus_client.core import GaugeMetricFamily

        self._gauge = GaugeMetricFamily
        self._metrics = metrics

    def collect(self) -> Any:
        try:
            from ctxzip import cache
        except ImportError:
            return
        stats_fn = getattr(cache, "stats", None)
        if stats_fn is None:
            return
        try:
            stats = stats_fn()
        except Exception:  # noqa: BLE001 - metrics must never fail a scrape
            return
        import dataclasses

        if dataclasses.is_dataclass(stats):
            stats = dataclasses.asdict(stats)
        totals = {k: v for k, v in (stats.items() if isinstance(stats, dict) else ())
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        workers = self._metrics.worker_cache() if self._metrics.worker_cache is not None else {}
        for name, value in workers.items():
            if name in totals:
                totals[name] += value
        for name, value in totals.items():
            yield self._gauge(f"ctxzip_cache_{name}", f"segment cache {name}", value=value)
