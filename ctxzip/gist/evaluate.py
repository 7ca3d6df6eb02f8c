"""Measurements of a gist encoder: held-out continuation NLL (none / full / gist), reconstruction accuracy, TTFT."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError
from .api import GistModel, compress, decoder_inputs, load_gist
from .data import TextDoc, TokenizedCorpus, load_corpus, split_corpus

__all__ = ["FactorEval", "GistEvalReport", "TTFTReport", "evaluate", "evaluate_weights", "time_to_first_token",
           "ttft_on_held_out", "QARow", "gist_answer_nll", "nq20_reader_nll"]


@dataclass(frozen=True)
class FactorEval:
    factor: int
    windows: int
    nll_none: float  # mean continuation NLL (nats/token) with no context
    nll_full: float  # ... with the full segment as tokens
    nll_gist: float  # ... with the gist vectors of the segment
    gap_closed: float  # (none - gist) / (none - full)
    recon_accuracy: float  # teacher-forced argmax accuracy of reconstructing the segment from its vectors
    recon_nll: float
    vectors_per_segment: int


@dataclass(frozen=True)
class GistEvalReport:
    weights: str
    segment_tokens: int
    continuation_tokens: int
    factors: tuple[FactorEval, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [f"held-out windows: {self.segment_tokens}-token segment + {self.continuation_tokens}-token "
                 f"continuation; weights {self.weights}",
                 "| factor | windows | NLL no ctx | NLL full ctx | NLL gist | gap closed | recon acc | recon NLL |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.factors:
            lines.append(f"| {r.factor} | {r.windows} | {r.nll_none:.3f} | {r.nll_full:.3f} | {r.nll_gist:.3f} | "
                         f"{100 * r.gap_closed:.1f}% | {100 * r.recon_accuracy:.1f}% | {r.recon_nll:.3f} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class TTFTReport:
    context_tokens: int
    segments: int
    factor: int
    full_positions: int
    gist_positions: int
    full_seconds: float  # prefill of the full prompt + first token
    gist_cached_seconds: float  # cache lookup of every segment + prefill of the compressed prompt + first token
    gist_encode_seconds: float  # encoding every segment once (the cold cache)
    cache_hits: int

    @property
    def speedup(self) -> float:
        return self.full_seconds / self.gist_cached_seconds if self.gist_cached_seconds > 0 else math.inf


def _start_id(tok: Any) -> int:
    for tid in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        if tid is not None:
            return int(tid)
    raise ConfigError("the tokenizer has no BOS/EOS/PAD token to start a context-free prompt with")


def _nll(model: Any, ids: Any, score_from: int) -> float:
    """Mean NLL of tokens ``ids[:, score_from:]`` given everything before them."""
    torch = require("torch", feature="gist evaluation")
    logits = model(input_ids=ids, use_cache=False).logits[:, score_from - 1 : -1].float()
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   ids[:, score_from:].reshape(-1)))


def evaluate(gm: GistModel, docs: Sequence[TextDoc], *, windows: int = 16, segment_tokens: int = 64,
             continuation_tokens: int = 16, factors: Sequence[int] | None = None, seed: int = 1234,
             batch_size: int = 4) -> GistEvalReport:
    """Continuation NLL with no / full / gist context and reconstruction accuracy on windows of ``docs``."""
    torch = require("torch", feature="gist evaluation")
    from .train import batch_loss

    if segment_tokens > gm.max_segment_tokens:
        raise ConfigError(f"segment_tokens={segment_tokens} exceeds the encoder's {gm.max_segment_tokens}")
    t0 = time.perf_counter()
    corpus = TokenizedCorpus(docs, gm.lm.tokenizer)
    ids_all = corpus.windows(windows, segment_tokens + continuation_tokens, np.random.default_rng(seed))
    model = gm.lm.model
    dev = next(model.parameters()).device
    start = _start_id(gm.lm.tokenizer)
    fs = tuple(factors) if factors is not None else gm.encoder.config.factors
    sums: dict[str, float] = {}

    def add(name: str, value: float, weight: int) -> None:
        sums[name] = sums.get(name, 0.0) + value * weight

    gm.encoder.eval()
    with torch.no_grad():
        for b in range(0, windows, batch_size):
            ids = torch.from_numpy(ids_all[b : b + batch_size]).to(dev)
            n = ids.shape[0]
            cont = ids[:, segment_tokens:]
            lead = torch.full((n, 1), start, dtype=torch.long, device=dev)
            add("none", _nll(model, torch.cat([lead, cont], 1), 1), n)
            add("full", _nll(model, ids, segment_tokens), n)
            for f in fs:
                loss, _, _ = batch_loss(gm.encoder, ids, segment_tokens, f, "cont")
                add(f"gist{f}", float(loss), n)
                rloss, correct, total = batch_loss(gm.encoder, ids, segment_tokens, f, "recon")
                add(f"rnll{f}", float(rloss), n)
                sums[f"racc{f}"] = sums.get(f"racc{f}", 0.0) + correct
                sums[f"rtot{f}"] = sums.get(f"rtot{f}", 0.0) + total
    none, full = sums["none"] / windows, sums["full"] / windows
    rows = []
    for f in fs:
        g = sums[f"gist{f}"] / windows
        gap = (none - g) / (none - full) if none != full else float("nan")
        rows.append(FactorEval(int(f), windows, none, full, g, gap, sums[f"racc{f}"] / sums[f"rtot{f}"],
                               sums[f"rnll{f}"] / windows, math.ceil(segment_tokens / f)))
    return GistEvalReport(gm.weights, segment_tokens, continuation_tokens, tuple(rows), time.perf_counter() - t0)


def evaluate_weights(weights: str | Path, *, data_dir: str = "/work/shared/data", windows: int = 16,
                     segment_tokens: int = 64, continuation_tokens: int = 16, seed: int = 1234,
                     threads: int = 2) -> GistEvalReport:
    """:func:`evaluate` of weights on the held-out split of the developer-visible text."""
    torch = require("torch", feature="gist evaluation")
    torch.set_num_threads(threads)
    gm = load_gist(weights)
    _, held = split_corpus(load_corpus(data_dir))
    return evaluate(gm, held, windows=windows, segment_tokens=segment_tokens,
                    continuation_tokens=continuation_tokens, seed=seed)


def time_to_first_token(gm: GistModel, text: str, question: str, *, factor: int | None = None,
                        cache: Any = "memory", repeats: int = 1) -> TTFTReport:
    """TTFT of the decoder for ``text`` + ``question``: full prompt vs gist with every segment already cached.

    Both sides prefill their whole prompt and take the argmax of the last position (best of ``repeats``). The
    gist side includes looking the segments up in the cache and building ``inputs_embeds``; encoding them is
    timed separately (the first call fills the cache).
    """
    torch = require("torch", feature="gist evaluation")
    from .. import cache as cache_mod

    store = cache_mod.resolve(cache)
    if store is None:
        raise ConfigError("time_to_first_token needs a cache (e.g. cache='memory') to time cached segments")
    model, tok = gm.lm.model, gm.lm.tokenizer
    dev = next(model.parameters()).device
    prompt = f"\nQuestion: {question}\nAnswer:"
    full_ids = torch.tensor([tok(text + prompt, add_special_tokens=False)["input_ids"]], device=dev)
    cold = compress([text], model=gm, factor=factor, cache=store)

    def run_full() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            int(model(input_ids=full_ids, use_cache=True).logits[0, -1].argmax())
        return time.perf_counter() - t

    def run_gist() -> tuple[float, int, int]:
        t = time.perf_counter()
        ctx = compress([text], model=gm, factor=factor, cache=store)
        emb = decoder_inputs(gm, ctx, prompt)
        with torch.no_grad():
            int(model(inputs_embeds=emb, use_cache=True).logits[0, -1].argmax())
        return time.perf_counter() - t, int(emb.shape[1]), ctx.cache_hits

    full_s = min(run_full() for _ in range(repeats))
    gist_runs = [run_gist() for _ in range(repeats)]
    best = min(gist_runs, key=lambda r: r[0])
    return TTFTReport(cold.n_tokens, len(cold.segments), cold.factor, int(full_ids.shape[1]), best[1], full_s,
                      best[0], cold.seconds, best[2])


def ttft_on_held_out(weights: str | Path, tokens: int, *, data_dir: str = "/work/shared/data",
                     factor: int | None = None, question: str = "What is the main point of this text?"
                     ) -> TTFTReport:
    """:func:`time_to_first_token` for the first ``tokens`` tokens of the held-out documents, concatenated."""
    gm = load_gist(weights)
    _, held = split_corpus(load_corpus(data_dir))
    ids: list[int] = []
    for d in held:
        ids.extend(gm.lm.tokenizer(d.text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= tokens:
            break
    if len(ids) < tokens:
        raise ConfigError(f"the held-out text has only {len(ids)} tokens; ask for fewer")
    text = gm.lm.tokenizer.decode(ids[:tokens])
    return time_to_first_token(gm, text, question, factor=factor)


@dataclass(frozen=True)
class QARow:
    """One nq20-style row's reader NLL (nats/token of the gold answer) per context kind."""

    id: str
    nll: dict[str, float]
    rate: dict[str, float]  # decoder positions (gist) or kept target tokens (text) over original tokens


_MARK = "\u2063GIST\u2063"


def gist_answer_nll(gm: GistModel, context: Any, question: str, answer: str) -> float:
    """The bench reader's ``answer_nll`` with the gist vectors in place of the context text.

    The prompt is the bench's lost-in-the-middle QA prompt in the decoder's chat template
    (:func:`ctxzip.bench.reader.qa_prompt`), split where the context goes; the compressed context (``[SEP]``
    vectors per segment, ``[CONT]``) is spliced in as embeddings.
    """
    torch = require("torch", feature="gist evaluation")
    from ..bench.reader import qa_prompt
    from .model import CONT, build_prefix

    tok = gm.lm.tokenizer
    user = qa_prompt(_MARK, question)
    chat = getattr(tok, "chat_template", None)
    full = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                   tokenize=False) if chat else user
    before, after = full.split(_MARK, 1)

    def enc(s: str) -> list[int]:
        return list(tok(s, add_special_tokens=False)["input_ids"])

    ans = enc(answer.strip() if chat else " " + answer.strip())
    if not ans:
        raise ConfigError("gist_answer_nll needs a non-empty answer")
    embed = gm.lm.model.get_input_embeddings()
    dev = embed.weight.device
    with torch.no_grad():
        segs = [torch.from_numpy(s.vectors.astype(np.float32)).to(dev) for s in context.segments]
        parts = [embed(torch.tensor(enc(before), dtype=torch.long, device=dev)).float(),
                 build_prefix(gm.encoder, segs, CONT).float(),
                 embed(torch.tensor(enc(after) + ans, dtype=torch.long, device=dev)).float()]
        x = torch.cat(parts, 0)[None].to(embed.weight.dtype)
        n = len(ans)
        logits = gm.lm.model(inputs_embeds=x, use_cache=False).logits[0, -n - 1 : -1].float()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ans, device=dev)))


def nq20_reader_nll(weights: str | Path, path: str | Path, *, limit: int = 3, factors: Sequence[int] = (4,),
                    hard_methods: Sequence[str] = (), log: Any = None) -> list[QARow]:
    """Reader NLL of the gold answer on QA rows: full context, gist at each factor, and hard compressors at
    the gist's effective rate (decoder positions / context tokens of factor ``factors[0]``)."""
    import ctxzip

    from ..bench.data import load_rows
    from ..bench.reader import Reader
    from ..select import DOC_SEPARATOR

    gm = load_gist(weights)
    reader = Reader(model=gm.lm.model, tokenizer=gm.lm.tokenizer, name="gist-decoder",
                    max_length=int(getattr(gm.lm, "max_length", 8192)))
    out = []
    for row in load_rows(path, limit=limit):
        gold = row.gold_answer
        if not gold:
            continue
        texts = [t for _, t in row.docs]
        nll: dict[str, float] = {"full": reader.answer_nll(DOC_SEPARATOR.join(texts), row.question, gold)}
        rate: dict[str, float] = {"full": 1.0}
        first_rate = None
        for f in factors:
            ctx = compress(texts, model=gm, factor=f, cache=False)
            nll[f"gist-f{f}"] = gist_answer_nll(gm, ctx, row.question, gold)
            rate[f"gist-f{f}"] = ctx.rate
            first_rate = ctx.rate if first_rate is None else first_rate
        for method in hard_methods:
            res = ctxzip.compress(texts, question=row.question, rate=first_rate, method=method, cache=False)
            nll[method] = reader.answer_nll(res.text, row.question, gold)
            rate[method] = float(res.rate)
        out.append(QARow(row.id, nll, rate))
        if log is not None:
            log(json.dumps({"id": row.id, "nll": nll, "rate": rate}))
    return out
