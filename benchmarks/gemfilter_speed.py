"""Cost of GemFilter's selection pass against one full-model scoring pass on the same input.

For each row: the scoring prompt (``[BOS] + context + question``, one window) is run (a) through
:func:`ctxzip.compressors.gemfilter.score_context` at the chosen layer (early exit) and (b) through the whole
causal LM with logits, as an NLL scorer does (``model(input_ids)``), and (c) through the whole decoder without the
LM head. The three are interleaved per row and repeated, and the medians are compared, so load from other
processes affects all of them alike.

Usage::

    python benchmarks/gemfilter_speed.py FILE --model smollm2-135m --layer 13 --rows 0:5 [--repeat 2]
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
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--rows", default="0:5")
    ap.add_argument("--max-chars", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ctxzip.bench.data import load_rows
    from ctxzip.compressors.gemfilter import default_layer, score_context
    from ctxzip.models.loading import load_causal_lm
    from ctxzip.select import DOC_SEPARATOR

    lm = load_causal_lm(args.model, device="cpu")
    layer = args.layer if args.layer is not None else default_layer(lm.model, args.model)
    a, b = (int(x) if x else None for x in args.rows.split(":"))
    rows = load_rows(args.file)
    if args.max_chars:
        rows = [r for r in rows if sum(len(t) for _, t in r.docs) <= args.max_chars]
    rows = rows[a:b]
    gem, full, body = [], [], []
    tokens = []
    for row in rows:
        context = DOC_SEPARATOR.join(t for _, t in row.docs)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            cs = score_context(lm.model, lm.tokenizer, context, row.question, [layer], max_window=lm.max_length)
            gem.append(time.perf_counter() - t0)
            ids = torch.from_numpy(np.concatenate([cs.prefix_ids, cs.token_ids, cs.query_ids])).view(1, -1)
            if len(cs.windows) > 1:
                raise SystemExit(f"{row.id}: {ids.shape[1]} tokens need {len(cs.windows)} windows; pick shorter rows")
            with torch.inference_mode():
                t0 = time.perf_counter()
                lm.model(input_ids=ids, use_cache=False)
                full.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                lm.model.get_decoder()(input_ids=ids, use_cache=False)
                body.append(time.perf_counter() - t0)
        tokens.append(int(ids.shape[1]))
    g, f, d = statistics.median(gem), statistics.median(full), statistics.median(body)
    print(f"model {args.model}, layer {layer} of {len(lm.model.get_decoder().layers)}, {len(rows)} rows x "
          f"{args.repeat}, prompt tokens {min(tokens)}-{max(tokens)}\n")
    print("| pass | median seconds | gemfilter / pass |")
    print("|---|---:|---:|")
    print(f"| gemfilter selection (layers 0..{layer}, tokenize + score) | {g:.2f} | 1.00 |")
    print(f"| full model with logits (NLL scoring pass) | {f:.2f} | {g / f:.2f} |")
    print(f"| full decoder, no LM head | {d:.2f} | {g / d:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
