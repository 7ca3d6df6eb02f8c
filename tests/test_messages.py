"""compress_messages: the default policy's guarantees, the whole-list budget, the stable prefix, reversibility."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mixed_fixture import FORCED, PROTECTED, QUESTION, history, messages

import ctxzip
from ctxzip import reversible as rv
from ctxzip.errors import ConfigError, InputError
from ctxzip.messages import MessagePolicy, PrefixMemo

FAST = {"routes": {"prose": ["truncate"], "prose_question": [{"method": "random", "config": {"seed": 3}}],
                   "code": ["truncate"]}}


def _run(msgs, **kw):
    kw.setdefault("config", FAST)
    kw.setdefault("memo", PrefixMemo())
    return ctxzip.compress_messages(msgs, **kw)


def _untouched_indices(msgs, keep_recent):
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    non_system = [i for i, m in enumerate(msgs) if m["role"] != "system"]
    keep = {i for i, m in enumerate(msgs) if m["role"] == "system"} | {last_user}
    keep |= set(non_system[len(non_system) - keep_recent:]) if keep_recent else set()
    return keep


@pytest.mark.parametrize("rate", [0.33, 0.5])
def test_mixed_fixture_budget_protected_spans_json_and_policy(rate):
    msgs = messages()
    original = copy.deepcopy(msgs)
    r = _run(msgs, rate=rate, protect={"force": [FORCED]}, policy={"keep_recent": 2})
    assert msgs == original  # input not mutated
    assert abs(r.compressed_tokens - r.budget) <= 0.05 * r.budget, (r.compressed_tokens, r.budget)
    assert r.budget == round(rate * r.origin_tokens)
    for i in _untouched_indices(msgs, 2):
        assert r.messages[i] == msgs[i]
    text = json.dumps(r.messages)
    for s in PROTECTED:
        assert s in text, s
    tool = next(m for m in r.messages if m["role"] == "tool")
    json.loads(tool["content"])
    assert tool["tool_call_id"] == "call_7"
    docs_msg = r.messages[-3]
    assert docs_msg["content"][1] == msgs[-3]["content"][1]  # the image part is kept as is
    call = next(m for m in r.messages if m.get("tool_calls"))
    assert call == next(m for m in msgs if m.get("tool_calls"))
    by_action = {s.action for s in r.stats}
    assert {"system", "last_user", "recent"} <= by_action
    assert sum(s.compressed_tokens for s in r.stats) == r.compressed_tokens
    assert any(s.action == "compressed" and s.compressed_tokens < s.origin_tokens for s in r.stats)


@settings(max_examples=25, deadline=None)
@given(turns=st.integers(2, 24), keep_recent=st.integers(0, 6), rate=st.sampled_from([0.2, 0.4, 0.7]))
def test_policy_never_touches_system_last_user_and_recent(turns, keep_recent, rate):
    msgs = [{"role": "system", "content": "Be terse. Policy id 77."}, *history(turns)]
    if msgs[-1]["role"] != "user":
        msgs.append({"role": "user", "content": "And now?"})
    r = _run(msgs, rate=rate, policy={"keep_recent": keep_recent}, method="truncate", config=None)
    for i in _untouched_indices(msgs, keep_recent):
        assert r.messages[i] == msgs[i]
        assert r.stats[i].action in ("system", "last_user", "recent")
    assert r.compressed_tokens <= r.origin_tokens


def test_stable_prefix_across_two_calls_with_one_turn_appended():
    memo = PrefixMemo()
    msgs = [{"role": "system", "content": "You are helpful."}, *history(20), {"role": "user", "content": QUESTION}]
    first = _run(msgs, rate=0.33, memo=memo)
    grown = [*msgs, {"role": "assistant", "content": "Promote db-3 and tell oncall. " * 6},
             {"role": "user", "content": "Thanks. Anything else about backups?"}]
    second = _run(grown, rate=0.33, memo=memo)
    compressed_before = [s.index for s in first.stats if s.action in ("compressed", "unchanged", "system")]
    assert len(compressed_before) > 5
    for i in compressed_before:
        assert second.messages[i] == first.messages[i], i
    assert second.reused_messages >= len(compressed_before) - 2
    assert second.stable_prefix_messages >= max(compressed_before)
    assert abs(second.compressed_tokens - second.budget) <= 0.05 * second.budget


def test_without_memo_compression_is_deterministic():
    msgs = messages()
    a = _run(msgs, rate=0.4, memo=False)
    b = _run(msgs, rate=0.4, memo=False)
    assert a.messages == b.messages and a.reused_messages == b.reused_messages == 0


def test_reused_prefix_shrinks_when_the_budget_requires_it():
    memo = PrefixMemo()
    msgs = [*history(12), {"role": "user", "content": "short question?"}]
    _run(msgs, target_tokens=400, memo=memo, method="truncate", config=None)
    grown = [*msgs, {"role": "assistant", "content": "A long answer. " * 80}, {"role": "user", "content": "ok?"}]
    r = _run(grown, target_tokens=400, memo=memo, method="truncate", config=None, policy={"keep_recent": 0})
    assert abs(r.compressed_tokens - r.budget) <= 0.05 * r.budget


def test_reversible_messages_round_trip_every_compressed_part():
    store = rv.InMemoryStore()
    msgs = messages()
    r = _run(msgs, rate=0.33, reversible=True, namespace="key-1", store=store)
    assert abs(r.compressed_tokens - r.budget) <= 0.05 * r.budget
    seen = 0
    for s in r.stats:
        if s.action != "compressed":
            continue
        out = r.messages[s.index]["content"]
        parts = [out] if isinstance(out, str) else [p["text"] for p in out if p.get("type") == "text"]
        orig = msgs[s.index]["content"]
        orig_parts = [orig] if isinstance(orig, str) else [p["text"] for p in orig if p.get("type") == "text"]
        for text, original in zip(parts, orig_parts, strict=True):
            hashes = rv.find_markers(text)
            if text == original:
                continue
            assert hashes, text[-60:]
            assert rv.retrieve(hashes[-1], namespace="key-1", store=store) == original
            seen += 1
    assert seen >= 5
    with pytest.raises(ctxzip.RetrievalError):
        rv.retrieve(hashes[-1], namespace="key-2", store=store)


def test_nothing_to_do_under_budget():
    msgs = messages()
    r = _run(msgs, rate=1.0)
    assert list(r.messages) == msgs and r.compressed_tokens == r.origin_tokens


def test_untouched_messages_over_budget_warns():
    msgs = [{"role": "system", "content": "Rules. " * 200}, *history(6), {"role": "user", "content": "q?"}]
    r = _run(msgs, rate=0.2, method="truncate", config=None)
    assert r.warnings and "untouched" in r.warnings[0]
    assert r.messages[0] == msgs[0]


@pytest.mark.parametrize(
    "msgs, match",
    [
        ("hello", "list of"),
        ([{"content": "x"}], "role"),
        ([{"role": "user", "content": 5}], "content must be"),
        ([{"role": "user", "content": [{"type": "text"}]}], "needs a string 'text'"),
    ],
)
def test_bad_messages(msgs, match):
    with pytest.raises(InputError, match=match):
        ctxzip.compress_messages(msgs, rate=0.5)


def test_bad_policy_and_budget():
    with pytest.raises(ConfigError, match="keep_recent"):
        MessagePolicy(keep_recent=-1)
    with pytest.raises(ConfigError, match="system messages are never"):
        MessagePolicy(roles=("system",))
    with pytest.raises(ConfigError, match="unknown policy field"):
        ctxzip.compress_messages(history(4), rate=0.5, policy={"keep": 1})
    with pytest.raises(ConfigError, match="give a budget"):
        ctxzip.compress_messages(history(4))
    with pytest.raises(ConfigError, match="not both"):
        ctxzip.compress_messages(history(4), rate=0.5, target_tokens=10)


@pytest.mark.parametrize("rate", [0.15, 0.33])
def test_budget_holds_when_whole_messages_are_dropped(rate):
    # truncate drops whole old messages: the compressor's separators between dropped documents vanish, and the
    # whole-list budget must still hold
    msgs = [*history(60), {"role": "user", "content": "So?"}]
    r = _run(msgs, rate=rate, method="truncate", config=None, memo=False)
    assert any(m["content"] == "" for m in r.messages)
    assert abs(r.compressed_tokens - r.budget) <= 0.05 * r.budget, (r.compressed_tokens, r.budget)
