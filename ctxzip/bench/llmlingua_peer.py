"""Run the reference LLMLingua 0.2.2 (LongLLMLingua settings) over prepared benchmark requests.

This file runs *inside the peer environment* built by ``benchmarks/setup_llmlingua.sh`` (``llmlingua==0.2.2``,
``transformers==4.46.3``), never in ctxzip's own: it imports only the standard library, torch and llmlingua, and
is started by ``ctxzip bench --method llmlingua-0.2.2`` as a script::

    TIKTOKEN_CACHE_DIR=DIR/tiktoken HF_HUB_OFFLINE=1 DIR/venv/bin/python llmlingua_peer.py \\
        --requests requests.jsonl --model DIR/smollm2 --out results.jsonl

Each request line is ``{"id", "rate", "docs": [str], "question": str}`` (written by ctxzip, which owns the task
formats); each result line is ``{"id", "method", "rate", "context", "documents", "kept_docs", "seconds",
"peak_rss_mb", "target_token", "question_rstripped", ...}``. ``context`` is LLMLingua's compressed context alone
(no instruction or question: ``instruction=""``, ``concate_question=False``, so neither is compressed nor
added). ``documents`` holds the compressed text of every input document (``""`` when dropped), recovered by
following which of LLMLingua's tokens survive each ``get_compressed_input`` step (an observation only: the
calls and their results are unchanged); it is ``null`` when that bookkeeping does not reproduce LLMLingua's output exactly.

The budget: ``target_token = rate x`` the documents' length as LLMLingua itself counts it (``get_token_length``),
i.e. LLMLingua's own notion of ``rate`` applied to the context. ctxzip measures the achieved rate itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

METHOD = "llmlingua-0.2.2"

#: LongLLMLingua settings (the LLMLingua README's LongLLMLingua example).
SETTINGS = {
    "rank_method": "longllmlingua",
    "condition_in_question": "after_condition",
    "condition_compare": True,
    "reorder_context": "sort",
    "dynamic_context_compression_ratio": 0.3,
    "context_budget": "+100",
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Tracker:
    """Follows which original token positions survive LLMLingua's iterative token filter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cur: list[int] | None = None
        self.popped: list[int] = []
        self.segments: list[str] | None = None
        self.start = 0
        self.result_ids: list[int] | None = None
        self.used: list[int] | None = None
        self.ok = True

    def step(self, in_ids: list[int], out_ids: list[int]) -> None:
        if not self.ok:
            return
        if self.cur is None:
            self.cur = list(range(len(in_ids)))
        if len(in_ids) < len(self.cur):  # KV-cache compression moved a prefix out of the working sequence
            e = len(self.cur) - len(in_ids)
            self.popped.extend(self.cur[:e])
            self.cur = self.cur[e:]
        if len(in_ids) != len(self.cur) or len(out_ids) > len(in_ids):
            self.ok = False
            return
        # out = in with some tokens removed: trim the common prefix and suffix, match the middle greedily
        n, m = len(in_ids), len(out_ids)
        p = 0
        while p < m and in_ids[p] == out_ids[p]:
            p += 1
        s = 0
        while s < m - p and in_ids[n - 1 - s] == out_ids[m - 1 - s]:
            s += 1
        keep = list(range(p))
        j = p
        for i in range(p, n - s):
            if j < m - s and in_ids[i] == out_ids[j]:
                keep.append(i)
                j += 1
        if j != m - s:
            self.ok = False
            return
        keep.extend(range(n - s, n))
        self.cur = [self.cur[i] for i in keep]

    def final_positions(self) -> list[int] | None:
        if not self.ok or self.cur is None:
            return None
        return (self.popped + self.cur)[self.start :]


def _instrument(pc, tracker: _Tracker) -> None:  # type: ignore[no-untyped-def]
    orig_budget = pc.control_context_budget
    orig_iter = pc.iterative_compress_prompt
    orig_gci = pc.get_compressed_input

    def control_context_budget(*args, **kwargs):  # type: ignore[no-untyped-def]
        res = orig_budget(*args, **kwargs)
        tracker.used = [int(i) for i in res[2]]
        return res

    def iterative_compress_prompt(context, *args, **kwargs):  # type: ignore[no-untyped-def]
        tracker.segments = list(context)
        tracker.start = int(kwargs.get("start", 0))
        res = orig_iter(context, *args, **kwargs)
        tracker.result_ids = [int(x) for x in res[0][0].tolist()]
        return res

    def get_compressed_input(*args, **kwargs):  # type: ignore[no-untyped-def]
        in_ids = args[1] if len(args) > 1 else kwargs["input_ids"]
        res = orig_gci(*args, **kwargs)
        tracker.step([int(x) for x in in_ids[0].tolist()], [int(x) for x in res[0][0].tolist()])
        return res

    pc.control_context_budget = control_context_budget
    pc.iterative_compress_prompt = iterative_compress_prompt
    pc.get_compressed_input = get_compressed_input


def _per_document(pc, tracker: _Tracker, n_docs: int) -> list[str] | None:  # type: ignore[no-untyped-def]
    """Compressed text of every original document, from the surviving token positions."""
    positions = tracker.final_positions()
    if positions is None or tracker.segments is None or tracker.result_ids is None:
        return None
    used = tracker.used if tracker.used is not None else list(range(n_docs))
    segs = tracker.segments
    has_prefix = len(segs) == len(used) + 1
    if len(segs) != len(used) + (1 if has_prefix else 0):
        return None
    joined = "\n\n".join(segs)
    enc = pc.tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    if [ids[p] for p in positions if p < len(ids)] != tracker.result_ids or max(positions, default=-1) >= len(ids):
        return None
    # character range of each segment inside the joined text
    bounds = []
    pos = 0
    for seg in segs:
        bounds.append((pos, pos + len(seg)))
        pos += len(seg) + 2
    seg_of_doc = {}
    for k, doc_index in enumerate(used):
        seg_of_doc[doc_index] = k + (1 if has_prefix else 0)
    kept_by_seg: dict[int, list[int]] = {}
    for p in positions:
        start = offsets[p][0]
        for k, (a, b) in enumerate(bounds):
            if a <= start < b:
                kept_by_seg.setdefault(k, []).append(ids[p])
                break
    out = []
    for d in range(n_docs):
        k = seg_of_doc.get(d)
        toks = kept_by_seg.get(k, []) if k is not None else []
        out.append(pc.tokenizer.decode(toks).strip() if toks else "")
    return out


def _compress(pc, tracker: _Tracker, docs: list[str], question: str, target: int):  # type: ignore[no-untyped-def]
    """``pc.compress_prompt`` with the LongLLMLingua settings; returns ``(result, question_rstripped)``.

    LLMLingua 0.2.2 locates the question/context boundary by re-tokenising ``question + "\\n\\n" + context[0]``
    and asserts that the tokens after the question decode to the context's start (``get_prefix_length``). When
    the question ends with a newline and the first document starts with one (code rows: the prefix ends with a
    line break, a file window can start with a blank line), BPE merges the newlines across the boundary and the
    assertion fails before anything is compressed. Only then is the call repeated once with the question's
    trailing whitespace removed: the question only conditions the scores (``concate_question=False``), the
    documents are passed unchanged, and the record says so (``question_rstripped``).
    """

    def call(q: str):  # type: ignore[no-untyped-def]
        tracker.reset()
        return pc.compress_prompt(
            context=docs, instruction="", question=q, target_token=target, concate_question=False, **SETTINGS
        )

    try:
        return call(question), False
    except AssertionError:
        if question == question.rstrip():
            raise
    return call(question.rstrip()), True


def _done(path: str) -> set[tuple[str, float]]:
    done: set[tuple[str, float]] = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted run; it is redone
                done.add((rec["id"], float(rec["rate"])))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", required=True, help="JSONL of {id, rate, docs, question}")
    ap.add_argument("--model", required=True, help="directory of the safetensors SmolLM2 model")
    ap.add_argument("--out", required=True, help="JSONL results, appended (resumable)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from llmlingua import PromptCompressor

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, int(os.environ.get("CTXZIP_PEER_THREADS", "2"))))
    with open(args.requests, encoding="utf-8") as fh:
        requests = [json.loads(line) for line in fh if line.strip()]
    done = _done(args.out)
    todo = [r for r in requests if (r["id"], float(r["rate"])) not in done]
    print(f"{METHOD}: {len(todo)} of {len(requests)} requests to run", file=sys.stderr, flush=True)
    if not todo:
        return 0
    t0 = time.perf_counter()
    pc = PromptCompressor(model_name=args.model, device_map="cpu")
    load_seconds = time.perf_counter() - t0
    tracker = _Tracker()
    _instrument(pc, tracker)
    with open(args.out, "a", encoding="utf-8") as out:
        for n, req in enumerate(todo, start=1):
            docs = [str(d) for d in req["docs"]]
            question = str(req.get("question") or "")
            target = max(1, round(float(req["rate"]) * sum(pc.get_token_length(d) for d in docs)))
            t = time.perf_counter()
            res, question_rstripped = _compress(pc, tracker, docs, question, target)
            seconds = time.perf_counter() - t
            documents = _per_document(pc, tracker, len(docs))
            rec = {
                "id": req["id"],
                "method": METHOD,
                "rate": float(req["rate"]),
                "context": res["compressed_prompt"],
                "documents": documents,
                "kept_docs": tracker.used if tracker.used is not None else list(range(len(docs))),
                "seconds": seconds,
                "load_seconds": load_seconds,
                "peak_rss_mb": _peak_rss_mb(),
                "target_token": target,
                "llmlingua_origin_tokens": res["origin_tokens"],
                "llmlingua_compressed_tokens": res["compressed_tokens"],
                "settings": SETTINGS,
                "question_rstripped": question_rstripped,
            }
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{METHOD}: {n}/{len(todo)} {req['id']} rate {req['rate']} {seconds:.1f}s", file=sys.stderr,
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
