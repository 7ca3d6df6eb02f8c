"""``ctxzip report``: savings from the ledger (or a what-if ``--estimate``), as tables, JSON, CSV or an HTML page.

Run it as ``ctxzip report`` or ``python -m ctxzip.report_cli``. Heavy modules load only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError, CtxzipError

__all__ = ["add_parser", "run", "main", "render_terminal"]

_EXAMPLES = """examples:
  ctxzip report                                   # default ledger (CTXZIP_LEDGER or the user cache dir)
  ctxzip report ledger.sqlite3 --since 7d --by route
  ctxzip report --html report.html --csv by-model.csv
  ctxzip report --price my-llm=0.6,0.06           # a model genai-prices does not know (USD per 1M tokens)
  ctxzip report --estimate prompts/ --model gpt-4o --method lingua2 --rate 0.33 --requests-per-month 100000
"""


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("ledger", nargs="?", metavar="LEDGER",
                   help="ledger file: SQLite, or .jsonl (default: $CTXZIP_LEDGER, else the user cache dir)")
    p.add_argument("--since", metavar="DATE", help="only events from DATE (2025-01-31, ISO time, or 7d / 24h)")
    p.add_argument("--by", default="model", choices=("model", "route", "method", "day", "app", "provider"),
                   help="group the table by this (default: model)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page with charts")
    p.add_argument("--csv", metavar="FILE", help="write the grouped table (and a total row) as CSV")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of tables")
    p.add_argument("--price", action="append", default=None, metavar="[MODEL=]INPUT[,CACHED_READ[,CACHE_WRITE]]",
                   help="USD per million tokens for a model genai-prices lacks (or to override it with MODEL=); "
                   "without MODEL= it prices every unpriced model. Repeatable")
    p.add_argument("--compute-usd-per-hour", type=float, default=None, metavar="USD",
                   help="cost of the machine running the compressor (default: $CTXZIP_COMPUTE_USD_PER_HOUR or 1.0)")
    p.add_argument("--assume-cached-fraction", type=float, default=0.0, metavar="F",
                   help="share of each prompt assumed served from the provider's prompt cache when an event does "
                   "not record its cached prefix (default 0)")
    p.add_argument("--requests-per-month", type=int, default=None, metavar="N",
                   help="also project the net savings to N requests a month")
    est = p.add_argument_group("what-if estimate (compresses sample prompts, writes nothing to the ledger)")
    est.add_argument("--estimate", nargs="+", metavar="FILE",
                     help="prompt files or folders (each file one prompt; .jsonl: one prompt per line)")
    est.add_argument("--model", help="target LLM of the estimate, e.g. gpt-4o")
    est.add_argument("--method", default="auto", help="compressor of the estimate (default: auto)")
    budget = est.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=float, help="compressed/original tokens in (0, 1], e.g. 0.33")
    budget.add_argument("--target-tokens", type=int, help="token budget per prompt")
    est.add_argument("--provider", help="provider of the target model when several sell it (e.g. azure)")
    est.add_argument("--cached-prefix-tokens", type=int, default=None, metavar="N",
                     help="leading tokens of each prompt the provider would serve from its prompt cache")
    io_ = p.add_argument_group("moving events")
    io_.add_argument("--export-jsonl", metavar="FILE", help="write the ledger's events (since --since) as JSON Lines")
    io_.add_argument("--import-jsonl", metavar="FILE", help="append the events of a JSON Lines file to the ledger")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="what compression saved, net of cache-write premiums and compute (from the ledger)",
        description="Savings report from the ctxzip ledger: input tokens saved and money saved, priced with the "
        "genai-prices package (cache-read/write prices, long-context tiers), net of cache-write premiums and the "
        "compressor's compute. Every figure states its assumption.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(p)
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace) -> Any:
    from .report import PriceOverride, ReportConfig

    prices: dict[str, PriceOverride] = {}
    for text in args.price or ():
        model, price = PriceOverride.parse(text)
        prices[model] = price
    return ReportConfig(
        compute_usd_per_hour=args.compute_usd_per_hour,
        assume_cached_fraction=args.assume_cached_fraction,
        prices=prices,
        by=args.by,
        since=args.since,
        requests_per_month=args.requests_per_month,
    )


def render_terminal(report: Any, console: Any = None) -> None:
    """Print the report as rich tables."""
    import math

    from rich.console import Console
    from rich.table import Table

    from .report import _usd

    console = console or Console()
    t = report.total
    period = ""
    if report.first_event is not None:
        period = f", {report.first_event:%Y-%m-%d} – {report.last_event:%Y-%m-%d}"
    console.print(f"[bold]{report.title}[/bold]: {t.events:,} compressions{period} "
                  f"[dim]({report.source}; genai-prices {report.genai_prices_version})[/dim]")
    if t.events == 0:
        since = f" since {report.config.since:%Y-%m-%d %H:%M} UTC" if report.config.since else ""
        console.print(f"[yellow]The ledger has no events{since}.[/yellow] The library records only when "
                      "CTXZIP_LEDGER=1 (or a path) is set; the sidecar always records.")
    figs = Table(title="Savings", show_lines=False, expand=False)
    figs.add_column("figure", no_wrap=console.width >= 100)
    figs.add_column("value", justify="right", no_wrap=True)
    figs.add_column("assumption", style="dim", overflow="fold")
    for f in report.figures:
        value = f.formatted()
        if f.name == "net_usd":
            value = f"[bold {'green' if f.value >= 0 else 'red'}]{value}[/]"
        figs.add_row(f.label, value, f.assumption)
    console.print(figs)

    wide = console.width >= 110
    table = Table(title=f"By {report.by}" + ("" if wide else " (wider terminal or --csv for the breakdown)"))
    cols = [("requests", True), ("tokens saved", True), ("ratio", True), ("avoided", wide), ("cache writes", wide),
            ("compute", wide), ("net", True), ("p50", wide), ("p95", True)]
    table.add_column(report.by, overflow="fold")
    for col, show in cols:
        if show:
            table.add_column(col, justify="right", no_wrap=True)

    def secs(v: float) -> str:
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"

    for g in list(report.groups) + [t]:
        ratio = f"{g.ratio:.2f}x" if math.isfinite(g.ratio) else "inf"
        net = _usd(g.net_usd)
        cells = [f"{g.events:,}", f"{g.tokens_saved:,}", ratio, _usd(g.gross_usd), _usd(g.write_premium_usd),
                 _usd(g.compute_usd), f"[red]{net}[/red]" if g.net_usd < 0 else net, secs(g.p50_seconds),
                 secs(g.p95_seconds)]
        table.add_row(f"[bold]{g.key}[/bold]" if g is t else g.key,
                      *[c for c, (_, show) in zip(cells, cols, strict=True) if show])
    console.print(table)

    prices = Table(title="Prices used (USD per million tokens)")
    for col in ("model", "priced as", "prices", "source"):
        prices.add_column(col, overflow="fold")
    for p in report.pricing:
        matched = f"{p.matched_provider}/{p.matched_model}" if p.matched_model else "-"
        prices.add_row(p.model + (f" ({p.provider})" if p.provider else ""), matched, p.describe(), p.source)
    if report.pricing:
        console.print(prices)
    console.print("[bold]Assumptions[/bold]")
    for a in report.assumptions:
        console.print(f"  • {a}", highlight=False)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import report as rep
    from .ledger import Ledger, default_ledger_path, ledger_from_env, read_events

    estimate_only = ("model", "provider", "cached_prefix_tokens", "rate", "target_tokens")
    if not args.estimate:
        given = [f"--{n.replace('_', '-')}" for n in estimate_only if getattr(args, n, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to a what-if --estimate FILES run")
    if args.estimate and (args.ledger or args.export_jsonl or args.import_jsonl):
        raise ConfigError("--estimate compresses sample files and reads no ledger; drop LEDGER/--export/--import")
    config = _config(args)
    path = Path(args.ledger).expanduser() if args.ledger else (ledger_from_env() or default_ledger_path())

    if args.import_jsonl:
        with Ledger(path) as ledger:
            n = ledger.import_jsonl(args.import_jsonl)
        print(f"imported {n:,} new event(s) from {args.import_jsonl} into {path}", file=sys.stderr)
        return 0
    if args.export_jsonl:
        if path.suffix == ".jsonl":
            raise ConfigError(f"{path} already is a JSON Lines file")
        with Ledger(path, create=False) as ledger:
            n = ledger.export_jsonl(args.export_jsonl, since=config.since)
        print(f"exported {n:,} event(s) from {path} to {args.export_jsonl}", file=sys.stderr)
        return 0

    if args.estimate:
        if not args.model:
            raise ConfigError("--estimate needs --model, the target LLM whose prices apply, e.g. --model gpt-4o")
        if args.rate is None and args.target_tokens is None:
            raise ConfigError("--estimate needs a budget: --rate R (e.g. 0.33) or --target-tokens N")
        events = rep.estimate_events(
            args.estimate, model=args.model, method=args.method, rate=args.rate, target_tokens=args.target_tokens,
            provider=args.provider, cached_prefix_tokens=args.cached_prefix_tokens,
        )
        title = f"ctxzip what-if estimate: {args.method} at " + (
            f"rate {args.rate:g}" if args.rate is not None else f"{args.target_tokens} tokens") + f" for {args.model}"
        report = rep.build_report(events, config, source=f"{len(events)} sample prompt(s)", title=title)
    else:
        events = read_events(path, since=config.since)
        report = rep.build_report(events, config, source=str(path))

    if args.json:
        print(report.to_json())
    else:
        render_terminal(report)
    if args.csv:
        report.write_csv(args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.html:
        from .report_html import write_html

        write_html(report, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxzip report", description="Savings report from the ctxzip ledger.",
                                     epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CtxzipError as exc:
        print(f"ctxzip report: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ctxzip report: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
