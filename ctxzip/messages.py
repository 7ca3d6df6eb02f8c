"""``compress_messages``: compress an OpenAI-style chat message list under one budget.

>>> out = ctxzip.compress_messages(messages, model="gpt-4o", rate=0.33)     # doctest: +SKIP
>>> client.chat.completions.create(model="gpt-4o", messages=list(out.messages))  # doctest: +SKIP

Messages are ``{"role", "content", ...}`` mappings; ``content`` is a string, a list of content parts (only
``{"type": "text", "text": ...}`` parts are compressed, images and other parts are kept), or None (an assistant
message with ``tool_calls``). Every other key (``name``, ``tool_calls``, ``tool_call_id``, ``function_call``) is
copied unchanged. Roles: ``system``/``developer``, ``user``, ``assistant``, ``tool``, ``function``.

**The default policy** (:class:`MessagePolicy`) never touches the system/developer messages, the last user
message, or the ``keep_recent`` most recent messages; it compresses the text of older ``user``, ``assistant``,
``tool`` and ``function`` messages (older turns, tool results, long pasted documents) with at least
``min_tokens`` tokens. Compressible parts are compressed together as the documents of one request (method
``"auto"`` by default, so a JSON tool result keeps valid JSON, code goes to ``codezip``, prose to ``lingua2``...),
with the last user message as the question when ``question_aware``.

**Relevant turns survive.** With a question, ``auto`` sends prose messages to :data:`MESSAGE_ROUTES`
(``prose_question``: ``embed-rank`` at sentence granularity) instead of the documents' default pipeline
(``embed-rank`` → ``lingua2``): all older messages' sentences are ranked together by MiniLM similarity to the
question and kept whole from the top, so the turns that answer it stay readable and unrelated turns go first,
rather than every surviving turn losing words to a question-blind pruner (locomo figures in
``docs/benchmarks/pipelines.md``). ``config={"routes": {"prose_question": [...]}}`` chooses another route.
Without a question, prose goes to ``lingua2``. The MiniLM embeddings of messages are remembered (see :mod:`ctxzip.compressors.embed_rank`), so a
history sent again encodes only its new messages.

**Budget.** ``rate``/``target_tokens`` apply to the whole list: the budget counts the tokens of every text part
of every message (role names and the provider's per-message framing are not counted). The untouched messages
are subtracted first; the compressible parts share the rest. If the untouched messages alone exceed the budget,
the compressible parts are compressed as far as they go and a warning says so.

**Stable prefix.** Providers cache the longest unchanged prompt prefix, so a compressed history must not change
from one call to the next. With ``policy.stable_prefix`` (default), every compressed part is remembered under a
key made of the settings and a hash chain of all *original* messages up to it (a :class:`PrefixMemo`; the
process-wide one by default, ``memo=`` for your own, ``memo=False`` for none). On the next call, the parts of
an unchanged prefix are reused verbatim and only what has aged out of the recent window since is compressed, to
the budget that is left. If the budget cannot be met that way (the new parts would fall below ``policy.min_rate``
of their size, or the total would end more than 4% under budget), the reused prefix is shortened from its end
until it can: the stable prefix is as long as the budget allows. Compression itself is deterministic, so an
unchanged old message compressed again with the same budget gives the same text. The compressors' own segment
cache (``cache=`` option, see :mod:`ctxzip.cache`) is passed through and makes re-scoring free.

**Reversible.** With ``reversible=True``, the original of every compressed part is stored (see
:mod:`ctxzip.reversible`) and the part ends with its ``[#hash]`` marker; markers are inside the budget.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from .errors import BudgetError, ConfigError, InputError
from .protect import ProtectionRules
from .select import DOC_SEPARATOR
from .tokens import get_counter
from .types import CompressionRequest, Document, ReadOnlyMappingsPickle

__all__ = ["compress_messages", "MessagePolicy", "MessageStats", "MessagesResult", "PrefixMemo"]

SYSTEM_ROLES = frozenset({"system", "developer"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

#: Routes ``compress_messages`` gives ``method="auto"`` unless ``config["routes"]`` names its own: prose messages
#: with a question keep whole sentences ranked by MiniLM similarity to the question across all older messages.
MESSAGE_ROUTES: Mapping[str, tuple[Any, ...]] = MappingProxyType({
    "prose_question": ({"method": "embed-rank", "config": {"granularity": "sentence"}}, "truncate"),
})


def _route_config(method: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The compressor config of a call: for ``auto``, :data:`MESSAGE_ROUTES` under the caller's own routes."""
    out = dict(config or {})
    routes = out.get("routes")
    if method == "auto" and (routes is None or isinstance(routes, Mapping)):
        merged = {k: [copy.deepcopy(c) for c in v] for k, v in MESSAGE_ROUTES.items()}
        merged.update(routes or {})
        out["routes"] = merged
    return out


@dataclass(frozen=True)
class MessagePolicy:
    """Which messages may be compressed (the guarantees are in the module docstring)."""

    keep_recent: int = 4
    min_tokens: int = 24
    roles: tuple[str, ...] = ("user", "assistant", "tool", "function")
    question_aware: bool = True
    stable_prefix: bool = True
    min_rate: float = 0.1

    def __post_init__(self) -> None:
        for name in ("keep_recent", "min_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"policy.{name} must be an integer >= 0, got {v!r}")
        roles = self.roles
        if isinstance(roles, str):
            roles = (roles,)
        if not isinstance(roles, (list, tuple)) or not all(isinstance(r, str) for r in roles):
            raise ConfigError(f"policy.roles must be a list of role names, got {roles!r}")
        bad = sorted(set(roles) - (ROLES - SYSTEM_ROLES))
        if bad:
            raise ConfigError(
                f"policy.roles may contain user, assistant, tool, function (system messages are never "
                f"compressed); got {bad}"
            )
        object.__setattr__(self, "roles", tuple(roles))
        for name in ("question_aware", "stable_prefix"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"policy.{name} must be true or false, got {getattr(self, name)!r}")
        r = self.min_rate
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise ConfigError(f"policy.min_rate must be a number in [0, 1], got {r!r}")
        object.__setattr__(self, "min_rate", float(r))

    @classmethod
    def coerce(cls, value: Any) -> MessagePolicy:
        if value is None:
            return cls()
        if isinstance(value, MessagePolicy):
            return value
        if isinstance(value, Mapping):
            valid = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - valid)
            if unknown:
                raise ConfigError(f"unknown policy field(s) {unknown}; valid fields: {', '.join(sorted(valid))}")
            return cls(**dict(value))
        raise ConfigError(f"policy must be None, a MessagePolicy or a dict of its fields, got {type(value).__name__}")


@dataclass(frozen=True)
class MessageStats:
    """What happened to one message. ``action`` is one of: ``system``, ``last_user``, ``recent``, ``role``
    (its role is not compressed), ``short`` (under ``min_tokens``), ``empty``, ``compressed``, ``reused`` (the
    compressed text of an earlier call), ``unchanged`` (compressible, but left whole by the compressor)."""

    index: int
    role: str
    action: str
    origin_tokens: int
    compressed_tokens: int
    routes: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()

    @property
    def rate(self) -> float:
        return 1.0 if self.origin_tokens == 0 else self.compressed_tokens / self.origin_tokens


def _empty_map() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class MessagesResult(ReadOnlyMappingsPickle):
    """New messages (fresh dicts, ready to send) plus per-message statistics and totals."""

    messages: tuple[dict[str, Any], ...]
    stats: tuple[MessageStats, ...]
    origin_tokens: int
    compressed_tokens: int
    budget: int
    method: str
    method_version: str
    target_model: str
    tokenizer: str
    tokens_exact: bool
    seconds: float
    reused_messages: int = 0
    stable_prefix_messages: int = 0
    cache_hits: int = 0
    warnings: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=_empty_map)

    @property
    def rate(self) -> float:
        return 1.0 if self.origin_tokens == 0 else self.compressed_tokens / self.origin_tokens

    @property
    def ratio(self) -> float:
        if self.origin_tokens == 0:
            return 1.0
        return math.inf if self.compressed_tokens == 0 else self.origin_tokens / self.compressed_tokens

    @property
    def saved_tokens(self) -> int:
        return self.origin_tokens - self.compressed_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": [copy.deepcopy(m) for m in self.messages],
            "stats": [dataclasses.asdict(s) for s in self.stats],
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "budget": self.budget,
            "rate": self.rate,
            "method": self.method,
            "target_model": self.target_model,
            "seconds": self.seconds,
            "reused_messages": self.reused_messages,
            "stable_prefix_messages": self.stable_prefix_messages,
            "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------ prefix memo


@runtime_checkable
class PrefixMemoLike(Protocol):
    def get(self, key: str) -> str | None: ...

    def put(self, key: str, text: str) -> None: ...


class PrefixMemo:
    """Compressed texts of message parts by key (thread-safe LRU, ``max_entries`` parts)."""

    def __init__(self, max_entries: int = 50_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"PrefixMemo: max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self._data: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            v = self._data.get(key)
            if v is not None:
                self._data.move_to_end(key)
            return v

    def put(self, key: str, text: str) -> None:
        with self._lock:
            self._data[key] = text
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_MEMO = PrefixMemo()


def default_memo() -> PrefixMemo:
    return _MEMO


# ------------------------------------------------------------------ message parsing


@dataclass(frozen=True)
class _Part:
    msg: int
    part: int | None  # None: content is a string; else index in the content list
    text: str


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InputError(
            "messages must be a list of {'role': ..., 'content': ...} mappings (OpenAI chat format), "
            f"got {type(messages).__name__}"
        )
    if len(messages) == 0:
        raise InputError("messages is empty: a chat request needs at least one message, so there is nothing to compress")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"message {i} must be a mapping with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise InputError(f"message {i} has role {role!r}; roles: {', '.join(sorted(ROLES))}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise InputError(
                f"message {i} content must be a string, a list of content parts or None, got {type(content).__name__}"
            )
        if isinstance(content, (list, tuple)):
            for j, p in enumerate(content):
                if not isinstance(p, Mapping) or not isinstance(p.get("type"), str):
                    raise InputError(f"message {i} content part {j} must be a mapping with a 'type'")
                if p["type"] in _TEXT_PART_TYPES and not isinstance(p.get("text"), str):
                    raise InputError(f"message {i} content part {j} of type {p['type']!r} needs a string 'text'")
        out.append(m)
    return out


def _parts(i: int, m: Mapping[str, Any]) -> list[_Part]:
    content = m.get("content")
    if isinstance(content, str):
        return [_Part(i, None, content)] if content else []
    if isinstance(content, (list, tuple)):
        return [_Part(i, j, p["text"]) for j, p in enumerate(content) if p["type"] in _TEXT_PART_TYPES and p["text"]]
    return []


def _canonical(m: Mapping[str, Any]) -> str:
    return json.dumps(m, sort_keys=True, ensure_ascii=False, default=str)


def _chain(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    out, h = [], ""
    for m in messages:
        h = hashlib.sha256((h + "\x1e" + _canonical(m)).encode()).hexdigest()
        out.append(h)
    return out


# ------------------------------------------------------------------ the call


def compress_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str = "gpt-4o",
    rate: float | None = None,
    target_tokens: int | None = None,
    policy: MessagePolicy | Mapping[str, Any] | None = None,
    method: str = "auto",
    config: dict[str, Any] | None = None,
    protect: Any = None,
    reversible: bool = False,
    namespace: str = "default",
    store: Any = None,
    memo: PrefixMemoLike | bool | None = None,
    **options: Any,
) -> MessagesResult:
    """Compress ``messages`` to ``rate`` or ``target_tokens`` under ``policy`` (see the module docstring).

    ``method``/``config`` choose the compressor of the compressible parts (default ``"auto"``); ``options`` are
    per-call compressor options (``cache``, ``seed``, ``strict``, ...); ``reversible``/``namespace``/``store``
    turn on retrievable originals; ``memo`` holds the stable prefix (None = process-wide, False = none).
    """
    started = time.perf_counter()
    msgs = _check_messages(messages)
    pol = MessagePolicy.coerce(policy)
    if rate is not None and target_tokens is not None:
        raise ConfigError("give either rate or target_tokens, not both")
    # validates rate / target / model / protection the same way compress() does
    probe = CompressionRequest(
        documents=(), rate=rate, target_tokens=target_tokens, target_model=model,
        protect=ProtectionRules.coerce(protect),
    )
    if probe.rate is None and probe.target_tokens is None:
        raise ConfigError("give a budget: rate=R with 0 < R <= 1 (e.g. rate=0.33), or target_tokens=N")
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"config must be a dict of compressor settings, got {type(config).__name__}")
    if memo is None or memo is True:
        memo_obj: PrefixMemoLike | None = _MEMO
    elif memo is False:
        memo_obj = None
    elif isinstance(memo, PrefixMemoLike):
        memo_obj = memo
    else:
        raise ConfigError(f"memo must be None, True, False or a PrefixMemo, got {type(memo).__name__}")
    if not pol.stable_prefix:
        memo_obj = None
    if reversible:
        from .reversible import _check_namespace

        _check_namespace(namespace)

    counter = get_counter(model)
    parts_by_msg = [_parts(i, m) for i, m in enumerate(msgs)]
    all_parts = [p for ps in parts_by_msg for p in ps]
    part_tokens = dict(zip(((p.msg, p.part) for p in all_parts), counter.count_batch([p.text for p in all_parts]),
                           strict=True))
    msg_tokens = [sum(part_tokens[(p.msg, p.part)] for p in ps) for ps in parts_by_msg]
    origin = sum(msg_tokens)
    budget = origin if origin == 0 else (
        min(origin, probe.target_tokens) if probe.target_tokens is not None
        else max(1, min(origin, round(probe.rate * origin)))  # type: ignore[operator]
    )

    # -- policy: who may be compressed
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
    non_system = [i for i, m in enumerate(msgs) if m["role"] not in SYSTEM_ROLES]
    recent = set(non_system[len(non_system) - pol.keep_recent :]) if pol.keep_recent else set()
    action: list[str] = []
    candidates: list[_Part] = []
    for i, m in enumerate(msgs):
        if m["role"] in SYSTEM_ROLES:
            action.append("system")
        elif i == last_user:
            action.append("last_user")
        elif i in recent:
            action.append("recent")
        elif m["role"] not in pol.roles:
            action.append("role")
        elif not parts_by_msg[i]:
            action.append("empty")
        else:
            big = [p for p in parts_by_msg[i] if part_tokens[(p.msg, p.part)] >= pol.min_tokens]
            if big:
                candidates += big
                action.append("compressed")
            else:
                action.append("short")

    new_text: dict[tuple[int, int | None], str] = {}
    hashes: dict[int, list[str]] = {}
    part_routes: dict[tuple[int, int | None], str] = {}
    warnings: list[str] = []
    reused: set[tuple[int, int | None]] = set()
    cache_hits = 0
    fresh_method = method
    method_version = "1"
    cand_tokens = [part_tokens[(p.msg, p.part)] for p in candidates]
    untouched = origin - sum(cand_tokens)

    if candidates and budget < origin:
        room = budget - untouched
        if room <= 0:
            warnings.append(
                f"the untouched messages (system, last user, {pol.keep_recent} most recent) alone have {untouched} "
                f"tokens, over the budget of {budget}; compressed the older messages as far as possible"
            )
        settings = _settings_key(method, config, model, probe, pol, reversible, namespace)
        chain = _chain(msgs)
        keys = [
            hashlib.sha256(f"{settings}\x1e{chain[p.msg]}\x1e{p.part}".encode()).hexdigest() for p in candidates
        ]
        remembered: list[str] = []
        if memo_obj is not None:
            for k in keys:
                v = memo_obj.get(k)
                if v is None:
                    break
                remembered.append(v)
        rem_tokens = counter.count_batch(remembered)
        marker_cost = 0
        if reversible:
            from .reversible import marker_tokens

            marker_cost = marker_tokens(model)
        # the longest reusable prefix that leaves the fresh parts a feasible budget
        j = len(remembered)
        while j > 0:
            fresh_tok = sum(cand_tokens[j:])
            fresh_budget = room - sum(rem_tokens[:j])
            if fresh_tok == 0:
                if abs(fresh_budget) <= 0.04 * budget:
                    break
            elif pol.min_rate * fresh_tok <= fresh_budget and fresh_budget - fresh_tok <= 0.04 * budget:
                break
            j -= 1
        if j < len(remembered) and remembered:
            warnings.append(
                f"reused {j} of {len(remembered)} remembered compressed parts; the rest were compressed again to "
                "meet the budget (the provider's cached prefix changes from there)"
            )
        for p, text in zip(candidates[:j], remembered[:j], strict=True):
            new_text[(p.msg, p.part)] = text
            reused.add((p.msg, p.part))
            if reversible:
                from .reversible import find_markers, store_original

                if find_markers(text):
                    hashes.setdefault(p.msg, []).append(store_original(p.text, namespace=namespace, store=store))
        fresh = candidates[j:]
        if fresh:
            fresh_budget = room - sum(rem_tokens[:j])
            fresh_tok = sum(cand_tokens[j:])
            # the compressor measures its documents joined with separators, the messages count each part alone,
            # so its target adds the separators' tokens. A separator costs a token after a word and none after
            # punctuation it merges with; the originals give the cost when every part keeps its end, a token per
            # separator is the cost when none does, and the estimate is halfway. One call is then usually enough
            # (the correction round of _compress_parts is the exception, and costs a second compressor call).
            joined = counter.count(DOC_SEPARATOR.join(p.text for p in fresh))
            sep_tokens = round((max(0, joined - fresh_tok) + len(fresh) - 1) / 2)
            target = max(1, fresh_budget - marker_cost * len(fresh) + sep_tokens)
            if target < fresh_tok + sep_tokens:
                from .api import _resolve_method, shared_compressor

                fresh_method = _resolve_method(method)
                comp = shared_compressor(fresh_method, **_route_config(fresh_method, config))
                question = None
                if pol.question_aware and last_user >= 0:
                    question = " ".join(p.text for p in parts_by_msg[last_user]) or None
                req = CompressionRequest(
                    documents=tuple(
                        Document(text=p.text, metadata={"message": p.msg, "role": msgs[p.msg]["role"]}) for p in fresh
                    ),
                    question=question,
                    target_tokens=target,
                    target_model=model,
                    protect=probe.protect,
                    options={k: v for k, v in options.items() if k not in ("reversible", "namespace")},
                )
                res = _compress_parts(
                    comp, req, fresh, fresh_budget, counter, reversible, namespace, store, tolerance=0.02 * budget
                )
                if reversible:
                    for item in res.details.get("reversible", []):
                        hashes.setdefault(fresh[item["doc"]].msg, []).append(item["hash"])
                warnings += list(res.warnings)
                cache_hits += res.cache_hits
                method_version = res.method_version
                for k, (p, d) in enumerate(zip(fresh, res.documents, strict=True)):
                    new_text[(p.msg, p.part)] = d.text
                    if k < len(res.routes):
                        part_routes[(p.msg, p.part)] = res.routes[k]
            else:
                for p in fresh:
                    new_text[(p.msg, p.part)] = p.text
            if memo_obj is not None:
                for p, key in zip(fresh, keys[j:], strict=True):
                    memo_obj.put(key, new_text[(p.msg, p.part)])

    # -- build the output
    out_msgs: list[dict[str, Any]] = []
    stats: list[MessageStats] = []
    new_tokens = counter.count_batch(list(new_text.values()))
    new_tok = dict(zip(new_text.keys(), new_tokens, strict=True))
    for i, m in enumerate(msgs):
        nm = copy.deepcopy(dict(m))
        mine = [p for p in parts_by_msg[i] if (p.msg, p.part) in new_text]
        for p in mine:
            if p.part is None:
                nm["content"] = new_text[(p.msg, p.part)]
            else:
                content = list(nm["content"])
                content[p.part] = {**content[p.part], "text": new_text[(p.msg, p.part)]}
                nm["content"] = content
        out_tokens = msg_tokens[i] - sum(part_tokens[(p.msg, p.part)] - new_tok[(p.msg, p.part)] for p in mine)
        act = action[i]
        if act == "compressed":
            if mine and all((p.msg, p.part) in reused for p in mine):
                act = "reused"
            elif all(new_text[(p.msg, p.part)] == p.text for p in mine):
                act = "unchanged"
        stats.append(
            MessageStats(
                index=i, role=m["role"], action=act, origin_tokens=msg_tokens[i], compressed_tokens=out_tokens,
                routes=tuple(part_routes[(p.msg, p.part)] for p in mine if (p.msg, p.part) in part_routes),
                hashes=tuple(hashes.get(i, ())),
            )
        )
        out_msgs.append(nm)
    compressed = sum(s.compressed_tokens for s in stats)
    stable = 0
    for s in stats:
        if s.action in ("compressed", "unchanged"):
            break
        stable += 1
    result = MessagesResult(
        messages=tuple(out_msgs),
        stats=tuple(stats),
        origin_tokens=origin,
        compressed_tokens=compressed,
        budget=budget,
        method=f"messages/{fresh_method}",
        method_version=method_version,
        target_model=model,
        tokenizer=counter.name,
        tokens_exact=counter.exact,
        seconds=time.perf_counter() - started,
        reused_messages=sum(1 for s in stats if s.action == "reused"),
        stable_prefix_messages=stable,
        cache_hits=cache_hits,
        warnings=tuple(warnings),
        details={"policy": dataclasses.asdict(pol)},
    )
    if options.get("strict") and budget and abs(compressed - budget) > 0.05 * budget:
        raise BudgetError(
            f"compress_messages reached {compressed} tokens for a budget of {budget} ({'; '.join(warnings) or 'no feasible selection'})"
        )
    _record(result, options)
    return result


def _compress_parts(
    comp: Any, req: CompressionRequest, fresh: list[_Part], fresh_budget: int, counter: Any, reversible: bool,
    namespace: str, store: Any, tolerance: float,
) -> Any:
    """Compress the fresh parts so that the *sum of their own tokens* (markers included) meets ``fresh_budget``.

    The compressor measures its documents joined with separators; ``req``'s target adds an estimate of them.
    One correction round moves the target by the measured difference when that is over ``tolerance`` tokens
    (2% of the whole list's budget)."""
    res = None
    for _ in range(2):
        res = comp.compress(req)
        if reversible:
            from .reversible import apply_markers

            res = apply_markers(res, [p.text for p in fresh], namespace=namespace, store=store)
        got = sum(counter.count_batch([d.text for d in res.documents]))
        diff = got - fresh_budget
        if abs(diff) <= max(1.0, tolerance) or req.target_tokens is None:
            break
        req = dataclasses.replace(req, target_tokens=max(1, req.target_tokens - diff))
    return res


def _settings_key(
    method: str, config: Any, model: str, probe: CompressionRequest, pol: MessagePolicy, reversible: bool, ns: str
) -> str:
    budget = f"rate:{probe.rate!r}" if probe.rate is not None else "target"
    payload = {
        "method": method, "config": config or {}, "model": model, "protect": probe.protect.cache_key(),
        "budget": budget, "policy": dataclasses.asdict(pol), "reversible": reversible, "namespace": ns if reversible else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _record(result: MessagesResult, options: Mapping[str, Any]) -> None:
    try:
        from . import ledger
    except ImportError:
        return
    ledger.record(
        result,
        route=options.get("route"),
        app=options.get("app"),
        provider=options.get("provider"),
        ledger=options.get("ledger"),
        prefix_changed=result.reused_messages == 0 and any(s.action == "compressed" for s in result.stats),
    )
