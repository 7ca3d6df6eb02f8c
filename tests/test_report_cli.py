"""`ctxzip report` end to end: tables, --json, --csv, --html, --since, --price, --estimate, JSONL moves."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone

import pytest

from ctxzip.ledger import Ledger, LedgerEvent, read_events
from ctxzip.report_cli import main

pytest.importorskip("genai_prices")

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def ledger_path(tmp_path, monkeypatch):
    monkeypatch.delenv("CTXZIP_LEDGER", raising=False)
    monkeypatch.delenv("CTXZIP_COMPUTE_USD_PER_HOUR", raising=False)
    monkeypatch.setenv("CTXZIP_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as ledger:
        ledger.append_many([
            LedgerEvent(time=T0, target_model="gpt-4o", tokens_before=10_000, tokens_after=4_000, method="lingua2",
                        seconds=0.5, route="/rag", cached_prefix_tokens=6_000, prefix_changed=True),
            LedgerEvent(time=T0 + timedelta(days=2), target_model="gpt-4o", tokens_before=2_000_000,
                        tokens_after=1_000_000, method="longlingua", seconds=3.6, route="/chat"),
        ])
    return path


def test_json_report(ledger_path, capsys):
    assert main([str(ledger_path), "--json", "--compute-usd-per-hour", "3.6"]) == 0
    data = json.loads(capsys.readouterr().out)
    figs = {f["name"]: f for f in data["figures"]}
    # gpt-4o at genai-prices' $2.5 input / $1.25 cache read (read back from the report's own pricing section)
    p = next(x for x in data["pricing"] if x["model"] == "gpt-4o")
    pin, pread = p["input_per_mtok"], p["cache_read_per_mtok"]
    gross = (6_000 * pread + 1_000_000 * pin) / 1e6
    assert figs["gross_usd"]["value"] == pytest.approx(gross)
    assert figs["compute_usd"]["value"] == pytest.approx(4.1 * 3.6 / 3600)
    assert figs["net_usd"]["value"] == pytest.approx(gross - 4.1 * 3.6 / 3600)
    assert all(f["assumption"] for f in data["figures"])
    assert p["source"].startswith("genai-prices")


def test_terminal_tables(ledger_path, capsys):
    assert main([str(ledger_path), "--by", "route"]) == 0
    out = capsys.readouterr().out
    for needle in ("Net savings", "Cache-write premiums", "By route", "/rag", "/chat", "Prices used",
                   "Assumptions", "genai-prices"):
        assert needle in out, needle


def test_since_csv_and_html(ledger_path, tmp_path, capsys):
    csv_path, html_path = tmp_path / "r.csv", tmp_path / "r.html"
    assert main([str(ledger_path), "--since", "2025-06-02", "--csv", str(csv_path), "--html", str(html_path),
                 "--by", "day", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["events"] == 1
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["by"], r["key"], r["events"]) for r in rows] == [("day", "2025-06-03", "1"), ("total", "total", "1")]
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 4


def test_unknown_model_needs_price(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CTXZIP_LEDGER", raising=False)
    path = tmp_path / "l.sqlite3"
    Ledger(path).append(LedgerEvent(time=T0, target_model="acme-llm-7", tokens_before=3_000_000,
                                    tokens_after=1_000_000, method="m", seconds=0))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "acme-llm-7" in err and "--price" in err
    assert main([str(path), "--json", "--compute-usd-per-hour", "0", "--price", "acme-llm-7=0.5,0.05"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {f["name"]: f["value"] for f in data["figures"]}["net_usd"] == pytest.approx(1.0)
    assert data["pricing"][0]["source"].startswith("--price")
    assert main([str(path), "--price", "nonsense"]) == 2


def test_missing_ledger_and_misused_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CTXZIP_LEDGER", raising=False)
    assert main([str(tmp_path / "nope.sqlite3")]) == 2
    assert "CTXZIP_LEDGER=1" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite3").exists()
    assert main([str(tmp_path / "nope.sqlite3"), "--model", "gpt-4o"]) == 2
    assert "--estimate" in capsys.readouterr().err
    assert main(["--estimate", str(tmp_path), "--rate", "0.5"]) == 2
    assert "--model" in capsys.readouterr().err


def test_jsonl_export_import_and_read(ledger_path, tmp_path, capsys):
    out = tmp_path / "events.jsonl"
    assert main([str(ledger_path), "--export-jsonl", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    copy = tmp_path / "copy.sqlite3"
    assert main([str(copy), "--import-jsonl", str(out)]) == 0
    assert main([str(copy), "--import-jsonl", str(out)]) == 0
    assert read_events(copy) == read_events(ledger_path)
    capsys.readouterr()
    assert main([str(out), "--json"]) == 0  # a .jsonl file is a readable ledger too
    assert json.loads(capsys.readouterr().out)["total"]["events"] == 2


def test_estimate_compresses_samples_without_touching_the_ledger(tmp_path, monkeypatch, capsys):
    ledger = tmp_path / "real.sqlite3"
    monkeypatch.setenv("CTXZIP_LEDGER", str(ledger))
    folder = tmp_path / "prompts"
    folder.mkdir()
    for i in range(2):
        (folder / f"p{i}.txt").write_text("Retrieval augmented generation keeps prompts long. " * (30 + 10 * i))
    (folder / "more.jsonl").write_text(json.dumps({"prompt": "alpha beta gamma delta " * 40, "question": "q?"})
                                       + "\n" + json.dumps("one two three four five six " * 30) + "\n")
    assert main(["--estimate", str(folder), "--model", "gpt-4o", "--method", "truncate", "--rate", "0.33",
                 "--requests-per-month", "100000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["events"] == 4
    assert 0.25 < data["total"]["rate"] < 0.40
    figs = {f["name"]: f for f in data["figures"]}
    assert figs["net_usd_per_month"]["value"] == pytest.approx(figs["net_usd"]["value"] / 4 * 100_000)
    assert "truncate" in data["title"] and "gpt-4o" in data["title"]
    assert not ledger.exists()


def test_dispatched_by_the_main_cli(ledger_path, capsys):
    cli = pytest.importorskip("ctxzip.cli")
    assert cli.main(["report", str(ledger_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["events"] == 2
