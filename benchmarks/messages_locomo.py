"""locomo as chat messages (one message per turn) through ``compress_messages`` vs a compressor on the flat text.

    python benchmarks/messages_locomo.py ../shared/data/bench/locomo.dev.jsonl.gz --rate 0.33 --rows 12 \
        --flat lingua2 --json /tmp/locomo_messages.json

Each session's turns become messages: the first speaker of the conversation is ``user``, the other
``assistant``; a session's first message starts with its title line (the date). The question is the last user
message; every row is compressed on its own (``memo=False``). ``answer_recall`` (ctxzip.bench.metrics.answer_hit) is measured on the compressed messages' text and on the
flat compressor's output (documents = sessions, as in ``ctxzip bench``). ``--rows N`` takes N rows spread evenly.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import ctxzip
from ctxzip.bench.data import load_rows
from ctxzip.bench.metrics import answer_hit, mean

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--rate", type=float, default=0.33)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--flat", default="lingua2")
    ap.add_argument("--method", default="auto", help="compress_messages method")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [r for r in load_rows(args.data) if r.kind == "qa"]
    step = max(1, len(rows) // args.rows)
    rows = rows[::step][: args.rows]
    out = {"messages": [], "flat": []}
    for row in rows:
        msgs = to_messages(row)
        t = time.perf_counter()
        res = ctxzip.compress_messages(msgs, rate=args.rate, method=args.method, memo=False)
        t_msg = time.perf_counter() - t
        text = "\n".join(m["content"] for m in res.messages[:-1] if isinstance(m["content"], str))
        out["messages"].append({
            "id": row.id, "hit": answer_hit(text, row.answers), "rate": res.rate, "budget": res.budget,
            "tokens": res.compressed_tokens, "origin": res.origin_tokens, "seconds": t_msg,
            "routes": sorted({r for s in res.stats for r in s.routes}),
        })
        m = out["messages"][-1]
        print(f"{row.id}: messages hit={m['hit']} rate={m['rate']:.3f} {m['seconds']:.1f}s {m['routes']}", flush=True)
        t = time.perf_counter()
        flat = ctxzip.compress(row.documents, rate=args.rate, method=args.flat, question=row.question)
        out["flat"].append({
            "id": row.id, "hit": answer_hit(flat.text, row.answers), "rate": flat.rate,
            "seconds": time.perf_counter() - t,
        })
        f = out["flat"][-1]
        print(f"{row.id}: {args.flat} hit={f['hit']} rate={f['rate']:.3f} {f['seconds']:.1f}s", flush=True)
    summary = {
        "rows": len(rows),
        "messages_answer_recall": mean(x["hit"] for x in out["messages"]),
        "messages_rate": mean(x["rate"] for x in out["messages"]),
        "messages_seconds": mean(x["seconds"] for x in out["messages"]),
        f"{args.flat}_answer_recall": mean(x["hit"] for x in out["flat"]),
        f"{args.flat}_rate": mean(x["rate"] for x in out["flat"]),
        f"{args.flat}_seconds": mean(x["seconds"] for x in out["flat"]),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, **out}, fh, indent=1)


if __name__ == "__main__":
    main()
