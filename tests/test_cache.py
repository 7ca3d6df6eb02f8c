"""The segment cache: keys, codec, memory and SQLite backends, the compressor hooks, failures, stats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ctxzip
import ctxzip.cache as cc
from ctxzip.base import BaseCompressor
from ctxzip.cache.codec import decode_result, decode_scores, encode_result, encode_scores
from ctxzip.errors import CacheError, ConfigError
from ctxzip.protect import ProtectionRules
from ctxzip.types import CompressionRequest

DOCS = [
    "The Eiffel Tower was completed in 1889 and is located in Paris, the capital of France. " * 3,
    "Mount Everest is the highest mountain above sea level, on the border of Nepal and China. " * 3,
    "The Great Wall of China is a series of fortifications built across northern China over centuries. " * 3,
    "Photosynthesis converts light energy into chemical energy stored in glucose inside plant cells. " * 3,
]


class CountingCompressor(BaseCompressor):
    """Deterministic per-document scores (a hash of each word, weighted, plus overlap with the question)."""

    name = "cache-test"
    version = "1"
    question_aware = True
    cacheable_scores = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: str | None = None
        weight: float = 1.0

    def __init__(self, **config):
        super().__init__(**config)
        self.scored: list[str] = []

    def score(self, request, docs):
        cfg = self.options(request)
        q = set((request.question or "").lower().split())
        out = []
        for u in docs:
            self.scored.append(u.text)
            words = [w.strip().lower() for w in u.texts()]
            h = np.array([int(hashlib.sha256(w.encode()).hexdigest()[:6], 16) / 2**24 for w in words])
            out.append(cfg.weight * h + np.array([2.0 if w.strip(".,") in q else 0.0 for w in words]))
        return out


class GlobalCompressor(CountingCompressor):
    """Same scores, but declared as depending on all documents: never cached per document."""

    name = "cache-test-global"
    cacheable_scores = False


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    monkeypatch.delenv("CTXZIP_CACHE", raising=False)
    monkeypatch.delenv("CTXZIP_LEDGER", raising=False)
    monkeypatch.setenv("CTXZIP_CACHE_DIR", str(tmp_path / "cachedir"))
    cc._reset_for_tests()
    yield
    cc._reset_for_tests()


def _req(docs=None, **kw):
    kw.setdefault("rate", 0.5)
    return CompressionRequest.create(list(DOCS if docs is None else docs), **kw)


def _same(a, b):
    assert a.text == b.text
    assert a.compressed_tokens == b.compressed_tokens and a.origin_tokens == b.origin_tokens
    assert [d.spans for d in a.documents] == [d.spans for d in b.documents]


# ------------------------------------------------------------------------------------------------ off by default


def test_off_by_default_and_import_is_light():
    comp = CountingCompressor()
    comp.compress(_req())
    comp.compress(_req())
    assert len(comp.scored) == 2 * len(DOCS)  # nothing cached
    assert cc.configured() is None and cc.stats().lookups == 0
    out = subprocess.run(
        [sys.executable, "-c", "import sys, ctxzip; print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('redis', 'faiss', 'torch') or m.startswith('ctxzip.cache')))"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ segment scores


def test_scores_reused_across_rates_and_requests_with_identical_outputs():
    cache = cc.open_cache("memory", results=False)
    plain = CountingCompressor()
    cached = CountingCompressor()
    for rate in (0.5, 0.3):
        ref = plain.compress(_req(rate=rate))
        got = cached.compress(_req(rate=rate, cache=cache))
        _same(ref, got)
    # the second rate scored nothing: one entry per document serves every rate
    assert len(cached.scored) == len(DOCS)
    assert cache.stats().hits == len(DOCS) and cache.stats().misses == len(DOCS)
    assert got.cache_hits == len(DOCS)


def test_request_sharing_all_but_one_document_scores_one():
    cache = cc.open_cache("memory")
    comp = CountingCompressor()
    comp.compress(_req(cache=cache))
    new = "Honey bees communicate the direction of flowers to each other with a waggle dance. " * 3
    docs = DOCS[:2] + [new] + DOCS[2:]
    comp.scored.clear()
    result = comp.compress(_req(docs, cache=cache))
    assert comp.scored == [new]
    assert result.cache_hits == len(DOCS)
    _same(result, CountingCompressor().compress(_req(docs)))


def test_duplicate_documents_in_one_request_are_scored_once():
    cache = cc.open_cache("memory")
    comp = CountingCompressor()
    comp.compress(_req([DOCS[0], DOCS[0], DOCS[1]], cache=cache))
    assert comp.scored == [DOCS[0], DOCS[1]]


def test_compressor_with_global_scores_is_not_cached_per_document():
    cache = cc.open_cache("memory", results=False)
    comp = GlobalCompressor()
    comp.compress(_req(cache=cache))
    comp.compress(_req(cache=cache, rate=0.3))
    assert len(comp.scored) == 2 * len(DOCS)
    assert cache.stats().lookups == 0


def test_builtin_cacheable_flags():
    from ctxzip.registry import compressor_class

    flags = {n: compressor_class(n).cacheable_scores for n in ("truncate", "random", "embed-rank", "lingua2")}
    assert flags == {"truncate": False, "random": False, "embed-rank": False, "lingua2": True}


# ------------------------------------------------------------------------------------------------ whole results


def test_result_cache_identical_request_fast_path_for_any_compressor():
    first = ctxzip.compress(DOCS, rate=0.4, method="truncate", cache="memory")
    second = ctxzip.compress(DOCS, rate=0.4, method="truncate", cache="memory")
    _same(first, second)
    assert first.cache_hits == 0 and second.cache_hits == len(DOCS)
    assert second.method == "truncate" and second.details == first.details
    other = ctxzip.compress(DOCS, rate=0.3, method="truncate", cache="memory")
    assert other.cache_hits == 0  # the budget is part of a result key
    assert cc.stats().result_hits == 1 and cc.stats().result_misses == 2


def test_result_keeps_titles_and_metadata_of_the_request():
    docs = [{"title": f"t{i}", "text": t, "id": i} for i, t in enumerate(DOCS)]
    ctxzip.compress(docs, rate=0.5, method="truncate", cache="memory")
    again = ctxzip.compress(docs, rate=0.5, method="truncate", cache="memory")
    assert again.cache_hits == len(DOCS)
    assert [d.title for d in again.documents] == [f"t{i}" for i in range(len(DOCS))]
    assert [dict(d.metadata) for d in again.documents] == [{"id": i} for i in range(len(DOCS))]
    retitled = [dict(d, title="other") for d in docs]
    assert ctxzip.compress(retitled, rate=0.5, method="truncate", cache="memory").cache_hits == 0


def test_codec_round_trips_and_rejects_damage():
    arr = np.array([0.5, -np.inf, np.nan, 3.0])
    blob = encode_scores(arr)
    back = decode_scores(blob, 4)
    assert back.dtype == np.float64 and np.array_equal(back, arr, equal_nan=True)
    with pytest.raises(CacheError, match="shape"):
        decode_scores(blob, 5)
    damaged = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CacheError, match="checksum"):
        decode_scores(damaged, 4)
    with pytest.raises(CacheError):
        decode_scores(b"garbage", 4)
    req = _req(rate=0.5)
    res = CountingCompressor().compress(req)
    again = decode_result(encode_result(res), req, 0.001)
    _same(res, again)
    assert again.seconds == 0.001 and again.cache_hits == len(DOCS)


def test_unparsable_value_is_a_counted_miss_and_is_replaced(caplog):
    cache = cc.open_cache("memory", results=False)
    comp = CountingCompressor()
    ref = comp.compress(_req(cache=cache))
    keys = list(cache.backend._data)
    cache.backend.set_many({k: b"CZS1not-a-value" for k in keys})
    comp.scored.clear()
    with caplog.at_level(logging.WARNING, logger="ctxzip.cache"):
        got = comp.compress(_req(cache=cache))
    _same(ref, got)
    assert len(comp.scored) == len(DOCS)
    s = cache.stats()
    assert s.errors == len(DOCS) and s.hits == 0 and s.misses == 2 * len(DOCS)
    assert "did not parse" in caplog.text
    comp.scored.clear()
    comp.compress(_req(cache=cache))
    assert comp.scored == []  # replaced by good values


# ------------------------------------------------------------------------------------------------ keys


def test_every_key_component_causes_a_miss(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    (model / "model.safetensors").write_bytes(b"weights-v1")
    cache = cc.open_cache("memory")
    base = dict(question="Where is the Eiffel Tower?", instruction="Answer briefly.", rate=0.5)

    def run(comp=None, docs=None, **kw):
        comp = comp or CountingCompressor(model=str(model))
        args = {**base, **kw}
        res = comp.compress(_req(docs, cache=cache, **args))
        return comp, res

    comp, res = run()
    assert len(comp.scored) == len(DOCS) and res.cache_hits == 0
    comp, res = run()
    assert comp.scored == [] and res.cache_hits == len(DOCS)  # warm: a full hit

    class Renamed(CountingCompressor):
        name = "cache-test-renamed"

    class Bumped(CountingCompressor):
        version = "2"

    class NotQuestionAware(CountingCompressor):
        question_aware = False

    variants = {
        "segment text": dict(docs=[d + " Extra." for d in DOCS]),
        "content type (JSON segmentation)": dict(docs=[json.dumps({"k": d}) for d in DOCS]),
        "compressor name": dict(comp=Renamed(model=str(model))),
        "compressor version": dict(comp=Bumped(model=str(model))),
        "config": dict(comp=CountingCompressor(model=str(model), weight=2.0)),
        "per-call option": dict(weight=3.0),
        "tokenizer": dict(target_model="gpt-4"),
        "protection rules": dict(protect=ProtectionRules(numbers=True)),
        "question": dict(question="How high is Everest?"),
        "instruction": dict(instruction="Answer in French."),
        "rate (result layer)": dict(rate=0.3),
        "target tokens (result layer)": dict(target_tokens=40, rate=None),
    }
    for what, kw in variants.items():
        res = run(**kw)[1]
        assert res.cache_hits == 0 or what.endswith("(result layer)"), what
        if what.endswith("(result layer)"):
            assert cache.stats().result_hits == 1, what  # only the warm run above hit the result layer
    # weights: same path, new bytes -> new hash -> miss
    (model / "model.safetensors").write_bytes(b"weights-version-2")
    comp, res = run()
    assert len(comp.scored) == len(DOCS) and res.cache_hits == 0, "weights hash"
    # schema version
    import ctxzip.cache.keys as keys

    old = keys.SCHEMA_VERSION
    keys.SCHEMA_VERSION = old + 1
    try:
        comp, res = run()
        assert len(comp.scored) == len(DOCS) and res.cache_hits == 0, "schema version"
    finally:
        keys.SCHEMA_VERSION = old
    # the question is ignored by compressors that do not read it
    comp, _ = run(comp=NotQuestionAware(model=str(model)))
    assert len(comp.scored) == len(DOCS)
    comp, _ = run(comp=NotQuestionAware(model=str(model)), question="Something else entirely?", rate=0.35)
    assert comp.scored == []


def test_ledger_and_cache_options_do_not_change_keys():
    cache = cc.open_cache("memory")
    ctxzip.compress(DOCS, rate=0.5, method="truncate", cache=cache, app="a", route="/x")
    again = ctxzip.compress(DOCS, rate=0.5, method="truncate", cache=cache, app="b", route="/y")
    assert again.cache_hits == len(DOCS)


def test_unresolvable_model_is_not_cached(caplog):
    cache = cc.open_cache("memory")
    comp = CountingCompressor(model="/nonexistent/model/dir")
    with caplog.at_level(logging.WARNING, logger="ctxzip.cache"):
        comp.compress(_req(cache=cache))
        comp.compress(_req(cache=cache))
    assert len(comp.scored) == 2 * len(DOCS)
    assert cache.stats().lookups == 0 and "not cached" in caplog.text


# ------------------------------------------------------------------------------------------------ configuration


def test_specs_env_and_configure(tmp_path, monkeypatch):
    c = cc.open_cache(f"sqlite:{tmp_path}/x.sqlite3?max_bytes=2M&ttl=1d&retry_after=0.5&results=0")
    assert c.backend.max_bytes == 2 * 2**20 and c.backend.ttl == 86400 and c.retry_after == 0.5
    assert not c.results and c.scores
    m = cc.open_cache("memory?max_bytes=64k&max_entries=10")
    assert m.backend.max_bytes == 65536 and m.backend.max_entries == 10
    for bad in ("memcached://x", "memory:/path", "sqlite?ttl=soon", "sqlite?colour=red", ""):
        with pytest.raises(ConfigError):
            cc.open_cache(bad)
    with pytest.raises(ConfigError, match="cache="):
        ctxzip.compress(DOCS, rate=0.5, method="truncate", cache=3)
    monkeypatch.setenv("CTXZIP_CACHE", "memory")
    assert cc.configured().backend.kind == "memory"
    monkeypatch.setenv("CTXZIP_CACHE", "1")
    assert cc.configured().backend.kind == "sqlite"
    assert cc.configured().backend.path == Path(os.environ["CTXZIP_CACHE_DIR"]) / "cache" / "cache.sqlite3"
    monkeypatch.setenv("CTXZIP_CACHE", "bogus://")
    assert cc.configured() is None  # a bad environment warns and runs without a cache
    cc.configure("memory")
    assert cc.configured().backend.kind == "memory"
    ctxzip.compress(DOCS, rate=0.5, method="truncate")
    assert ctxzip.compress(DOCS, rate=0.5, method="truncate").cache_hits == len(DOCS)
    assert ctxzip.compress(DOCS, rate=0.5, method="truncate", cache=False).cache_hits == 0
    cc.configure(False)
    assert cc.configured() is None


# ------------------------------------------------------------------------------------------------ memory backend


def test_memory_lru_bounds_and_ttl(monkeypatch):
    b = cc.MemoryBackend(max_bytes=100, max_entries=3)
    b.set_many({"a": b"x" * 40, "b": b"y" * 40})
    b.get_many(["a"])  # a is now most recent
    b.set_many({"c": b"z" * 40})
    assert set(b.get_many(["a", "b", "c"])) == {"a", "c"} and b.evictions == 1
    b.set_many({"d": b"1", "e": b"2"})
    assert b.info()["entries"] == 3 and b.info()["bytes"] <= 100
    t = cc.MemoryBackend(ttl=10)
    t.set_many({"k": b"v"})
    now = __import__("time").time()
    monkeypatch.setattr("time.time", lambda: now + 11)
    assert t.get_many(["k"]) == {} and t.evictions == 1


# ------------------------------------------------------------------------------------------------ sqlite backend


def test_sqlite_bounds_ttl_and_eviction(tmp_path, monkeypatch):
    b = cc.SQLiteBackend(tmp_path / "c.sqlite3", max_bytes=10_000, ttl=100, check_every=1)
    for i in range(30):
        b.set_many({f"k{i}": bytes(1000)})
    info = b.info()
    assert info["bytes"] <= 10_000 and b.evictions >= 20
    assert "k29" in b.get_many(["k29"]) and b.get_many(["k0"]) == {}
    now = __import__("time").time()
    monkeypatch.setattr("time.time", lambda: now + 101)
    assert b.get_many(["k29"]) == {}
    b.maintain()
    assert b.info()["entries"] == 0
    b.close()


def test_sqlite_corrupt_file_degrades_then_recovers(tmp_path, caplog):
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a sqlite database at all" * 100)
    cache = cc.open_cache(f"sqlite:{path}?retry_after=0")
    comp = CountingCompressor()
    ref = CountingCompressor().compress(_req())
    with caplog.at_level(logging.WARNING, logger="ctxzip.cache"):
        got = comp.compress(_req(cache=cache))
    _same(ref, got)  # the request succeeded without the cache
    s = cache.stats()
    assert s.errors >= 1 and "not a usable SQLite database" in caplog.text
    # next request: the corrupt file is moved aside, a fresh one is created, caching works again
    comp.compress(_req(cache=cache))
    comp.scored.clear()
    again = comp.compress(_req(cache=cache, rate=0.3))
    assert comp.scored == [] and again.cache_hits == len(DOCS) and not cache.degraded
    assert any(p.name.startswith("c.sqlite3.corrupt-") for p in tmp_path.iterdir())


def test_sqlite_unwritable_location_never_fails_requests(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = cc.open_cache(f"sqlite:{blocker}/sub/c.sqlite3?retry_after=60")
    for _ in range(3):
        _same(CountingCompressor().compress(_req()), CountingCompressor().compress(_req(cache=cache)))
    s = cache.stats()
    assert s.errors == 1 and s.skipped >= 2 and s.degraded == 1
    assert cache.info()["available"] is False


_WORKER = textwrap.dedent(
    """
    import sys, json
    import ctxzip, ctxzip.cache as cc
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache = cc.open_cache("sqlite:" + path + "?retry_after=0")
    for i in range(n):
        cache.set_many({f"{tag}-{i}-{j}": f"{tag}{i}{j}".encode() * 50 for j in range(5)})
        cache.get_many([f"{t}-{i}-{j}" for t in ("a", "b") for j in range(5)])
    docs = [f"Document {k} about topic {k} with several words in it, enough to compress." * 4 for k in range(6)]
    res = ctxzip.compress(docs, rate=0.5, method="truncate", cache=cache)
    print(json.dumps({"errors": cache.stats().errors, "hits": res.cache_hits, "text": res.text}))
    """
)


def test_sqlite_file_shared_by_two_processes(tmp_path):
    path = tmp_path / "shared.sqlite3"
    env = {**os.environ, "CTXZIP_CACHE_DIR": str(tmp_path / "d")}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(path), tag, "60"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for tag in ("a", "b")
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["errors"] for o in outs] == [0, 0]
    assert outs[0]["text"] == outs[1]["text"]
    b = cc.SQLiteBackend(path)
    got = b.get_many([f"{t}-{i}-{j}" for t in ("a", "b") for i in range(60) for j in range(5)])
    assert len(got) == 600 and got["b-59-4"] == b"b594" * 50
    # a third process reads what the first two stored
    third = subprocess.run([sys.executable, "-c", _WORKER, str(path), "c", "1"], capture_output=True, text=True,
                           env=env, timeout=120, check=True)
    assert json.loads(third.stdout.strip().splitlines()[-1])["hits"] == 6


# ------------------------------------------------------------------------------------------------ stats


def test_stats_aggregate_and_report_bytes():
    a = cc.resolve("memory")
    ctxzip.compress(DOCS, rate=0.5, method="truncate", cache="memory")
    ctxzip.compress(DOCS, rate=0.5, method="truncate", cache="memory")
    s = cc.stats()
    assert s.result_hits == 1 and s.result_misses == 1 and s.writes == 1
    assert s.bytes_written > 0 and s.bytes_read == s.bytes_written and s.hit_rate == 0.5
    d = s.to_dict()
    assert d["lookups"] == 2 and d["hit_rate"] == 0.5
    assert cc.stats_by_cache()["memory"] == a.stats()
    info = a.info()
    assert info["entries"] == 1 and info["bytes"] == s.bytes_written and info["available"] is True


# ------------------------------------------------------------------------------------------------ CLI and warm


def test_warm_then_requests_score_nothing(monkeypatch):
    from ctxzip import registry

    monkeypatch.setitem(registry._classes, "cache-test", CountingCompressor)
    cache = cc.open_cache("memory", results=False)
    rep = cc.warm("cache-test", DOCS, question="Where is Paris?", cache=cache)
    assert (rep.documents, rep.cached, rep.scored) == (len(DOCS), 0, len(DOCS))
    again = cc.warm("cache-test", DOCS, question="Where is Paris?", cache=cache)
    assert (again.cached, again.scored) == (len(DOCS), 0)
    comp = CountingCompressor()
    res = comp.compress(_req(question="Where is Paris?", cache=cache, rate=0.25))
    assert comp.scored == [] and res.cache_hits == len(DOCS)
    with pytest.raises(ConfigError, match="does not cache per-document scores"):
        cc.warm("truncate", DOCS, cache=cache)


def test_cli_stats_clear_warm(tmp_path, monkeypatch, capsys):
    from ctxzip import registry
    from ctxzip.cli import main

    monkeypatch.setitem(registry._classes, "cache-test", CountingCompressor)
    spec = f"sqlite:{tmp_path}/cli.sqlite3"
    files = []
    for i, text in enumerate(DOCS[:2]):
        f = tmp_path / f"d{i}.txt"
        f.write_text(text)
        files.append(str(f))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"question": "q?", "docs": [{"title": "t", "text": t}]}) for t in DOCS))
    assert main(["cache", "warm", *files, str(rows), "--method", "cache-test", "--cache", spec, "--json"]) == 0
    warm = json.loads(capsys.readouterr().out)
    assert warm["documents"] == 2 + len(DOCS) and warm["scored"] == 2 + len(DOCS) and warm["errors"] == 0
    assert main(["cache", "stats", "--cache", spec, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 2 + len(DOCS) and stats["bytes"] > 0 and stats["backend"] == "sqlite"
    monkeypatch.setenv("CTXZIP_CACHE", spec)
    assert main(["cache", "clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 2 + len(DOCS)
    assert main(["cache", "stats"]) == 0
    assert "entries: 0" in capsys.readouterr().out
    assert main(["cache", "warm", files[0], "--method", "truncate"]) == 2
    assert "does not cache per-document scores" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ near duplicates


def test_transfer_scores_follows_the_word_diff():
    from ctxzip.cache.near import transfer_scores

    src = ["the", "tower", "is", "in", "Paris"]
    scores = np.array([0.1, 0.9, 0.2, 0.3, 1.0])
    out = transfer_scores(src, scores, ["the", "old", "tower", "is", "in", "Paris"])
    assert out.tolist() == [0.1, 0.3, 0.9, 0.2, 0.3, 1.0]  # the new word gets the median (0.3)
    with pytest.raises(ConfigError, match="threshold"):
        cc.open_cache("memory?near=1.5")


@pytest.mark.slow
def test_near_duplicate_reuses_scores_above_threshold_only():
    cache = cc.open_cache("memory?near=0.95&results=0")
    comp = CountingCompressor()
    comp.compress(_req(cache=cache))
    near = [d.replace("completed in 1889", "finished in 1889") for d in DOCS[:1]]
    far = ["Quantum chromodynamics describes the strong interaction between quarks and gluons. " * 3]
    comp.scored.clear()
    res = comp.compress(_req(near + far, cache=cache))
    assert comp.scored == far  # the near-duplicate borrowed scores, the unrelated document was scored
    assert cache.stats().near_hits == 1 and res.cache_hits == 1
    assert res.documents[0].compressed_tokens > 0
