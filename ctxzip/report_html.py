"""The ``--html`` savings report: one self-contained page, charts as inline SVG, no network needed to view it.

Charts: net savings over time (daily bars and the running total), net savings by model, the distribution of
compression ratios and the latency compression adds. Every headline number is shown with its assumption.

A small inline script marks each chart ``data-rendered="yes"`` once the browser has laid it out with visible marks
(the headless-Chromium test reads that back); the page needs no script to display.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path

from .errors import CtxzipError, MissingDependencyError
from .report import Bin, GroupSummary, SavingsReport

__all__ = ["render_html", "write_html", "find_chromium", "screenshot", "dump_dom", "CHART_IDS"]

#: ids of the chart figures on the page, in order
CHART_IDS = ("chart-savings-over-time", "chart-by-model", "chart-ratio", "chart-latency")

_W, _H = 560, 300
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 64, 64, 16, 44
_GREEN, _RED, _BLUE, _GREY, _AMBER = "#1a7f5a", "#c0392b", "#2563eb", "#8a94a6", "#d97706"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _usd(v: float) -> str:
    sign = "-" if v < 0 else ""
    a = abs(v)
    if a >= 1e6:
        return f"{sign}${a / 1e6:.1f}M"
    if a >= 1e3:
        return f"{sign}${a / 1e3:.1f}k"
    if a >= 0.1 or a == 0:
        return f"{sign}${a:.2f}"
    if a >= 0.01:
        return f"{sign}${a:.3f}"
    return f"{sign}${a:.2g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def _svg_open(chart_id: str, label: str) -> str:
    return (f'<svg class="chart-svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
            f'aria-label="{_e(label)}" preserveAspectRatio="xMidYMid meet">')


def _empty(chart_id: str, label: str) -> str:
    return (_svg_open(chart_id, label)
            + f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" class="muted">no data</text></svg>')


def _y_axis(ticks: list[float], y: Callable[[float], float], fmt: Callable[[float], str], *, right: bool = False, grid: bool = True) -> str:
    out = []
    x0, x1 = _PAD_L, _W - _PAD_R
    for t in ticks:
        yy = y(t)
        if grid:
            out.append(f'<line x1="{x0}" x2="{x1}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
        if right:
            out.append(f'<text x="{x1 + 6}" y="{yy + 4:.1f}" class="tick">{_e(fmt(t))}</text>')
        else:
            out.append(f'<text x="{x0 - 6}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{_e(fmt(t))}</text>')
    return "".join(out)


def _series_over_time(days: Sequence[GroupSummary]) -> tuple[list[tuple[str, float, str]], int]:
    """(label, net USD, tooltip) per day from the first to the last day, empty days as 0; weeks past 92 days.

    Returns the series and its step in days (1 or 7)."""
    if not days:
        return [], 1
    by_day = {date.fromisoformat(g.key): g for g in days}
    first, last = min(by_day), max(by_day)
    span = (last - first).days + 1
    step = 7 if span > 92 else 1
    out = []
    d = first
    while d <= last:
        chunk = [by_day[d + timedelta(i)] for i in range(step) if d + timedelta(i) in by_day]
        net = sum(g.net_usd for g in chunk)
        n = sum(g.events for g in chunk)
        saved = sum(g.tokens_saved for g in chunk)
        label = d.isoformat() if step == 1 else f"week of {d.isoformat()}"
        out.append((d.isoformat(), net, f"{label}: net {_usd(net)}, {n:,} requests, {saved:,} tokens saved"))
        d += timedelta(step)
    return out, step


def _chart_over_time(report: SavingsReport) -> str:
    label = "Net savings per day (bars, left axis) and running total (line, right axis)"
    series, step = _series_over_time(report.by_day)
    if not series:
        return _empty(CHART_IDS[0], label)
    vals = [v for _, v, _ in series]
    cum, run = [], 0.0
    for v in vals:
        run += v
        cum.append(run)
    ticks = _nice_ticks(min(0.0, min(vals)), max(0.0, max(vals)))
    cticks = _nice_ticks(min(0.0, min(cum)), max(0.0, max(cum)))
    lo, hi, clo, chi = ticks[0], ticks[-1], cticks[0], cticks[-1]
    x0, x1, y0, y1 = _PAD_L, _W - _PAD_R, _H - _PAD_B, _PAD_T

    def y(v: float) -> float:
        return y0 - (v - lo) / (hi - lo) * (y0 - y1)

    def yc(v: float) -> float:
        return y0 - (v - clo) / (chi - clo) * (y0 - y1)

    n = len(series)
    slot = (x1 - x0) / n
    bw = max(1.0, slot * 0.7)
    parts = [_svg_open(CHART_IDS[0], label), _y_axis(ticks, y, _usd)]
    parts.append(_y_axis(cticks, yc, _usd, right=True, grid=False))
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y(0):.1f}" y2="{y(0):.1f}" class="axis"/>')
    for i, (_, v, tip) in enumerate(series):
        bx = x0 + i * slot + (slot - bw) / 2
        top, bottom = (y(v), y(0)) if v >= 0 else (y(0), y(v))
        color = _GREEN if v >= 0 else _RED
        parts.append(f'<rect class="mark bar" x="{bx:.1f}" y="{top:.1f}" width="{bw:.1f}" '
                     f'height="{max(bottom - top, 0.5):.1f}" fill="{color}" opacity="0.55"><title>{_e(tip)}</title></rect>')
    pts = " ".join(f"{x0 + (i + 0.5) * slot:.1f},{yc(c):.1f}" for i, c in enumerate(cum))
    parts.append(f'<polyline class="mark line" points="{pts}" fill="none" stroke="{_BLUE}" stroke-width="2.5">'
                 f'<title>running total: {_e(_usd(cum[-1]))}</title></polyline>')
    if n <= 40:
        for i, c in enumerate(cum):
            parts.append(f'<circle class="mark dot" cx="{x0 + (i + 0.5) * slot:.1f}" cy="{yc(c):.1f}" r="2.5" '
                         f'fill="{_BLUE}"><title>{_e(series[i][0])}: total {_e(_usd(c))}</title></circle>')
    every = max(1, math.ceil(n / 6))
    for i in range(0, n, every):
        parts.append(f'<text x="{x0 + (i + 0.5) * slot:.1f}" y="{y0 + 16}" text-anchor="middle" class="tick">'
                     f'{_e(series[i][0][5:] if n > 1 else series[i][0])}</text>')
    parts.append(f'<text x="{x0}" y="{_H - 6}" class="legend"><tspan fill="{_GREEN}">■</tspan> net per '
                 f'{"day" if step == 1 else "week"}  '
                 f'<tspan fill="{_BLUE}">━</tspan> running total {_e(_usd(cum[-1]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _chart_by_model(report: SavingsReport) -> str:
    label = "Net savings by target model"
    groups = list(report.by_model)
    if not groups:
        return _empty(CHART_IDS[1], label)
    if len(groups) > 8:
        rest = groups[7:]
        other = GroupSummary(
            key=f"{len(rest)} others", events=sum(g.events for g in rest),
            tokens_before=sum(g.tokens_before for g in rest), tokens_after=sum(g.tokens_after for g in rest),
            cached_prefix_tokens=sum(g.cached_prefix_tokens for g in rest),
            cost_before_usd=sum(g.cost_before_usd for g in rest), cost_after_usd=sum(g.cost_after_usd for g in rest),
            naive_usd=sum(g.naive_usd for g in rest), gross_usd=sum(g.gross_usd for g in rest),
            write_premium_usd=sum(g.write_premium_usd for g in rest), compute_usd=sum(g.compute_usd for g in rest),
            net_usd=sum(g.net_usd for g in rest), compression_seconds=sum(g.compression_seconds for g in rest),
            p50_seconds=0.0, p95_seconds=0.0, cache_hits=sum(g.cache_hits for g in rest),
            busted_prefixes=sum(g.busted_prefixes for g in rest),
        )
        groups = groups[:7] + [other]
    vals = [g.net_usd for g in groups]
    ticks = _nice_ticks(min(0.0, min(vals)), max(0.0, max(vals)), 4)
    lo, hi = ticks[0], ticks[-1]
    lx0, x1 = 150, _W - 70
    top, bottom = _PAD_T, _H - _PAD_B

    def x(v: float) -> float:
        return lx0 + (v - lo) / (hi - lo) * (x1 - lx0)

    slot = (bottom - top) / len(groups)
    bh = min(28.0, slot * 0.65)
    parts = [_svg_open(CHART_IDS[1], label)]
    for t in ticks:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{bottom}" class="grid"/>'
                     f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">{_e(_usd(t))}</text>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top}" y2="{bottom}" class="axis"/>')
    for i, g in enumerate(groups):
        cy = top + i * slot + slot / 2
        a, b = sorted((x(0), x(g.net_usd)))
        color = _GREEN if g.net_usd >= 0 else _RED
        tip = (f"{g.key}: net {_usd(g.net_usd)} = avoided {_usd(g.gross_usd)} − cache writes "
               f"{_usd(g.write_premium_usd)} − compute {_usd(g.compute_usd)}; {g.events:,} requests, "
               + (f"{g.ratio:.2f}x" if math.isfinite(g.ratio) else "everything dropped"))
        name = g.key if len(g.key) <= 22 else g.key[:21] + "…"
        parts.append(f'<text x="{lx0 - 8}" y="{cy + 4:.1f}" text-anchor="end" class="label">{_e(name)}</text>')
        parts.append(f'<rect class="mark bar" x="{a:.1f}" y="{cy - bh / 2:.1f}" width="{max(b - a, 0.5):.1f}" '
                     f'height="{bh:.1f}" fill="{color}"><title>{_e(tip)}</title></rect>')
        parts.append(f'<text x="{max(a, b) + 5:.1f}" y="{cy + 4:.1f}" class="value">{_e(_usd(g.net_usd))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _chart_hist(chart_id: str, label: str, bins: Sequence[Bin], fmt_bin: Callable[[Bin], str], color: str,
                markers: Sequence[tuple[float, str]] = ()) -> str:
    if not bins or not any(b.count for b in bins):
        return _empty(chart_id, label)
    # drop empty bins at both ends so the shape is readable
    first = next(i for i, b in enumerate(bins) if b.count)
    last = max(i for i, b in enumerate(bins) if b.count)
    bins = list(bins[first:last + 1])
    ticks = _nice_ticks(0, max(b.count for b in bins), 4)
    hi = ticks[-1]
    x0, x1, y0, y1 = _PAD_L, _W - _PAD_R / 2, _H - _PAD_B, _PAD_T + 14 * len(markers)

    def y(v: float) -> float:
        return y0 - v / hi * (y0 - y1)

    slot = (x1 - x0) / len(bins)
    parts = [_svg_open(chart_id, label), _y_axis(ticks, y, lambda t: f"{t:,.0f}")]
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" class="axis"/>')
    for i, b in enumerate(bins):
        bx = x0 + i * slot + slot * 0.08
        tip = f"{fmt_bin(b)}: {b.count:,} requests"
        parts.append(f'<rect class="mark bar" x="{bx:.1f}" y="{y(b.count):.1f}" width="{slot * 0.84:.1f}" '
                     f'height="{max(y0 - y(b.count), 0.5 if b.count else 0):.1f}" fill="{color}">'
                     f'<title>{_e(tip)}</title></rect>')
        if b.count:
            parts.append(f'<text x="{bx + slot * 0.42:.1f}" y="{y(b.count) - 4:.1f}" text-anchor="middle" '
                         f'class="value">{b.count:,}</text>')
        parts.append(f'<text x="{x0 + (i + 0.5) * slot:.1f}" y="{y0 + 16}" text-anchor="middle" class="tick">'
                     f'{_e(fmt_bin(b))}</text>')
    for k, (value, text) in enumerate(markers):
        for i, b in enumerate(bins):
            if b.lo <= value < b.hi or (i == len(bins) - 1 and value >= b.lo):
                frac = 0.5 if not math.isfinite(b.hi) else (value - b.lo) / (b.hi - b.lo)
                mx = x0 + (i + frac) * slot
                anchor = "end" if mx > (x0 + x1) / 2 else "start"
                tx = mx - 4 if anchor == "end" else mx + 4
                parts.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{_PAD_T + 14 * k - 4}" y2="{y0}" '
                             f'stroke="{_AMBER}" stroke-dasharray="4 3" class="marker"/>'
                             f'<text x="{tx:.1f}" y="{_PAD_T + 14 * k + 6}" text-anchor="{anchor}" '
                             f'class="marker-label">{_e(text)}</text>')
                break
    parts.append("</svg>")
    return "".join(parts)


def _ratio_label(b: Bin) -> str:
    if b.lo == 0:
        return "<1x"
    return f"{b.lo:g}-{b.hi:g}x" if math.isfinite(b.hi) else f"≥{b.lo:g}x"


def _secs(v: float) -> str:
    return f"{v * 1000:g}ms" if v < 1 else f"{v:g}s"


def _latency_label(b: Bin) -> str:
    return f"<{_secs(b.hi)}" if b.lo == 0 else (f"≥{_secs(b.lo)}" if not math.isfinite(b.hi) else _secs(b.lo) + "+")


def _fmt_secs(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


_CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f7f8fa;--card:#fff;--green:#1a7f5a;--red:#c0392b}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans","DejaVu Sans",sans-serif}
main{max-width:1220px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.meta{color:var(--muted);margin:0 0 18px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:24px;font-weight:650;margin:2px 0 4px;font-variant-numeric:tabular-nums}
.card.net,.card.worst{order:-1}
.card.net{border-color:var(--green);box-shadow:0 0 0 1px var(--green) inset}
.card .value.neg{color:var(--red)}
.card .why{color:var(--muted);font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
figure.chart{background:var(--card);border:1px solid var(--line);border-radius:10px;margin:0;padding:12px 12px 6px}
figure.chart figcaption{font-weight:600;margin-bottom:4px}
figure.chart figcaption small{display:block;font-weight:400;color:var(--muted)}
.chart-svg{width:100%;height:auto;display:block}
.chart-svg text{font-family:inherit}
.chart-svg .grid{stroke:var(--line);stroke-width:1}
.chart-svg .axis{stroke:#9ca3af;stroke-width:1}
.chart-svg .tick{font-size:11px;fill:var(--muted)}
.chart-svg .label{font-size:12px;fill:var(--fg)}
.chart-svg .value{font-size:11px;fill:var(--fg)}
.chart-svg .legend{font-size:12px;fill:var(--muted)}
.chart-svg .muted{font-size:14px;fill:var(--muted)}
.chart-svg .marker-label{font-size:11px;fill:#b45309}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);border-radius:10px;
overflow:hidden;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;font-size:13px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f1f3f6;font-weight:600;font-size:12px}
tr.total td{font-weight:650;background:#f9fafb}
td.neg{color:var(--red)}
.wrap{overflow-x:auto}
ul.assumptions{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 12px 12px 32px;
margin:0}
ul.assumptions li{margin:3px 0}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""

_SCRIPT = """
(function(){
  var done = 0;
  document.querySelectorAll('figure.chart').forEach(function(f){
    var svg = f.querySelector('svg'); var r = svg ? svg.getBoundingClientRect() : null;
    var marks = svg ? svg.querySelectorAll('.mark').length : 0;
    var ok = !!r && r.width > 0 && r.height > 0 && marks > 0;
    f.setAttribute('data-rendered', ok ? 'yes' : 'no');
    f.setAttribute('data-marks', String(marks));
    if (ok) { done += 1; }
  });
  document.body.setAttribute('data-charts-rendered', String(done));
})();
"""


def _cards(report: SavingsReport) -> str:
    out = []
    for f in report.figures:
        neg = f.unit == "USD" and f.value < 0
        cls = {"net_usd": "card net", "net_usd_worst_case": "card worst"}.get(f.name, "card")
        out.append(
            f'<div class="{cls}" data-figure="{_e(f.name)}"><div class="label">{_e(f.label)}</div>'
            f'<div class="value{" neg" if neg else ""}">{_e(f.formatted())}</div>'
            f'<div class="why">{_e(f.assumption)}</div></div>'
        )
    return '<section class="cards">' + "".join(out) + "</section>"


def _table(title: str, by: str, groups: Sequence[GroupSummary], total: GroupSummary | None) -> str:
    head = (f"<tr><th>{_e(by)}</th><th>requests</th><th>tokens before</th><th>tokens after</th><th>saved</th><th>ratio</th>"
            "<th>list-price (naive)</th><th>avoided</th><th>cache writes</th><th>compute</th><th>net</th>"
            "<th>p50</th><th>p95</th></tr>")

    def row(g: GroupSummary, cls: str = "") -> str:
        ratio = f"{g.ratio:.2f}x" if math.isfinite(g.ratio) else "inf"
        neg = ' class="neg"' if g.net_usd < 0 else ""
        return (f'<tr{cls}><td>{_e(g.key)}</td><td>{g.events:,}</td><td>{g.tokens_before:,}</td>'
                f"<td>{g.tokens_after:,}</td><td>{g.tokens_saved:,}</td><td>{ratio}</td>"
                f"<td>{_e(_usd(g.naive_usd))}</td><td>{_e(_usd(g.gross_usd))}</td>"
                f"<td>{_e(_usd(g.write_premium_usd))}</td><td>{_e(_usd(g.compute_usd))}</td>"
                f"<td{neg}>{_e(_usd(g.net_usd))}</td><td>{_e(_fmt_secs(g.p50_seconds))}</td>"
                f"<td>{_e(_fmt_secs(g.p95_seconds))}</td></tr>")

    body = "".join(row(g) for g in groups)
    if total is not None:
        body += row(total, ' class="total"')
    return f'<h2>{_e(title)}</h2><div class="wrap"><table>{head}{body}</table></div>'


def _pricing_table(report: SavingsReport) -> str:
    rows = []
    for p in report.pricing:
        matched = f"{p.matched_provider}/{p.matched_model}" if p.matched_model else "—"
        tiers = ", ".join(f"&gt;{s:,}: ${v:g}" for s, v in p.input_tiers) or "—"

        def price(v: float | None, missing: str) -> str:
            return missing if v is None else f"${v:g}"

        rows.append(
            f"<tr><td>{_e(p.model)}</td><td>{_e(p.provider or '—')}</td><td>{_e(matched)}</td>"
            f"<td>{_e(price(p.input_per_mtok, '—'))}</td>"
            f"<td>{_e(price(p.cache_read_per_mtok, 'input price'))}</td>"
            f"<td>{_e(price(p.cache_write_per_mtok, 'input price'))}</td><td>{tiers}</td><td>{_e(p.source)}</td></tr>"
        )
    head = ("<tr><th>model</th><th>provider</th><th>priced as</th><th>input</th><th>cache read</th>"
            "<th>cache write</th><th>long-context input</th><th>source</th></tr>")
    return ('<h2>Prices used (USD per million tokens)</h2><div class="wrap"><table>' + head + "".join(rows)
            + "</table></div>")


def render_html(report: SavingsReport) -> str:
    """The report as one HTML document (no external resources)."""
    t = report.total
    period = "no events"
    if report.first_event is not None and report.last_event is not None:
        period = f"{report.first_event:%Y-%m-%d %H:%M} – {report.last_event:%Y-%m-%d %H:%M} UTC"
    p50, p95 = t.p50_seconds, t.p95_seconds
    charts = [
        (CHART_IDS[0], "Savings over time", "net savings per day and running total, USD", _chart_over_time(report)),
        (CHART_IDS[1], "Net savings by model", "avoided input cost − cache-write premiums − compute, USD",
         _chart_by_model(report)),
        (CHART_IDS[2], "Compression ratio distribution", "requests by tokens before / tokens after",
         _chart_hist(CHART_IDS[2], "Compression ratio distribution", report.ratio_histogram, _ratio_label, _BLUE)),
        (CHART_IDS[3], "Latency added", f"requests by compression wall time; p50 {_fmt_secs(p50)}, "
         f"p95 {_fmt_secs(p95)}",
         _chart_hist(CHART_IDS[3], "Latency added by compression", report.latency_histogram, _latency_label,
                     _GREY, markers=[(p50, f"p50 {_fmt_secs(p50)}"), (p95, f"p95 {_fmt_secs(p95)}")]
                     if t.events else ())),
    ]
    figs = "".join(
        f'<figure class="chart" id="{cid}" data-chart="{cid[6:]}"><figcaption>{_e(title)}<small>{_e(sub)}</small>'
        f"</figcaption>{svg}</figure>"
        for cid, title, sub, svg in charts
    )
    by_table = _table(f"By {report.by}", report.by, report.groups, t)
    model_table = "" if report.by == "model" else _table("By model", "model", report.by_model, None)
    assumptions = "".join(f"<li>{_e(a)}</li>" for a in report.assumptions)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head>"
        f"<body><main><h1>{_e(report.title)}</h1>"
        f'<p class="meta">{t.events:,} compressions, {_e(period)} · ledger {_e(report.source)} · prices '
        f"genai-prices {_e(report.genai_prices_version)} · generated {report.generated_at:%Y-%m-%d %H:%M} UTC</p>"
        f"{_cards(report)}<h2>Charts</h2><section class=\"charts\">{figs}</section>"
        f"{by_table}{model_table}{_pricing_table(report)}"
        f'<h2>Assumptions</h2><ul class="assumptions">{assumptions}</ul>'
        "<footer>Generated by ctxzip report. Net savings = input cost avoided − cache-write premiums − compression "
        "compute; see the assumptions above.</footer>"
        f"</main><script>{_SCRIPT}</script></body></html>\n"
    )


def write_html(report: SavingsReport, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.write_text(render_html(report), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------------------
# headless Chromium (tests and the docs screenshot)

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``CTXZIP_CHROMIUM`` overrides), or None."""
    env = os.environ.get("CTXZIP_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise MissingDependencyError("headless Chromium is needed; install it (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="ctxzip-chromium-") as profile:
        cmd = [exe, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(html_path: str | os.PathLike[str], *, timeout: float = 120.0) -> str:
    """The page's DOM after Chromium loaded and laid it out (scripts run)."""
    proc = _run_chromium(["--dump-dom", Path(html_path).resolve().as_uri()], timeout)
    if proc.returncode != 0 or not proc.stdout:
        raise CtxzipError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(html_path: str | os.PathLike[str], png_path: str | os.PathLike[str], *, width: int = 1280,
               height: int = 2000, timeout: float = 120.0) -> Path:
    """Render the page in headless Chromium and save a PNG of ``width`` x ``height`` pixels."""
    out = Path(png_path).resolve()
    proc = _run_chromium([f"--window-size={width},{height}", f"--screenshot={out}",
                          Path(html_path).resolve().as_uri()], timeout)
    if proc.returncode != 0 or not out.exists():
        raise CtxzipError(f"chromium --screenshot failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return out
