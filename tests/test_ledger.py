"""The savings ledger: events, SQLite storage (many writers), record() on/off and never raising, JSONL."""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from ctxzip.errors import ConfigError, InputError
from ctxzip.ledger import Ledger, LedgerEvent, read_events, record, suppressed
from ctxzip.types import CompressionResult

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def _event(i: int = 0, **kw) -> LedgerEvent:
    base = dict(time=T0 + timedelta(minutes=i), target_model="gpt-4o", tokens_before=1000 + i, tokens_after=400,
                method="lingua2", seconds=0.25, route="/chat")
    base.update(kw)
    return LedgerEvent(**base)


def _result(**kw) -> CompressionResult:
    base = dict(text="kept", documents=(), origin_tokens=900, compressed_tokens=300, method="lingua2",
                method_version="1", seconds=0.125, target_model="claude-sonnet-4-5", tokenizer="estimate",
                tokens_exact=False, cache_hits=0)
    base.update(kw)
    return CompressionResult(**base)


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CTXZIP_LEDGER", raising=False)
    monkeypatch.setenv("CTXZIP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


# ------------------------------------------------------------------------------------------------- events


def test_event_validates_fields():
    e = _event(cached_prefix_tokens=200.0, prefix_changed=0)
    assert e.cached_prefix_tokens == 200 and e.prefix_changed is False
    assert e.tokens_saved == 600 and e.ratio == pytest.approx(1000 / 400)
    with pytest.raises(InputError, match="tokens_before"):
        _event(tokens_before=-1)
    with pytest.raises(InputError, match="seconds"):
        _event(seconds=float("nan"))
    with pytest.raises(InputError, match="method"):
        _event(method="")
    with pytest.raises(InputError, match="ISO 8601"):
        _event(time="yesterday")
    naive = _event(time=datetime(2025, 6, 1, 12, 0))
    assert naive.time.tzinfo is not None and naive.time == T0
    assert _event(time="2025-06-01T14:00:00+02:00").time == T0
    assert _event(tokens_before=0, tokens_after=0).ratio == 1.0


def test_event_dict_roundtrip_and_unknown_fields():
    e = _event(cached_prefix_tokens=10, prefix_changed=True, cache_hit=True, provider="azure", app="a")
    assert LedgerEvent.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    d = e.to_dict()
    d["tokens_befor"] = 3
    with pytest.raises(InputError, match="tokens_befor"):
        LedgerEvent.from_dict(d)
    with pytest.raises(InputError, match="missing"):
        LedgerEvent.from_dict({"time": T0.isoformat()})


# ------------------------------------------------------------------------------------------------- storage


def test_ledger_roundtrip_since_and_order(tmp_path):
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        events = [_event(i, cached_prefix_tokens=None if i % 2 else i) for i in (3, 1, 2, 0)]
        for e in events:
            ledger.append(e)
        ledger.append(events[0])  # same id: ignored
        assert len(ledger) == 4
        got = ledger.events()
        assert [e.time for e in got] == sorted(e.time for e in events)
        assert {e.id: e for e in got} == {e.id: e for e in events}
        assert [e.time for e in ledger.events(since=T0 + timedelta(minutes=2))] == [
            T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)]
        assert len(ledger.events(since="2025-06-01T12:01:00Z", until=T0 + timedelta(minutes=3))) == 2
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert len(read_events(path)) == 4


def test_ledger_refuses_bad_input(tmp_path):
    with pytest.raises(InputError, match="no ledger at"):
        Ledger(tmp_path / "missing.sqlite3", create=False)
    with pytest.raises(ConfigError, match="JSON Lines"):
        Ledger(tmp_path / "x.jsonl")
    (tmp_path / "junk.sqlite3").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(InputError, match="not a usable ctxzip ledger"):
        Ledger(tmp_path / "junk.sqlite3")
    with Ledger(tmp_path / "ok.sqlite3") as ledger, pytest.raises(InputError, match="LedgerEvent"):
        ledger.append({"tokens_before": 1})


def _writer(path: str, worker: int, n: int) -> None:
    ledger = Ledger(path)
    for i in range(n):
        ledger.append(_event(i, route=f"w{worker}"))
    ledger.close()


def test_many_processes_and_threads_append_at_once(tmp_path):
    path = tmp_path / "shared.sqlite3"
    parent = Ledger(path)  # open in the parent before forking: children must reopen, not share it
    parent.append(_event(0, route="parent"))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 60)) for w in range(4)]
    threads = [threading.Thread(target=lambda k=k: [parent.append(_event(i, route=f"t{k}")) for i in range(40)])
               for k in range(3)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for p in procs:
        p.join(120)
    for t in threads:
        t.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    events = parent.events()
    assert len(events) == 1 + 4 * 60 + 3 * 40
    assert len({e.id for e in events}) == len(events)
    routes = {r: sum(1 for e in events if e.route == r) for r in {e.route for e in events}}
    assert routes == {"parent": 1, **{f"w{w}": 60 for w in range(4)}, **{f"t{k}": 40 for k in range(3)}}
    parent.close()


def test_jsonl_export_import_is_idempotent(tmp_path):
    src = Ledger(tmp_path / "a.sqlite3")
    src.append_many([_event(i, cached_prefix_tokens=i) for i in range(5)])
    out = tmp_path / "events.jsonl"
    assert src.export_jsonl(out, since=T0 + timedelta(minutes=1)) == 4
    assert len(out.read_text().splitlines()) == 4
    assert [e.id for e in read_events(out)] == [e.id for e in src.events(since=T0 + timedelta(minutes=1))]
    dst = Ledger(tmp_path / "b.sqlite3")
    assert dst.import_jsonl(out) == 4
    assert dst.import_jsonl(out) == 0
    assert dst.events() == src.events(since=T0 + timedelta(minutes=1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_event(1).to_dict()) + "\n{not json\n")
    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_events(bad)


# ------------------------------------------------------------------------------------------------- record()


def test_record_is_off_unless_asked(no_env):
    assert record(_result()) is None
    assert not (no_env / "cache" / "ledger").exists() or not any((no_env / "cache" / "ledger").iterdir())


@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_record_env_default_path(no_env, monkeypatch, value):
    monkeypatch.setenv("CTXZIP_LEDGER", value)
    e = record(_result(), route="/rag", app="svc", provider="anthropic", cached_prefix_tokens=120)
    assert e is not None
    stored = read_events(no_env / "cache" / "ledger" / "ledger.sqlite3")
    assert stored == [e]
    assert (e.route, e.app, e.provider, e.cached_prefix_tokens) == ("/rag", "svc", "anthropic", 120)
    assert (e.tokens_before, e.tokens_after, e.method, e.seconds) == (900, 300, "lingua2", 0.125)
    assert (e.target_model, e.tokens_exact, e.method_version, e.cache_hit) == ("claude-sonnet-4-5", False, "1", False)


def test_record_env_path_explicit_and_off(no_env, monkeypatch):
    envpath = no_env / "env.sqlite3"
    monkeypatch.setenv("CTXZIP_LEDGER", str(envpath))
    assert record(_result(cache_hits=2)).cache_hit is True
    assert record(_result(), ledger=False) is None
    explicit = Ledger(no_env / "explicit.sqlite3")
    assert record(_result(), ledger=explicit, cache_hit=True, prefix_changed=False).prefix_changed is False
    assert record(_result(), ledger=str(no_env / "bypath.sqlite3")) is not None
    with suppressed():
        assert record(_result()) is None
    assert len(read_events(envpath)) == 1
    assert len(explicit.events()) == 1 and explicit.events()[0].cache_hit is True
    assert len(read_events(no_env / "bypath.sqlite3")) == 1
    monkeypatch.setenv("CTXZIP_LEDGER", "0")
    assert record(_result()) is None


def test_record_never_raises(no_env, caplog):
    (no_env / "adir").mkdir()
    with caplog.at_level(logging.WARNING, logger="ctxzip.ledger"):
        assert record(_result(), ledger=no_env / "adir") is None  # a directory is no database
        assert record(object(), ledger=no_env / "ok.sqlite3") is None  # not a CompressionResult
        assert record(_result(origin_tokens=-5), ledger=no_env / "ok.sqlite3") is None
        assert record(_result(), ledger=12345) is None
    text = caplog.text
    assert "event not recorded" in text and "adir" in text


def test_compress_records_through_the_library(no_env):
    import ctxzip

    path = no_env / "lib.sqlite3"
    text = "The quick brown fox jumps over the lazy dog. " * 40
    r = ctxzip.compress(text, rate=0.5, method="truncate", ledger=str(path), route="/docs")
    events = read_events(path)
    assert len(events) == 1
    assert (events[0].tokens_before, events[0].tokens_after) == (r.origin_tokens, r.compressed_tokens)
    assert events[0].route == "/docs" and events[0].method == r.method
    ctxzip.compress(text, rate=0.5, method="truncate")  # CTXZIP_LEDGER unset: nothing anywhere
    assert len(read_events(path)) == 1


def test_import_ctxzip_stays_light():
    code = ("import sys, ctxzip, ctxzip.ledger, ctxzip.report_cli; "
            "bad = [m for m in ('genai_prices', 'matplotlib', 'ctxzip.report') if m in sys.modules]; "
            "print(bad); raise SystemExit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
