"""``ctxzip bench``: run compressors over a task file and print the scores.

    ctxzip bench FILE.jsonl[.gz] --method NAME [--method NAME2 ...] --rate R [--limit N] [--reader MODEL]
                 [--json] [--out results.jsonl]
    ctxzip bench FILE --method truncate,random --sweep 0.5,0.33,0.25,0.1 --out runs/nq.jsonl   # + PNG + table
    ctxzip bench FILE --method llmlingua-0.2.2 --rate 0.25           # the reference, in its own environment
    ctxzip bench FILE --external results.jsonl                        # score contexts compressed elsewhere
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CtxzipError

__all__ = ["add_parser", "run", "main"]


def _rates(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be numbers separated by commas, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one rate")
    return vals


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_file", metavar="FILE", help="task file (.jsonl or .jsonl.gz): QA rows or code rows")
    p.add_argument(
        "--method", "-m", action="append", default=None, metavar="NAME",
        help="compressor to run (repeat, or NAME1,NAME2, to run several side by side on the same rows); "
        "NAME[key=value,...] gives a variant its own options; "
        "'llmlingua-0.2.2' runs the reference implementation in its own environment",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--rate", "-r", type=_rates, metavar="R[,R...]", help="target rate(s) in (0, 1]")
    budget.add_argument("--target-tokens", "-t", type=int, metavar="N", help="absolute token budget per row")
    budget.add_argument(
        "--sweep", type=_rates, metavar="R1,R2,...",
        help="run every rate and write the quality-vs-rate PNG and a Markdown table",
    )
    p.add_argument("--limit", "-n", type=int, help="only the first N rows")
    p.add_argument("--target-model", default="gpt-4o", help="LLM whose tokenizer counts tokens (default gpt-4o)")
    p.add_argument(
        "--reader", metavar="MODEL",
        help="reader model: adds reader_em and reader_nll on QA rows, and completes code rows (unless --code-reader)",
    )
    p.add_argument(
        "--code-reader", default=None, metavar="MODEL",
        help="model completing code rows for edit_similarity / exact_match (default: --reader, else smollm2-135m)",
    )
    p.add_argument("--no-code-reader", action="store_true", help="skip the code reader (no edit_similarity)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--out", "-o", metavar="FILE", help="JSONL of per-row records; an existing file is resumed")
    p.add_argument(
        "--config", "-c", action="append", default=None, metavar="[METHOD:]KEY=VALUE",
        help="compressor option (JSON value or string), for every method or only METHOD; repeat",
    )
    p.add_argument(
        "--external", action="append", default=None, metavar="FILE",
        help="JSONL of compressed contexts made elsewhere ({id, method, rate, context, documents?, seconds?})",
    )
    p.add_argument("--peer-dir", metavar="DIR", help="LLMLingua environment (default ~/.cache/ctxzip/llmlingua)")
    p.add_argument("--plot", metavar="PNG", help="where --sweep writes its plot")
    p.add_argument("--table", metavar="MD", help="where --sweep writes its Markdown table")
    p.add_argument("--json", action="store_true", help="print JSON (one object, or a list for several runs)")
    p.add_argument(
        "--cache", metavar="SPEC",
        help="compress through this ctxzip cache ('sqlite', 'sqlite:PATH', 'memory', 'redis://...'); default none",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark compressors on a task file",
        description=__doc__.split("\n\n")[0] + ". See docs/benchmarks/bench.md for the metrics.",
    )
    _configure(p)
    p.set_defaults(func=run)
    return p


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_configs(items: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` applies to every method, ``METHOD:KEY=VALUE`` to one."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--config wants [METHOD:]KEY=VALUE, got {item!r}")
        lhs, value = item.split("=", 1)
        targets = methods
        if ":" in lhs:
            method, lhs = lhs.split(":", 1)
            if method not in methods:
                raise ConfigError(f"--config {item!r} names method {method!r}, which is not among {methods}")
            targets = [method]
        if not lhs:
            raise ConfigError(f"--config {item!r} has no option name")
        for m in targets:
            out.setdefault(m, {})[lhs] = _value(value)
    return out


def build_config(args: argparse.Namespace) -> Any:
    from .reader import DEFAULT_READER
    from .runner import BenchConfig, Budget, split_methods

    methods: list[str] = []
    for item in args.method or []:
        methods += split_methods(item)
    if args.target_tokens is not None:
        budgets = [Budget(target_tokens=args.target_tokens)]
    else:
        budgets = [Budget(rate=r) for r in (args.sweep or args.rate or [])]
    return BenchConfig(
        task_file=args.task_file,
        methods=tuple(methods),
        budgets=tuple(budgets),
        target_model=args.target_model,
        limit=args.limit,
        reader=args.reader,
        code_reader=None if args.no_code_reader else (args.code_reader or args.reader or DEFAULT_READER),
        seed=args.seed,
        out=args.out,
        method_config=parse_configs(args.config, methods),
        external=tuple(args.external or ()),
        peer_dir=args.peer_dir,
        cache=args.cache,
    )


def _sweep_paths(args: argparse.Namespace, task: str) -> tuple[Path, Path]:
    if args.out:
        stem = Path(args.out).with_suffix("")
        base = stem.with_name(stem.name.removesuffix(".jsonl"))
    else:
        base = Path(f"bench-{task}")
    plot = Path(args.plot) if args.plot else base.with_name(base.name + "-sweep.png")
    table = Path(args.table) if args.table else base.with_name(base.name + "-sweep.md")
    return plot, table


def run(args: argparse.Namespace) -> int:
    from .runner import run_bench
    from .sweep import markdown_table, plot_sweep

    cfg = build_config(args)
    progress = not args.no_progress
    report = run_bench(cfg, progress=progress)
    summaries = list(report.summaries)
    if args.sweep or args.plot or args.table:
        plot, table = _sweep_paths(args, cfg.task)
        plot_sweep(summaries, plot, title=f"{cfg.task} (n={max((s.n for s in summaries), default=0)})")
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(markdown_table(summaries), encoding="utf-8")
        print(f"ctxzip bench: wrote {plot} and {table}", file=sys.stderr)
    if args.json:
        data = report.to_list()
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        print(f"task {cfg.task}")
        print(markdown_table(summaries), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxzip bench", description=__doc__.split("\n\n")[0])
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CtxzipError as exc:
        print(f"ctxzip bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
