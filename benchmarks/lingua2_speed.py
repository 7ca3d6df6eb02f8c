"""Throughput of ``lingua2`` on long inputs with the model already loaded, and where its time goes.

Usage: python benchmarks/lingua2_speed.py [--model ctxzip-lingua2] [--quantize int8] [--tokens 20000] [--repeat 3]
       [--question TEXT] [--config KEY=JSON ...]
Input: Paul Graham essays from ../shared/data/needle (developer-visible text), concatenated to ``--tokens``.
With ``--question`` the default question-aware coarse stage runs (its ranking time is ``rank_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ctxzip.registry import get_compressor
from ctxzip.tokens import get_counter
from ctxzip.types import CompressionRequest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ctxzip-lingua2")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0.33)
    ap.add_argument("--question", default=None)
    ap.add_argument("--config", action="append", default=[], metavar="KEY=JSON", help="extra lingua2 option")
    args = ap.parse_args()
    extra = {}
    for item in args.config:
        key, value = item.split("=", 1)
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    torch.set_num_threads(args.threads)
    essays = Path(__file__).resolve().parents[2] / "shared" / "data" / "needle" / "PaulGrahamEssays"
    counter = get_counter("gpt-4o")
    text = ""
    for path in sorted(essays.glob("*.txt")):
        text += path.read_text(encoding="utf-8") + "\n\n"
        if counter.count(text) >= args.tokens:
            break
    comp = get_compressor("lingua2", model=args.model, quantize=args.quantize, device="cpu", **extra)
    comp.load()
    comp.compress(CompressionRequest.create(text[:2000], question=args.question, rate=args.rate))  # warm-up
    rows = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = comp.compress(CompressionRequest.create(text, question=args.question, rate=args.rate))
        wall = time.perf_counter() - t0
        parts = res.details["seconds"]
        rows.append({"wall": wall, **parts})
    best = min(rows, key=lambda r: r["wall"])
    rank = best.get("rank", 0.0)
    lingua = best["tokenize"] + best["encoder"] + best["post"] + rank
    print(json.dumps({
        "origin_tokens": res.origin_tokens,
        "tokens_per_s": round(res.origin_tokens / best["wall"]),
        "wall_s": round(best["wall"], 3),
        "encoder_s": round(best["encoder"], 3),
        "tokenize_s": round(best["tokenize"], 3),
        "post_s": round(best["post"], 3),
        "rank_s": round(rank, 3),
        "core_select_s": round(best["wall"] - lingua, 3),
        "post_share": round(best["post"] / best["wall"], 4),
        "non_encoder_share": round(1 - best["encoder"] / best["wall"], 4),
        "coarse": res.details.get("coarse"),
        "load_avg_1m": os.getloadavg()[0],
    }, indent=1))


if __name__ == "__main__":
    main()
