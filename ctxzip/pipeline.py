"""``Pipeline``: compose compressors, e.g. an ``embed-rank`` coarse filter followed by ``lingua2``.

>>> p = ctxzip.Pipeline(["embed-rank", "lingua2"])                       # doctest: +SKIP
>>> p = ctxzip.Pipeline([{"method": "embed-rank", "config": {"granularity": "document"}},
...                      {"method": ["lingua2", "embed-rank"], "config": {}}], headroom=2.0)  # doctest: +SKIP
>>> ctxzip.compress(docs, method="pipeline", config={"stages": [...]}, rate=0.2)  # doctest: +SKIP

Each stage compresses the previous stage's output (the same question, instruction, target model and protection
rules go to every stage). A pipeline is itself a compressor, registered as ``"pipeline"``, so the CLI's
``ctxzip compress --config pipeline.yaml`` with a ``stages:`` list builds one.

**Budget split rule.** With a final budget of ``B`` tokens and ``n`` stages, stage ``i`` (0-based) keeps
``B * headroom ** (n - 1 - i)`` tokens (default ``headroom = 2``: a two-stage pipeline's coarse stage keeps
twice the final budget, a three-stage one keeps 4B, then 2B, then B), or ``B * budget_factor`` when the stage
sets ``budget_factor`` (>= 1). The **last stage always targets exactly B**, so the whole pipeline meets the budget
within the usual ±5%. A stage whose target is at least its input's size passes its input through unchanged.

**Stage forms.** A stage is a compressor name (``"lingua2"``), a list of names (the first one installed is
used: ``["lingua2", "embed-rank"]``), a ``(name, config)`` pair, a mapping
``{"method": name-or-list, "config": {...}, "budget_factor": float}``, or a compressor instance.

Spans of the result point into the original documents: each stage's kept spans are mapped back through the
previous stages. A stage whose output is not a subsequence of its input (e.g. ``codezip``'s elision markers)
makes exact spans impossible for that document; its spans are then empty and ``details["spans_exact"]`` is False.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .base import GENERAL_OPTIONS, make_result, resolve_budget
from .errors import BudgetError, ConfigError, UnknownNameError
from .registry import compressor_class, list_compressors, register
from .select import DOC_SEPARATOR
from .tokens import get_counter
from .types import CompressionRequest, CompressionResult, Document

__all__ = ["Pipeline", "Stage", "compose_spans", "first_available"]

_STAGE_KEYS = ("method", "config", "budget_factor")


def first_available(methods: Sequence[str]) -> str:
    """The first of ``methods`` that is installed; :class:`UnknownNameError` when none is."""
    available = set(list_compressors())
    for m in methods:
        if m in available:
            return m
    raise UnknownNameError("compressor", " or ".join(methods), sorted(available))


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: ``method`` (a name, or names tried in order), its ``config``, an optional ``budget_factor``."""

    method: tuple[str, ...]
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    budget_factor: float | None = None
    instance: Any = None

    def __post_init__(self) -> None:
        method = self.method
        if isinstance(method, str):
            method = (method,)
        if self.instance is None:
            if (
                not isinstance(method, (tuple, list))
                or not method
                or not all(isinstance(m, str) and m for m in method)
            ):
                raise ConfigError(f"pipeline stage method must be a compressor name or a list of names, got {method!r}")
            if "pipeline" in method:
                raise ConfigError("a pipeline stage cannot be 'pipeline' itself; list its stages instead")
        object.__setattr__(self, "method", tuple(method))
        if not isinstance(self.config, Mapping):
            raise ConfigError(f"pipeline stage config must be a mapping, got {type(self.config).__name__}")
        object.__setattr__(self, "config", dict(self.config))
        f = self.budget_factor
        if f is not None:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not f >= 1.0:
                raise ConfigError(
                    f"pipeline stage budget_factor must be a number >= 1 (tokens kept = factor x final budget), "
                    f"got {f!r}"
                )
            object.__setattr__(self, "budget_factor", float(f))

    @classmethod
    def coerce(cls, spec: Any, index: int) -> Stage:
        if isinstance(spec, Stage):
            return spec
        if isinstance(spec, str):
            return cls(method=(spec,))
        if isinstance(spec, list) and all(isinstance(s, str) for s in spec):
            return cls(method=tuple(spec))
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
            return cls(method=spec[0], config=spec[1])
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(_STAGE_KEYS))
            if unknown or "method" not in spec:
                raise ConfigError(
                    f"pipeline stage {index}: a mapping needs 'method' and may have 'config' and 'budget_factor'; "
                    f"got keys {sorted(spec)}"
                )
            return cls(
                method=spec["method"], config=spec.get("config") or {}, budget_factor=spec.get("budget_factor")
            )
        if callable(getattr(spec, "compress", None)):
            return cls(method=(str(getattr(spec, "name", type(spec).__name__)),), instance=spec)
        raise ConfigError(
            f"pipeline stage {index} must be a compressor name, a list of names, a (name, config) pair, "
            f"a {{'method', 'config', 'budget_factor'}} mapping or a compressor; got {type(spec).__name__}"
        )

    def build(self) -> tuple[str, Any]:
        """(resolved name, compressor instance)."""
        if self.instance is not None:
            return self.method[0], self.instance
        name = first_available(self.method)
        return name, compressor_class(name)(**self.config)


def compose_spans(
    outer: Sequence[tuple[int, int]], inner: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Map ``inner`` spans (offsets into the text made of the ``outer`` spans, concatenated) to original offsets."""
    out: list[tuple[int, int]] = []
    offs: list[int] = []
    pos = 0
    for s, e in outer:
        offs.append(pos)
        pos += e - s
    k = 0
    for a, b in inner:
        while k < len(outer) and offs[k] + (outer[k][1] - outer[k][0]) <= a:
            k += 1
        j = k
        while j < len(outer) and offs[j] < b:
            s, e = outer[j]
            lo = max(a, offs[j]) - offs[j] + s
            hi = min(b, offs[j] + (e - s)) - offs[j] + s
            if hi > lo:
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
            j += 1
    return out


@register("pipeline")
class Pipeline:
    """A chain of compressors with the budget split rule of the module docstring."""

    name: ClassVar[str] = "pipeline"
    version: ClassVar[str] = "1"

    @dataclasses.dataclass(frozen=True)
    class Config:
        stages: tuple[Stage, ...] = ()
        headroom: float = 2.0

        def __post_init__(self) -> None:
            stages = self.stages
            if isinstance(stages, (str, Mapping)) or not isinstance(stages, (list, tuple)):
                raise ConfigError(
                    "pipeline: stages must be a list, e.g. stages=['embed-rank', 'lingua2'] "
                    "(or `stages:` in the YAML config)"
                )
            if not stages:
                raise ConfigError("pipeline: give at least one stage, e.g. stages=['embed-rank', 'lingua2']")
            object.__setattr__(self, "stages", tuple(Stage.coerce(s, i) for i, s in enumerate(stages)))
            h = self.headroom
            if isinstance(h, bool) or not isinstance(h, (int, float)) or not h >= 1.0:
                raise ConfigError(f"pipeline: headroom must be a number >= 1 (e.g. 2.0), got {h!r}")
            object.__setattr__(self, "headroom", float(h))

    def __init__(self, stages: Sequence[Any] | None = None, *, headroom: float = 2.0) -> None:
        self.config = self.Config(stages=tuple(stages) if isinstance(stages, list) else stages or (), headroom=headroom)
        # resolve names now, so that a missing compressor fails at construction, not mid-request
        self._built = [s.build() for s in self.config.stages]

    @property
    def question_aware(self) -> bool:  # type: ignore[override]
        return any(getattr(c, "question_aware", False) for _, c in self._built)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self._built)

    def __repr__(self) -> str:
        return f"Pipeline({list(self.stage_names)}, headroom={self.config.headroom})"

    def load(self) -> None:
        for _, c in self._built:
            if callable(getattr(c, "load", None)):
                c.load()

    def stage_targets(self, budget: int) -> list[int]:
        """Token targets of each stage for a final budget (the rule of the module docstring)."""
        n = len(self._built)
        out = []
        for i, stage in enumerate(self.config.stages):
            if i == n - 1:
                out.append(budget)
            elif stage.budget_factor is not None:
                out.append(round(budget * stage.budget_factor))
            else:
                out.append(round(budget * self.config.headroom ** (n - 1 - i)))
        return out

    def compress(self, request: CompressionRequest) -> CompressionResult:
        started = time.perf_counter()
        if not isinstance(request, CompressionRequest):
            raise ConfigError(
                "pipeline.compress() takes a CompressionRequest (CompressionRequest.create(...)); "
                f"got {type(request).__name__}"
            )
        unknown = sorted(set(request.options) - GENERAL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"pipeline: unknown per-call option(s) {unknown}; configure stages with their 'config' instead "
                f"(general options: {', '.join(sorted(GENERAL_OPTIONS))})"
            )
        counter = get_counter(request.target_model)
        originals = [d.text for d in request.documents]
        origin_doc_tokens = counter.count_batch(originals)
        origin_tokens = counter.count(DOC_SEPARATOR.join(t for t in originals if t))
        whole = [[(0, len(t))] if t else [] for t in originals]
        common = dict(
            counter=counter, origin_doc_tokens=origin_doc_tokens, origin_tokens=origin_tokens,
            method=self.name, method_version=self._version(), started=started,
        )
        if origin_tokens == 0:
            return make_result(request, texts=originals, spans=whole, **common)
        budget = resolve_budget(request, origin_tokens)
        if budget >= origin_tokens:
            return make_result(request, texts=originals, spans=whole, details={"under_budget": True}, **common)

        texts = list(originals)
        spans: list[list[tuple[int, int]] | None] = [list(s) for s in whole]
        current_tokens = origin_tokens
        warnings: list[str] = []
        stage_info: list[dict[str, Any]] = []
        cache_hits = 0
        routes: list[str] = []
        stage_opts = {k: v for k, v in request.options.items() if k not in ("strict", "reversible", "namespace")}
        for (name, comp), target in zip(self._built, self.stage_targets(budget), strict=True):
            if target >= current_tokens:
                stage_info.append({"method": name, "target": target, "tokens": current_tokens, "skipped": True})
                continue
            sub = CompressionRequest(
                documents=tuple(
                    Document(text=t, title=d.title, metadata=d.metadata) for t, d in zip(texts, request.documents, strict=True)
                ),
                question=request.question,
                instruction=request.instruction,
                target_tokens=target,
                target_model=request.target_model,
                protect=request.protect,
                options=stage_opts,
            )
            res = comp.compress(sub)
            for i, d in enumerate(res.documents):
                prev = spans[i]
                if prev is not None and "".join(texts[i][s:e] for s, e in ((x.start, x.end) for x in d.spans)) == d.text:
                    spans[i] = compose_spans(prev, [(x.start, x.end) for x in d.spans])
                elif d.text != texts[i]:
                    spans[i] = None
                texts[i] = d.text
            current_tokens = res.compressed_tokens
            warnings += [f"{name}: {w}" for w in res.warnings]
            cache_hits += res.cache_hits
            routes += list(res.routes)
            stage_info.append(
                {"method": name, "target": target, "tokens": res.compressed_tokens, "seconds": res.seconds,
                 "skipped": False}
            )
        result = make_result(
            request,
            texts=texts,
            spans=[s if s is not None else [] for s in spans],
            warnings=warnings,
            details={"budget": budget, "stages": stage_info, "spans_exact": all(s is not None for s in spans)},
            routes=routes,
            cache_hits=cache_hits,
            **common,
        )
        if request.options.get("strict") and abs(result.compressed_tokens - budget) > 0.05 * budget:
            raise BudgetError(
                f"pipeline reached {result.compressed_tokens} tokens for a budget of {budget} "
                f"({'; '.join(warnings) or 'no feasible selection'})"
            )
        return result

    def _version(self) -> str:
        inner = ",".join(f"{n}:{getattr(c, 'version', '?')}" for n, c in self._built)
        return f"{self.version}({inner})"

    async def acompress(self, request: CompressionRequest) -> CompressionResult:
        import asyncio

        return await asyncio.to_thread(self.compress, request)
