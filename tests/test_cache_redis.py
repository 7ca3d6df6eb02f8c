"""The Redis backend against a real redis-server started (and stopped) by this test module on a free port."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time

import pytest
from test_cache import DOCS, CountingCompressor, _req, _same

import ctxzip
import ctxzip.cache as cc

pytestmark = pytest.mark.redis

REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, tmp_path) -> None:
        self.port = _free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    monkeypatch.delenv("CTXZIP_CACHE", raising=False)
    monkeypatch.delenv("CTXZIP_LEDGER", raising=False)
    monkeypatch.setenv("CTXZIP_CACHE_DIR", str(tmp_path / "cachedir"))
    cc._reset_for_tests()
    yield
    cc._reset_for_tests()


@pytest.fixture
def redis_server(tmp_path):
    if REDIS is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_round_trip_ttl_and_clear(redis_server):
    cache = cc.open_cache(redis_server.url + "?ttl=1&prefix=t1:")
    assert cache.backend.ttl == 1 and cache.backend.prefix == "t1:"
    assert cache.set_many({"a": b"1", "b": b"22"})
    assert cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"22"}
    info = cache.info()
    assert info["available"] and info["entries"] == 2 and info["bytes"] == 3
    other = cc.open_cache(redis_server.url + "?prefix=t2:")
    other.set_many({"a": b"other"})
    assert cache.clear() == 2 and other.get_many(["a"]) == {"a": b"other"}  # clear only touches its prefix
    cache.set_many({"x": b"1"})
    time.sleep(2.2)
    assert cache.get_many(["x"]) == {}
    assert "secret" not in cc.open_cache("redis://user:secret@127.0.0.1:1/0").backend.description


def test_two_clients_share_the_cache_like_two_replicas(redis_server):
    one, two = cc.open_cache(redis_server.url), cc.open_cache(redis_server.url)
    a, b = CountingCompressor(), CountingCompressor()
    first = a.compress(_req(cache=one, rate=0.5))
    second = b.compress(_req(cache=two, rate=0.3))
    assert b.scored == [] and second.cache_hits == len(DOCS)
    _same(second, CountingCompressor().compress(_req(rate=0.3)))
    assert first.cache_hits == 0 and two.stats().hits == len(DOCS)


def test_redis_killed_mid_run_requests_succeed_and_caching_resumes(redis_server, caplog):
    cache = cc.open_cache(redis_server.url + "?retry_after=0.3&timeout=0.3&connect_timeout=0.2")
    comp = CountingCompressor()
    reference = {rate: CountingCompressor().compress(_req(rate=rate)) for rate in (0.5, 0.4, 0.3, 0.2)}
    _same(comp.compress(_req(cache=cache, rate=0.5)), reference[0.5])
    assert comp.compress(_req(cache=cache, rate=0.4)).cache_hits == len(DOCS)

    redis_server.stop()
    comp.scored.clear()
    with caplog.at_level(logging.WARNING, logger="ctxzip.cache"):
        for rate in (0.3, 0.2, 0.3):
            started = time.perf_counter()
            res = comp.compress(_req(cache=cache, rate=rate))
            assert time.perf_counter() - started < 3.0  # a dead server costs at most a short timeout
            _same(res, reference[rate])
            assert res.cache_hits == 0
    s = cache.stats()
    assert s.errors >= 1 and s.degraded == 1 and cache.degraded
    assert len(comp.scored) == 3 * len(DOCS)
    assert "continuing without the cache" in caplog.text

    redis_server.start()  # same port, empty (no persistence)
    time.sleep(0.35)
    comp.scored.clear()
    res = comp.compress(_req(cache=cache, rate=0.3))
    _same(res, reference[0.3])
    assert not cache.degraded and len(comp.scored) == len(DOCS)  # stored again
    comp.scored.clear()
    res = comp.compress(_req(cache=cache, rate=0.2))
    assert comp.scored == [] and res.cache_hits == len(DOCS)


def test_unreachable_redis_from_the_start_never_fails(redis_server):
    url = f"redis://127.0.0.1:{_free_port()}/0?retry_after=30&connect_timeout=0.1"
    res = ctxzip.compress(DOCS, rate=0.5, method="truncate", cache=url)
    res2 = ctxzip.compress(DOCS, rate=0.5, method="truncate", cache=url)
    _same(res, res2)
    s = cc.stats_by_cache()[url]
    assert s.errors == 1 and s.skipped >= 1 and res2.cache_hits == 0
