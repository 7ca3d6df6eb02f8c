"""compress_messages: the default policy's guarantees, the whole-list budget, the stable prefix, reversibility."""

from __future__ import annotations

import ast
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


@pytest.mark.slow
@pytest.mark.skipif("codezip" not in ctxzip.list_compressors(), reason="codezip is not installed here")
@pytest.mark.parametrize("rate", [0.25, 0.4])
def test_mixed_fixture_python_pasted_in_a_message_still_parses_with_codezip(rate):
    # the Python file comes after a line of prose ("Here is our retry helper:"): the router compresses the code
    # alone with codezip and keeps that line
    msgs = messages()
    routes = {**FAST["routes"], "code": ["codezip"]}
    r = _run(msgs, rate=rate, config={"routes": routes}, protect={"force": [FORCED]}, policy={"keep_recent": 2})
    assert abs(r.compressed_tokens - r.budget) <= 0.05 * r.budget, (r.compressed_tokens, r.budget)
    code = next(s for s in r.stats if s.role == "user" and "code:codezip" in s.routes)
    assert code.compressed_tokens < code.origin_tokens
    preface, body = r.messages[code.index]["content"][0]["text"].split("\n", 1)
    assert preface == "Here is our retry helper:"
    ast.parse(body)
    json.loads(next(m for m in r.messages if m["role"] == "tool")["content"])
    text = json.dumps(r.messages)
    for s in PROTECTED:
        assert s in text, s
    for i in _untouched_indices(msgs, 2):
        assert r.messages[i] == msgs[i]


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


# ---------------------------------------------------------------- the default route for chat turns with a question


class _BagOfWords:
    """A stand-in sentence encoder: hashed bag of words, L2-normalised (similarity = word overlap)."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True):
        import re
        import zlib

        import numpy as np

        self.seen += list(texts)
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                if len(w) > 3:
                    out[i, zlib.crc32(w.encode()) % 511] += 1.0
            out[i, 511] = 0.0 if out[i].any() else 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def bag_encoder(monkeypatch):
    from ctxzip.compressors import embed_rank

    enc = _BagOfWords()
    monkeypatch.setattr(embed_rank.EmbedRankCompressor, "_encoder", lambda self, model: enc)
    embed_rank.embedding_memo().clear()
    yield enc
    embed_rank.embedding_memo().clear()


_FILLER = [
    "Melanie: Hey Caroline, how was your weekend? Mine was busy with the kids and work, as usual these days.",
    "Caroline: It was fine, mostly relaxing at home and reading a long novel on the couch with some tea.",
    "Melanie: That sounds nice. We went swimming in the lake and then had pizza for dinner together.",
    "Caroline: Lovely! I have been painting a lot lately, mostly sunsets and flowers in the garden.",
    "Melanie: Your paintings are always so colourful, I really admire that about you and your work.",
]
_ANSWER_TURN = ("Caroline: Guess what, yesterday I adopted a grey kitten called Pepper from the animal shelter "
                "in Dover, and she already sleeps on my bed.")


def _chat(turns=60, where=7):
    msgs = [{"role": "system", "content": "You are a friendly assistant."}]
    for t in range(turns):
        text = _ANSWER_TURN if t == where else f"{_FILLER[t % len(_FILLER)]} (turn {t})"
        msgs.append({"role": "user" if t % 2 else "assistant", "content": text})
    msgs.append({"role": "user", "content": "What is the name of the kitten Caroline adopted from the shelter?"})
    return msgs


def test_default_route_keeps_the_relevant_turn_whole_and_drops_unrelated_turns(bag_encoder):
    msgs = _chat()
    r = ctxzip.compress_messages(msgs, rate=0.3, memo=False)
    assert abs(r.compressed_tokens - r.budget) <= 0.05 * r.budget, (r.compressed_tokens, r.budget)
    assert r.messages[8]["content"] == _ANSWER_TURN  # the answering turn, untouched by the selection
    assert {x for s in r.stats for x in s.routes} == {"prose:embed-rank"}
    # whole sentences are selected: turns are kept whole or dropped whole more often than not
    dropped = sum(1 for s in r.stats if s.action == "compressed" and s.compressed_tokens == 0)
    whole = sum(1 for s in r.stats if s.action == "unchanged")
    assert dropped >= 10 and whole >= 5, (dropped, whole)
    for i in _untouched_indices(msgs, MessagePolicy().keep_recent):
        assert r.messages[i] == msgs[i]


def test_one_request_for_all_turns_and_each_piece_encoded_once(bag_encoder, monkeypatch):
    from ctxzip.router import Router

    calls = []
    real = Router.compress

    def counting(self, request):
        calls.append(len(request.documents))
        return real(self, request)

    monkeypatch.setattr(Router, "compress", counting)
    msgs = _chat()
    r = ctxzip.compress_messages(msgs, rate=0.3, memo=False)
    n = sum(1 for s in r.stats if s.action in ("compressed", "unchanged"))
    # every compressible turn is a document of one request (plus at most one correction round of the budget)
    assert 1 <= len(calls) <= 2 and set(calls) == {n}
    assert len(bag_encoder.seen) == len(set(bag_encoder.seen))  # a correction round encodes nothing again


def test_a_caller_route_replaces_the_message_route(bag_encoder):
    r = ctxzip.compress_messages(_chat(), rate=0.3, memo=False, config={"routes": {"prose_question": ["truncate"]}})
    assert {x for s in r.stats for x in s.routes} == {"prose:truncate"}


def test_embeddings_are_remembered_so_a_grown_chat_encodes_only_its_new_turns(bag_encoder):
    from ctxzip.compressors.embed_rank import embedding_memo

    memo = PrefixMemo()
    msgs = _chat()
    first = ctxzip.compress_messages(msgs, rate=0.3, memo=memo)
    assert len(bag_encoder.seen) == len(set(bag_encoder.seen))  # a repeated piece is encoded once
    grown = [*msgs[:-1], {"role": "assistant", "content": _FILLER[0] + " (late turn)"},
             {"role": "user", "content": "And which town is the shelter in?"}]
    bag_encoder.seen.clear()
    second = ctxzip.compress_messages(grown, rate=0.3, memo=memo)
    # only the turn that aged out of the recent window and the new question are new to the encoder
    assert 0 < len(bag_encoder.seen) <= 4, bag_encoder.seen
    assert abs(second.compressed_tokens - second.budget) <= 0.05 * second.budget
    compressed_before = [s.index for s in first.stats if s.action in ("compressed", "unchanged")]
    assert len(compressed_before) > 20
    assert all(second.messages[i] == first.messages[i] for i in compressed_before)  # the stable prefix
    # remembered embeddings give the same result as encoding from scratch
    again = ctxzip.compress_messages(grown, rate=0.3, memo=False)
    embedding_memo().clear()
    cold = ctxzip.compress_messages(grown, rate=0.3, memo=False)
    assert again.messages == cold.messages


def test_embedding_memo_is_bounded_and_batches_cover_every_piece_in_order():
    from ctxzip.compressors.embed_rank import EmbeddingMemo, _batches

    enc = _BagOfWords()
    memo = EmbeddingMemo(max_entries=3)
    texts = ["alpha beta", "gamma delta", "alpha beta", "epsilon zeta", "theta iota", "kappa lambda"]
    emb = memo.encode(enc, "k", texts, batch_size=2)
    assert emb.shape == (6, 512) and (emb[0] == emb[2]).all()
    assert len(enc.seen) == 5 and len(memo) == 3  # the repeat encoded once; the oldest entries evicted
    memo.encode(enc, "k", ["kappa lambda"], batch_size=2)
    assert len(enc.seen) == 5  # remembered
    pieces = sorted([f"w{i} " * (1 + i // 40) for i in range(400)] + ["long " * 300] * 5, key=len)
    batches = _batches(pieces, 16)
    assert [p for b in batches for p in b] == pieces
    assert max(len(b) for b in batches) <= 8 * 16 and len(batches[0]) > 16  # short pieces: bigger batches
    assert len(batches[-1]) <= 16  # long pieces: the configured batch size
