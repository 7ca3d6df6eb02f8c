"""lingua2 (LLMLingua-2 token classification) with tiny random BERT and XLM-R classifiers built from configs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402
from lingua2_tiny import SENTENCES, make_bert_classifier, make_xlmr_classifier  # noqa: E402

from ctxzip.compressors.lingua2 import (  # noqa: E402
    Lingua2Compressor,
    Piece,
    bm25_text,
    chunk_bounds,
    light_stem,
    merge_words,
    smooth_neighbours,
    split_pieces,
)
from ctxzip.errors import ConfigError, ModelError  # noqa: E402
from ctxzip.registry import get_compressor  # noqa: E402
from ctxzip.types import CompressionRequest  # noqa: E402

LONG = " ".join(SENTENCES[i % len(SENTENCES)] + f" Item {i} costs {i * 7} dollars." for i in range(40))
MIXED = "東京は日本の首都です。 I ❤️ 🍣 sushi, naïve café! 北京は中国の首都です。 Emoji 👩‍👩‍👧 family 2024."


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(make_bert_classifier(tmp_path_factory.mktemp("bert")))


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    return str(make_xlmr_classifier(tmp_path_factory.mktemp("xlmr")))


@pytest.fixture(params=["bert", "xlmr"])
def model_dir(request, bert_dir, xlmr_dir):
    return bert_dir if request.param == "bert" else xlmr_dir


def _reference_word_probs(model_dir: str, text: str, how: str):
    """Token probabilities from a plain forward pass, merged into words in Python (the slow, obvious way)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    enc = tok(text, return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits, -1)
    probs = probs[0, :, 1].numpy()
    words: dict[int, list] = {}
    for i, w in enumerate(enc.word_ids()):
        s, e = enc["offset_mapping"][0, i].tolist()
        if w is None or e <= s:
            continue
        words.setdefault(w, []).append((s, e, float(probs[i])))
    out = []
    for w in sorted(words):
        toks = words[w]
        p = toks[0][2] if how == "first" else sum(t[2] for t in toks) / len(toks)
        out.append((toks[0][0], toks[-1][1], p))
    return out


def _is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


@pytest.mark.parametrize("how", ["mean", "first"])
@pytest.mark.parametrize("text", [SENTENCES[6], SENTENCES[2], MIXED])
def test_word_merge_matches_reference(model_dir, text, how):
    comp = Lingua2Compressor(model=model_dir, device="cpu", token_to_word=how)
    (wp,) = comp.word_probs([text])
    ref = _reference_word_probs(model_dir, text, how)
    assert len(wp) == len(ref)
    np.testing.assert_array_equal(wp.starts, [r[0] for r in ref])
    np.testing.assert_array_equal(wp.ends, [r[1] for r in ref])
    np.testing.assert_allclose(wp.probs, [r[2] for r in ref], rtol=1e-5, atol=1e-6)
    assert np.all((wp.probs >= 0) & (wp.probs <= 1))


def test_word_ids_follow_the_tokenizer_family(bert_dir, xlmr_dir):
    text = "don't stop"
    (b,) = Lingua2Compressor(model=bert_dir, device="cpu").word_probs([text])
    (x,) = Lingua2Compressor(model=xlmr_dir, device="cpu").word_probs([text])
    # BERT's pre-tokenizer splits punctuation into words; SentencePiece keeps whitespace-separated words
    assert [text[s:e] for s, e in zip(b.starts, b.ends, strict=True)] == ["don", "'", "t", "stop"]
    assert [text[s:e].strip() for s, e in zip(x.starts, x.ends, strict=True)] == ["don't", "stop"]


def test_cjk_and_emoji_are_kept_byte_exact(model_dir):
    comp = get_compressor("lingua2", model=model_dir, device="cpu")
    result = comp.compress(CompressionRequest.create([MIXED, MIXED[::-1]], rate=0.5))
    for doc, original in zip(result.documents, [MIXED, MIXED[::-1]], strict=True):
        rebuilt = "".join(original[s.start : s.end] for s in doc.spans)
        assert rebuilt == doc.text
        assert _is_subsequence(doc.text.encode("utf-8").decode("utf-8"), original)
        assert "\ufffd" not in doc.text
        for s in doc.spans:
            assert original[s.start : s.end].encode("utf-8") in original.encode("utf-8")


@pytest.mark.parametrize("rate", [0.2, 0.33, 0.6])
def test_budget_and_subsequence(model_dir, rate):
    comp = get_compressor("lingua2", model=model_dir, device="cpu")
    req = CompressionRequest.create([LONG, SENTENCES[5] * 3], rate=rate)
    result = comp.compress(req)
    budget = result.details["budget"]
    assert abs(result.compressed_tokens - budget) <= 0.05 * budget
    for doc, original in zip(result.documents, [LONG, SENTENCES[5] * 3], strict=True):
        assert _is_subsequence(doc.text, original)
    assert set(result.details["seconds"]) >= {"tokenize", "encoder", "post"}


def test_long_documents_are_chunked_and_every_word_scored(bert_dir):
    comp = Lingua2Compressor(model=bert_dir, device="cpu", max_seq_len=64)
    (wp,) = comp.word_probs([LONG])
    tok_words = len(comp._classifier(comp.config).backend.encode(LONG, add_special_tokens=False).word_ids)
    assert tok_words > 3 * 64  # several chunks
    assert len(wp) > 100 and np.all(np.isfinite(wp.probs))


def test_batching_across_documents_does_not_change_probabilities(model_dir):
    comp = Lingua2Compressor(model=model_dir, device="cpu", max_seq_len=64, batch_size=3)
    texts = [LONG[:900], SENTENCES[0], MIXED, ""]
    joint = comp.word_probs(texts)
    for text, wp in zip(texts, joint, strict=True):
        (alone,) = comp.word_probs([text])
        np.testing.assert_array_equal(alone.starts, wp.starts)
        np.testing.assert_allclose(alone.probs, wp.probs, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 400),
    max_tokens=st.integers(1, 60),
    ends=st.lists(st.integers(0, 399), max_size=40),
)
def test_chunk_bounds_cover_and_cut_at_end_tokens(n, max_tokens, ends):
    is_end = np.zeros(max(n, 1), dtype=bool)
    for e in ends:
        if e < n:
            is_end[e] = True
    chunks = chunk_bounds(n, is_end, max_tokens)
    if n == 0:
        assert chunks == []
        return
    assert [a for a, _ in chunks] == [0] + [b for _, b in chunks[:-1]]
    assert chunks[-1][1] == n
    for a, b in chunks[:-1]:
        assert 0 < b - a <= max_tokens
        window = np.flatnonzero(is_end[a : a + max_tokens])
        if window.size:  # cut right after the last end token inside the window
            assert b == a + int(window[-1]) + 1


def test_merge_words_vectorised_mean_and_first():
    wids = np.array([-1, 0, 0, 1, 2, 2, 2, -1])
    starts = np.array([0, 0, 2, 5, 9, 10, 12, 0])
    ends = np.array([0, 2, 4, 8, 10, 12, 14, 0])
    probs = np.array([0.9, 0.2, 0.4, 0.5, 0.1, 0.2, 0.6, 0.9], dtype=np.float32)
    mean = merge_words(wids, starts, ends, probs, "mean")
    np.testing.assert_allclose(mean.probs, [0.3, 0.5, 0.3], atol=1e-6)
    np.testing.assert_array_equal(mean.starts, [0, 5, 9])
    np.testing.assert_array_equal(mean.ends, [4, 8, 14])
    first = merge_words(wids, starts, ends, probs, "first")
    np.testing.assert_allclose(first.probs, [0.2, 0.5, 0.1], atol=1e-6)


def test_force_tokens_and_digits_are_kept_first(bert_dir):
    comp = get_compressor("lingua2", model=bert_dir, device="cpu")
    text = LONG
    res = comp.compress(CompressionRequest.create(text, rate=0.25, force_tokens=["Paris", "Moon;"]))
    n_paris = text.count("Paris")
    assert res.documents[0].text.count("Paris") == n_paris
    assert res.documents[0].text.count("Moon;") == text.count("Moon;")
    # whole-word match only: "Parisian" would not be forced by "Paris"
    short = "Parisian streets and Paris. " * 30
    res = comp.compress(CompressionRequest.create(short, rate=0.5, force_tokens=["Paris"]))
    assert res.documents[0].text.count("Paris.") == short.count("Paris.")
    assert res.documents[0].text.count("Parisian") < short.count("Parisian")
    digits = "one two three 4 five six 7 eight nine 10 eleven twelve " * 10
    res = comp.compress(CompressionRequest.create(digits, rate=0.4, force_reserve_digit=True))
    kept = res.documents[0].text.split()
    assert kept.count("4") == kept.count("7") == kept.count("10") == 10


def test_drop_consecutive_forces_only_the_first_of_a_run(bert_dir):
    comp = Lingua2Compressor(model=bert_dir, device="cpu", force_tokens=("-",), drop_consecutive=True)
    from ctxzip.protect import ProtectionRules
    from ctxzip.tokens import get_counter
    from ctxzip.units import segment

    units = segment("a - - - b - c -x", ProtectionRules(), get_counter("gpt-4o"))
    forced = comp._forced(comp.config, units)
    assert [u.strip() for u, f in zip(units.texts(), forced, strict=True) if f] == ["-", "-", "-x"]
    keep_all = Lingua2Compressor(model=bert_dir, device="cpu", force_tokens=("-",))
    assert int(keep_all._forced(keep_all.config, units).sum()) == 5


class _FixedProbs(Lingua2Compressor):
    """Context-level filter test: each document's words get a fixed probability."""

    def _unit_probs(self, request, docs):
        levels = request.options.get("seed") or [0.5] * len(docs)
        return [np.full(len(u), float(lv)) for u, lv in zip(docs, levels, strict=True)]


def test_context_level_filter_drops_whole_low_probability_documents(bert_dir):
    comp = _FixedProbs(model=bert_dir, device="cpu", use_context_level_filter=True)
    docs = [SENTENCES[5] * 4, SENTENCES[1] * 4, SENTENCES[0] * 4]
    res = comp.compress(CompressionRequest.create(docs, rate=0.3, seed=[0.9, 0.1, 0.6]))
    assert res.documents[1].dropped and not res.documents[0].dropped
    res = comp.compress(CompressionRequest.create(docs, rate=0.3, seed=[0.9, 0.1, 0.6],
                                                  use_context_level_filter=False))
    assert not res.documents[1].dropped or res.documents[1].compressed_tokens == 0


TOPICS = {
    "cooking": "Bake the bread at a high oven temperature until the crust is golden and the loaf sounds hollow.",
    "astronomy": "The telescope observed a distant galaxy whose light left its stars billions of years ago.",
    "football": "The striker scored twice in the final minutes and the stadium crowd sang until midnight.",
    "finance": "The central bank raised interest rates to slow inflation, and bond yields climbed at once.",
}
MEETING = "\n".join(
    f"{who}: {TOPICS[t]}" for who, t in zip(["Ann", "Ben", "Cy", "Di"] * 6, list(TOPICS) * 6, strict=True)
)


def _units(text):
    from ctxzip.protect import ProtectionRules
    from ctxzip.tokens import get_counter
    from ctxzip.units import segment

    return segment(text, ProtectionRules(), get_counter("gpt-4o"))


def test_split_pieces_cover_documents_and_cut_at_line_ends():
    docs = [_units(MEETING), _units(SENTENCES[0]), _units(""), _units(LONG)]
    pieces = split_pieces(docs, 40)
    assert {p.doc for p in pieces} == {0, 1, 3}
    for d, u in enumerate(docs):
        mine = [p for p in pieces if p.doc == d]
        if not len(u):
            continue
        # contiguous, covering every unit, costs add up
        assert [p.u0 for p in mine] == [0] + [p.u1 for p in mine[:-1]] and mine[-1].u1 == len(u)
        assert sum(p.cost for p in mine) == int(u.costs.sum())
        assert all(u.text[p.start : p.end] == "".join(u.texts()[p.u0 : p.u1]) for p in mine)
    meeting = [p for p in pieces if p.doc == 0]
    assert len(meeting) > 3
    for p in meeting[:-1]:  # every meeting piece ends at the end of a turn
        assert MEETING[p.end : p.end + 1] == "\n" and p.cost <= 2 * 40
    assert len([p for p in pieces if p.doc == 1]) == 1  # a short document is one piece
    assert split_pieces(docs, 0)[0].u1 == len(docs[0])  # chunk_tokens=0: whole documents


def test_question_coarse_keeps_the_relevant_pieces(bert_dir):
    comp = get_compressor("lingua2", model=bert_dir, device="cpu", rank_method="bm25", coarse_keep=1.0)
    docs = [" ".join([text] * 4) for text in TOPICS.values()]
    req = CompressionRequest.create(docs, question="Which galaxy did the telescope observe?", rate=0.2)
    res = comp.compress(req)
    assert abs(res.compressed_tokens - res.details["budget"]) <= 0.05 * res.details["budget"]
    assert res.details["coarse"]["kept_docs"] == [1] and res.details["coarse"]["pieces"] == 4
    assert [d.dropped for d in res.documents] == [True, False, True, True]
    for doc, original in zip(res.documents, docs, strict=True):
        assert _is_subsequence(doc.text, original)
    # inside one long transcript: the pieces are turn groups, and the kept ones are about the question
    res = comp.compress(CompressionRequest.create(MEETING, question="What did the central bank do to rates?",
                                                  rate=0.2, coarse_chunk_tokens=12))
    kept = res.documents[0].text
    assert "bank" in kept and "telescope" not in kept and "striker" not in kept
    assert res.details["coarse"]["pieces"] > 2


def test_question_coarse_classifies_only_the_kept_pieces(bert_dir, monkeypatch):
    comp = Lingua2Compressor(model=bert_dir, device="cpu", rank_method="bm25", coarse_keep=1.0)
    seen = []
    real = Lingua2Compressor.word_probs

    def spy(self, texts, cfg=None):
        seen.extend(texts)
        return real(self, texts, cfg)

    monkeypatch.setattr(Lingua2Compressor, "word_probs", spy)
    docs = [" ".join([text] * 4) for text in TOPICS.values()]
    comp.compress(CompressionRequest.create(docs, question="Which galaxy did the telescope observe?", rate=0.2))
    assert seen == [docs[1]]


def test_bm25_view_matches_word_forms_and_ignores_question_words():
    assert {light_stem(w) for w in ("paint", "painting", "painted", "paints")} == {"paint"}
    assert light_stem("running") == "run" and light_stem("stories") == "story" and light_stem("is") == "is"
    query = bm25_text("What did Caroline research?", drop_stopwords=True)
    assert query.split() == [light_stem("caroline"), "research"]
    assert bm25_text("Caroline researched adoption agencies").split()[:2] == query.split()
    assert light_stem("agencies") == "agency"
    assert bm25_text("What is it?", drop_stopwords=True) == "what is it"  # nothing else left: keep them


def test_neighbour_smoothing_stays_inside_a_document():
    pieces = [Piece(0, 0, 1, 0, 1, 1), Piece(0, 1, 2, 1, 2, 1), Piece(1, 0, 1, 0, 1, 1), Piece(1, 1, 2, 1, 2, 1)]
    rel = np.array([0.0, 4.0, 1.0, 0.0])
    np.testing.assert_allclose(smooth_neighbours(rel, pieces, 0.5), [2.0, 4.0, 1.0, 0.5])
    np.testing.assert_array_equal(smooth_neighbours(rel, pieces, 0.0), rel)
    single = smooth_neighbours(np.array([3.0, 1.0]), pieces[1:3], 0.5)  # different documents: unchanged
    np.testing.assert_array_equal(single, [3.0, 1.0])


def test_default_coarse_ranks_by_bm25_without_loading_a_sentence_encoder(bert_dir, monkeypatch):
    comp = Lingua2Compressor(model=bert_dir, device="cpu")  # default: coarse="question", rank_method="bm25"

    def no_encoder(self, cfg):
        raise AssertionError("the default coarse stage must not load a sentence encoder")

    monkeypatch.setattr(Lingua2Compressor, "_encoder", no_encoder)
    comp.load()
    docs = [" ".join([text] * 4) for text in TOPICS.values()]
    res = comp.compress(CompressionRequest.create(docs, question="Which galaxy did the telescope observe?", rate=0.2))
    assert res.details["coarse"]["rank_method"] == "bm25" and res.details["coarse"]["kept_docs"] == [1]
    assert res.details["seconds"]["rank"] >= 0.0


def test_without_question_or_with_coarse_none_the_output_is_question_agnostic(bert_dir):
    comp = get_compressor("lingua2", model=bert_dir, device="cpu")
    docs = [" ".join([text] * 4) for text in TOPICS.values()]
    plain = comp.compress(CompressionRequest.create(docs, rate=0.3))
    assert "coarse" not in plain.details
    off = comp.compress(CompressionRequest.create(docs, question="Which galaxy?", rate=0.3, coarse="none"))
    assert off.text == plain.text and "coarse" not in off.details
    on = comp.compress(CompressionRequest.create(docs, question="Which galaxy?", rate=0.3))
    assert on.text != plain.text and "coarse" in on.details
    single = comp.compress(CompressionRequest.create(docs[0], question="Which galaxy?", rate=0.3))
    alone = comp.compress(CompressionRequest.create(docs[0], rate=0.3))
    assert single.text == alone.text  # one piece: nothing to rank


def test_return_word_labels_match_the_output(model_dir):
    comp = get_compressor("lingua2", model=model_dir, device="cpu")
    texts = [LONG[:700], MIXED]
    res = comp.compress(CompressionRequest.create(texts, rate=0.4, return_word_labels=True))
    labels = res.details["word_labels"]
    assert len(labels) == 2
    for doc, lab in zip(res.documents, labels, strict=True):
        assert len(lab["words"]) == len(lab["labels"]) == len(lab["probs"])
        kept = "".join(w for w, k in zip(lab["words"], lab["labels"], strict=True) if k)
        assert kept.lstrip() == doc.text
    under = comp.compress(CompressionRequest.create("tiny text", rate=1.0, return_word_labels=True))
    assert all(under.details["word_labels"][0]["labels"])


def test_int8_quantisation_runs_on_cpu(bert_dir):
    comp = get_compressor("lingua2", model=bert_dir, device="cpu", quantize="int8")
    (wp,) = comp.word_probs([SENTENCES[1]])
    assert len(wp) > 5 and np.all((wp.probs >= 0) & (wp.probs <= 1))
    res = comp.compress(CompressionRequest.create(LONG, rate=0.3))
    assert abs(res.compressed_tokens - res.details["budget"]) <= 0.05 * res.details["budget"]


@pytest.mark.parametrize(
    "bad",
    [
        {"quantize": "int4"},
        {"max_seq_len": 4},
        {"max_seq_len": 1024},
        {"token_to_word": "max"},
        {"unit_reduce": "median"},
        {"force_tokens": "abc"},
        {"chunk_end_tokens": [""]},
        {"context_level_rate": 0.0},
        {"batch_size": 0},
        {"drop_consecutive": "yes"},
        {"coarse": "documents"},
        {"coarse_keep": 0.5},
        {"coarse_chunk_tokens": -1},
        {"rank_method": "lm"},
        {"rank_model": ""},
        {"rank_smooth": 1.5},
        {"rank_smooth": True},
    ],
)
def test_config_errors_say_what_to_fix(bad):
    with pytest.raises(ConfigError, match="lingua2"):
        Lingua2Compressor(**bad)


def test_bad_models_fail_clearly(tmp_path):
    from ctxzip.models.token_classifier import load_token_classifier

    with pytest.raises(ModelError):
        load_token_classifier(str(tmp_path / "missing"))
    three = tmp_path / "three"
    import transformers
    from lingua2_tiny import bert_tokenizer

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3)
    transformers.BertForTokenClassification(cfg).save_pretrained(str(three))
    bert_tokenizer().save_pretrained(str(three))
    with pytest.raises(ModelError, match="two-label"):
        load_token_classifier(str(three), device="cpu")


def test_import_ctxzip_stays_light():
    import subprocess
    import sys

    code = "import ctxzip, ctxzip.compressors.lingua2, ctxzip.distill, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_shipped_student_with_minilm_ranking_keeps_the_answering_document():
    comp = get_compressor("lingua2", rank_method="embed")  # coarse="question" by default; MiniLM cosine ranking
    docs = [" ".join([text] * 3) for text in TOPICS.values()]
    res = comp.compress(CompressionRequest.create(docs, question="How did the bank respond to inflation?", rate=0.3))
    assert 3 in res.details["coarse"]["kept_docs"] and not res.documents[3].dropped
    assert "inflation" in res.documents[3].text
    assert abs(res.compressed_tokens - res.details["budget"]) <= 0.05 * res.details["budget"]


@pytest.mark.slow
def test_shipped_student_prefers_content_words():
    comp = get_compressor("lingua2")
    text = (
        "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, of Germany, who "
        "received 150,782 SEK. John Bardeen is the only laureate to win the prize twice, in 1956 and 1972."
    )
    (wp,) = comp.word_probs([text])
    words = [text[s:e].strip(" ,.") for s, e in zip(wp.starts, wp.ends, strict=True)]
    prob = dict(zip(words, wp.probs, strict=True))
    function_words = [prob[w] for w in ("the", "in", "of", "to", "was", "is") if w in prob]
    content = [prob[w] for w in ("Nobel", "1901", "Röntgen", "Bardeen", "1956") if w in prob]
    assert content and function_words
    assert np.mean(content) > np.mean(function_words) + 0.1
    res = comp.compress(CompressionRequest.create(text * 5, rate=0.33))
    assert abs(res.compressed_tokens - res.details["budget"]) <= 0.05 * res.details["budget"]
