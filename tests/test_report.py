"""Savings arithmetic against hand-computed cases, and prices taken from genai-prices (not a table of ours)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ctxzip.errors import ConfigError, UnknownNameError
from ctxzip.ledger import LedgerEvent
from ctxzip.report import (
    PriceBook,
    PriceOverride,
    ReportConfig,
    UnknownPriceError,
    build_report,
    event_savings,
    parse_since,
)

genai_prices = pytest.importorskip("genai_prices")

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
# Hand-given prices (USD per million tokens) for the pure-arithmetic cases: Anthropic-like with a write surcharge
# and OpenAI-like without one. Model names are made up so genai-prices cannot be the source.
ANTH = PriceOverride(3.0, 0.3, 3.75)
OAI = PriceOverride(2.5, 1.25)
CFG = ReportConfig(compute_usd_per_hour=3.6, prices={"anth-x": ANTH, "oai-x": OAI})  # 3.6 $/h = $0.001 per second


def ev(b: int, a: int, *, model: str = "anth-x", seconds: float = 0.0, c: int | None = None,
       changed: bool | None = None, i: int = 0, **kw) -> LedgerEvent:
    return LedgerEvent(time=T0 + timedelta(hours=i), target_model=model, tokens_before=b, tokens_after=a,
                       method=kw.pop("method", "lingua2"), seconds=seconds, cached_prefix_tokens=c,
                       prefix_changed=changed, **kw)


def one(event: LedgerEvent, config: ReportConfig = CFG):
    book = PriceBook(config.prices)
    priced = book.resolve_all([event])[(event.target_model, event.provider)]
    return event_savings(event, priced, config)


# ------------------------------------------------------------------------------------------ hand-computed cases


def test_no_caching_case():
    # 10,000 -> 4,000 tokens at $3/M: 6,000 * 3 / 1e6 = $0.018 avoided; 2 s * $0.001/s = $0.002 compute
    s = one(ev(10_000, 4_000, seconds=2.0))
    assert s.naive == Decimal("0.018") and s.gross == Decimal("0.018")
    assert s.write_premium == 0
    assert s.compute == Decimal("0.002")
    assert s.net == Decimal("0.016")


def test_cache_read_case_prefix_kept():
    # 6,000 cached prefix tokens kept as they are: they stay cache reads, the 3,000 saved tokens are all full price.
    # before = 4,000*3 + 6,000*0.3 = 13,800 -> $0.0138 ; after = 1,000*3 + 6,000*0.3 = 4,800 -> $0.0048
    s = one(ev(10_000, 7_000, c=6_000, changed=False, seconds=0.5))
    assert s.cost_before == Decimal("0.0138") and s.cost_after == Decimal("0.0048")
    assert s.gross == Decimal("0.009")
    assert (s.cache_read_after, s.cache_write_after) == (6_000, 0)
    assert s.write_premium == 0 and s.compute == Decimal("0.0005")
    assert s.net == Decimal("0.0085")


def test_cache_read_case_saved_tokens_at_cache_read_price():
    # OpenAI-like (no write surcharge), prefix busted: 10,000 tokens with 6,000 cached -> 4,000 uncached tokens.
    # before = 4,000*2.5 + 6,000*1.25 = 17,500 -> $0.0175 ; after = 4,000*2.5 -> $0.01
    # gross = $0.0075 = the 6,000 saved tokens at the $1.25 cache-read price; naive says 6,000*2.5 = $0.015.
    s = one(ev(10_000, 4_000, model="oai-x", c=6_000, changed=True))
    assert s.cost_before == Decimal("0.0175") and s.cost_after == Decimal("0.01")
    assert s.gross == Decimal("0.0075") == 6_000 * Decimal("1.25") / 1_000_000
    assert s.naive == Decimal("0.015")
    assert s.write_premium == 0 and s.net == Decimal("0.0075")


def test_cache_bust_case_costs_money():
    # Anthropic-like, compression changes the 6,000-token cached prefix: the 4,000 compressed tokens are written.
    # before = 4,000*3 + 6,000*0.3 = 13,800 -> $0.0138 ; after at list = 4,000*3 = 12,000 -> $0.012
    # gross = $0.0018 ; premium = 4,000 * (3.75 - 3) = 3,000 -> $0.003 ; net = -$0.0012 though naive says +$0.018
    s = one(ev(10_000, 4_000, c=6_000, changed=True))
    assert (s.cache_read_after, s.cache_write_after) == (0, 4_000)
    assert s.gross == Decimal("0.0018")
    assert s.write_premium == Decimal("0.003")
    assert s.net == Decimal("-0.0012")
    assert s.naive == Decimal("0.018")
    assert s.cost_after == Decimal("0.015")  # 4,000 * 3.75


def test_unknown_prefix_changed_is_worst_case():
    assert one(ev(10_000, 4_000, c=6_000, changed=None)).net == Decimal("-0.0012")


def test_assumed_cached_fraction_for_unrecorded_prefix():
    # f = 0.5 -> 5,000 cached (assumed busted): before = 5,000*3 + 5,000*0.3 = 16,500 ; after list 12,000
    # gross = $0.0045 ; premium = 4,000 * 0.75 = $0.003
    s = one(ev(10_000, 4_000), dataclasses.replace(CFG, assume_cached_fraction=0.5))
    assert s.cached_prefix == 5_000 and not s.cached_prefix_known
    assert s.gross == Decimal("0.0045") and s.write_premium == Decimal("0.003") and s.net == Decimal("0.0015")


def test_report_totals_and_worst_case():
    events = [ev(10_000, 4_000, seconds=2.0, i=0),                          # net 0.016
              ev(10_000, 7_000, c=6_000, changed=False, seconds=0.5, i=1),  # net 0.0085
              ev(10_000, 4_000, c=6_000, changed=True, i=25)]               # net -0.0012
    r = build_report(events, CFG)
    assert r.figure("tokens_saved").value == 15_000
    assert r.figure("naive_usd").value == pytest.approx(0.018 + 0.009 + 0.018)
    assert r.figure("gross_usd").value == pytest.approx(0.018 + 0.009 + 0.0018)
    assert r.figure("write_premium_usd").value == pytest.approx(0.003)
    assert r.figure("compute_usd").value == pytest.approx(0.0025)
    assert r.figure("net_usd").value == pytest.approx(0.016 + 0.0085 - 0.0012)
    assert r.figure("ratio").value == pytest.approx(30_000 / 15_000)
    assert r.figure("net_usd_per_1k").value == pytest.approx((0.016 + 0.0085 - 0.0012) / 3 * 1000)
    # worst case: the first event (no recorded prefix) fully cached and busted:
    # before 10,000*0.3 = 0.003 ; after 4,000*3.75 = 0.015 ; compute 0.002 -> -0.014
    assert r.figure("net_usd_worst_case").value == pytest.approx(-0.014 + 0.0085 - 0.0012)
    for f in r.figures:
        assert f.assumption.strip(), f.name
    assert "$3.6/hour" in r.figure("compute_usd").assumption
    assert "1 request whose compression changed a cached prefix" in r.figure("write_premium_usd").assumption
    assert [g.key for g in r.by_day] == ["2025-06-01", "2025-06-02"]
    assert sum(g.net_usd for g in r.by_day) == pytest.approx(r.total.net_usd)
    assert r.total.busted_prefixes == 1 and r.total.p50_seconds == 0.5


def test_grouping_csv_and_json():
    events = [ev(1_000, 500, i=0, route="/a"), ev(2_000, 500, i=1, route="/b", method="longlingua"),
              ev(4_000, 1_000, i=2, route="/a", model="oai-x")]
    r = build_report(events, dataclasses.replace(CFG, by="route"))
    assert {g.key: g.events for g in r.groups} == {"/a": 2, "/b": 1}
    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    assert [row["key"] for row in rows][-1] == "total"
    assert sum(float(row["net_usd"]) for row in rows[:-1]) == pytest.approx(float(rows[-1]["net_usd"]))
    assert int(rows[-1]["tokens_saved"]) == 500 + 1_500 + 3_000
    data = json.loads(r.to_json())
    assert data["by"] == "route" and data["total"]["events"] == 3
    assert {f["name"] for f in data["figures"]} >= {"net_usd", "gross_usd", "write_premium_usd", "compute_usd"}
    assert all(f["assumption"] for f in data["figures"])
    by_method = build_report(events, dataclasses.replace(CFG, by="method"))
    assert {g.key for g in by_method.groups} == {"lingua2", "longlingua"}


def test_since_filters_events():
    events = [ev(1_000, 500, i=0), ev(1_000, 500, i=48)]
    r = build_report(events, dataclasses.replace(CFG, since="2025-06-02"))
    assert r.total.events == 1


def test_everything_dropped_gives_strict_json():
    r = build_report([ev(1_000, 0)], CFG)
    assert r.figure("ratio").value == float("inf")
    data = json.loads(r.to_json())
    assert {f["name"]: f["value"] for f in data["figures"]}["ratio"] is None
    assert data["total"]["ratio"] is None and data["total"]["tokens_saved"] == 1_000


def test_empty_report():
    r = build_report([], CFG)
    assert r.total.events == 0 and r.figure("net_usd").value == 0
    with pytest.raises(UnknownNameError):
        r.figure("net_usd_worst_case")


# ------------------------------------------------------------------------------------------ genai-prices


def _genai_cost(model: str, when: datetime, provider: str | None = None, **usage) -> Decimal:
    return genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider,
                                   genai_request_timestamp=when).input_price


@pytest.mark.parametrize("model,provider", [
    ("gpt-4o", None), ("gpt-4o", "azure"), ("claude-sonnet-4-5", None), ("claude-3-5-sonnet", None),
    ("gemini-2.5-pro", None), ("mistral-large", None), ("deepseek-v4-flash", None),
])
@pytest.mark.parametrize("usage", [
    dict(input_tokens=12_345), dict(input_tokens=250_000, cache_read_tokens=150_000),
    dict(input_tokens=180_000, cache_write_tokens=100_000), dict(input_tokens=90_000, cache_read_tokens=10_000,
                                                                 cache_write_tokens=20_000),
])
def test_cost_matches_genai_prices_calc_price(model, provider, usage):
    book = PriceBook()
    priced = book.lookup(model, provider)
    assert priced is not None and priced.pricing.source.startswith("genai-prices")
    for when in (datetime(2025, 3, 1, 3, tzinfo=timezone.utc), datetime.now(timezone.utc)):
        ours = priced.cost(when, usage["input_tokens"], usage.get("cache_read_tokens", 0),
                           usage.get("cache_write_tokens", 0))
        assert ours == _genai_cost(model, when, provider, **usage)


def test_long_context_tier_uses_genai_prices_tiers():
    # claude-sonnet-4-5: a 250k prompt is billed all at the >200k tier, the compressed 100k one at the base price
    info = PriceBook().lookup("claude-sonnet-4-5", None)
    mp = info._model_info.get_prices(T0)
    base, tier = mp.input_mtok.base, mp.input_mtok.tiers[0]
    assert tier.start == 200_000
    e = ev(250_000, 100_000, model="claude-sonnet-4-5")
    s = one(e, ReportConfig(compute_usd_per_hour=0))
    assert s.gross == (250_000 * tier.price - 100_000 * base) / 1_000_000
    assert s.gross == (_genai_cost("claude-sonnet-4-5", T0, input_tokens=250_000)
                       - _genai_cost("claude-sonnet-4-5", T0, input_tokens=100_000))
    r = build_report([e], ReportConfig())
    assert "claude-sonnet-4-5" in r.figure("gross_usd").assumption  # named as tiered


def test_prices_come_from_genai_prices_snapshot():
    """Swap genai-prices' data for a snapshot with made-up gpt-4o prices: the report must follow it."""
    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice

    real = data_snapshot.get_snapshot()
    openai = next(p for p in real.providers if p.id == "openai")
    gpt4o = next(m for m in openai.models if m.id == "gpt-4o")
    fake_model = dataclasses.replace(gpt4o, prices=ModelPrice(input_mtok=Decimal("7.77"),
                                                              cache_read_mtok=Decimal("0.77")))
    fake = dataclasses.replace(openai, models=[fake_model])
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[fake], from_auto_update=False))
    try:
        r = build_report([ev(1_000_000, 0, model="gpt-4o", c=500_000, changed=True)],
                         ReportConfig(compute_usd_per_hour=0))
        # before: 500k * 7.77 + 500k * 0.77 = $4.27 ; after: nothing
        assert r.figure("gross_usd").value == pytest.approx(4.27)
        assert r.pricing[0].input_per_mtok == pytest.approx(7.77)
        assert r.pricing[0].cache_read_per_mtok == pytest.approx(0.77)
    finally:
        data_snapshot.set_custom_snapshot(None)
    r = build_report([ev(1_000_000, 0, model="gpt-4o")], ReportConfig(compute_usd_per_hour=0))
    assert r.figure("gross_usd").value == pytest.approx(float(gpt4o.get_prices(T0).input_mtok))


def test_event_time_selects_the_price_in_force():
    info = PriceBook().lookup("deepseek-v4-flash", None)
    # genai-prices has dated and time-of-day prices for it: each event is priced as of its own time
    times = [datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, 3, tzinfo=timezone.utc)]
    grosses = []
    for when in times:
        e = dataclasses.replace(ev(100_000, 0, model="deepseek-v4-flash"), time=when)
        grosses.append(one(e, ReportConfig(compute_usd_per_hour=0)).gross)
        assert grosses[-1] == _genai_cost("deepseek-v4-flash", when, input_tokens=100_000)
    assert grosses[0] != grosses[1]
    assert info.pricing.matched_model == "deepseek-v4-flash"


def test_unknown_provider_falls_back_with_a_stated_note():
    r = build_report([ev(10_000, 5_000, model="gpt-4o", provider="my-gateway")], ReportConfig())
    assert r.pricing[0].matched_provider == "openai"
    assert any("my-gateway" in a for a in r.assumptions)


# ------------------------------------------------------------------------------------------ unknown models


def test_unknown_model_is_an_error_never_zero():
    events = [ev(1_000, 500, model="gpt-4oo"), ev(1_000, 500, model="gpt-4oo", i=1), ev(10, 5, model="zzz-llm")]
    with pytest.raises(UnknownPriceError) as info:
        build_report(events, ReportConfig())
    msg = str(info.value)
    assert "gpt-4oo: 2 event(s)" in msg and "zzz-llm: 1 event(s)" in msg
    assert "did you mean" in msg and "gpt-4o" in msg
    assert "--price" in msg and "never prices an unknown model at zero" in msg
    assert isinstance(info.value, KeyError)
    r = build_report(events, ReportConfig(compute_usd_per_hour=0, prices={"*": PriceOverride(1.0)}))
    assert r.figure("net_usd").value == pytest.approx((500 + 500 + 5) / 1e6)
    assert {p.source for p in r.pricing} == {"--price (for models without a price)"}


def test_event_without_model_needs_a_price():
    e = LedgerEvent(time=T0, target_model=None, tokens_before=100, tokens_after=50, method="m", seconds=0)
    with pytest.raises(UnknownPriceError, match=r"\(no model\)"):
        build_report([e], ReportConfig())


def test_explicit_override_beats_genai_prices():
    r = build_report([ev(2_000_000, 1_000_000, model="gpt-4o")],
                     ReportConfig(compute_usd_per_hour=0, prices={"GPT-4o": PriceOverride(1.0)}))
    assert r.figure("gross_usd").value == pytest.approx(1.0)
    assert r.pricing[0].source.startswith("--price gpt-4o")


def test_override_without_cache_read_price_is_refused_for_cached_events():
    with pytest.raises(ConfigError, match="cache-read price"):
        build_report([ev(1_000, 500, model="mine", c=200)], ReportConfig(prices={"mine": PriceOverride(1.0)}))


# ------------------------------------------------------------------------------------------ config


def test_price_override_parsing():
    assert PriceOverride.parse("2.5") == ("*", PriceOverride(2.5))
    assert PriceOverride.parse("my-llm=0.5,0.05") == ("my-llm", PriceOverride(0.5, 0.05))
    assert PriceOverride.parse("org/model:v1=1,0.1,1.25") == ("org/model:v1", PriceOverride(1.0, 0.1, 1.25))
    for bad in ("", "=1", "x=", "x=a,b", "1,2,3,4", "x=-1"):
        with pytest.raises(ConfigError):
            PriceOverride.parse(bad)


def test_report_config_validates():
    with pytest.raises(ConfigError, match="by must be one of"):
        ReportConfig(by="week")
    with pytest.raises(ConfigError, match="compute-usd-per-hour"):
        ReportConfig(compute_usd_per_hour=-1)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        ReportConfig(assume_cached_fraction=1.5)
    with pytest.raises(ConfigError, match="requests_per_month"):
        ReportConfig(requests_per_month=0)
    with pytest.raises(ConfigError, match="PriceOverride"):
        ReportConfig(prices={"x": "cheap"})


def test_compute_rate_from_env(monkeypatch):
    monkeypatch.setenv("CTXZIP_COMPUTE_USD_PER_HOUR", "7.2")
    assert ReportConfig().compute_usd_per_hour == 7.2
    assert ReportConfig(compute_usd_per_hour=0).compute_usd_per_hour == 0
    monkeypatch.setenv("CTXZIP_COMPUTE_USD_PER_HOUR", "lots")
    with pytest.raises(ConfigError, match="USD per hour"):
        ReportConfig()


def test_parse_since():
    now = datetime(2025, 6, 10, tzinfo=timezone.utc)
    assert parse_since("2025-06-01") == datetime(2025, 6, 1, tzinfo=timezone.utc)
    assert parse_since("2025-06-01T12:00Z") == T0
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("36h", now) == now - timedelta(hours=36)
    with pytest.raises(ConfigError, match="7d"):
        parse_since("last tuesday")


def test_projection_per_month():
    r = build_report([ev(10_000, 4_000, i=0), ev(10_000, 4_000, i=1)],
                     dataclasses.replace(CFG, requests_per_month=100_000))
    assert r.figure("net_usd_per_month").value == pytest.approx(0.018 * 100_000)
