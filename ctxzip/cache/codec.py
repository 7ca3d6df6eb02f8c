"""Cached values as bytes: NumPy arrays as raw bytes with a JSON header (dtype, shape), results as JSON.

Nothing is pickled: a value read back from a shared backend (a Redis another process writes to, a SQLite file on
disk) is parsed, never executed. A value that does not parse is a :class:`CacheError`; the caller counts it and
treats it as a miss.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CacheError
from ..types import CompressionRequest, CompressionResult, DocumentResult, Span

__all__ = ["encode_scores", "decode_scores", "encode_result", "decode_result"]

_SCORES = b"CZS1"
_RESULT = b"CZR1"
_HEAD = struct.Struct("<4sI")  # magic, header length
_DIGEST = 8  # leading bytes of sha256 over the payload, to catch torn or corrupted values


def _pack(magic: bytes, header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    digest = hashlib.sha256(head + payload).digest()[:_DIGEST]
    return _HEAD.pack(magic, len(head)) + digest + head + payload


def _unpack(magic: bytes, blob: bytes) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(blob)
    if len(view) < _HEAD.size + _DIGEST:
        raise CacheError(f"cached value too short ({len(view)} bytes)")
    got, n = _HEAD.unpack_from(view, 0)
    if got != magic:
        raise CacheError(f"cached value has magic {got!r}, expected {magic!r}")
    start = _HEAD.size + _DIGEST
    if start + n > len(view):
        raise CacheError("cached value is truncated")
    head, payload = view[start : start + n], view[start + n :]
    if hashlib.sha256(bytes(head) + bytes(payload)).digest()[:_DIGEST] != bytes(view[_HEAD.size : start]):
        raise CacheError("cached value failed its checksum")
    try:
        header = json.loads(bytes(head))
    except ValueError as exc:
        raise CacheError(f"cached value has a bad header ({exc})") from None
    if not isinstance(header, dict):
        raise CacheError("cached value header is not an object")
    return header, payload


def encode_scores(scores: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(scores, dtype="<f8")
    return _pack(_SCORES, {"dtype": "<f8", "shape": list(arr.shape)}, arr.tobytes())


def decode_scores(blob: bytes, n_units: int) -> np.ndarray:
    """Scores of one document; ``n_units`` is checked against the stored shape."""
    header, payload = _unpack(_SCORES, blob)
    if header.get("dtype") != "<f8" or header.get("shape") != [n_units]:
        raise CacheError(f"cached scores have shape {header.get('shape')}, expected [{n_units}]")
    if len(payload) != 8 * n_units:
        raise CacheError("cached scores have the wrong byte length")
    return np.frombuffer(payload, dtype="<f8").astype(np.float64)


def encode_result(result: CompressionResult) -> bytes:
    """A result without titles and metadata (those come from the request when it is read back)."""
    data = {
        "text": result.text,
        "origin_tokens": result.origin_tokens,
        "compressed_tokens": result.compressed_tokens,
        "method": result.method,
        "method_version": result.method_version,
        "target_model": result.target_model,
        "tokenizer": result.tokenizer,
        "tokens_exact": result.tokens_exact,
        "routes": list(result.routes),
        "warnings": list(result.warnings),
        "details": dict(result.details),
        "documents": [
            [d.index, d.text, d.origin_tokens, d.compressed_tokens, d.dropped, [[s.doc, s.start, s.end] for s in d.spans]]
            for d in result.documents
        ],
    }
    try:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()
    except (TypeError, ValueError) as exc:
        raise CacheError(f"result details are not JSON ({exc}); the result is not cached") from None
    return _pack(_RESULT, {"format": "json"}, body)


def decode_result(blob: bytes, request: CompressionRequest, seconds: float) -> CompressionResult:
    _, payload = _unpack(_RESULT, blob)
    try:
        data = json.loads(bytes(payload))
        docs: Sequence[Any] = data["documents"]
        if len(docs) != len(request.documents):
            raise CacheError(f"cached result has {len(docs)} documents, the request {len(request.documents)}")
        documents = tuple(
            DocumentResult(
                index=int(index),
                text=str(text),
                title=request.documents[int(index)].title,
                metadata=request.documents[int(index)].metadata,
                origin_tokens=int(origin),
                compressed_tokens=int(kept),
                dropped=bool(dropped),
                spans=tuple(Span(int(a), int(b), int(c)) for a, b, c in spans),
            )
            for index, text, origin, kept, dropped, spans in docs
        )
        return CompressionResult(
            text=str(data["text"]),
            documents=documents,
            origin_tokens=int(data["origin_tokens"]),
            compressed_tokens=int(data["compressed_tokens"]),
            method=str(data["method"]),
            method_version=str(data["method_version"]),
            seconds=seconds,
            target_model=str(data["target_model"]),
            tokenizer=str(data["tokenizer"]),
            tokens_exact=bool(data["tokens_exact"]),
            cache_hits=max(1, len(documents)),
            routes=tuple(data["routes"]),
            warnings=tuple(data["warnings"]),
            details=dict(data["details"]),
        )
    except CacheError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CacheError(f"cached result does not parse ({type(exc).__name__}: {exc})") from None
