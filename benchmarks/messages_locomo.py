"""locomo as chat messages (one message per turn) through ``compress_messages`` vs a compressor on the flat text.

    python benchmarks/messages_locomo.py ../shared/data/bench/locomo.dev.jsonl.gz --rate 0.33 --limit 385 \
        --flat lingua2 --out /tmp/locomo_messages.jsonl --json /tmp/locomo_messages.json
    ctxzip bench ../shared/data/bench/locomo.dev.jsonl.gz -m lingua2 -r 0.33 -n 385   # the flat side alone

Each session's turns become messages: the first speaker of the conversation is ``user``, the other
``assistant``; a session's first message starts with its title line (the date). The question is the last user
message; every row is compressed on its own (``memo=False``, no stable prefix carried between rows).

Per row: ``answer_hit`` (:func:`ctxzip.bench.metrics.answer_hit`, the metric behind ``ctxzip bench``'s
answer_recall) on the compressed messages' text (every message but the question, joined by line breaks),
``gold_turn_recall`` (for each gold evidence turn, the share of its words kept, in order, *in its own message*;
a diagnostic), the achieved rate (compressed / original tokens of all text parts) and seconds. ``--flat NAME``
also compresses the flat text (documents = sessions, as ``ctxzip bench`` does) with ``NAME`` (``none``: skip).

Rows: ``--limit N`` takes the first N rows (the rows of ``ctxzip bench -n N``); ``--rows N`` takes N rows spread
evenly. Models are loaded before timing. MiniLM embeddings of the turns are remembered across rows (the rows
of one conversation share its turns, as successive calls of one chat do); ``--cold`` forgets them before each
row, which times every row as a first call. ``--out`` writes each row's records as it finishes (``side``:
``messages`` or ``flat``; a flat record carries the flat compressor's config and details) and resumes an
existing file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time

import ctxzip
from ctxzip.api import shared_compressor
from ctxzip.bench.data import load_rows
from ctxzip.bench.metrics import answer_hit, mean, normalized_words, span_recall_one
from ctxzip.messages import _route_config

_TURN = re.compile(r"^([^:\n]{1,40}):\s(.*)$")


def to_messages(row) -> list[dict]:
    msgs: list[dict] = []
    first_speaker = None
    for title, text in row.docs:
        head = f"[{title}]\n" if title else ""
        for line in text.splitlines():
            m = _TURN.match(line)
            if not m:
                continue
            speaker, said = m.groups()
            first_speaker = first_speaker or speaker
            role = "user" if speaker == first_speaker else "assistant"
            msgs.append({"role": role, "content": f"{head}{speaker}: {said}"})
            head = ""
    msgs.append({"role": "user", "content": row.question})
    return msgs


def gold_turn_recall(row, msgs: list[dict], out: list[dict]) -> float | None:
    """Mean over the row's gold turns of the share of the turn's words kept in its own (compressed) message."""
    shares = []
    for span in row.gold_spans:
        words = normalized_words(span)
        if not words:
            continue
        # the message holding the turn: the one whose text ends with it (a session's first turn has a title line)
        idx = next((i for i, m in enumerate(msgs[:-1]) if m["content"].endswith(span.strip())), None)
        if idx is None:
            continue
        shares.append(span_recall_one(span, out[idx]["content"]) or 0.0)
    return mean(shares)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--rate", type=float, default=0.33)
    ap.add_argument("--limit", type=int, help="the first N rows (as ctxzip bench -n N)")
    ap.add_argument("--rows", type=int, default=12, help="N rows spread evenly (when --limit is not given)")
    ap.add_argument("--flat", default="lingua2", help="compressor on the flat text, or 'none'")
    ap.add_argument("--method", default="auto", help="compress_messages method")
    ap.add_argument("--config", type=json.loads, help="compress_messages config (JSON), e.g. routes")
    ap.add_argument("--cold", action="store_true", help="forget remembered embeddings before each row")
    ap.add_argument("--json", help="summary and per-row records, written at the end")
    ap.add_argument("--out", help="JSONL of per-row records, written as rows finish; an existing file is resumed")
    args = ap.parse_args()
    rows = [r for r in load_rows(args.data) if r.kind == "qa"]
    if args.limit:
        rows = rows[: args.limit]
    else:
        step = max(1, len(rows) // args.rows)
        rows = rows[::step][: args.rows]
    flat = None if args.flat.lower() == "none" else args.flat
    t = time.perf_counter()
    # the compressor compress_messages will use (its routes: ctxzip.messages.MESSAGE_ROUTES under --config)
    shared_compressor(args.method, **_route_config(args.method, args.config)).load()
    if flat:
        shared_compressor(flat).load()
    print(f"models loaded in {time.perf_counter() - t:.1f}s", flush=True)
    out: dict[str, list] = {"messages": [], "flat": []}
    flat_config = dataclasses.asdict(shared_compressor(flat).config) if flat else None
    done: set[str] = set()
    if args.out and os.path.exists(args.out):
        with open(args.out) as fh:
            for line in fh:
                rec = json.loads(line)
                out[rec["side"]].append(rec)
                if rec["side"] == "messages":
                    done.add(rec["id"])
        print(f"resumed {len(done)} rows from {args.out}", flush=True)
    for row in rows:
        if row.id in done:
            continue
        if args.cold:
            from ctxzip.compressors.embed_rank import embedding_memo

            embedding_memo().clear()
        msgs = to_messages(row)
        t = time.perf_counter()
        res = ctxzip.compress_messages(msgs, rate=args.rate, method=args.method, config=args.config, memo=False)
        t_msg = time.perf_counter() - t
        text = "\n".join(m["content"] for m in res.messages[:-1] if isinstance(m["content"], str))
        out["messages"].append({
            "side": "messages", "id": row.id, "hit": answer_hit(text, row.answers), "gold_turn_recall": gold_turn_recall(row, msgs, list(res.messages)),
            "rate": res.rate, "budget": res.budget, "tokens": res.compressed_tokens, "origin": res.origin_tokens,
            "seconds": t_msg, "routes": sorted({r for s in res.stats for r in s.routes}),
            "actions": {a: sum(1 for s in res.stats if s.action == a) for a in sorted({s.action for s in res.stats})},
        })
        m = out["messages"][-1]
        print(f"{row.id}: messages hit={m['hit']} gold_turns={m['gold_turn_recall']} rate={m['rate']:.3f} "
              f"{m['seconds']:.1f}s {m['routes']}", flush=True)
        if flat:
            t = time.perf_counter()
            fr = ctxzip.compress(row.documents, rate=args.rate, method=flat, question=row.question, seed=0, cache=False)
            out["flat"].append({
                "side": "flat", "id": row.id, "hit": answer_hit(fr.text, row.answers), "rate": fr.rate,
                "seconds": time.perf_counter() - t, "method": fr.method, "config": flat_config,
                "details": {k: v for k, v in fr.details.items() if k != "word_labels"},
            })
            f = out["flat"][-1]
            print(f"{row.id}: {flat} hit={f['hit']} rate={f['rate']:.3f} {f['seconds']:.1f}s", flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                for side in ("messages", "flat") if flat else ("messages",):
                    fh.write(json.dumps(out[side][-1], default=str) + "\n")
    ids = {r.id for r in rows}
    out = {k: [x for x in v if x["id"] in ids] for k, v in out.items()}
    summary: dict[str, object] = {
        "rows": len(out["messages"]),
        "messages_answer_recall": mean(x["hit"] for x in out["messages"]),
        "messages_gold_turn_recall": mean(x["gold_turn_recall"] for x in out["messages"]),
        "messages_rate": mean(x["rate"] for x in out["messages"]),
        "messages_seconds": mean(x["seconds"] for x in out["messages"]),
    }
    if flat:
        summary.update({
            f"{flat}_answer_recall": mean(x["hit"] for x in out["flat"]),
            f"{flat}_rate": mean(x["rate"] for x in out["flat"]),
            f"{flat}_seconds": mean(x["seconds"] for x in out["flat"]),
            f"{flat}_config": flat_config,
        })
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, **out}, fh, indent=1)


if __name__ == "__main__":
    main()
