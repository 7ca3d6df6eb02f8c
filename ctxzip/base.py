"""The compressor protocol and the base class every built-in compressor derives from."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .errors import ConfigError
from .select import DOC_SEPARATOR, Selection, select_to_budget
from .tokens import TokenCounter, get_counter
from .types import CompressionRequest, CompressionResult, DocumentResult, Span
from .units import Units, segment

__all__ = ["Compressor", "BaseCompressor", "make_result", "resolve_budget", "GENERAL_OPTIONS"]

#: per-call options every compressor accepts (besides its own config fields)
GENERAL_OPTIONS = frozenset({"max_chars", "route", "app", "ledger", "strict", "seed", "cache", "provider", "reversible", "namespace"})


@runtime_checkable
class Compressor(Protocol):
    """What every compressor offers: ``compress(request) -> result`` and its async twin."""

    name: ClassVar[str]
    version: ClassVar[str]

    def compress(self, request: CompressionRequest) -> CompressionResult: ...

    async def acompress(self, request: CompressionRequest) -> CompressionResult: ...


def resolve_budget(request: CompressionRequest, origin_tokens: int) -> int:
    """Target tokens for the compressed documents."""
    if request.target_tokens is not None:
        return min(request.target_tokens, origin_tokens)
    if request.rate is not None:
        return max(1, min(origin_tokens, round(request.rate * origin_tokens)))
    raise ConfigError("give a budget: rate=R with 0 < R <= 1 (e.g. rate=0.33), or target_tokens=N")


def make_result(
    request: CompressionRequest,
    *,
    texts: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    counter: TokenCounter,
    origin_doc_tokens: Sequence[int] | None,
    origin_tokens: int,
    method: str,
    method_version: str,
    started: float,
    warnings: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
    routes: Sequence[str] = (),
    cache_hits: int = 0,
) -> CompressionResult:
    """Build a :class:`CompressionResult` from per-document kept texts (and kept spans)."""
    docs = request.documents
    if origin_doc_tokens is None:
        origin_doc_tokens = counter.count_batch([d.text for d in docs])
    kept_tokens = counter.count_batch(list(texts))
    joined = DOC_SEPARATOR.join(t for t in texts if t)
    out_docs = tuple(
        DocumentResult(
            index=i,
            text=texts[i],
            title=d.title,
            metadata=d.metadata,
            origin_tokens=int(origin_doc_tokens[i]),
            compressed_tokens=int(kept_tokens[i]),
            dropped=bool(d.text.strip()) and not texts[i],
            spans=tuple(Span(i, int(s), int(e)) for s, e in spans[i]),
        )
        for i, d in enumerate(docs)
    )
    return CompressionResult(
        text=joined,
        documents=out_docs,
        origin_tokens=int(origin_tokens),
        compressed_tokens=counter.count(joined),
        method=method,
        method_version=method_version,
        seconds=time.perf_counter() - started,
        target_model=request.target_model,
        tokenizer=counter.name,
        tokens_exact=counter.exact,
        cache_hits=cache_hits,
        routes=tuple(routes),
        warnings=tuple(warnings),
        details=dict(details or {}),
    )


def _cache_entry(fn: Any) -> Any:
    """Put ``compress`` behind the whole-result cache (:mod:`ctxzip.cache`; a no-op while no cache is on).

    Applied to :meth:`BaseCompressor.compress` and to every subclass's own ``compress``; only the outermost call
    of a request consults the cache, so ``super().compress()`` and pipeline stages run as before.
    """
    if getattr(fn, "_ctxzip_cache_entry", False):
        return fn

    @functools.wraps(fn)
    def compress(self: Any, request: CompressionRequest) -> CompressionResult:
        from .cache.hooks import run_compress

        return run_compress(self, request, fn)

    compress._ctxzip_cache_entry = True  # type: ignore[attr-defined]
    return compress


class BaseCompressor(abc.ABC):
    """Base class: subclasses implement :meth:`score` (and optionally :meth:`allocate`, :meth:`coarse`).

    Configuration: a subclass declares a frozen dataclass ``Config``; ``__init__(**config)`` validates it, and
    per-call ``options`` with the same field names override it for that call.

    ``cacheable_scores``: True when :meth:`score` of a document depends only on that document (and the request's
    question for ``question_aware`` compressors), never on the other documents; the segment cache then stores
    each document's scores (:mod:`ctxzip.cache`).
    """

    name: ClassVar[str] = "base"
    version: ClassVar[str] = "1"
    question_aware: ClassVar[bool] = False
    cacheable_scores: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("compress")
        if own is not None and callable(own):
            cls.compress = _cache_entry(own)  # type: ignore[method-assign]

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, **config: Any) -> None:
        valid = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown option(s) {unknown}; valid options: {', '.join(sorted(valid)) or 'none'}"
            )
        self.config = self.Config(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # -------------------------------------------------------------- hooks
    def load(self) -> None:  # noqa: B027 (optional hook)
        """Load models now (otherwise they load on first use). Benchmarks call it before timing."""

    @abc.abstractmethod
    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        """One float array per document, one score per unit; higher means keep."""

    def allocate(self, request: CompressionRequest, docs: list[Units], budget: int) -> list[int] | None:
        """Optional per-document budgets (summing to about ``budget``)."""
        return None

    def coarse(self, request: CompressionRequest, docs: list[Units], budget: int) -> list[bool] | None:
        """Optional document-level filter: True keeps a document for fine-grained scoring."""
        return None

    # -------------------------------------------------------------- machinery
    def options(self, request: CompressionRequest) -> Any:
        """This call's config: the compressor's config overridden by matching per-call options."""
        valid = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(request.options) - valid - GENERAL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown option(s) {unknown}; valid options: "
                f"{', '.join(sorted(valid | GENERAL_OPTIONS))}"
            )
        over = {k: v for k, v in request.options.items() if k in valid}
        return dataclasses.replace(self.config, **over) if over else self.config

    @_cache_entry
    def compress(self, request: CompressionRequest) -> CompressionResult:
        started = time.perf_counter()
        if not isinstance(request, CompressionRequest):
            raise ConfigError(
                f"{self.name}.compress() takes a CompressionRequest (build one with "
                f"CompressionRequest.create(...)) or use ctxzip.compress(); got {type(request).__name__}"
            )
        self.options(request)  # validates option names early
        counter = get_counter(request.target_model)
        originals = [d.text for d in request.documents]
        origin_doc_tokens = counter.count_batch(originals)
        origin_tokens = counter.count(DOC_SEPARATOR.join(t for t in originals if t))
        if origin_tokens == 0:
            return make_result(
                request, texts=originals, spans=[[(0, len(t))] if t else [] for t in originals],
                counter=counter, origin_doc_tokens=origin_doc_tokens, origin_tokens=0,
                method=self.name, method_version=self.version, started=started,
            )
        budget = resolve_budget(request, origin_tokens)
        if budget >= origin_tokens:
            return make_result(
                request, texts=originals, spans=[[(0, len(t))] if t else [] for t in originals],
                counter=counter, origin_doc_tokens=origin_doc_tokens, origin_tokens=origin_tokens,
                method=self.name, method_version=self.version, started=started,
                details={"under_budget": True},
            )
        docs = [segment(t, request.protect, counter) for t in originals]
        sel = self.select(request, docs, budget, counter)
        result = make_result(
            request, texts=sel.texts, spans=sel.spans, counter=counter, origin_doc_tokens=origin_doc_tokens,
            origin_tokens=origin_tokens, method=self.name, method_version=self.version, started=started,
            warnings=sel.warnings, details={"budget": budget},
        )
        if request.options.get("strict") and abs(result.compressed_tokens - budget) > 0.05 * budget:
            from .errors import BudgetError

            raise BudgetError(
                f"{self.name} reached {result.compressed_tokens} tokens for a budget of {budget} "
                f"({'; '.join(result.warnings) or 'no feasible selection'})"
            )
        return result

    def select(self, request: CompressionRequest, docs: list[Units], budget: int, counter: TokenCounter) -> Selection:
        """Coarse filter, scoring and budgeted selection. Override for a different selection scheme."""
        keep_docs = self.coarse(request, docs, budget)
        if keep_docs is not None:
            active = [i for i, k in enumerate(keep_docs) if k]
        else:
            active = list(range(len(docs)))
        sub = [docs[i] for i in active]
        scores_sub = self.cached_score(request, sub, counter) if sub else []
        scores = [np.full(len(u), -np.inf) for u in docs]
        for i, s in zip(active, scores_sub, strict=False):
            s = np.asarray(s, dtype=np.float64)
            if s.shape != (len(docs[i]),):
                raise RuntimeError(f"{self.name}.score returned {s.shape} scores for {len(docs[i])} units")
            scores[i] = s
        doc_budgets = self.allocate(request, docs, budget)
        return select_to_budget(docs, scores, budget, counter, doc_budgets=doc_budgets)

    def cached_score(self, request: CompressionRequest, docs: list[Units], counter: TokenCounter) -> list[np.ndarray]:
        """:meth:`score` through the segment cache when ``cacheable_scores`` is set and a cache is on."""
        if not self.cacheable_scores:
            return self.score(request, docs)
        from .cache.hooks import cached_scores

        return cached_scores(self, request, docs, counter)

    async def acompress(self, request: CompressionRequest) -> CompressionResult:
        return await asyncio.to_thread(self.compress, request)
