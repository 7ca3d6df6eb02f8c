"""GemFilter for local Hugging Face generation: select with the early layers, then answer from the selection.

:func:`generate` does GemFilter's two passes on one local causal LM:

1. *select* -- the first ``r + 1`` layers run on ``context + question`` (:mod:`ctxzip.compressors.gemfilter`)
   and the top-``k`` context tokens are kept in order;
2. *answer* -- a fresh forward pass on ``[BOS] + kept tokens + question`` (new positions, new cache) and greedy
   decoding from it.

Time to first token (TTFT) of the GemFilter path is ``select + prefill(selection) + first token``; with
``compare_full=True`` the same model also answers from the full prompt, and its TTFT (``prefill(full) + first
token``) is reported beside it. The full prompt is only run when it fits the model's context length.

Command line (prints a JSON report)::

    python -m ctxzip.gemfilter_generate FILE.jsonl.gz --row 0 --k 256 [--model smollm2-135m] [--no-full]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ._lazy import require
from .compressors.gemfilter import GemFilterCompressor, TokenSelection
from .errors import ConfigError

__all__ = ["GenerationReport", "generate", "greedy_decode"]


@dataclasses.dataclass(frozen=True)
class GenerationReport:
    """Answers and timings of both paths. Seconds are wall-clock on the model's device."""

    answer: str
    full_answer: str | None
    input_tokens: int  # second-pass prompt length (prefix + kept + question)
    full_input_tokens: int  # full prompt length (prefix + context + question)
    select_seconds: float
    ttft_seconds: float  # select + prefill of the selection + first token
    full_ttft_seconds: float | None  # prefill of the full prompt + first token
    decode_seconds: float
    selection: TokenSelection

    @property
    def ttft_speedup(self) -> float | None:
        """full TTFT / GemFilter TTFT (> 1 means GemFilter answers sooner)."""
        if self.full_ttft_seconds is None or self.ttft_seconds <= 0:
            return None
        return self.full_ttft_seconds / self.ttft_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "full_answer": self.full_answer,
            "input_tokens": self.input_tokens,
            "full_input_tokens": self.full_input_tokens,
            "k": self.selection.k,
            "layer": self.selection.layer,
            "windows": self.selection.windows,
            "select_seconds": self.select_seconds,
            "ttft_seconds": self.ttft_seconds,
            "full_ttft_seconds": self.full_ttft_seconds,
            "ttft_speedup": self.ttft_speedup,
            "decode_seconds": self.decode_seconds,
        }


def greedy_decode(model: Any, input_ids: Any, max_new_tokens: int, eos_ids: set[int]) -> tuple[list[int], float, float]:
    """Greedy decoding with a KV cache. Returns ``(new ids, seconds to first token, total seconds)``."""
    torch = require("torch", feature="gemfilter generation")
    started = time.perf_counter()
    out_ids: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=input_ids.to(model.device), use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        first = time.perf_counter() - started
        out_ids.append(nxt)
        past = out.past_key_values
        while len(out_ids) < max_new_tokens and nxt not in eos_ids:
            step = torch.tensor([[nxt]], device=model.device)
            out = model(input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
    if out_ids and out_ids[-1] in eos_ids:
        out_ids.pop()
    return out_ids, first, time.perf_counter() - started


def generate(
    context: str,
    question: str,
    *,
    k: int | None = None,
    rate: float | None = None,
    model: str = "smollm2-135m",
    layer: int | None = None,
    max_new_tokens: int = 32,
    compare_full: bool = True,
    device: str | None = None,
    compressor: GemFilterCompressor | None = None,
) -> GenerationReport:
    """Answer ``question`` about ``context`` from GemFilter's top-``k`` tokens (or ``rate`` of them)."""
    torch = require("torch", feature="gemfilter generation")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("generate() needs a question: GemFilter scores the context against it")
    comp = compressor or GemFilterCompressor(model=model, layer=layer, device=device)
    lm = comp._lm(comp.config)
    eos = lm.tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else ({int(eos)} if eos is not None else set())

    sel = comp.inspect(context, question, k=k, rate=rate)
    ids = torch.from_numpy(sel.input_ids).view(1, -1)
    new_ids, first, total = greedy_decode(lm.model, ids, max_new_tokens, eos_ids)
    answer = lm.tokenizer.decode(new_ids, skip_special_tokens=True)

    full_ids = sel.full_ids
    full_answer = None
    full_ttft = None
    if compare_full and full_ids.size <= lm.max_length:
        fids, ffirst, _ = greedy_decode(lm.model, torch.from_numpy(full_ids).view(1, -1), max_new_tokens, eos_ids)
        full_answer = lm.tokenizer.decode(fids, skip_special_tokens=True)
        full_ttft = ffirst
    return GenerationReport(
        answer=answer,
        full_answer=full_answer,
        input_tokens=int(sel.input_ids.size),
        full_input_tokens=int(full_ids.size),
        select_seconds=sel.seconds,
        ttft_seconds=sel.seconds + first,
        full_ttft_seconds=full_ttft,
        decode_seconds=total,
        selection=sel,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from .bench.data import load_rows

    ap = argparse.ArgumentParser(prog="python -m ctxzip.gemfilter_generate")
    ap.add_argument("file")
    ap.add_argument("--row", type=int, default=0)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--no-full", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch = require("torch", feature="gemfilter generation")
    torch.set_num_threads(args.threads)
    row = load_rows(args.file)[args.row]
    context = "\n\n".join(t for _, t in row.docs)
    if args.k is None and args.rate is None:
        args.k = 256
    report = generate(context, row.question, k=args.k, rate=args.rate, model=args.model, layer=args.layer,
                      max_new_tokens=args.max_new_tokens, compare_full=not args.no_full, device="cpu")
    out = report.to_dict()
    out.update(id=row.id, question=row.question, answers=list(getattr(row, "answers", ())))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
