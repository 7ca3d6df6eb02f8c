"""Layer sweep for ``gemfilter``: which early layer's attention from the question finds the answer best?

One forward pass per row (per context window) captures every candidate layer's queries of the question frame and
keys (:func:`layer_queries_and_keys`); each layer and scoring is then evaluated without running the model again.
Scorings (``--scorings``, comma list of ``WEIGHTS:QUERIES``): ``logit:1`` is the paper's and the compressor's
default (last query's summed logits), ``softmax:0`` the opt-in SnapKV-style vote (attention probabilities of every
question-frame token).

For each layer and scoring:

* ``tok``  -- GemFilter's own token selection (top-k model tokens, k = rate x context tokens, as ``inspect``):
  does the decoded selection contain a gold answer (``answer_hit``)?
* ``words`` -- the compressor's path with ``sentence=0``: token scores pooled per word unit, then the core's
  budgeted selection at ``rate`` (target-LLM tokens): answer kept?
* ``sent`` -- the same with the sentence lift (``--sentence``; default the compressor's, which is 0 = none).
* ``rank`` -- where rows have ``gold_spans``: rank of the gold sentence among all sentences by its best word
  score (1 = first), mean and worst over the rows: a margin the hit rate does not show.

Usage::

    python benchmarks/gemfilter_sweep.py FILE --model smollm2-135m --rate 0.1 [--rows 0:15] [--layers 0-29]
        [--scorings logit:1,softmax:0] [--template plain] [--min-chars N] [--max-chars N] [--sentence 1.0]
        [--cache DIR [--cached-only]]

``--cache DIR`` keeps each single-window row's captured queries and keys (float16) in ``DIR/NNN.npz`` (``NNN``: the
row's index in FILE), so later sweeps of other layers, scorings or rates reuse the forward pass.

Prints a markdown table (one row per layer) and writes the per-row hits as JSON with ``--json OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def _gold_rank(units, words: np.ndarray, spans) -> int | None:  # type: ignore[no-untyped-def]
    """Rank (1 = best) of the best gold sentence among all sentences, by their best word score."""
    sid = np.asarray(units.sentence)
    if not spans or sid.size == 0:
        return None
    gold: set[int] = set()
    for span in spans:
        at = units.text.find(span)
        if at >= 0:
            inside = (units.ends > at) & (units.starts < at + len(span))
            gold.update(sid[inside].tolist())
    if not gold:
        return None
    best = np.full(int(sid.max()) + 1, -np.inf)
    np.maximum.at(best, sid, words)
    top = max(best[g] for g in gold)
    return int((best > top).sum()) + 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--rows", default="0:15", help="python slice of the (filtered) rows, e.g. 0:15 or 0:15:3")
    ap.add_argument("--layers", default=None, help="e.g. 0-29 or 5,11,17 (default: every full-attention layer)")
    ap.add_argument("--max-chars", type=int, default=None, help="skip rows with longer contexts")
    ap.add_argument("--min-chars", type=int, default=None, help="skip rows with shorter contexts")
    ap.add_argument("--template", default=None, choices=["plain", "chat"])
    ap.add_argument("--scorings", default="logit:1,softmax:0", help="WEIGHTS:QUERIES list (0 = question frame)")
    ap.add_argument("--pool", default=None, choices=["max", "mean"], help="default: the compressor's")
    ap.add_argument("--sentence", type=float, default=None, help="default: the compressor's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache", default=None,
                    help="folder of per-row captures (NNN.npz, NNN = row index in FILE): reused when they hold "
                         "every wanted layer, else written (single-window rows only; q/k stored as float16)")
    ap.add_argument("--cached-only", action="store_true", help="skip rows with no capture in --cache")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ctxzip.base import BaseCompressor
    from ctxzip.bench.data import load_rows
    from ctxzip.bench.metrics import answer_hit
    from ctxzip.compressors.gemfilter import (
        ContextScores,
        GemFilterCompressor,
        _unit_scores,
        _windows,
        frame_ids,
        full_attention_layers,
        layer_queries_and_keys,
        qk_scores,
        select_top_k,
        sentence_lift,
    )
    from ctxzip.models.loading import load_causal_lm
    from ctxzip.select import DOC_SEPARATOR
    from ctxzip.tokens import get_counter
    from ctxzip.types import CompressionRequest
    from ctxzip.units import segment

    cfg = GemFilterCompressor.Config(model=args.model)
    template = args.template or cfg.template
    pool = args.pool or cfg.pool
    sentence = cfg.sentence if args.sentence is None else args.sentence
    scorings = [(w, int(n)) for w, n in (s.split(":") for s in args.scorings.split(","))]

    class Fixed(BaseCompressor):
        name = "fixed"

        def __init__(self, scores: list[np.ndarray]) -> None:
            super().__init__()
            self._scores = scores

        def score(self, request, docs):  # type: ignore[no-untyped-def]
            return self._scores

    lm = load_causal_lm(args.model, device="cpu")
    tok = lm.tokenizer
    layers = _parse_layers(args.layers) if args.layers else full_attention_layers(lm.model)
    rows = load_rows(args.file)
    size = [sum(len(t) for _, t in r.docs) for r in rows]
    index = {r.id: i for i, r in enumerate(rows)}
    rows = [r for r, n in zip(rows, size, strict=True)
            if (not args.max_chars or n <= args.max_chars) and (not args.min_chars or n >= args.min_chars)]
    rows = rows[slice(*(int(x) if x else None for x in args.rows.split(":")))]
    if args.cached_only:
        if not args.cache:
            raise SystemExit("--cached-only needs --cache")
        rows = [r for r in rows if (Path(args.cache) / f"{index[r.id]:03d}.npz").exists()]

    def capture(row_id: str, seq: torch.Tensor, n_pre: int, n_query: int, single: bool) -> dict:
        """``layer_queries_and_keys`` of ``seq``, through the ``--cache`` folder where there is one."""
        path = Path(args.cache) / f"{index[row_id]:03d}.npz" if args.cache and single else None
        if path is not None and path.exists():
            z = np.load(path)
            same = (int(z["npre"]) == n_pre and int(z["npost"]) == n_query
                    and int(z["npre"]) + z["ids"].size + int(z["npost"]) == seq.shape[1]
                    and np.array_equal(z["ids"], seq[0, n_pre:seq.shape[1] - n_query].numpy())
                    and ("model" not in z or str(z["model"]) == args.model))
            if same and all(f"q{r}" in z for r in layers):
                return {r: (torch.from_numpy(z[f"q{r}"]).float(), torch.from_numpy(z[f"k{r}"]).float(),
                            float(z[f"s{r}"]), float(z[f"c{r}"]) if f"c{r}" in z else None) for r in layers}
        got = layer_queries_and_keys(lm.model, seq, layers, n_query)
        if path is None:
            return got
        store: dict[str, np.ndarray] = {}
        for r, (q, keys, scale, cap) in got.items():
            store.update({f"q{r}": q.half().numpy(), f"k{r}": keys.half().numpy(), f"s{r}": np.float32(scale)})
            if cap:
                store[f"c{r}"] = np.float32(cap)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=seq[0, n_pre:seq.shape[1] - n_query].numpy(), npre=n_pre, npost=n_query,
                 model=args.model, layers=np.array(layers), **store)
        # use exactly what a later run reads back from the cache
        return {r: (q.half().float(), k.half().float(), s, c) for r, (q, k, s, c) in got.items()}

    kinds = ("tok", "words", "sent")
    hits = {(k, s, r): [] for k in kinds for s in scorings for r in layers}
    ranks: dict[tuple, list[int]] = {(s, r): [] for s in scorings for r in layers}
    seconds = 0.0
    tokens = 0
    for row in rows:
        texts = [t for _, t in row.docs]
        context = DOC_SEPARATOR.join(texts)
        t0 = time.perf_counter()
        enc = tok(context, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        prefix, query = frame_ids(tok, row.question, template)
        windows = _windows(int(ids.size), min(cfg.max_window, lm.max_length) - prefix.size - query.size)
        scores = {(s, r): np.zeros(ids.size) for s in scorings for r in layers}
        for a, b in windows:
            seq = torch.from_numpy(np.concatenate([prefix, ids[a:b], query])).view(1, -1)
            span = (int(prefix.size), int(prefix.size) + b - a)
            captured = capture(row.id, seq, int(prefix.size), int(query.size), len(windows) == 1)
            for r, (q, keys, scale, cap) in captured.items():
                for w, n in scorings:
                    qn = q if n == 0 else q[:, -n:]
                    s = qk_scores(qn, keys, scale=scale, smooth=cfg.smooth, weights=w, span=span, softcap=cap)
                    scores[((w, n), r)][a:b] = s.double().numpy()
        seconds += time.perf_counter() - t0
        tokens += int(ids.size)
        request = CompressionRequest.create(row.documents, question=row.question, rate=args.rate)
        counter = get_counter(request.target_model)
        units = [segment(d.text, request.protect, counter) for d in request.documents]
        doc_off = np.cumsum([0] + [len(t) + len(DOC_SEPARATOR) for t in texts[:-1]])
        for s in scorings:
            for r in layers:
                cs = ContextScores(context=context, token_ids=ids, starts=offsets[:, 0], ends=offsets[:, 1],
                                   scores={r: scores[(s, r)]}, query_ids=query, prefix_ids=prefix,
                                   windows=tuple(windows), seconds=0.0)
                sel = select_top_k(cs, r, int(round(args.rate * ids.size)), tok)
                hits[("tok", s, r)].append(answer_hit(sel.text, row.answers) or 0.0)
                words = []
                for u, off in zip(units, doc_off.tolist(), strict=False):
                    lo = int(np.searchsorted(cs.ends, off, side="right"))
                    hi = int(np.searchsorted(cs.starts, off + len(u.text), side="left"))
                    words.append(_unit_scores(u, cs.starts[lo:hi] - off, cs.ends[lo:hi] - off,
                                              cs.scores[r][lo:hi], pool))
                res = Fixed(words).compress(request)
                hits[("words", s, r)].append(answer_hit(res.text, row.answers) or 0.0)
                lifted = [sentence_lift(u, x, sentence) for u, x in zip(units, words, strict=True)]
                res = Fixed(lifted).compress(request)
                hits[("sent", s, r)].append(answer_hit(res.text, row.answers) or 0.0)
                if len(units) == 1:
                    rank = _gold_rank(units[0], words[0], getattr(row, "gold_spans", None))
                    if rank is not None:
                        ranks[(s, r)].append(rank)
        print(f"{row.id}: {ids.size} tokens, {len(windows)} window(s), {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)
    print(f"model {args.model}, template {template}, pool={pool}, sentence={sentence}; {len(rows)} rows of "
          f"{args.file}, rate {args.rate}, {tokens} context tokens, {seconds:.0f}s forward + scoring\n")
    names = [f"{w}:{n}" for w, n in scorings]
    head = ["layer"] + [f"{k} {n}" for n in names for k in ("tok", "words", "sent")] + [f"rank {n}" for n in names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for r in layers:
        cells = [f"{np.mean(hits[(k, s, r)]):.2f}" for s in scorings for k in kinds]
        cells += [f"{np.mean(ranks[(s, r)]):.1f} / {max(ranks[(s, r)])}" if ranks[(s, r)] else "-" for s in scorings]
        print(f"| {r} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ids": [r.id for r in rows],
                       "hits": {f"{k} {w}:{n} {r}": v for (k, (w, n), r), v in hits.items()},
                       "ranks": {f"{w}:{n} {r}": v for ((w, n), r), v in ranks.items()}}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
