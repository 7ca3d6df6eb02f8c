"""Cost of GemFilter's selection pass against one full-model scoring pass on the same input.

For each row the same text is run, interleaved and repeated, through

* ``gemfilter @ r`` -- :func:`ctxzip.compressors.gemfilter.score_context` at layer ``r`` with the compressor's
  scoring options (tokenize with offsets, layers ``0..r-1`` and the q/k projections of layer ``r``, the scores);
* ``full`` -- tokenize, then the whole causal LM with logits for every position (``model(input_ids)``), as an
  NLL scorer does;
* ``body`` -- tokenize, then the whole decoder without the LM head.

All passes read the identical ``prefix + context + question`` ids, with the same threads. The order of the passes
is reversed on every other repeat, and each ratio is taken against the ``full`` pass measured next to it, so load
from other processes affects both sides alike. The table gives medians over rows x repeats.

Usage::

    python benchmarks/gemfilter_speed.py FILE --model smollm2-135m --layers 15,18,21 --rows 0:5 [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default=None, help="comma list (default: the compressor's default layer)")
    ap.add_argument("--rows", default="0:5", help="python slice of the (filtered) rows, e.g. 0:15:7")
    ap.add_argument("--max-chars", type=int, default=None, help="skip rows with longer contexts")
    ap.add_argument("--min-chars", type=int, default=None, help="skip rows with shorter contexts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--queries", type=int, default=None, help="default: the compressor's")
    ap.add_argument("--weights", default=None, help="default: the compressor's")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ctxzip.bench.data import load_rows
    from ctxzip.compressors.gemfilter import GemFilterCompressor, default_layer, frame_ids, score_context
    from ctxzip.models.loading import load_causal_lm
    from ctxzip.select import DOC_SEPARATOR

    cfg = GemFilterCompressor.Config(model=args.model)
    queries = cfg.queries if args.queries is None else args.queries
    weights = cfg.weights if args.weights is None else args.weights
    lm = load_causal_lm(args.model, device="cpu")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else [default_layer(lm.model, args.model)]
    part = slice(*(int(x) if x else None for x in args.rows.split(":")))
    rows = load_rows(args.file)
    size = [sum(len(t) for _, t in r.docs) for r in rows]
    rows = [r for r, n in zip(rows, size, strict=True)
            if (not args.max_chars or n <= args.max_chars) and (not args.min_chars or n >= args.min_chars)][part]
    tok = lm.tokenizer

    def full_ids(context: str, question: str) -> torch.Tensor:
        pre, post = frame_ids(tok, question, cfg.template)
        ids = np.asarray(tok(context, add_special_tokens=False, return_offsets_mapping=True)["input_ids"])
        return torch.from_numpy(np.concatenate([pre, ids, post])).view(1, -1)

    def run_full(context: str, question: str, head: bool) -> float:
        t0 = time.perf_counter()
        ids = full_ids(context, question)
        with torch.inference_mode():
            if head:
                lm.model(input_ids=ids, use_cache=False)
            else:
                lm.model.get_decoder()(input_ids=ids, use_cache=False)
        return time.perf_counter() - t0

    def run_gem(context: str, question: str, layer: int) -> float:
        t0 = time.perf_counter()
        cs = score_context(lm.model, tok, context, question, [layer], smooth=cfg.smooth, max_window=lm.max_length,
                           template=cfg.template, queries=queries, weights=weights)
        if len(cs.windows) > 1:
            raise SystemExit(f"{cs.token_ids.size} tokens need {len(cs.windows)} windows; pick shorter rows")
        return time.perf_counter() - t0

    gem: dict[int, list[float]] = {r: [] for r in layers}
    ratio: dict[int, list[float]] = {r: [] for r in layers}
    full, body, tokens = [], [], []
    for row in rows:
        context = DOC_SEPARATOR.join(t for _, t in row.docs)
        tokens.append(int(full_ids(context, row.question).shape[1]))
        run_gem(context, row.question, min(layers))  # warm-up (allocator, kernels), not timed
        for rep in range(args.repeat):
            passes = [("full", None), ("body", None)] + [("gem", r) for r in layers]
            if rep % 2:
                passes.reverse()
            got: dict[object, float] = {}
            for kind, r in passes:
                if kind == "gem":
                    got[r] = run_gem(context, row.question, r)
                else:
                    got[kind] = run_full(context, row.question, head=kind == "full")
            full.append(got["full"])
            body.append(got["body"])
            for r in layers:
                gem[r].append(got[r])
                ratio[r].append(got[r] / got["full"])
        print(f"{row.id}: {tokens[-1]} tokens, full {statistics.median(full[-args.repeat:]):.2f}s", flush=True)
    n_layers = len(lm.model.get_decoder().layers)
    f, d = statistics.median(full), statistics.median(body)
    print(f"\nmodel {args.model} ({n_layers} layers), queries={queries}, weights={weights}, {len(rows)} rows x "
          f"{args.repeat} repeats, {args.threads} thread(s), prompt tokens {min(tokens)}-{max(tokens)}\n")
    print("| pass | median seconds | median of (pass / adjacent full) |")
    print("|---|---:|---:|")
    print(f"| full model with logits (NLL scoring pass) | {f:.2f} | 1.00 |")
    print(f"| full decoder, no LM head | {d:.2f} | {statistics.median(b_ / f_ for b_, f_ in zip(body, full)):.2f} |")
    for r in layers:
        print(f"| gemfilter @ layer {r} (tokenize + layers 0..{r - 1} + scores) | {statistics.median(gem[r]):.2f} | "
              f"**{statistics.median(ratio[r]):.2f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
