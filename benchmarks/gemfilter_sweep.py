"""Layer sweep for ``gemfilter``: which early layer's last-query attention finds the answer best?

One forward pass per row captures every candidate layer's scores (:func:`score_context` with many layers), then
each layer is evaluated without running the model again:

* ``tok``  -- GemFilter's own token selection (top-k model tokens, k = rate x context tokens): does the decoded
  selection contain a gold answer (``answer_hit``)?
* ``max`` / ``mean`` -- the compressor's path: token scores pooled per word unit, then the core's budgeted
  selection at ``rate`` (target-LLM tokens): answer kept?

Usage::

    python benchmarks/gemfilter_sweep.py FILE --model smollm2-135m --rate 0.1 [--rows 0:15] [--layers 0-29]

Prints a markdown table (one row per layer) and writes the per-row hits as JSON with ``--json OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _parse_layers(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--rows", default="0:15", help="python slice of the rows, e.g. 0:15")
    ap.add_argument("--layers", default=None, help="e.g. 0-29 or 5,11,17 (default: every full-attention layer)")
    ap.add_argument("--max-chars", type=int, default=None, help="skip rows with longer contexts")
    ap.add_argument("--template", default="plain", choices=["plain", "chat"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ctxzip.base import BaseCompressor
    from ctxzip.bench.data import load_rows
    from ctxzip.bench.metrics import answer_hit
    from ctxzip.compressors.gemfilter import _unit_scores, full_attention_layers, score_context, select_top_k
    from ctxzip.models.loading import load_causal_lm
    from ctxzip.select import DOC_SEPARATOR
    from ctxzip.types import CompressionRequest

    class Fixed(BaseCompressor):
        name = "fixed"

        def __init__(self, scores: list[np.ndarray]) -> None:
            super().__init__()
            self._scores = scores

        def score(self, request, docs):  # type: ignore[no-untyped-def]
            return self._scores

    lm = load_causal_lm(args.model, device="cpu")
    layers = _parse_layers(args.layers) if args.layers else full_attention_layers(lm.model)
    a, b = (int(x) if x else None for x in args.rows.split(":"))
    rows = load_rows(args.file)
    if args.max_chars:
        rows = [r for r in rows if sum(len(t) for _, t in r.docs) <= args.max_chars]
    rows = rows[a:b]
    hits: dict[str, dict[int, list[float]]] = {k: {r: [] for r in layers} for k in ("tok", "max", "mean")}
    seconds = 0.0
    tokens = 0
    for row in rows:
        texts = [t for _, t in row.docs]
        context = DOC_SEPARATOR.join(texts)
        t0 = time.perf_counter()
        cs = score_context(lm.model, lm.tokenizer, context, row.question, layers, max_window=lm.max_length,
                           template=args.template)
        seconds += time.perf_counter() - t0
        tokens += int(cs.token_ids.size)
        request = CompressionRequest.create(row.documents, question=row.question, rate=args.rate)
        from ctxzip.tokens import get_counter
        from ctxzip.units import segment

        counter = get_counter(request.target_model)
        units = [segment(d.text, request.protect, counter) for d in request.documents]
        offsets = np.cumsum([0] + [len(t) + len(DOC_SEPARATOR) for t in texts[:-1]])
        for r in layers:
            sel = select_top_k(cs, r, int(round(args.rate * cs.token_ids.size)), lm.tokenizer)
            hits["tok"][r].append(answer_hit(sel.text, row.answers) or 0.0)
            for pool in ("max", "mean"):
                per_doc = []
                for u, off in zip(units, offsets.tolist(), strict=False):
                    lo = int(np.searchsorted(cs.ends, off, side="right"))
                    hi = int(np.searchsorted(cs.starts, off + len(u.text), side="left"))
                    per_doc.append(_unit_scores(u, cs.starts[lo:hi] - off, cs.ends[lo:hi] - off,
                                                cs.scores[r][lo:hi], pool))
                res = Fixed(per_doc).compress(request)
                hits[pool][r].append(answer_hit(res.text, row.answers) or 0.0)
        print(f"{row.id}: {cs.token_ids.size} tokens, {len(cs.windows)} window(s), "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    print(f"model {args.model}, template {args.template}, {len(rows)} rows of {args.file}, rate {args.rate}, {tokens} context tokens, "
          f"{seconds:.0f}s scoring\n")
    print("| layer | token top-k answer kept | word units, max pool | word units, mean pool |")
    print("|---:|---:|---:|---:|")
    for r in layers:
        cells = [f"{np.mean(hits[k][r]):.2f}" for k in ("tok", "max", "mean")]
        print(f"| {r} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {str(r): v for r, v in d.items()} for k, d in hits.items()}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
