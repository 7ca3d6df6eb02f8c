"""The ``ctxzip`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CtxzipError

# subcommand -> module providing add_parser(subparsers) and run(args) -> int
_COMMANDS: dict[str, str] = {
    "compress": "ctxzip.cli",
    "bench": "ctxzip.bench.cli",
    "report": "ctxzip.report_cli",
    "serve": "ctxzip.service.cli",
    "cache": "ctxzip.cache_cli",
    "distill": "ctxzip.distill",
    "train-gist": "ctxzip.gist_cli",
    "models": "ctxzip.models.cli",
}


def _read_input(path: str) -> str:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    if b"\x00" in raw[:8192]:
        raise CtxzipError(f"{path}: looks like a binary file (NUL bytes); ctxzip compresses text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CtxzipError(f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compress",
        help="compress files (each FILE is a document) or stdin",
        description="Compress text. Several FILEs are several documents of one context (or, with --each, "
        "separate inputs). Prints the compressed text, and a summary on stderr; --json prints the result.",
    )
    p.add_argument("files", nargs="*", default=["-"], metavar="FILE", help="input files, '-' for stdin")
    p.add_argument("--question", "-q", help="question the compressed context must answer (never compressed)")
    p.add_argument("--instruction", help="instruction kept as is")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--rate", "-r", type=float, help="compressed/original tokens in (0, 1], e.g. 0.33")
    budget.add_argument("--target-tokens", "-t", type=int, help="absolute token budget")
    p.add_argument("--method", "-m", default="auto", help="compressor name (see `ctxzip compress --list`)")
    p.add_argument("--target-model", default="gpt-4o", help="LLM whose tokenizer counts the budget")
    p.add_argument("--config", help="YAML/JSON file describing a pipeline or compressor settings")
    p.add_argument("--force", action="append", default=None, metavar="TEXT", help="text never to drop (repeat)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--show", action="store_true", help="highlight kept vs dropped text in the terminal")
    p.add_argument("--each", action="store_true", help="compress each FILE on its own (progress bar, JSONL)")
    p.add_argument("--list", action="store_true", help="list the available compressors and exit")
    p.set_defaults(func=run)


def _load_config(path: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CtxzipError(f"{path}: expected a mapping (method, config, stages...), got {type(data).__name__}")
    return data


def _show(result: Any, originals: Sequence[str]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=False)
    for doc, original in zip(result.documents, originals):
        text = Text()
        pos = 0
        for span in doc.spans:
            if span.start > pos:
                text.append(original[pos : span.start], style="strike dim red")
            text.append(original[span.start : span.end], style="bold green")
            pos = span.end
        if pos < len(original):
            text.append(original[pos:], style="strike dim red")
        console.print(text)
        console.print()


def run(args: argparse.Namespace) -> int:
    from . import api, registry

    if args.list:
        for name in registry.list_compressors():
            print(name)
        return 0
    method = args.method
    config: dict[str, Any] = {}
    if args.config:
        cfg = _load_config(args.config)
        if "stages" in cfg:
            method = "pipeline"
            config = {"stages": cfg["stages"], **{k: v for k, v in cfg.items() if k not in ("stages", "method")}}
        else:
            method = cfg.get("method", method)
            config = dict(cfg.get("config", {}))
    files = args.files or ["-"]
    texts = [_read_input(f) for f in files]
    if args.rate is None and args.target_tokens is None:
        raise CtxzipError("give a budget: --rate R (0 < R <= 1, e.g. 0.33) or --target-tokens N")
    common = dict(
        question=args.question,
        instruction=args.instruction,
        rate=args.rate,
        target_tokens=args.target_tokens,
        method=method,
        target_model=args.target_model,
        protect={"force": args.force} if args.force else None,
        config=config or None,
    )
    if args.each:
        from rich.progress import track

        for name, text in track(list(zip(files, texts)), description="compressing", console=_stderr()):
            r = api.compress(text, **common)
            print(json.dumps({"file": name, **_summary(r)}))
        return 0
    docs: Any = texts[0] if len(texts) == 1 else [{"text": t, "title": f} for f, t in zip(files, texts)]
    result = api.compress(docs, **common)
    if args.json:
        out = {**_summary(result), "compressed": result.text, "documents": result.to_dict()["documents"]}
        print(json.dumps(out, ensure_ascii=False, indent=2))
    elif args.show:
        _show(result, texts)
    else:
        sys.stdout.write(result.text + ("\n" if not result.text.endswith("\n") else ""))
    if not args.json:
        print(
            f"{result.method}: {result.origin_tokens} -> {result.compressed_tokens} tokens "
            f"(rate {result.rate:.3f}, {result.ratio:.1f}x) in {result.seconds:.2f}s",
            file=sys.stderr,
        )
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _summary(r: Any) -> dict[str, Any]:
    return {
        "method": r.method,
        "origin_tokens": r.origin_tokens,
        "compressed_tokens": r.compressed_tokens,
        "rate": r.rate,
        "ratio": r.ratio if r.compressed_tokens else None,
        "seconds": r.seconds,
        "routes": list(r.routes),
    }


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxzip", description="Prompt and context compression for LLM applications."
    )
    parser.add_argument("--version", action="version", version="ctxzip " + __import__("ctxzip").__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS.values():
        if module == __name__:
            add_parser(sub)
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue  # that part of ctxzip (or its extra) is not installed
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CtxzipError as exc:
        print(f"ctxzip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except (OSError, ValueError) as exc:
        print(f"ctxzip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
