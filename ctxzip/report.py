"""Savings report: what compression saved, net of what it cost, from the ledger and ``genai-prices``.

Per compression (one ledger event) with ``B`` input tokens before, ``A`` after, ``C`` cached-prefix tokens (the
leading tokens of the uncompressed prompt the provider would have served from its prompt cache) and the model's
prices ``p_in``, ``p_read``, ``p_write`` from ``genai-prices`` (per million tokens, at the time of the request,
each request at its own long-context tier)::

    before       = cost(input=B, cache_read=C)
    prefix kept:   after = cost(input=A, cache_read=min(C, A))                        (no write)
    prefix busted: after = cost(input=A, cache_write=min(C, A))                       (new prefix written)
    gross        = before - after, with written tokens priced as ordinary input
    write premium= (p_write - p_in) * written tokens                                 (0 without a surcharge)
    compute      = compression seconds * $/hour / 3600
    net          = gross - write premium - compute

So tokens that would have been cache hits save only the cache-read price, and a compressed prefix that busts the
provider cache loses its cache reads and pays the write surcharge. ``naive`` (every saved token at the list input
price) is shown beside it only for comparison. Every figure of a :class:`SavingsReport` carries its assumption.

``cost()`` follows genai-prices' own rules (``input_tokens`` is the whole prompt including cache reads and
writes; a unit without its own price is billed at the input price; a tier applies to all tokens once the prompt
exceeds its start); ``tests/test_report.py`` checks it against ``genai_prices.calc_price``.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from ._lazy import require
from .errors import ConfigError, InputError, UnknownNameError
from .ledger import LedgerEvent, _utc, ledger_from_env, read_events

__all__ = [
    "PriceOverride",
    "ReportConfig",
    "UnknownPriceError",
    "ModelPricing",
    "EventSavings",
    "GroupSummary",
    "Figure",
    "Bin",
    "SavingsReport",
    "PriceBook",
    "event_savings",
    "build_report",
    "report_from_ledger",
    "estimate_events",
    "parse_since",
    "GROUP_KEYS",
    "DEFAULT_COMPUTE_USD_PER_HOUR",
]

#: Default machine cost for running the compressor: roughly one small cloud GPU instance on demand. Change it with
#: ``--compute-usd-per-hour`` / ``ReportConfig(compute_usd_per_hour=...)`` or ``CTXZIP_COMPUTE_USD_PER_HOUR``.
DEFAULT_COMPUTE_USD_PER_HOUR = 1.0
COMPUTE_ENV = "CTXZIP_COMPUTE_USD_PER_HOUR"

GROUP_KEYS = ("model", "route", "method", "day", "app", "provider")
_MTOK = Decimal(1_000_000)
_ZERO = Decimal(0)

#: Bin edges of the compression ratio (tokens before / after) histogram.
RATIO_EDGES = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0, math.inf)
#: Bin edges (seconds) of the added-latency histogram.
LATENCY_EDGES = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)


def _finite_nonneg(value: Any, what: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ConfigError(f"{what} must be a number, got {type(value).__name__} {value!r}; {fix}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}; {fix}")
    return value


@dataclass(frozen=True)
class PriceOverride:
    """A price given by hand (USD per million input tokens) for a model genai-prices does not know.

    ``cache_read_per_mtok`` is required for models whose events have cached-prefix tokens (a missing one would
    price cache hits at the full input price and overstate savings); ``cache_write_per_mtok`` defaults to the
    input price (no write surcharge).
    """

    input_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def __post_init__(self) -> None:
        fix = "give USD per million tokens, e.g. PriceOverride(2.5, 1.25) or --price 2.5,1.25"
        object.__setattr__(self, "input_per_mtok", _finite_nonneg(self.input_per_mtok, "input price", fix))
        for name in ("cache_read_per_mtok", "cache_write_per_mtok"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _finite_nonneg(value, name.replace("_per_mtok", " price"), fix))

    @classmethod
    def parse(cls, text: str) -> tuple[str, PriceOverride]:
        """Parse ``[MODEL=]INPUT_PER_MTOK[,CACHED_READ_PER_MTOK[,CACHE_WRITE_PER_MTOK]]``.

        Returns ``(model, price)``; model is ``"*"`` (every model genai-prices has no price for) without ``MODEL=``.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("--price needs [MODEL=]INPUT_PER_MTOK[,CACHED_READ_PER_MTOK], e.g. --price my-llm=0.5,0.05")
        model, sep, numbers = text.strip().rpartition("=")
        model = model.strip() if sep else "*"
        if sep and not model:
            raise ConfigError(f"--price {text!r}: the model name before '=' is empty")
        parts = [p.strip() for p in numbers.split(",")]
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise ConfigError(
                f"--price {text!r}: expected [MODEL=]INPUT_PER_MTOK[,CACHED_READ_PER_MTOK[,CACHE_WRITE_PER_MTOK]] "
                "in USD per million tokens, e.g. --price my-llm=0.5,0.05"
            )
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"--price {text!r}: prices must be numbers (USD per million tokens)") from None
        return model, cls(*values)


@dataclass(frozen=True)
class ReportConfig:
    """How to turn ledger events into money. Every knob here appears in the report's assumptions."""

    compute_usd_per_hour: float | None = None
    assume_cached_fraction: float = 0.0
    prices: Mapping[str, PriceOverride] = field(default_factory=lambda: MappingProxyType({}))
    by: str = "model"
    since: datetime | None = None
    requests_per_month: int | None = None

    def __post_init__(self) -> None:
        n = self.requests_per_month
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ConfigError(f"requests_per_month must be a positive integer (e.g. 100000), got {n!r}")
        if self.compute_usd_per_hour is None:
            raw = os.environ.get(COMPUTE_ENV, "").strip()
            value: Any = DEFAULT_COMPUTE_USD_PER_HOUR
            if raw:
                try:
                    value = float(raw)
                except ValueError:
                    raise ConfigError(f"{COMPUTE_ENV}={raw!r} is not a number of USD per hour") from None
            object.__setattr__(self, "compute_usd_per_hour", value)
        object.__setattr__(self, "compute_usd_per_hour", _finite_nonneg(
            self.compute_usd_per_hour, "compute_usd_per_hour",
            "give the $/hour of the machine that runs the compressor, e.g. --compute-usd-per-hour 0.5"))
        f = _finite_nonneg(self.assume_cached_fraction, "assume_cached_fraction",
                           "give the share of each prompt the provider would have cached, between 0 and 1")
        if f > 1:
            raise ConfigError(f"assume_cached_fraction must be between 0 and 1, got {f!r}")
        object.__setattr__(self, "assume_cached_fraction", f)
        if not isinstance(self.prices, Mapping):
            raise ConfigError(f"prices must map model name -> PriceOverride, got {type(self.prices).__name__}")
        prices = {}
        for model, price in self.prices.items():
            if not isinstance(model, str) or not model.strip():
                raise ConfigError(f"prices keys must be model names (or '*'), got {model!r}")
            if isinstance(price, (int, float)) and not isinstance(price, bool):
                price = PriceOverride(price)
            if not isinstance(price, PriceOverride):
                raise ConfigError(f"prices[{model!r}] must be a PriceOverride, got {type(price).__name__}")
            prices[model.strip().lower()] = price
        object.__setattr__(self, "prices", MappingProxyType(prices))
        if self.by not in GROUP_KEYS:
            raise ConfigError(f"by must be one of {', '.join(GROUP_KEYS)}, got {self.by!r}")
        if self.since is not None:
            object.__setattr__(self, "since", parse_since(self.since))


def parse_since(value: Any, now: datetime | None = None) -> datetime:
    """``2025-01-31``, an ISO 8601 time, or a relative ``7d`` / ``24h`` / ``30m`` / ``2w`` (before now), in UTC."""
    if isinstance(value, datetime):
        return _utc(value, "since")
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", value)
        if m:
            unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
            return (now or datetime.now(timezone.utc)) - timedelta(**{unit: float(m.group(1))})
        try:
            return _utc(value.strip(), "since")
        except InputError:
            raise ConfigError(
                f"--since {value!r}: give a date (2025-01-31), an ISO time (2025-01-31T12:00Z) or an age (7d, 24h)"
            ) from None
    raise ConfigError(f"since must be a date, a datetime or a string such as 7d, got {type(value).__name__}")


class UnknownPriceError(UnknownNameError):
    """No price for one or more models: neither genai-prices nor ``--price`` has one. Never priced as zero."""

    def __init__(self, missing: Mapping[str, int], suggestions: Mapping[str, Sequence[str]], version: str):
        self.missing = dict(missing)
        names = list(self.missing)
        super().__init__("model price", names[0] if names else "?", [s for v in suggestions.values() for s in v])
        lines = []
        for name, n in self.missing.items():
            near = suggestions.get(name) or ()
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            lines.append(f"  {name}: {n} event(s){hint}")
        example = names[0] if names and names[0] != "(no model)" else "my-model"
        self.args = (
            f"no price for {len(names)} model(s) in genai-prices {version}:\n" + "\n".join(lines) + "\n"
            f"Give one in USD per million input tokens: --price '{example}=INPUT_PER_MTOK[,CACHED_READ_PER_MTOK]' "
            "(repeatable), or --price INPUT_PER_MTOK[,CACHED_READ_PER_MTOK] for every unpriced model; "
            "in Python: ReportConfig(prices={name: PriceOverride(input, cached_read)}). "
            "ctxzip never prices an unknown model at zero.",
        )


def _genai_prices_version() -> str:
    gp = require("genai_prices", feature="the savings report")
    return str(getattr(gp, "__version__", "?"))


def _dec(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(float(value)))


def _unit_price(price: Any, total_input: int) -> Decimal:
    """Price per million tokens of a genai-prices price (Decimal or TieredPrices) for a prompt of total_input."""
    tiers = getattr(price, "tiers", None)
    if tiers is None:
        return price
    chosen = price.base
    for tier in sorted(tiers, key=lambda t: t.start):
        if total_input > tier.start:
            chosen = tier.price
    return chosen


def _base(price: Any) -> float | None:
    if price is None:
        return None
    return float(getattr(price, "base", price))


@dataclass(frozen=True)
class ModelPricing:
    """Where the prices of one (model, provider) of the ledger came from; USD per million tokens."""

    model: str
    provider: str | None
    source: str
    matched_model: str | None
    matched_provider: str | None
    input_per_mtok: float
    cache_read_per_mtok: float | None
    cache_write_per_mtok: float | None
    input_tiers: tuple[tuple[int, float], ...]
    note: str = ""

    def describe(self) -> str:
        parts = [f"${self.input_per_mtok:g} input"]
        parts.append("no cache-read price (cached tokens at input price)" if self.cache_read_per_mtok is None
                     else f"${self.cache_read_per_mtok:g} cache read")
        parts.append("no cache-write surcharge" if self.cache_write_per_mtok is None
                     else f"${self.cache_write_per_mtok:g} cache write")
        if self.input_tiers:
            parts.append("input above " + ", ".join(f"{start:,} tokens ${p:g}" for start, p in self.input_tiers))
        return "; ".join(parts) + " per 1M tokens"


class _Priced:
    """Prices of one (model, provider): genai-prices model (time-dependent) or a hand-given override."""

    def __init__(self, pricing: ModelPricing, model_info: Any = None, override: PriceOverride | None = None):
        self.pricing = pricing
        self._model_info = model_info
        self._override = override
        self._fixed: tuple[Any, Any, Any] | None = None
        if override is not None:
            self._fixed = (_dec(override.input_per_mtok), _dec(override.cache_read_per_mtok),
                           _dec(override.cache_write_per_mtok))
        self._last: tuple[datetime | None, tuple[Any, Any, Any] | None] = (None, None)

    def prices_at(self, when: datetime) -> tuple[Any, Any, Any]:
        if self._fixed is not None:
            return self._fixed
        if self._last[0] == when and self._last[1] is not None:
            return self._last[1]
        mp = self._model_info.get_prices(when)
        out = (mp.input_mtok, getattr(mp, "cache_read_mtok", None), getattr(mp, "cache_write_mtok", None))
        if out[0] is None:
            raise UnknownPriceError({self.pricing.model: 1}, {}, _genai_prices_version())
        self._last = (when, out)
        return out

    def cost(self, when: datetime, input_tokens: int, cache_read: int = 0, cache_write: int = 0,
             *, write_as_input: bool = False) -> Decimal:
        """USD for a prompt of ``input_tokens`` (of which ``cache_read`` read from and ``cache_write`` written to
        the provider cache), genai-prices' rules; ``write_as_input`` bills written tokens at the input price."""
        p_in, p_read, p_write = self.prices_at(when)
        uncached = input_tokens - cache_read - cache_write
        if uncached < 0:
            raise InputError(f"cache tokens ({cache_read} + {cache_write}) exceed the prompt ({input_tokens})")
        pin = _unit_price(p_in, input_tokens)
        pread = pin if p_read is None else _unit_price(p_read, input_tokens)
        pwrite = pin if (p_write is None or write_as_input) else _unit_price(p_write, input_tokens)
        return (pin * uncached + pread * cache_read + pwrite * cache_write) / _MTOK


class PriceBook:
    """Resolves the price of each (model, provider) of the events: ``--price MODEL=...``, then genai-prices, then
    ``--price`` without a model; raises :class:`UnknownPriceError` listing every model left without a price."""

    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None):
        self.overrides = dict(overrides or {})
        require("genai_prices", feature="the savings report")
        from genai_prices import data_snapshot

        self.version = _genai_prices_version()
        self._snapshot = data_snapshot.get_snapshot()
        self._cache: dict[tuple[str | None, str | None], _Priced | None] = {}

    def _from_genai(self, model: str, provider: str | None) -> _Priced | None:
        snap = self._snapshot
        note = ""
        try:
            prov, info = snap.find_provider_model(model, None, provider, None)
        except LookupError:
            if provider is None:
                return None
            try:
                prov, info = snap.find_provider_model(model, None, None, None)
            except LookupError:
                return None
            note = (f"genai-prices has no {model!r} under provider {provider!r}; priced as "
                    f"{prov.id}/{info.id}")
        mp = info.get_prices(datetime.now(timezone.utc))
        if mp.input_mtok is None:
            return None
        tiers = tuple((t.start, float(t.price)) for t in getattr(mp.input_mtok, "tiers", None) or ())
        pricing = ModelPricing(
            model=model, provider=provider, source=f"genai-prices {self.version}", matched_model=info.id,
            matched_provider=prov.id, input_per_mtok=_base(mp.input_mtok) or 0.0,
            cache_read_per_mtok=_base(getattr(mp, "cache_read_mtok", None)),
            cache_write_per_mtok=_base(getattr(mp, "cache_write_mtok", None)), input_tiers=tiers, note=note,
        )
        return _Priced(pricing, model_info=info)

    def _from_override(self, model: str, provider: str | None, price: PriceOverride, how: str) -> _Priced:
        pricing = ModelPricing(
            model=model, provider=provider, source=how, matched_model=None, matched_provider=None,
            input_per_mtok=price.input_per_mtok, cache_read_per_mtok=price.cache_read_per_mtok,
            cache_write_per_mtok=price.cache_write_per_mtok, input_tiers=(),
        )
        return _Priced(pricing, override=price)

    def lookup(self, model: str | None, provider: str | None) -> _Priced | None:
        """The prices for (model, provider), or None when nobody has one."""
        key = (model, provider)
        if key in self._cache:
            return self._cache[key]
        name = model or "(no model)"
        found: _Priced | None = None
        exact = self.overrides.get(name.lower())
        if exact is not None:
            found = self._from_override(name, provider, exact, f"--price {name}=...")
        elif model:
            found = self._from_genai(model, provider)
        if found is None and "*" in self.overrides:
            found = self._from_override(name, provider, self.overrides["*"], "--price (for models without a price)")
        self._cache[key] = found
        return found

    def suggestions(self, model: str) -> list[str]:
        ids = sorted({m.id for p in self._snapshot.providers for m in p.models})
        return difflib.get_close_matches(model.lower(), ids, n=3, cutoff=0.6)

    def resolve_all(self, events: Iterable[LedgerEvent]) -> dict[tuple[str | None, str | None], _Priced]:
        """Prices for every (model, provider) of the events, or UnknownPriceError naming all that lack one."""
        out: dict[tuple[str | None, str | None], _Priced] = {}
        missing: dict[str, int] = {}
        needs_read: dict[str, int] = {}
        for e in events:
            key = (e.target_model, e.provider)
            priced = out.get(key) or self.lookup(*key)
            name = e.target_model or "(no model)"
            if priced is None:
                missing[name] = missing.get(name, 0) + 1
                continue
            out[key] = priced
            if (priced._override is not None and priced.pricing.cache_read_per_mtok is None
                    and (e.cached_prefix_tokens or 0) > 0):
                needs_read[name] = needs_read.get(name, 0) + 1
        if missing:
            raise UnknownPriceError(missing, {m: self.suggestions(m) for m in missing if m != "(no model)"},
                                    self.version)
        if needs_read:
            names = ", ".join(f"{m} ({n} event(s))" for m, n in needs_read.items())
            first = next(iter(needs_read))
            raise ConfigError(
                f"events of {names} have cached-prefix tokens but the price given by --price has no cache-read "
                f"price; add it so cache hits are not priced as full input: --price '{first}=INPUT,CACHED_READ'"
            )
        return out


@dataclass(frozen=True)
class EventSavings:
    """Money of one event, USD (Decimal). ``cache_read``/``cache_write`` are the token counts assumed."""

    event: LedgerEvent
    cached_prefix: int
    cached_prefix_known: bool
    prefix_changed: bool
    cache_read_after: int
    cache_write_after: int
    cost_before: Decimal
    cost_after: Decimal
    naive: Decimal
    gross: Decimal
    write_premium: Decimal
    compute: Decimal
    net: Decimal


def event_savings(event: LedgerEvent, priced: _Priced, config: ReportConfig,
                  *, force_cached_fraction: float | None = None) -> EventSavings:
    """The arithmetic of the module docstring for one event."""
    b, a = event.tokens_before, event.tokens_after
    known = event.cached_prefix_tokens is not None
    if known and force_cached_fraction is None:
        c = min(event.cached_prefix_tokens or 0, b)
    else:
        frac = config.assume_cached_fraction if force_cached_fraction is None else force_cached_fraction
        c = min(b, int(round(frac * b)))
    changed = event.prefix_changed if (event.prefix_changed is not None and force_cached_fraction is None) \
        else c > 0
    kept = min(c, a)
    read_after, write_after = (0, kept) if changed else (kept, 0)
    when = event.time
    before = priced.cost(when, b, c)
    after_list = priced.cost(when, a, read_after, write_after, write_as_input=True)
    after = priced.cost(when, a, read_after, write_after)
    naive = priced.cost(when, b) - priced.cost(when, a)
    compute = Decimal(repr(event.seconds)) * Decimal(repr(config.compute_usd_per_hour)) / Decimal(3600)
    gross = before - after_list
    premium = after - after_list
    return EventSavings(
        event=event, cached_prefix=c, cached_prefix_known=known, prefix_changed=changed,
        cache_read_after=read_after, cache_write_after=write_after, cost_before=before, cost_after=after,
        naive=naive, gross=gross, write_premium=premium, compute=compute, net=gross - premium - compute,
    )


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    count: int

    @property
    def label(self) -> str:
        return f"{self.lo:g}-{self.hi:g}" if math.isfinite(self.hi) else f">={self.lo:g}"


@dataclass(frozen=True)
class GroupSummary:
    """Totals of a set of events (a group of ``--by``, or all). Money in USD."""

    key: str
    events: int
    tokens_before: int
    tokens_after: int
    cached_prefix_tokens: int
    cost_before_usd: float
    cost_after_usd: float
    naive_usd: float
    gross_usd: float
    write_premium_usd: float
    compute_usd: float
    net_usd: float
    compression_seconds: float
    p50_seconds: float
    p95_seconds: float
    cache_hits: int
    busted_prefixes: int

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after

    @property
    def ratio(self) -> float:
        """Σ tokens before / Σ tokens after."""
        if self.tokens_before == 0:
            return 1.0
        return math.inf if self.tokens_after == 0 else self.tokens_before / self.tokens_after

    @property
    def rate(self) -> float:
        return 1.0 if self.tokens_before == 0 else self.tokens_after / self.tokens_before

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tokens_saved"] = self.tokens_saved
        out["ratio"] = self.ratio if math.isfinite(self.ratio) else None
        out["rate"] = self.rate
        return out


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summarise(key: str, rows: Sequence[EventSavings]) -> GroupSummary:
    secs = sorted(r.event.seconds for r in rows)
    return GroupSummary(
        key=key,
        events=len(rows),
        tokens_before=sum(r.event.tokens_before for r in rows),
        tokens_after=sum(r.event.tokens_after for r in rows),
        cached_prefix_tokens=sum(r.cached_prefix for r in rows),
        cost_before_usd=float(sum((r.cost_before for r in rows), _ZERO)),
        cost_after_usd=float(sum((r.cost_after for r in rows), _ZERO)),
        naive_usd=float(sum((r.naive for r in rows), _ZERO)),
        gross_usd=float(sum((r.gross for r in rows), _ZERO)),
        write_premium_usd=float(sum((r.write_premium for r in rows), _ZERO)),
        compute_usd=float(sum((r.compute for r in rows), _ZERO)),
        net_usd=float(sum((r.net for r in rows), _ZERO)),
        compression_seconds=float(sum(secs)),
        p50_seconds=_percentile(secs, 0.50),
        p95_seconds=_percentile(secs, 0.95),
        cache_hits=sum(1 for r in rows if r.event.cache_hit),
        busted_prefixes=sum(1 for r in rows if r.prefix_changed and r.cached_prefix > 0),
    )


def _group_key(event: LedgerEvent, by: str) -> str:
    if by == "day":
        return event.time.date().isoformat()
    if by == "model":
        return event.target_model or "(no model)"
    value = getattr(event, by)
    return value if value else f"(no {by})"


def _group(rows: Sequence[EventSavings], by: str) -> tuple[GroupSummary, ...]:
    buckets: dict[str, list[EventSavings]] = {}
    for r in rows:
        buckets.setdefault(_group_key(r.event, by), []).append(r)
    groups = [_summarise(k, v) for k, v in buckets.items()]
    if by == "day":
        groups.sort(key=lambda g: g.key)
    else:
        groups.sort(key=lambda g: (-g.net_usd, g.key))
    return tuple(groups)


def _histogram(values: Iterable[float], edges: Sequence[float]) -> tuple[Bin, ...]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(edges) - 1):
            if edges[i] <= v < edges[i + 1] or (i == len(edges) - 2 and v >= edges[i]):
                counts[i] += 1
                break
    return tuple(Bin(edges[i], edges[i + 1], counts[i]) for i in range(len(counts)))


@dataclass(frozen=True)
class Figure:
    """One headline number with the assumption it rests on."""

    name: str
    label: str
    value: float
    unit: str
    assumption: str

    def formatted(self) -> str:
        if self.unit == "USD":
            return _usd(self.value)
        if self.unit == "tokens":
            return f"{int(self.value):,}"
        if self.unit == "x":
            return f"{self.value:.2f}x" if math.isfinite(self.value) else "inf"
        if self.unit == "s":
            return f"{self.value * 1000:.0f} ms" if self.value < 1 else f"{self.value:.2f} s"
        return f"{self.value:,.0f}"


def _usd(value: float) -> str:
    sign = "-" if value < 0 else ""
    v = abs(value)
    if v >= 100 or v == 0:
        return f"{sign}${v:,.2f}"
    if v >= 0.01:
        return f"{sign}${v:,.4f}"
    return f"{sign}${v:.6f}"


@dataclass(frozen=True)
class SavingsReport:
    """Everything ``ctxzip report`` shows. ``figures`` are the headline numbers, each with its assumption."""

    figures: tuple[Figure, ...]
    total: GroupSummary
    by: str
    groups: tuple[GroupSummary, ...]
    by_model: tuple[GroupSummary, ...]
    by_day: tuple[GroupSummary, ...]
    ratio_histogram: tuple[Bin, ...]
    latency_histogram: tuple[Bin, ...]
    pricing: tuple[ModelPricing, ...]
    assumptions: tuple[str, ...]
    config: ReportConfig
    source: str
    genai_prices_version: str
    generated_at: datetime
    first_event: datetime | None
    last_event: datetime | None
    title: str = "ctxzip savings report"

    def figure(self, name: str) -> Figure:
        for f in self.figures:
            if f.name == name:
                return f
        raise UnknownNameError("figure", name, [f.name for f in self.figures])

    def to_dict(self) -> dict[str, Any]:
        def t(x: datetime | None) -> str | None:
            return None if x is None else x.isoformat()

        return {
            "title": self.title,
            "source": self.source,
            "generated_at": t(self.generated_at),
            "first_event": t(self.first_event),
            "last_event": t(self.last_event),
            "genai_prices_version": self.genai_prices_version,
            "config": {
                "compute_usd_per_hour": self.config.compute_usd_per_hour,
                "assume_cached_fraction": self.config.assume_cached_fraction,
                "prices": {k: dataclasses.asdict(v) for k, v in self.config.prices.items()},
                "since": t(self.config.since),
                "requests_per_month": self.config.requests_per_month,
            },
            "figures": [{**dataclasses.asdict(f), "value": f.value if math.isfinite(f.value) else None}
                        for f in self.figures],
            "total": self.total.to_dict(),
            "by": self.by,
            "groups": [g.to_dict() for g in self.groups],
            "by_model": [g.to_dict() for g in self.by_model],
            "by_day": [g.to_dict() for g in self.by_day],
            "ratio_histogram": [{"lo": b.lo, "hi": b.hi if math.isfinite(b.hi) else None, "count": b.count}
                                for b in self.ratio_histogram],
            "latency_histogram": [{"lo": b.lo, "hi": b.hi if math.isfinite(b.hi) else None, "count": b.count}
                                  for b in self.latency_histogram],
            "pricing": [dataclasses.asdict(p) for p in self.pricing],
            "assumptions": list(self.assumptions),
        }

    def to_json(self) -> str:
        """Strict JSON (non-finite numbers such as an infinite ratio become null)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    CSV_COLUMNS = (
        "by", "key", "events", "tokens_before", "tokens_after", "tokens_saved", "ratio", "naive_usd", "gross_usd",
        "write_premium_usd", "compute_usd", "net_usd", "compression_seconds", "p50_seconds", "p95_seconds",
        "cache_hits", "busted_prefixes",
    )

    def write_csv(self, out: str | os.PathLike[str] | TextIO) -> None:
        """One row per group of ``by`` and a final ``total`` row."""
        if isinstance(out, (str, os.PathLike)):
            with open(out, "w", encoding="utf-8", newline="") as fh:
                self.write_csv(fh)
            return
        writer = csv.writer(out)
        writer.writerow(self.CSV_COLUMNS)
        for by, g in [(self.by, g) for g in self.groups] + [("total", self.total)]:
            d = g.to_dict()
            d["by"] = by
            writer.writerow(["" if d[c] is None else round(d[c], 9) if isinstance(d[c], float) else d[c]
                             for c in self.CSV_COLUMNS])

    def to_csv(self) -> str:
        buf = io.StringIO()
        self.write_csv(buf)
        return buf.getvalue()


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def build_report(
    events: Sequence[LedgerEvent],
    config: ReportConfig | None = None,
    *,
    source: str = "(events)",
    generated_at: datetime | None = None,
    title: str = "ctxzip savings report",
) -> SavingsReport:
    """Price every event (genai-prices, or ``config.prices``) and add them up."""
    config = config or ReportConfig()
    events = [e for e in events if config.since is None or e.time >= config.since]
    events.sort(key=lambda e: (e.time, e.id))
    book = PriceBook(config.prices)
    priced = book.resolve_all(events)
    rows = [event_savings(e, priced[(e.target_model, e.provider)], config) for e in events]
    total = _summarise("total", rows)
    n = len(rows)
    unknown = [r for r in rows if not r.cached_prefix_known]
    known = n - len(unknown)
    estimated = sum(1 for r in rows if not r.event.tokens_exact)
    busted = sum(1 for r in rows if r.prefix_changed and r.cached_prefix > 0)
    busted_assumed = sum(1 for r in rows if r.prefix_changed and r.cached_prefix > 0 and r.event.prefix_changed is None)
    tiered = sorted({p.pricing.model for p in priced.values() if p.pricing.input_tiers})
    rate = config.compute_usd_per_hour
    f = config.assume_cached_fraction

    sources = sorted({p.pricing.source for p in priced.values()})
    price_src = ", ".join(sources) if sources else f"genai-prices {book.version}"
    cache_note = (
        f"tokens of a cached prefix priced at the cache-read price ({_plural(known, 'request')} with a recorded "
        f"cached prefix; for the {len(unknown):,} without one, "
        + (f"{f:.0%} of each prompt assumed cached" if f > 0 else "no prompt caching assumed") + ")"
    )
    figures = [
        Figure("tokens_saved", "Input tokens saved", total.tokens_saved, "tokens",
               f"Σ(tokens before − after) over {_plural(n, 'compression')}, counted with each target model's "
               "tokenizer" + (f"; {estimated:,} counted with an estimate (no public tokenizer)" if estimated else "")),
        Figure("ratio", "Compression ratio", total.ratio, "x", "Σ tokens before / Σ tokens after"),
        Figure("naive_usd", "List-price savings (naive)", total.naive_usd, "USD",
               "every saved token at the model's list input price, ignoring prompt caching: for comparison only, "
               "it overstates savings on cached prompts"),
        Figure("gross_usd", "Input cost avoided", total.gross_usd, "USD",
               f"per request, cost of the uncompressed prompt − cost of the compressed one at {price_src} prices "
               f"at the time of the request, each request at its own long-context tier"
               + (f" (tiered: {', '.join(tiered)})" if tiered else "") + "; " + cache_note),
        Figure("write_premium_usd", "Cache-write premiums", total.write_premium_usd, "USD",
               f"(cache-write − input price) × compressed prefix re-written to the provider cache, for "
               f"{_plural(busted, 'request')} whose compression changed a cached prefix"
               + (f" ({busted_assumed:,} assumed changed: not recorded, worst case)" if busted_assumed else "")
               + "; 0 where the provider has no write surcharge"),
        Figure("compute_usd", "Compression compute", total.compute_usd, "USD",
               f"{total.compression_seconds:,.2f} s of compression × ${rate:g}/hour (--compute-usd-per-hour); "
               "wall time, so concurrent workers on one machine are over-counted"),
        Figure("net_usd", "Net savings", total.net_usd, "USD",
               "input cost avoided − cache-write premiums − compression compute; output tokens and answer quality "
               "assumed unchanged by compression"),
    ]
    if unknown:
        worst = sum((event_savings(r.event, priced[(r.event.target_model, r.event.provider)], config,
                                   force_cached_fraction=1.0).net for r in unknown), _ZERO)
        worst += sum((r.net for r in rows if r.cached_prefix_known), _ZERO)
        figures.append(Figure(
            "net_usd_worst_case", "Net savings, worst case", float(worst), "USD",
            f"as net savings, but the {len(unknown):,} request(s) without a recorded cached prefix assumed fully "
            "cached before compression and busted by it (cache-read price before, cache-write price after)"))
    if n:
        per = total.net_usd / n
        figures.append(Figure("net_usd_per_1k", "Net savings per 1,000 requests", per * 1000, "USD",
                              f"mean net savings of these {_plural(n, 'request')} × 1,000"))
        if config.requests_per_month:
            figures.append(Figure(
                "net_usd_per_month", "Projected net savings per month", per * config.requests_per_month, "USD",
                f"mean net savings of these {_plural(n, 'request')} × {config.requests_per_month:,} requests a "
                "month (--requests-per-month); holds only if they are typical of your traffic"))
    figures += [
        Figure("p50_seconds", "Added latency p50", total.p50_seconds, "s",
               f"median compression wall time before the LLM call ({total.cache_hits:,} ctxzip cache hits included)"),
        Figure("p95_seconds", "Added latency p95", total.p95_seconds, "s",
               "95th percentile compression wall time before the LLM call"),
    ]
    pricing = tuple(sorted((p.pricing for p in priced.values()), key=lambda p: (p.model, p.provider or "")))
    assumptions = [
        f"Prices: {price_src}, bundled offline data, as of each request's time; USD per million tokens.",
        "genai-prices rules: a prompt above a long-context tier start pays that tier's price on all its tokens; "
        "a model without a cache-read (cache-write) price bills those tokens at its input price.",
        f"Prompt caching: {cache_note}.",
        "A cached prefix counts as busted by compression (its compressed form written to the provider cache, "
        "no cache reads) when the event says so or does not say (worst case); otherwise it is read from cache.",
        f"Compute: ${rate:g}/hour × compression wall time.",
        "Output tokens, retries and answer quality are assumed unchanged by compression.",
    ]
    assumptions += [f"{p.model}: {p.note}." for p in pricing if p.note]
    return SavingsReport(
        figures=tuple(figures),
        total=total,
        by=config.by,
        groups=_group(rows, config.by),
        by_model=_group(rows, "model"),
        by_day=_group(rows, "day"),
        ratio_histogram=_histogram((r.event.ratio for r in rows), RATIO_EDGES),
        latency_histogram=_histogram((r.event.seconds for r in rows), LATENCY_EDGES),
        pricing=pricing,
        assumptions=tuple(assumptions),
        config=config,
        source=source,
        genai_prices_version=book.version,
        generated_at=generated_at or datetime.now(timezone.utc),
        first_event=events[0].time if events else None,
        last_event=events[-1].time if events else None,
        title=title,
    )


def report_from_ledger(path: str | os.PathLike[str] | None = None, config: ReportConfig | None = None,
                       **kwargs: Any) -> SavingsReport:
    """:func:`build_report` over a ledger file (default: ``CTXZIP_LEDGER``'s file, else the default ledger)."""
    config = config or ReportConfig()
    if path is None:
        from .ledger import default_ledger_path

        path = ledger_from_env() or default_ledger_path()
    events = read_events(path, since=config.since)
    return build_report(events, config, source=str(path), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# what-if estimates

_PROMPT_KEYS = ("prompt", "text", "context")


def _prompts_from(path: Path) -> list[tuple[str, str | None]]:
    """(context, question) pairs of a file: the whole text, or one per line of a ``.jsonl`` file."""
    if path.suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if isinstance(item, str):
                    out.append((item, None))
                elif isinstance(item, dict) and any(isinstance(item.get(k), str) for k in _PROMPT_KEYS):
                    text = next(item[k] for k in _PROMPT_KEYS if isinstance(item.get(k), str))
                    q = item.get("question")
                    out.append((text, q if isinstance(q, str) else None))
                else:
                    raise InputError(
                        f"{path}:{lineno}: each line must be a JSON string or an object with one of "
                        f"{', '.join(_PROMPT_KEYS)} (and optionally question)"
                    )
        return out
    try:
        return [(path.read_text(encoding="utf-8"), None)]
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; --estimate takes text files or .jsonl prompt files") from None


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"--estimate: {p} is neither a file nor a directory")
    if not files:
        raise InputError("--estimate needs at least one prompt file (text, or .jsonl with one prompt per line)")
    return files


def estimate_events(
    paths: Iterable[str | os.PathLike[str]],
    *,
    model: str,
    method: str,
    rate: float | None = None,
    target_tokens: int | None = None,
    provider: str | None = None,
    cached_prefix_tokens: int | None = None,
    **options: Any,
) -> list[LedgerEvent]:
    """Compress every prompt of ``paths`` with ``ctxzip.compress`` and return the events it would have logged.

    Nothing is written to the ledger. ``cached_prefix_tokens`` applies to every prompt when given.
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("--estimate needs --model, the target LLM, e.g. --model gpt-4o")
    from . import compress
    from .ledger import suppressed

    events = []
    now = datetime.now(timezone.utc)
    with suppressed():
        for path in _expand(paths):
            for context, question in _prompts_from(path):
                if not context.strip():
                    continue
                kwargs = dict(options)
                if question:
                    kwargs["question"] = question
                result = compress(context, method=method, rate=rate, target_tokens=target_tokens,
                                  target_model=model, **kwargs)
                events.append(LedgerEvent(
                    time=now, target_model=model, tokens_before=result.origin_tokens,
                    tokens_after=result.compressed_tokens, method=result.method, seconds=result.seconds,
                    route="estimate", app=path.name, provider=provider,
                    cached_prefix_tokens=None if cached_prefix_tokens is None
                    else min(cached_prefix_tokens, result.origin_tokens),
                    cache_hit=result.cache_hits > 0, method_version=result.method_version,
                    tokenizer=result.tokenizer, tokens_exact=result.tokens_exact,
                ))
    if not events:
        raise InputError("--estimate: the files hold no non-empty prompt")
    return events
