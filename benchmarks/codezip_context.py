"""What the code reader of ``ctxzip bench`` actually sees of a code row, and where the target's names are.

Usage: python benchmarks/codezip_context.py [FILE] [--limit 20] [--reader smollm2-135m] [--json OUT]

For each code row (no compression, no generation; the reader's tokenizer only):

* ``prompt_tokens``: reader tokens of the full-context prompt (instruction, context, prefix; see
  ``ctxzip.bench.data.code_prompt``);
* ``visible_share``: the share of the context's target tokens (gpt-4o) inside the reader's window: prompts longer
  than ``max_length - code_max_new_tokens`` reader tokens are cut from the left (``Reader._fit``), so this is
  what the "full context" figure is really measured on;
* ``instruction_visible``: whether the instruction survived that cut;
* ``names``: for each identifier of the target line that is not in the prefix, the distance in target tokens from
  its last occurrence in the current file (the last document) to the end of that file, or ``other`` (only in
  other files) or ``none``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ctxzip.bench.data import code_prompt, load_rows
from ctxzip.bench.reader import DEFAULT_READER, load_reader
from ctxzip.tokens import get_counter

_NAME = re.compile(r"[A-Za-z_]\w+")


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench" / "code.dev.jsonl.gz"
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?", default=str(default))
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--reader", default=DEFAULT_READER)
    ap.add_argument("--target-model", default="gpt-4o")
    ap.add_argument("--json", default=None, help="write the per-row records here")
    args = ap.parse_args()
    reader = load_reader(args.reader)
    tok = reader.tokenizer
    window = reader.max_length - reader.code_max_new_tokens
    counter = get_counter(args.target_model)
    out = []
    for row in load_rows(args.file, limit=args.limit):
        if row.kind != "code":
            continue
        texts = [d["text"] for d in row.documents]
        context = "\n\n".join(t for t in texts if t)
        prompt = code_prompt(row.instruction, context, row.question)
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        cut = int(enc["offset_mapping"][n - window][0]) if n > window else 0
        at = prompt.find(context)
        visible = prompt[max(cut, at) : at + len(context)]
        last = texts[-1]
        names = {}
        for name in sorted(set(_NAME.findall(row.target)) - set(_NAME.findall(row.question))):
            pos = last.rfind(name)
            if pos >= 0:
                names[name] = counter.count(last[pos:])
            elif any(name in t for t in texts[:-1]):
                names[name] = "other"
            else:
                names[name] = "none"
        rec = {
            "id": row.id,
            "context_tokens": counter.count(context),
            "prompt_tokens": n,
            "visible_share": round(counter.count(visible) / max(counter.count(context), 1), 3),
            "instruction_visible": cut == 0,
            "target": row.target.strip(),
            "names": names,
        }
        out.append(rec)
        print(json.dumps(rec))
    if not out:
        return
    dists = [v for r in out for v in r["names"].values()]
    near = sum(1 for v in dists if isinstance(v, int) and v <= 500)
    summary = {
        "rows": len(out),
        "window": window,
        "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in out) / len(out), 1),
        "mean_visible_share": round(sum(r["visible_share"] for r in out) / len(out), 3),
        "min_visible_share": min(r["visible_share"] for r in out),
        "rows_fully_visible": sum(r["visible_share"] >= 1.0 for r in out),
        "rows_instruction_cut": sum(not r["instruction_visible"] for r in out),
        "target_names": len(dists),
        "names_in_last_500_tokens_of_current_file": near,
        "names_only_in_other_files": sum(v == "other" for v in dists),
        "names_nowhere": sum(v == "none" for v in dists),
    }
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": out, "summary": summary}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
