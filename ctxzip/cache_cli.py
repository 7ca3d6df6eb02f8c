"""``ctxzip cache stats|clear|warm``: inspect, empty and pre-fill the cache of compressed segments.

    ctxzip cache stats [--cache SPEC] [--json]
    ctxzip cache clear [--cache SPEC]
    ctxzip cache warm FILE... --method lingua2 [--question Q] [--cache SPEC] [--json]

Without ``--cache`` the cache is the one ``CTXZIP_CACHE`` names, else the default SQLite file. ``warm`` takes text
files (each one document) and task files (``.jsonl``/``.jsonl.gz`` rows with ``docs: [{title, text}]``, or
``text``/``context``; a row's ``question`` is used by question-aware compressors).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, CtxzipError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cache",
        help="inspect, clear or warm the cache of compressed segments",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", metavar="SPEC",
                        help="'sqlite', 'sqlite:PATH', 'memory' or 'redis://host:6379/0' (default: CTXZIP_CACHE, "
                        "else the default SQLite file)")
    common.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("stats", parents=[common], help="entries, bytes and bounds of the cache")
    sub.add_parser("clear", parents=[common], help="remove every entry")
    w = sub.add_parser("warm", parents=[common], help="score documents into the cache ahead of time")
    w.add_argument("files", nargs="+", metavar="FILE", help="text files (one document each) or .jsonl[.gz] task files")
    w.add_argument("--method", "-m", default="lingua2", help="compressor whose scores to cache (default lingua2)")
    w.add_argument("--question", "-q", help="question for question-aware compressors (text files)")
    w.add_argument("--target-model", default="gpt-4o", help="LLM whose tokenizer the requests will use")
    w.add_argument("--config", "-c", action="append", default=None, metavar="KEY=VALUE",
                   help="compressor option (JSON value or string); repeat")
    w.add_argument("--limit", "-n", type=int, help="only the first N rows of task files")
    p.set_defaults(func=run, cache_command=None)
    return p


def _cache(spec: str | None) -> Any:
    from . import cache as cc

    if spec:
        return cc.open_cache(spec)
    return cc.configured() or cc.open_cache("sqlite")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CtxzipError(f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


def _rows(path: Path, limit: int | None) -> list[tuple[list[dict[str, Any]], str | None]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if limit is not None and len(out) >= limit:
                break
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise CtxzipError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise CtxzipError(f"{path}:{lineno}: expected a JSON object")
            if isinstance(row.get("docs"), list):
                docs = [d if isinstance(d, dict) else {"text": d} for d in row["docs"]]
            elif isinstance(row.get("text", row.get("context")), str):
                docs = [{"text": row.get("text", row.get("context"))}]
            else:
                raise CtxzipError(f"{path}:{lineno}: a row needs 'docs' (a list) or 'text'")
            question = row.get("question")
            out.append((docs, question if isinstance(question, str) else None))
    return out


def _options(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config wants KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for k, v in data.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv}")
        else:
            print(f"{k}: {v}")


def run(args: argparse.Namespace) -> int:
    if args.cache_command is None:
        print("usage: ctxzip cache {stats,clear,warm} ... (see ctxzip cache --help)", file=sys.stderr)
        return 2
    cache = _cache(args.cache)
    try:
        if args.cache_command == "stats":
            info = cache.info()
            info.pop("counters", None)  # a fresh process has counted nothing
            _print(info, args.json)
            return 0 if info.get("available") else 1
        if args.cache_command == "clear":
            n = cache.clear()
            _print({"spec": cache.spec, "removed": n}, args.json)
            return 0
        return _warm(args, cache)
    finally:
        cache.close()


def _warm(args: argparse.Namespace, cache: Any) -> int:
    from .cache import warm

    config = _options(args.config)
    groups: list[tuple[list[Any], str | None]] = []
    texts: list[Any] = []
    for f in args.files:
        path = Path(f)
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            groups += _rows(path, args.limit)
        else:
            texts.append({"title": path.name, "text": _read_text(path)})
    if texts:
        groups.insert(0, (texts, args.question))
    totals = {"documents": 0, "cached": 0, "scored": 0, "seconds": 0.0}
    for docs, question in groups:
        rep = warm(args.method, docs, question=question or args.question, target_model=args.target_model,
                   config=config or None, cache=cache)
        for k in totals:
            totals[k] += getattr(rep, k)
    s = cache.stats()
    data = {"spec": cache.spec, "method": args.method, **totals, "errors": s.errors}
    _print(data, args.json)
    return 0 if s.errors == 0 else 1
