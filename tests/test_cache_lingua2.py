"""The segment cache with lingua2 (a tiny random BERT classifier built from a config): same outputs, less work."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lingua2_tiny import SENTENCES, make_bert_classifier  # noqa: E402

import ctxzip.cache as cc  # noqa: E402
from ctxzip.compressors.lingua2 import Lingua2Compressor  # noqa: E402
from ctxzip.types import CompressionRequest  # noqa: E402

DOCS = [" ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(4)) + f" Item {i}." for i in range(6)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return str(make_bert_classifier(tmp_path_factory.mktemp("bert")))


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    monkeypatch.delenv("CTXZIP_CACHE", raising=False)
    monkeypatch.setenv("CTXZIP_CACHE_DIR", str(tmp_path / "cachedir"))
    cc._reset_for_tests()
    yield
    cc._reset_for_tests()


def _spy(comp, monkeypatch):
    seen: list[str] = []
    original = comp.word_probs

    def word_probs(texts, cfg=None):
        seen.extend(texts)
        return original(texts, cfg)

    monkeypatch.setattr(comp, "word_probs", word_probs)
    return seen


def test_lingua2_scores_cached_per_document_with_identical_outputs(bert_dir, monkeypatch):
    plain = Lingua2Compressor(model=bert_dir, device="cpu")
    cached = Lingua2Compressor(model=bert_dir, device="cpu")
    seen = _spy(cached, monkeypatch)
    cache = cc.open_cache("memory", results=False)
    for rate in (0.5, 0.3, 0.2):
        ref = plain.compress(CompressionRequest.create(DOCS, rate=rate))
        got = cached.compress(CompressionRequest.create(DOCS, rate=rate, cache=cache))
        assert got.text == ref.text and [d.spans for d in got.documents] == [d.spans for d in ref.documents]
        assert got.compressed_tokens == ref.compressed_tokens
    assert seen == DOCS  # scored once, for the first rate
    assert got.cache_hits == len(DOCS)
    new = "A completely new document about caching compressed segments for retrieval systems."
    seen.clear()
    mixed = cached.compress(CompressionRequest.create(DOCS[:3] + [new] + DOCS[3:], rate=0.4, cache=cache))
    assert seen == [new] and mixed.cache_hits == len(DOCS)
    # the weights are part of the key: another classifier directory is a miss
    other = str(make_bert_classifier(__import__("pathlib").Path(bert_dir).parent / "other", seed=1))
    comp2 = Lingua2Compressor(model=other, device="cpu")
    seen2 = _spy(comp2, monkeypatch)
    comp2.compress(CompressionRequest.create(DOCS, rate=0.5, cache=cache))
    assert seen2 == DOCS
