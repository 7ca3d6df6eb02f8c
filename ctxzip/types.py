"""Typed, immutable request and result objects."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, InputError
from .protect import ProtectionRules

__all__ = ["Document", "Span", "DocumentResult", "CompressionRequest", "CompressionResult", "MAX_INPUT_CHARS"]

#: Inputs larger than this are refused (a clear error beats an hour of scoring). Override per call with
#: ``max_chars=`` in options.
MAX_INPUT_CHARS = 20_000_000



def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class ReadOnlyMappingsPickle:
    """Pickle support for frozen dataclasses holding read-only mappings.

    ``MappingProxyType`` cannot be pickled, so results could not cross a process boundary (the sidecar's
    compression workers). The state pickles those fields as dicts and wraps them again on load.
    """

    def __getstate__(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        state = dict(self.__dict__)
        proxied = tuple(k for k, v in state.items() if isinstance(v, MappingProxyType))
        for k in proxied:
            state[k] = dict(state[k])
        return state, proxied

    def __setstate__(self, state: tuple[dict[str, Any], tuple[str, ...]]) -> None:
        values, proxied = state
        for k, v in values.items():
            object.__setattr__(self, k, MappingProxyType(v) if k in proxied else v)


def _check_text(value: Any, what: str) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{what} is not valid UTF-8 (byte {exc.start}: {exc.reason}); decode it yourself or pass text"
            ) from None
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InputError(f"{what} contains NUL bytes: it looks like binary data, not text")
    # lone surrogates cannot be encoded: they come from bad decoding upstream
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} contains invalid Unicode (lone surrogate at {exc.start})") from None
    if value:
        bad = sum(1 for ch in value[:4096] if ord(ch) < 32 and ch not in "\t\n\r\f\v\x1b")
        if bad > max(8, len(value[:4096]) // 10):
            raise InputError(f"{what} looks like binary data ({bad} control characters in its first 4 KiB)")
    return value


@dataclass(frozen=True)
class Document(ReadOnlyMappingsPickle):
    """One document of the context. ``metadata`` survives compression untouched."""

    text: str
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _check_text(self.text, "document text"))
        if self.title is not None and not isinstance(self.title, str):
            raise InputError(f"document title must be a string or None, got {type(self.title).__name__}")
        if not isinstance(self.metadata, Mapping):
            raise InputError(f"document metadata must be a mapping, got {type(self.metadata).__name__}")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @classmethod
    def coerce(cls, item: Any, index: int = 0) -> Document:
        if isinstance(item, Document):
            return item
        if isinstance(item, (str, bytes, bytearray, memoryview)):
            return cls(text=_check_text(item, f"document {index}"))
        if isinstance(item, Mapping):
            if "text" not in item and "page_content" not in item:
                raise InputError(f"document {index} is a mapping without a 'text' key: {sorted(item)[:5]}")
            text = item.get("text", item.get("page_content"))
            meta = {k: v for k, v in item.items() if k not in ("text", "page_content", "title")}
            return cls(text=_check_text(text, f"document {index} text"), title=item.get("title"), metadata=meta)
        raise InputError(
            f"document {index} must be a string or a {{'title', 'text', ...}} mapping, got {type(item).__name__}"
        )


@dataclass(frozen=True)
class Span:
    """A kept range ``[start, end)`` of characters of document ``doc`` of the original input."""

    doc: int
    start: int
    end: int


@dataclass(frozen=True)
class DocumentResult(ReadOnlyMappingsPickle):
    index: int
    text: str
    title: str | None
    metadata: Mapping[str, Any]
    origin_tokens: int
    compressed_tokens: int
    dropped: bool
    spans: tuple[Span, ...] = ()

    @property
    def kept_fraction(self) -> float:
        """Kept share of this document's tokens (1.0 for an empty document)."""
        return 1.0 if self.origin_tokens == 0 else self.compressed_tokens / self.origin_tokens


def _check_rate(rate: Any) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ConfigError(f"rate must be a number in (0, 1], got {type(rate).__name__} {rate!r}")
    rate = float(rate)
    if not math.isfinite(rate) or rate <= 0.0 or rate > 1.0:
        raise ConfigError(
            f"rate must be in (0, 1] (compressed/original tokens, e.g. 0.33 keeps a third), got {rate!r}"
        )
    return rate


def _check_target(target: Any) -> int | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, int):
        if isinstance(target, float) and target.is_integer():
            target = int(target)
        else:
            raise ConfigError(f"target_tokens must be a positive integer, got {type(target).__name__} {target!r}")
    if target <= 0:
        raise ConfigError(f"target_tokens must be a positive integer, got {target!r}")
    return target


@dataclass(frozen=True)
class CompressionRequest(ReadOnlyMappingsPickle):
    """Everything a compressor needs. Build it with :meth:`create`, which validates the input."""

    documents: tuple[Document, ...]
    question: str | None = None
    instruction: str | None = None
    rate: float | None = None
    target_tokens: int | None = None
    target_model: str = "gpt-4o"
    protect: ProtectionRules = field(default_factory=ProtectionRules)
    options: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if not isinstance(self.documents, tuple):
            object.__setattr__(self, "documents", tuple(self.documents))
        for d in self.documents:
            if not isinstance(d, Document):
                raise InputError("CompressionRequest.documents must hold Document objects; use .create()")
        object.__setattr__(self, "rate", _check_rate(self.rate))
        object.__setattr__(self, "target_tokens", _check_target(self.target_tokens))
        if self.rate is not None and self.target_tokens is not None:
            raise ConfigError("give either rate or target_tokens, not both")
        for name in ("question", "instruction"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _check_text(v, name))
        if not isinstance(self.target_model, str) or not self.target_model.strip():
            raise ConfigError(f"target_model must be a model name such as 'gpt-4o', got {self.target_model!r}")
        if not isinstance(self.protect, ProtectionRules):
            object.__setattr__(self, "protect", ProtectionRules.coerce(self.protect))
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping, got {type(self.options).__name__}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        limit = self.options.get("max_chars", MAX_INPUT_CHARS)
        total = sum(len(d.text) for d in self.documents)
        if total > limit:
            raise InputError(
                f"context has {total:,} characters, over the limit of {limit:,}; split it, or raise the limit "
                "with max_chars=N"
            )

    @classmethod
    def create(
        cls,
        context: Any,
        *,
        question: str | None = None,
        instruction: str | None = None,
        rate: float | None = None,
        target_tokens: int | None = None,
        target_model: str = "gpt-4o",
        protect: Any = None,
        **options: Any,
    ) -> CompressionRequest:
        """Validate and normalise user input into a request.

        ``context`` is a string, bytes (UTF-8), a :class:`Document`, a mapping with ``text``, or a list of those.
        """
        if context is None:
            raise InputError("context is None; pass a string or a list of documents")
        if isinstance(context, (str, bytes, bytearray, memoryview, Mapping, Document)):
            items: Sequence[Any] = [context]
        elif isinstance(context, (list, tuple)):
            items = context
        else:
            raise InputError(
                f"context must be a string or a list of documents (strings or {{'title','text'}} dicts), "
                f"got {type(context).__name__}"
            )
        docs = tuple(Document.coerce(item, i) for i, item in enumerate(items))
        return cls(
            documents=docs,
            question=question,
            instruction=instruction,
            rate=rate,
            target_tokens=target_tokens,
            target_model=target_model,
            protect=ProtectionRules.coerce(protect),
            options=options,
        )


@dataclass(frozen=True)
class CompressionResult(ReadOnlyMappingsPickle):
    """The outcome of one compression. All figures are numbers; ``text`` is what to send to the LLM."""

    text: str
    documents: tuple[DocumentResult, ...]
    origin_tokens: int
    compressed_tokens: int
    method: str
    method_version: str
    seconds: float
    target_model: str = "gpt-4o"
    tokenizer: str = "o200k_base"
    tokens_exact: bool = True
    cache_hits: int = 0
    routes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=_empty)

    @property
    def rate(self) -> float:
        """compressed / original tokens (1.0 for empty input)."""
        return 1.0 if self.origin_tokens == 0 else self.compressed_tokens / self.origin_tokens

    @property
    def ratio(self) -> float:
        """original / compressed tokens, e.g. 4.0 for 4x compression (inf when everything was dropped)."""
        if self.origin_tokens == 0:
            return 1.0
        return math.inf if self.compressed_tokens == 0 else self.origin_tokens / self.compressed_tokens

    @property
    def saved_tokens(self) -> int:
        return self.origin_tokens - self.compressed_tokens

    @property
    def spans(self) -> tuple[Span, ...]:
        return tuple(s for d in self.documents for s in d.spans)

    def to_dict(self) -> dict[str, Any]:
        return {
            "compressed": self.text,
            "method": self.method,
            "method_version": self.method_version,
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "rate": self.rate,
            "ratio": self.ratio if math.isfinite(self.ratio) else None,
            "seconds": self.seconds,
            "target_model": self.target_model,
            "tokenizer": self.tokenizer,
            "tokens_exact": self.tokens_exact,
            "cache_hits": self.cache_hits,
            "routes": list(self.routes),
            "warnings": list(self.warnings),
            "documents": [
                {
                    "index": d.index,
                    "title": d.title,
                    "text": d.text,
                    "metadata": dict(d.metadata),
                    "origin_tokens": d.origin_tokens,
                    "compressed_tokens": d.compressed_tokens,
                    "kept_fraction": d.kept_fraction,
                    "dropped": d.dropped,
                    "spans": [[s.start, s.end] for s in d.spans],
                }
                for d in self.documents
            ],
        }
