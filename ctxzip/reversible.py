"""Reversible compression: keep every compressed segment's original, retrievable by a short content hash.

With ``reversible=True`` (``ctxzip.compress(..., reversible=True)`` or ``compress_messages(..., reversible=True)``)
each segment whose text compression changed (a document, or a message's text part) is stored under a content hash,
and its compressed text ends with a **marker**::

    <compressed text> [#482139570216]

The marker is ``" [#"`` + 12 decimal digits + ``"]"``: 6-7 tokens with o200k_base/cl100k_base (digits tokenize
in groups of three, hex would cost twice as much). The digits are the first 64 bits of the SHA-256 of the
original text modulo 10**12 (about 40 bits), zero-padded; in the rare case of a collision with a *different* text in the same
store, the hash of ``text + "\\x00" + n`` is used instead (n = 1, 2, ...). Markers are budgeted: the compressor
is given the budget minus the markers' tokens, so the output with markers still meets the budget.

Originals are stored in a pluggable :class:`OriginalStore`: :class:`InMemoryStore` (the default, a bounded LRU
per process) or :class:`SQLiteStore` (a file shared by worker processes). Every stored original records the
*namespaces* (e.g. one per API key of the sidecar) that created it; :func:`retrieve` only returns an original to a
namespace that stored it, and raises :class:`~ctxzip.errors.RetrievalError` for an unknown or foreign hash.

:func:`tool_schema` is an OpenAI function-tool definition a model can call to ask for an original, and
:func:`handle_tool_call` answers such a call with the ``tool`` message to append.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError, InputError, RetrievalError
from .select import DOC_SEPARATOR
from .tokens import get_counter
from .types import CompressionRequest, CompressionResult, DocumentResult

__all__ = [
    "MARKER_RX",
    "TOOL_NAME",
    "StoredOriginal",
    "OriginalStore",
    "InMemoryStore",
    "SQLiteStore",
    "default_store",
    "set_default_store",
    "content_hash",
    "marker",
    "store_original",
    "retrieve",
    "find_markers",
    "strip_markers",
    "marker_tokens",
    "tool_schema",
    "handle_tool_call",
    "compress_reversible",
]

DEFAULT_NAMESPACE = "default"
HASH_DIGITS = 12
#: a marker in compressed text; group 1 is the hash
MARKER_RX = re.compile(r" ?\[#(\d{12})\]")
_HASH_RX = re.compile(r"^\s*(?:\[#)?#?(\d{12})\]?\s*$")
TOOL_NAME = "ctxzip_retrieve"


@dataclass(frozen=True)
class StoredOriginal:
    """One stored original and the namespaces allowed to retrieve it."""

    text: str
    namespaces: frozenset[str]


@runtime_checkable
class OriginalStore(Protocol):
    """Where originals live. ``put`` adds ``namespace`` to the key's owners; ``get`` returns None if unknown."""

    def put(self, key: str, text: str, namespace: str) -> None: ...

    def get(self, key: str) -> StoredOriginal | None: ...


class InMemoryStore:
    """Thread-safe in-process store, bounded to ``max_entries`` originals (least recently used evicted)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"InMemoryStore: max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[str, set[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, text: str, namespace: str) -> None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self._data[key] = (text, {namespace})
            else:
                entry[1].add(namespace)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def get(self, key: str) -> StoredOriginal | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return StoredOriginal(entry[0], frozenset(entry[1]))

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class SQLiteStore:
    """Originals in a SQLite file, shared by processes (e.g. the sidecar's workers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS originals (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS owners (key TEXT NOT NULL, namespace TEXT NOT NULL, "
                "PRIMARY KEY (key, namespace))"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def put(self, key: str, text: str, namespace: str) -> None:
        with self._conn() as conn:
            conn.execute("INSERT OR IGNORE INTO originals (key, text) VALUES (?, ?)", (key, text))
            conn.execute("INSERT OR IGNORE INTO owners (key, namespace) VALUES (?, ?)", (key, namespace))

    def get(self, key: str) -> StoredOriginal | None:
        conn = self._conn()
        row = conn.execute("SELECT text FROM originals WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        owners = [r[0] for r in conn.execute("SELECT namespace FROM owners WHERE key = ?", (key,))]
        return StoredOriginal(row[0], frozenset(owners))


_default: OriginalStore = InMemoryStore()
_default_lock = threading.Lock()


def default_store() -> OriginalStore:
    """The process-wide store used when no ``store=`` is given."""
    return _default


def set_default_store(store: OriginalStore) -> None:
    """Replace the process-wide store (e.g. with a :class:`SQLiteStore`)."""
    global _default
    if not isinstance(store, OriginalStore):
        raise ConfigError(f"store must have put(key, text, namespace) and get(key), got {type(store).__name__}")
    with _default_lock:
        _default = store


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"namespace must be a non-empty string (e.g. one per API key), got {namespace!r}")
    return namespace


def content_hash(text: str, salt: int = 0) -> str:
    """The 12-digit content hash of ``text`` (``salt`` > 0 only to step past a collision)."""
    data = text.encode("utf-8") if salt == 0 else f"{text}\x00{salt}".encode()
    value = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % 10**HASH_DIGITS
    return f"{value:0{HASH_DIGITS}d}"


def marker(key: str) -> str:
    """The marker appended to a compressed segment, with its leading space."""
    return f" [#{key}]"


def marker_tokens(target_model: str = "gpt-4o") -> int:
    """Tokens one marker costs with ``target_model``'s tokenizer (the worst case over digit patterns)."""
    counter = get_counter(target_model)
    return max(counter.count(marker(k)) for k in ("000000000000", "482139570216", "999999999999"))


def store_original(text: str, *, namespace: str = DEFAULT_NAMESPACE, store: OriginalStore | None = None) -> str:
    """Store ``text`` for ``namespace`` and return its hash."""
    namespace = _check_namespace(namespace)
    st = store if store is not None else _default
    salt = 0
    while True:
        key = content_hash(text, salt)
        found = st.get(key)
        if found is None or found.text == text:
            st.put(key, text, namespace)
            return key
        salt += 1


def _parse_hash(value: Any) -> str:
    if not isinstance(value, str):
        raise RetrievalError(f"a hash is a string of {HASH_DIGITS} digits such as '482139570216', got {value!r}")
    m = _HASH_RX.match(value)
    if m is None:
        raise RetrievalError(
            f"{value!r} is not a ctxzip hash: expected {HASH_DIGITS} digits, as in the marker [#482139570216]"
        )
    return m.group(1)


def retrieve(hash: str, *, namespace: str = DEFAULT_NAMESPACE, store: OriginalStore | None = None) -> str:
    """Return the original of a compressed segment. ``hash`` may be given as ``"482139570216"`` or
    ``"[#482139570216]"``. Raises :class:`RetrievalError` if it is unknown or was stored by another namespace."""
    namespace = _check_namespace(namespace)
    key = _parse_hash(hash)
    st = store if store is not None else _default
    found = st.get(key)
    if found is None:
        raise RetrievalError(
            f"no original is stored under hash {key!r}: it was never issued by this store, or it was evicted "
            "(compress again with reversible=True)"
        )
    if namespace not in found.namespaces:
        raise RetrievalError(
            f"hash {key!r} was not issued to namespace {namespace!r}; an original can only be retrieved with "
            "the namespace (API key) that compressed it"
        )
    return found.text


def find_markers(text: str) -> list[str]:
    """The hashes of every marker in ``text``, in order."""
    return MARKER_RX.findall(text)


def strip_markers(text: str) -> str:
    """``text`` without its markers (e.g. to parse a compressed JSON document)."""
    return MARKER_RX.sub("", text)


def tool_schema() -> dict[str, Any]:
    """An OpenAI function-tool definition (``tools=[ctxzip.reversible.tool_schema()]``)."""
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": (
                "Some context was compressed. A compressed passage ends with a marker such as [#482139570216]. "
                "Call this tool with the 12 digits of a marker to read that passage's full original text when "
                "the compressed version lacks a detail you need."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "hash": {
                        "type": "string",
                        "description": "the 12 digits inside a [#...] marker, e.g. 482139570216",
                        "pattern": r"^\d{12}$",
                    }
                },
                "required": ["hash"],
                "additionalProperties": False,
            },
        },
    }


def handle_tool_call(
    tool_call: Mapping[str, Any], *, namespace: str = DEFAULT_NAMESPACE, store: OriginalStore | None = None
) -> dict[str, Any]:
    """Answer one OpenAI tool call of :data:`TOOL_NAME` with the ``{"role": "tool", ...}`` message to append.

    Retrieval failures become the message content (``"error: ..."``) so that the model can recover; a call of
    another tool or with malformed arguments raises :class:`InputError`.
    """
    if not isinstance(tool_call, Mapping):
        raise InputError(f"tool_call must be a mapping as in message.tool_calls[i], got {type(tool_call).__name__}")
    fn = tool_call.get("function") or {}
    if fn.get("name") != TOOL_NAME:
        raise InputError(f"tool call is for {fn.get('name')!r}, not {TOOL_NAME!r}")
    args = fn.get("arguments", "{}")
    try:
        parsed = json.loads(args) if isinstance(args, str) else dict(args)
    except (ValueError, TypeError):
        raise InputError(f"tool call arguments are not a JSON object: {args!r}") from None
    if not isinstance(parsed, dict) or "hash" not in parsed:
        raise InputError(f"tool call arguments need a 'hash' field, got {parsed!r}")
    try:
        content = retrieve(parsed["hash"], namespace=namespace, store=store)
    except RetrievalError as exc:
        content = f"error: {exc}"
    return {"role": "tool", "tool_call_id": tool_call.get("id", ""), "content": content}


# ------------------------------------------------------------------ applying markers to a result


def apply_markers(
    result: CompressionResult,
    originals: list[str],
    *,
    namespace: str = DEFAULT_NAMESPACE,
    store: OriginalStore | None = None,
) -> CompressionResult:
    """Store the original of every document the compression changed and append its marker.

    A dropped document's text becomes the marker alone. Spans still point into the original documents.
    """
    namespace = _check_namespace(namespace)
    counter = get_counter(result.target_model)
    docs: list[DocumentResult] = []
    issued: list[dict[str, Any]] = []
    for d, original in zip(result.documents, originals, strict=True):
        if d.text == original or not original.strip():
            docs.append(d)
            continue
        key = store_original(original, namespace=namespace, store=store)
        text = (d.text + marker(key)) if d.text else marker(key).lstrip()
        docs.append(dataclasses.replace(d, text=text, compressed_tokens=counter.count(text)))
        issued.append({"doc": d.index, "hash": key})
    joined = DOC_SEPARATOR.join(d.text for d in docs if d.text)
    details = dict(result.details)
    details["reversible"] = issued
    return dataclasses.replace(
        result, text=joined, documents=tuple(docs), compressed_tokens=counter.count(joined), details=details
    )


def compress_reversible(
    compressor: Any,
    request: CompressionRequest,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    store: OriginalStore | None = None,
) -> CompressionResult:
    """Run ``compressor`` on ``request`` with the markers' tokens reserved, then store originals and add markers."""
    from .base import resolve_budget

    namespace = _check_namespace(namespace)
    counter = get_counter(request.target_model)
    originals = [d.text for d in request.documents]
    origin = counter.count(DOC_SEPARATOR.join(t for t in originals if t))
    opts = {k: v for k, v in request.options.items() if k not in ("reversible", "namespace")}
    if origin == 0:
        inner = dataclasses.replace(request, options=opts)
        return apply_markers(compressor.compress(inner), originals, namespace=namespace, store=store)
    budget = resolve_budget(request, origin)
    if budget >= origin:
        return compressor.compress(dataclasses.replace(request, options=opts))
    n_docs = sum(1 for t in originals if t.strip())
    reserve = n_docs * marker_tokens(request.target_model)
    inner_budget = max(1, budget - reserve)
    inner = dataclasses.replace(request, rate=None, target_tokens=inner_budget, options=opts)
    result = compressor.compress(inner)
    if all(d.text == t for d, t in zip(result.documents, originals, strict=True)):
        return result
    return apply_markers(result, originals, namespace=namespace, store=store)
