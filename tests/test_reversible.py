"""Reversible compression: stored originals, markers, retrieval, scopes, the tool schema."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ctxzip
from ctxzip import reversible as rv
from ctxzip.errors import InputError, RetrievalError

DOCS = [
    "Alpha particles are helium nuclei. They were named by Rutherford in 1899 after studying radioactivity. " * 4,
    "The river Thames flows through London and Oxford, see https://example.org/thames for maps. " * 4,
    "Short note.",
]


def test_compress_reversible_round_trips_every_compressed_document():
    store = rv.InMemoryStore()
    rv.set_default_store(store)
    try:
        r = ctxzip.compress(DOCS, method="truncate", rate=0.4, reversible=True, namespace="k1")
    finally:
        rv.set_default_store(rv.InMemoryStore())
    budget = round(0.4 * r.origin_tokens)
    assert abs(r.compressed_tokens - budget) <= 0.05 * budget
    issued = r.details["reversible"]
    assert issued, "truncate at 0.4 must change at least one document"
    for item in issued:
        doc = r.documents[item["doc"]]
        assert rv.find_markers(doc.text)[-1] == item["hash"]
        assert rv.retrieve(item["hash"], namespace="k1", store=store) == DOCS[item["doc"]]
        assert rv.retrieve(f"[#{item['hash']}]", namespace="k1", store=store) == DOCS[item["doc"]]
    unchanged = {d.index for d in r.documents} - {i["doc"] for i in issued}
    for i in unchanged:
        assert r.documents[i].text == DOCS[i] and not rv.find_markers(r.documents[i].text)


def test_unknown_malformed_and_foreign_hashes_raise_retrieval_error():
    store = rv.InMemoryStore()
    key = rv.store_original("the original", namespace="alice", store=store)
    assert rv.retrieve(key, namespace="alice", store=store) == "the original"
    with pytest.raises(RetrievalError, match="not issued to namespace 'bob'"):
        rv.retrieve(key, namespace="bob", store=store)
    other = "0" * 12 if key != "0" * 12 else "1" * 12
    with pytest.raises(RetrievalError, match="no original is stored"):
        rv.retrieve(other, namespace="alice", store=store)
    with pytest.raises(RetrievalError, match="not a ctxzip hash"):
        rv.retrieve("abc", namespace="alice", store=store)
    with pytest.raises(KeyError):  # RetrievalError is also a KeyError
        rv.retrieve(other, store=store)


def test_same_text_shared_by_two_namespaces_is_retrievable_by_both_only():
    store = rv.InMemoryStore()
    k1 = rv.store_original("shared", namespace="a", store=store)
    k2 = rv.store_original("shared", namespace="b", store=store)
    assert k1 == k2
    assert rv.retrieve(k1, namespace="a", store=store) == rv.retrieve(k1, namespace="b", store=store) == "shared"
    with pytest.raises(RetrievalError):
        rv.retrieve(k1, namespace="c", store=store)


def test_collision_with_a_different_text_steps_to_the_next_hash():
    store = rv.InMemoryStore()
    key = rv.content_hash("mine")
    store.put(key, "someone else's text", "x")
    got = rv.store_original("mine", namespace="x", store=store)
    assert got != key and got == rv.content_hash("mine", 1)
    assert rv.retrieve(got, namespace="x", store=store) == "mine"
    assert rv.retrieve(key, namespace="x", store=store) == "someone else's text"


def test_in_memory_store_is_bounded():
    store = rv.InMemoryStore(max_entries=2)
    keys = [rv.store_original(f"text {i}", store=store) for i in range(3)]
    assert len(store) == 2
    with pytest.raises(RetrievalError):
        rv.retrieve(keys[0], store=store)
    assert rv.retrieve(keys[2], store=store) == "text 2"


def test_sqlite_store_round_trip_and_scopes(tmp_path):
    store = rv.SQLiteStore(tmp_path / "orig.sqlite3")
    key = rv.store_original("persisted original", namespace="k", store=store)
    again = rv.SQLiteStore(tmp_path / "orig.sqlite3")  # a second process would open the same file
    assert rv.retrieve(key, namespace="k", store=again) == "persisted original"
    with pytest.raises(RetrievalError):
        rv.retrieve(key, namespace="other", store=again)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=300), st.sampled_from(["default", "k1", "key-2"]))
def test_store_and_retrieve_round_trip_any_text(text, ns):
    store = rv.InMemoryStore()
    key = rv.store_original(text, namespace=ns, store=store)
    assert len(key) == 12 and key.isdigit()
    assert rv.retrieve(key, namespace=ns, store=store) == text
    assert rv.strip_markers(text.rstrip() + rv.marker(key)) == text.rstrip() or rv.find_markers(text)


def test_marker_is_cheap():
    assert rv.marker_tokens("gpt-4o") <= 8
    assert rv.marker_tokens("gpt-4") <= 8


def test_tool_schema_and_tool_call_answer():
    schema = rv.tool_schema()
    assert schema["type"] == "function" and schema["function"]["name"] == rv.TOOL_NAME
    assert schema["function"]["parameters"]["required"] == ["hash"]
    json.dumps(schema)  # serialisable as sent to the API
    store = rv.InMemoryStore()
    key = rv.store_original("full text", namespace="n", store=store)
    call = {"id": "call_1", "type": "function", "function": {"name": rv.TOOL_NAME, "arguments": json.dumps({"hash": key})}}
    msg = rv.handle_tool_call(call, namespace="n", store=store)
    assert msg == {"role": "tool", "tool_call_id": "call_1", "content": "full text"}
    foreign = rv.handle_tool_call(call, namespace="m", store=store)
    assert foreign["content"].startswith("error:") and "full text" not in foreign["content"]
    with pytest.raises(InputError):
        rv.handle_tool_call({"function": {"name": "other", "arguments": "{}"}}, store=store)
    with pytest.raises(InputError):
        rv.handle_tool_call({"function": {"name": rv.TOOL_NAME, "arguments": "not json"}}, store=store)


def test_reversible_at_rate_one_changes_nothing():
    r = ctxzip.compress(DOCS, method="truncate", rate=1.0, reversible=True)
    assert [d.text for d in r.documents] == DOCS
    assert not rv.find_markers(r.text)


def test_top_level_retrieve_is_exported():
    key = rv.store_original("exported")
    assert ctxzip.retrieve(key) == "exported"
