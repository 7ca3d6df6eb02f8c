"""Cache keys: SHA-256 over canonical JSON of everything that changes a cached value.

Two layers share one backend and never collide (the key material names its layer):

* ``scores``: one document's unit scores. Material: the document text (its SHA-256; exact text, because scores are
  per unit at character offsets), its content type (``text`` or ``json``, which changes segmentation), the
  compressor's name, version and resolved config (every field), the weights hash of every model the config names,
  the target tokenizer, the protection rules, the question and instruction (hashes, only for question-aware
  compressors), the ctxzip version and :data:`SCHEMA_VERSION`. The budget is *not* part of it: scores do not
  depend on the rate, so one entry serves every rate.
* ``result``: a whole :class:`~ctxzip.types.CompressionResult`. Material: all of the above for every document
  (text, title and metadata), the question and instruction always, the rate or target tokens, the target model
  and every per-call option that can change the output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CacheError

__all__ = [
    "SCHEMA_VERSION",
    "NON_OUTPUT_OPTIONS",
    "canonical_json",
    "sha256_text",
    "model_identity",
    "config_material",
    "score_context",
    "score_key",
    "result_key",
]

#: Bump when the layout of cached values or of key material changes: every older entry becomes a miss.
SCHEMA_VERSION = 1

#: Per-call options that never change a compression's output (labels for the ledger, the cache itself).
NON_OUTPUT_OPTIONS = frozenset({"ledger", "app", "route", "provider", "cache"})


def _plain(value: Any) -> Any:
    """JSON-ready copy of ``value`` (tuples become lists; non-finite floats become tagged strings)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else f"float:{value!r}"
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CacheError(f"cache key material has a non-string mapping key {k!r}")
            out[k] = _plain(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return _plain(value.item())
    raise CacheError(
        f"cannot build a cache key from a {type(value).__name__} value; use plain numbers, strings, lists and "
        "dicts in the compressor config and options, or turn the cache off for this call (cache=False)"
    )


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON of ``value`` (raises :class:`CacheError` for values without a JSON form)."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_identity(spec: str) -> str:
    """A string that changes whenever the weights behind model ``spec`` do (name plus weights hash).

    Knows ctxzip's model specs (default names, local paths, hub ids: :func:`ctxzip.models.resolve`) and lingua2
    student directories (``ctxzip-lingua2`` and directories written by ``ctxzip distill``). Raises when the
    weights cannot be found: a key without a weights hash could serve scores of other weights.
    """
    from pathlib import Path

    from ..models import token_classifier as tc
    from ..models.specs import resolve

    name = spec.strip()
    student: Path | None = None
    if name.lower() == tc.DEFAULT_TOKEN_CLASSIFIER:
        student = tc.STUDENT_DIR
    elif tc.is_student_dir(Path(name).expanduser()):
        student = Path(name).expanduser().resolve()
    if student is not None:
        return f"{name}@{tc._student_fingerprint(student)}"
    ref = resolve(name)
    return f"{name}@{ref.weights_hash}"


def _model_fields(cfg: Any) -> dict[str, str]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if (f.name == "model" or f.name.endswith("_model")) and isinstance(value, str) and value.strip():
            out[f.name] = value
    return out


def config_material(compressor: Any, cfg: Any) -> dict[str, Any]:
    """Compressor identity: name, version, class, every config field and the weights of every model it names."""
    from .. import __version__ as ctxzip_version

    models = {}
    for field, spec in sorted(_model_fields(cfg).items()):
        try:
            models[field] = model_identity(spec)
        except Exception as exc:  # an unresolvable model makes the request uncacheable, never wrong
            raise CacheError(f"no weights hash for {field}={spec!r} ({type(exc).__name__}: {exc})") from exc
    material = {
        "schema": SCHEMA_VERSION,
        "ctxzip": ctxzip_version,
        "compressor": compressor.name,
        "version": compressor.version,
        "class": f"{type(compressor).__module__}.{type(compressor).__qualname__}",
        "config": _plain(cfg),
        "models": models,
    }
    if getattr(cfg, "dtype", None) == "auto":  # what "auto" computes in differs between machines sharing a cache
        from ..models import pick_device, resolve_dtype

        material["dtype"] = resolve_dtype("auto", pick_device(getattr(cfg, "device", None)))
    return material


def score_context(compressor: Any, request: Any, counter: Any, cfg: Any) -> str:
    """Canonical JSON of the request-wide part of a score key (everything except the document)."""
    material = config_material(compressor, cfg)
    material.update(
        layer="scores",
        tokenizer=counter.name,
        protect=request.protect.cache_key(),
        question=sha256_text(request.question) if compressor.question_aware else None,
        instruction=sha256_text(request.instruction) if compressor.question_aware else None,
    )
    return canonical_json(material)


def score_key(context: str, text: str, content_type: str) -> str:
    """Key of one document's scores under a :func:`score_context`."""
    doc = canonical_json({"text": sha256_text(text), "content_type": content_type})
    return hashlib.sha256(f"{context}\n{doc}".encode()).hexdigest()


def _documents_material(documents: Sequence[Any]) -> list[str]:
    return [
        hashlib.sha256(
            canonical_json({"text": sha256_text(d.text), "title": d.title, "metadata": dict(d.metadata)}).encode()
        ).hexdigest()
        for d in documents
    ]


def result_key(compressor: Any, request: Any, cfg: Any) -> str:
    """Key of a whole result: the compressor identity and every part of the request that changes the output."""
    material = config_material(compressor, cfg)
    material.update(
        layer="result",
        target_model=request.target_model,
        protect=request.protect.cache_key(),
        question=sha256_text(request.question),
        instruction=sha256_text(request.instruction),
        rate=request.rate,
        target_tokens=request.target_tokens,
        options={k: v for k, v in request.options.items() if k not in NON_OUTPUT_OPTIONS},
        documents=_documents_material(request.documents),
    )
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()
