"""The compressors' kernel call sites: ``longlingua`` → ``contrastive_nll``, ``lingua2`` → ``word_topk``.

On CPU with the default dispatch (``CTXZIP_KERNELS`` unset) the compressors must compute exactly what they did
before the kernels were wired in (checked bit for bit against the old formulas); with ``CTXZIP_KERNELS=triton``
under ``TRITON_INTERPRET=1`` the Triton kernels run (checked with spies) and their scores and selections must
match the reference path. Tiny random models built from configs; no download.

TRITON_INTERPRET must be set before Triton is first imported, hence the environment edit above the imports.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lingua2_tiny import SENTENCES, make_bert_classifier, make_xlmr_classifier  # noqa: E402

from ctxzip.compressors.lingua import encode_segments, reduce_to_units, shared_scorer, split_segments  # noqa: E402
from ctxzip.compressors.lingua2 import merge_words  # noqa: E402
from ctxzip.models import CausalLMScorer, load_causal_lm  # noqa: E402
from ctxzip.models.testing import make_tiny_causal_lm  # noqa: E402
from ctxzip.registry import get_compressor  # noqa: E402
from ctxzip.tokens import get_counter  # noqa: E402
from ctxzip.types import CompressionRequest  # noqa: E402
from ctxzip.units import segment  # noqa: E402

needs_triton = pytest.mark.skipif(
    not (os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton")),
    reason="needs triton and TRITON_INTERPRET=1 (set before triton was imported)",
)

CONTRASTIVE = importlib.import_module("ctxzip.kernels.contrastive")
WORD_TOPK = importlib.import_module("ctxzip.kernels.word_topk")
SCORER = importlib.import_module("ctxzip.models.scorer")

DOCS = [
    "Paris is the capital and largest city of France. It lies on the Seine and is known for the Eiffel Tower, "
    "the Louvre museum and its cafes. About two million people live in the city proper.",
    "Bananas are long curved fruits with soft flesh. They are rich in potassium and are grown in tropical "
    "regions such as Ecuador, the Philippines and India, mostly for export.",
    "The Pacific Ocean is the largest and deepest ocean on Earth. It covers about a third of the planet's "
    "surface and holds the Mariana Trench, the deepest known point of the sea floor.",
]
QUESTION = "What is the capital of France?"
LONG = " ".join(SENTENCES[i % len(SENTENCES)] + f" Item {i} costs {i * 7} dollars." for i in range(12))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _default_dispatch(monkeypatch):
    monkeypatch.delenv("CTXZIP_KERNELS", raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_causal_lm(tmp_path_factory.mktemp("tinylm") / "llama", max_position_embeddings=512))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(make_bert_classifier(tmp_path_factory.mktemp("bert")))


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    return str(make_xlmr_classifier(tmp_path_factory.mktemp("xlmr")))


def _spy(monkeypatch, module, name):
    """Wrap ``module.name`` so each call's positional arguments are recorded; return the record."""
    calls: list[tuple] = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _units(texts, request):
    counter = get_counter(request.target_model)
    return [segment(t, request.protect, counter) for t in texts]


# ------------------------------------------------------------------------------------------------ longlingua


def _old_fine_scores(comp, request, docs):
    """``LongLinguaCompressor.score`` as computed before the kernel: both streams via score_ids, NumPy difference."""
    cfg = comp.options(request)
    scorer = shared_scorer(cfg.model, cfg.dtype, cfg.quantize, cfg.device, cfg.window, cfg.batch_size)
    segs = split_segments(docs, 0)
    toks = encode_segments(scorer, docs, segs)
    bodies = [t.ids for t in toks]
    head = scorer.ids(request.question + "\n\n")
    runs = scorer.score_ids(bodies * 2, [[]] * len(bodies) + [head] * len(bodies))
    parts = [[] for _ in docs]
    for i, ((p, _), (c, _)) in enumerate(zip(runs[: len(bodies)], runs[len(bodies) :], strict=True)):
        parts[segs[i].doc].append((toks[i].starts, toks[i].ends, p - c))
    return [np.nan_to_num(reduce_to_units(u, pt, cfg.word_score), nan=-1e3) for u, pt in zip(docs, parts, strict=True)]


def test_longlingua_default_cpu_path_is_unchanged(tiny, monkeypatch):
    comp = get_compressor("longlingua", model=tiny, rank_method="bm25")
    request = CompressionRequest.create(DOCS, question=QUESTION, rate=0.4)
    docs = _units(DOCS, request)
    calls = _spy(monkeypatch, CONTRASTIVE, "contrastive_nll")
    got = comp.score(request, docs)
    assert calls == []  # CPU + auto: the reference path, no kernel launch
    expected = _old_fine_scores(comp, request, docs)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


@needs_triton
@pytest.mark.parametrize("sentence_share", [0.0, 0.5])
def test_longlingua_triton_path_matches_reference(tiny, monkeypatch, sentence_share):
    comp = get_compressor("longlingua", model=tiny, rank_method="bm25", sentence_share=sentence_share)
    request = CompressionRequest.create(DOCS, question=QUESTION, rate=0.4)
    docs = _units(DOCS, request)
    ref_scores = comp.score(request, docs)
    ref = comp.compress(request)

    monkeypatch.setenv("CTXZIP_KERNELS", "triton")
    launches = _spy(monkeypatch, CONTRASTIVE, "lse_partials")
    got_scores = comp.score(request, docs)
    assert launches and all(len(args[0]) == 2 for args in launches)  # the two-stream Triton kernel ran
    for g, r in zip(got_scores, ref_scores, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-5)
    n_before = len(launches)
    got = comp.compress(request)
    assert len(launches) > n_before  # the selection itself went through the kernel
    assert got.text == ref.text
    assert got.compressed_tokens == ref.compressed_tokens


@needs_triton
@pytest.mark.parametrize("start_token", ["auto", None])
def test_scorer_contrastive_ids_triton_matches_torch(tiny, monkeypatch, start_token):
    """Windows (a context longer than ``window``), groups of bodies, an empty body and the ``nan`` positions."""
    lm = load_causal_lm(tiny, device="cpu")
    scorer = CausalLMScorer(lm, window=24, overlap=4, batch_size=3, start_token=start_token)
    bodies = [scorer.ids(DOCS[0]), [], scorer.ids(DOCS[1][:60]), scorer.ids(DOCS[2])]
    head = scorer.ids(QUESTION + "\n\n")
    assert max(len(b) for b in bodies) > scorer.window  # several windows per body
    scorer.backend = "torch"
    ref = scorer.contrastive_ids(bodies, head)
    scorer.backend = "triton"
    monkeypatch.setattr(SCORER, "_CONTRASTIVE_TOKENS", 40)  # several kernel launches
    launches = _spy(monkeypatch, CONTRASTIVE, "lse_partials")
    got = scorer.contrastive_ids(bodies, head)
    assert len(launches) >= 2
    assert [g.shape for g in got] == [r.shape for r in ref]
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-5)
    if start_token is None:
        assert np.isnan(got[0][0])  # no start token: the plain stream cannot predict the first token


# ------------------------------------------------------------------------------------------------ lingua2


def test_lingua2_default_cpu_path_is_unchanged(bert_dir, monkeypatch):
    """Word means are the float64 NumPy mean of the classifier's float32 subword probabilities, bit for bit."""
    import transformers

    text = SENTENCES[1]
    comp = get_compressor("lingua2", model=bert_dir, device="cpu")
    calls = _spy(monkeypatch, WORD_TOPK, "word_topk")
    (wp,) = comp.word_probs([text])
    assert calls == []
    tok = transformers.AutoTokenizer.from_pretrained(bert_dir)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    clf = comp._classifier(comp.config)
    ids = torch.tensor([[tok.cls_token_id, *enc["input_ids"], tok.sep_token_id]])
    with torch.inference_mode():
        logits = clf.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    probs = torch.softmax(logits.float(), dim=-1)[0, 1:-1, 1].numpy()
    offs = np.asarray(enc["offset_mapping"], dtype=np.int64)
    wids = np.asarray([-1 if w is None else w for w in enc.word_ids()], dtype=np.int64)
    expected = merge_words(wids, offs[:, 0], offs[:, 1], probs, "mean")
    np.testing.assert_array_equal(wp.starts, expected.starts)
    np.testing.assert_array_equal(wp.ends, expected.ends)
    np.testing.assert_array_equal(wp.probs, expected.probs)


@needs_triton
@pytest.mark.parametrize("which", ["bert", "xlmr"])
def test_lingua2_triton_path_matches_reference(bert_dir, xlmr_dir, monkeypatch, which):
    model_dir = bert_dir if which == "bert" else xlmr_dir
    # short chunks cut without end tokens, so some words straddle two chunks (pooled across both)
    opts = dict(model=model_dir, device="cpu", max_seq_len=16, chunk_end_tokens=(), batch_size=5)
    comp = get_compressor("lingua2", **opts)
    texts = [LONG, SENTENCES[4], "short"]
    clf = comp._classifier(comp.config)
    word_ids = [[-1 if w is None else w for w in e.word_ids] for e in clf.backend.encode_batch(texts[:1],
                                                                                            add_special_tokens=False)]
    cuts = range(14, len(word_ids[0]), 14)
    assert any(word_ids[0][c] >= 0 and word_ids[0][c] == word_ids[0][c - 1] for c in cuts)
    request = CompressionRequest.create(texts, rate=0.5)
    ref_words = comp.word_probs(texts)
    ref = comp.compress(request)

    monkeypatch.setenv("CTXZIP_KERNELS", "triton")
    calls = _spy(monkeypatch, WORD_TOPK, "word_topk")
    got_words = comp.word_probs(texts)
    assert calls and all(c[0].shape == c[1].shape for c in calls)
    for g, r in zip(got_words, ref_words, strict=True):
        np.testing.assert_array_equal(g.starts, r.starts)
        np.testing.assert_array_equal(g.ends, r.ends)
        np.testing.assert_allclose(g.probs, r.probs, atol=1e-6, rtol=1e-6)
    n_before = len(calls)
    got = comp.compress(request)
    assert len(calls) > n_before
    assert got.text == ref.text
    assert [d.text for d in got.documents] == [d.text for d in ref.documents]


@needs_triton
def test_lingua2_first_token_pooling_stays_on_reference(bert_dir, monkeypatch):
    """``token_to_word="first"`` is not a mean: it keeps the per-token path even when Triton is forced."""
    comp = get_compressor("lingua2", model=bert_dir, device="cpu", token_to_word="first")
    ref = comp.word_probs([SENTENCES[2]])
    monkeypatch.setenv("CTXZIP_KERNELS", "triton")
    calls = _spy(monkeypatch, WORD_TOPK, "word_topk")
    got = comp.word_probs([SENTENCES[2]])
    assert calls == []
    np.testing.assert_array_equal(got[0].probs, ref[0].probs)
