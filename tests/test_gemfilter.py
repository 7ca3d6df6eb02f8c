"""gemfilter: hooked early-layer scores against a manual q.k computation, selection, windows, the compressor.

Tiny random Llama (GQA) and Gemma-3 (q/k norms, sliding + full layers) models are built from configs; a tiny
byte-level BPE tokenizer is trained in memory so the compressor runs end to end from a local directory.
The shipped models are exercised in the tests marked ``slow``.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from ctxzip.compressors import gemfilter as gf  # noqa: E402
from ctxzip.errors import ConfigError, InputError  # noqa: E402
from ctxzip.types import CompressionRequest  # noqa: E402

torch.set_num_threads(1)

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "Paris is the capital of France and Rome is the capital of Italy. "
    "The secret code is 4417 and the meeting is on Tuesday at noon. "
) * 4


def _llama(num_layers: int = 4, seed: int = 0, **over) -> object:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        **over,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _gemma(seed: int = 0) -> object:
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2, query_pre_attn_scalar=16,
    )
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm weights, so a wrong or missing q/k norm changes the scores
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.normal_(0.0, 0.5)
            layer.self_attn.k_norm.weight.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.pad_token = fast.eos_token
    return fast


# ---------------------------------------------------------------------------------------------- manual reference
def _rotate_half(x):
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-b, a), dim=-1)


def _manual_raw_scores(model, ids, r, *, gemma: bool):
    """Last-query logits summed over heads at layer r, written out by hand from the hidden states."""
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=False)
        h = out.hidden_states[r]  # input of layer r
        layer = model.model.layers[r]
        x = layer.input_layernorm(h)
        attn = layer.self_attn
        d = attn.head_dim
        t = ids.shape[1]
        q = attn.q_proj(x).view(1, t, -1, d)
        k = attn.k_proj(x).view(1, t, -1, d)
        if gemma:
            q, k = attn.q_norm(q), attn.k_norm(k)
        pos = torch.arange(t).view(1, -1)
        if gemma:
            cos, sin = model.model.rotary_emb(x, pos, layer_type=model.config.layer_types[r])
        else:
            cos, sin = model.model.rotary_emb(x, pos)
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # [T, 1, D]
        q = q[0] * cos + _rotate_half(q[0]) * sin  # [T, Hq, D]
        k = k[0] * cos + _rotate_half(k[0]) * sin  # [T, Hkv, D]
        group = q.shape[1] // k.shape[1]
        k_rep = k.repeat_interleave(group, dim=1)  # [T, Hq, D]
        logits = torch.einsum("hd,thd->ht", q[-1], k_rep) * attn.scaling
        return logits.sum(0)


def _pool(raw, width):
    return torch.nn.functional.avg_pool1d(
        raw.view(1, 1, -1), kernel_size=width, stride=1, padding=width // 2, count_include_pad=True
    ).view(-1)


@pytest.mark.parametrize("r", [0, 2, 3])
def test_llama_hooked_scores_equal_manual_qk(r):
    model = _llama()
    ids = torch.randint(3, 300, (1, 37), generator=torch.Generator().manual_seed(r))
    manual = _manual_raw_scores(model, ids, r, gemma=False)
    got = gf.layer_scores(model, ids, [r], smooth=1)[r]
    torch.testing.assert_close(got, manual, rtol=1e-4, atol=1e-4)
    got5 = gf.layer_scores(model, ids, [r], smooth=5)[r]
    torch.testing.assert_close(got5, _pool(manual, 5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("r", [2, 5])
def test_gemma3_hooked_scores_equal_manual_qk_with_norms(r):
    model = _gemma()
    ids = torch.randint(3, 300, (1, 29), generator=torch.Generator().manual_seed(7))
    manual = _manual_raw_scores(model, ids, r, gemma=True)
    got = gf.layer_scores(model, ids, [r], smooth=1)[r]
    torch.testing.assert_close(got, manual, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_scores_agree_with_the_models_own_attention(kind):
    """Independent of our projection code: eager attention's log-probabilities of the last query, summed over
    heads, differ from the summed logits only by a constant (each head's log-sum-exp)."""
    model = _llama() if kind == "llama" else _gemma()
    r = 2
    model.config._attn_implementation = "eager"
    ids = torch.randint(3, 300, (1, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs = model(ids, output_attentions=True, use_cache=False).attentions[r][0, :, -1, :]  # [Hq, T]
    ref = torch.log(probs).sum(0)
    got = gf.layer_scores(model, ids, [r], smooth=1)[r]
    torch.testing.assert_close(got - got.mean(), ref - ref.mean(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_softmax_weights_equal_the_models_attention_probabilities(kind):
    """``weights="softmax"`` over the last m queries is the model's own (causal) attention, summed over heads and
    those queries; ``span`` only cuts and smooths the result."""
    model = _llama() if kind == "llama" else _gemma()
    r, m = 2, 4
    model.config._attn_implementation = "eager"
    ids = torch.randint(3, 300, (1, 23), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        probs = model(ids, output_attentions=True, use_cache=False).attentions[r][0, :, -m:, :]  # [Hq, m, T]
    ref = probs.sum(dim=(0, 1))
    got = gf.layer_scores(model, ids, [r], smooth=1, queries=m, weights="softmax")[r]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert got.sum().item() == pytest.approx(probs.shape[0] * m, rel=1e-4)  # each head and query sums to one
    cut = gf.layer_scores(model, ids, [r], smooth=3, queries=m, weights="softmax", span=(1, 19))[r]
    torch.testing.assert_close(cut, _pool(ref[1:19], 3), rtol=1e-4, atol=1e-5)


def test_logit_weights_over_several_queries_sum_their_logits():
    model = _llama()
    r, m = 1, 3
    ids = torch.randint(3, 300, (1, 30), generator=torch.Generator().manual_seed(11))
    manual = sum(_manual_raw_scores(model, ids[:, : 30 - j], r, gemma=False)[:20] for j in range(m))
    got = gf.layer_scores(model, ids, [r], smooth=1, queries=m, span=(0, 20))[r]
    torch.testing.assert_close(got, manual, rtol=1e-4, atol=1e-4)


def test_captured_queries_and_keys_reproduce_layer_scores():
    """The sweep's path (one capture, several scorings) gives the same numbers as scoring in the hook."""
    model = _gemma()
    ids = torch.randint(3, 300, (1, 26), generator=torch.Generator().manual_seed(2))
    got = gf.layer_queries_and_keys(model, ids, [2, 5], 6)
    assert sorted(got) == [2, 5]
    for r, (q, keys, scale, cap) in got.items():
        assert q.shape[1] == 6 and keys.shape[1] == 26
        for weights, n in (("logit", 1), ("softmax", 6), ("softmax", 2)):
            direct = gf.layer_scores(model, ids, [r], smooth=5, queries=n, weights=weights, span=(1, 20))[r]
            again = gf.qk_scores(q[:, -n:], keys, scale=scale, smooth=5, weights=weights, span=(1, 20), softcap=cap)
            torch.testing.assert_close(again, direct, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="queries"):
        gf.layer_queries_and_keys(model, ids, [2], 0)


def test_layer_scores_validate_options():
    model = _llama()
    ids = torch.randint(3, 300, (1, 10))
    with pytest.raises(ConfigError, match="weights"):
        gf.layer_scores(model, ids, [1], weights="prob")
    with pytest.raises(ConfigError, match="queries"):
        gf.layer_scores(model, ids, [1], queries=-1)
    with pytest.raises(InputError, match="span"):
        gf.layer_scores(model, ids, [1], span=(3, 11))


def test_forward_stops_at_the_selection_layer():
    model = _llama(num_layers=6)
    calls = {i: 0 for i in range(6)}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(model.model.layers)
    ]
    head_calls = []
    hooks.append(model.lm_head.register_forward_hook(lambda m, a, o: head_calls.append(1)))
    try:
        gf.layer_scores(model, torch.randint(3, 300, (1, 16)), [1, 2])
    finally:
        for h in hooks:
            h.remove()
    assert calls == {0: 1, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}  # layer 2 stops inside its attention
    assert head_calls == []
    # the hooks are gone: a normal forward runs every layer
    with torch.no_grad():
        out = model(torch.randint(3, 300, (1, 8)))
    assert out.logits.shape == (1, 8, 300)


def test_hook_ignores_forward_passes_of_other_threads():
    model = _llama()
    ids = torch.randint(3, 300, (1, 12))
    seen = {}
    gate = threading.Event()
    release = threading.Event()

    def other():
        gate.wait()
        with torch.no_grad():
            seen["logits"] = model(ids).logits.shape
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    original = gf._window_scores

    def slow(*args, **kwargs):  # let the other thread run a full forward while our hook is registered
        gate.set()
        release.wait(timeout=30)
        return original(*args, **kwargs)

    gf._window_scores = slow
    try:
        gf.layer_scores(model, ids, [1])
    finally:
        gf._window_scores = original
    thread.join()
    assert seen["logits"] == (1, 12, 300)


def test_full_attention_layers_and_sliding_layer_rejected():
    model = _gemma()
    assert gf.full_attention_layers(model) == [2, 5]
    assert gf.default_layer(model) in (2, 5)
    with pytest.raises(ConfigError, match="sliding"):
        gf._check_layer(model, 1)
    with pytest.raises(ConfigError, match="layer must be in"):
        gf._check_layer(model, 6)
    llama = _llama(num_layers=10)
    assert gf.full_attention_layers(llama) == list(range(10))
    assert gf.default_layer(llama) == 4


# ---------------------------------------------------------------------------------------------- selection
def _fake_scores(scores, ids=None) -> gf.ContextScores:
    n = len(scores)
    ids = np.arange(10, 10 + n) if ids is None else ids
    context = "".join(f"w{i:03d} " for i in range(n))
    starts = np.arange(n) * 5
    return gf.ContextScores(
        context=context, token_ids=np.asarray(ids, dtype=np.int64), starts=starts, ends=starts + 4,
        scores={3: np.asarray(scores, dtype=np.float64)}, query_ids=np.array([7, 8]), prefix_ids=np.array([1]),
        windows=((0, n),), seconds=0.0,
    )


class _Decoder:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.mark.parametrize("k", [0, 1, 5, 17, 40])
def test_select_top_k_keeps_order_and_respects_k(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=40)
    sel = gf.select_top_k(_fake_scores(scores), 3, k, _Decoder())
    assert sel.k == k
    assert np.all(np.diff(sel.positions) > 0)  # original order, no duplicates
    expected = set(np.argsort(-scores)[:k].tolist())
    assert set(sel.positions.tolist()) == expected
    np.testing.assert_array_equal(sel.token_ids, 10 + sel.positions)
    np.testing.assert_array_equal(sel.scores, scores[sel.positions])
    assert sel.input_ids.tolist() == [1, *sel.token_ids.tolist(), 7, 8]
    assert sel.tokens == tuple(f"w{p:03d}" for p in sel.positions.tolist())
    assert sel.rate == pytest.approx(k / 40)
    if k:
        best = sel.top(1)[0]
        assert best[1] == pytest.approx(scores.max())


def test_select_top_k_validates():
    cs = _fake_scores(np.zeros(5))
    with pytest.raises(ConfigError):
        gf.select_top_k(cs, 3, -1, _Decoder())
    with pytest.raises(ConfigError, match="not scored"):
        gf.select_top_k(cs, 4, 2, _Decoder())
    assert gf.select_top_k(cs, 3, 99, _Decoder()).k == 5


def test_windows_split_evenly():
    assert gf._windows(0, 10) == []
    assert gf._windows(10, 10) == [(0, 10)]
    assert gf._windows(11, 10) == [(0, 6), (6, 11)]
    spans = gf._windows(1000, 300)
    assert spans[0][0] == 0 and spans[-1][1] == 1000 and len(spans) == 4
    assert all(a2 == b1 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))


def test_long_context_is_scored_in_windows_with_the_question_appended(tokenizer):
    model = _llama()
    context = CORPUS * 3
    question = "What is the secret code?"
    n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    cs = gf.score_context(model, tokenizer, context, question, [2], max_window=256)
    assert len(cs.windows) == math.ceil(n / (256 - cs.prefix_ids.size - cs.query_ids.size))
    assert cs.windows[0][0] == 0 and cs.windows[-1][1] == n == cs.token_ids.size
    # every window equals scoring that window alone, followed by the question
    a, b = cs.windows[1]
    seq = torch.from_numpy(np.concatenate([cs.prefix_ids, cs.token_ids[a:b], cs.query_ids])).view(1, -1)
    span = (int(cs.prefix_ids.size), int(cs.prefix_ids.size) + b - a)
    alone = gf.layer_scores(model, seq, [2], span=span)[2]
    np.testing.assert_allclose(cs.scores[2][a:b], alone.double().numpy(), rtol=1e-5, atol=1e-5)
    # offsets point at the token text
    for i in (0, 5, n - 1):
        piece = context[cs.starts[i] : cs.ends[i]]
        assert tokenizer.decode([int(cs.token_ids[i])]) == piece


def test_question_changes_the_scores(tokenizer):
    model = _llama()
    a = gf.score_context(model, tokenizer, CORPUS, "Which city is the capital of Italy?", [2])
    b = gf.score_context(model, tokenizer, CORPUS, None, [2])
    assert a.token_ids.tolist() == b.token_ids.tolist()
    assert not np.allclose(a.scores[2], b.scores[2])


def test_unit_scores_pool_and_fill():
    from ctxzip.protect import ProtectionRules
    from ctxzip.tokens import get_counter
    from ctxzip.units import segment

    u = segment("alpha beta gamma", ProtectionRules(), get_counter("gpt-4o"))
    # tokens: "alpha", " be", "ta", and one token covering " gamma"
    starts = np.array([0, 5, 8, 10])
    ends = np.array([5, 8, 10, 16])
    scores = np.array([1.0, 2.0, 4.0, -3.0])
    np.testing.assert_allclose(gf._unit_scores(u, starts, ends, scores, "max"), [1.0, 4.0, -3.0])
    np.testing.assert_allclose(gf._unit_scores(u, starts, ends, scores, "mean"), [1.0, 3.0, -3.0])
    # a unit inside a longer token gets that token's score
    filled = gf._unit_scores(u, np.array([0, 5]), np.array([5, 16]), np.array([1.0, 2.0]), "max")
    np.testing.assert_allclose(filled, [1.0, 2.0, 2.0])


def test_sentence_lift_ranks_whole_sentences():
    from ctxzip.protect import ProtectionRules
    from ctxzip.tokens import get_counter
    from ctxzip.units import segment

    u = segment("One two three. Four five six. Seven eight.", ProtectionRules(), get_counter("gpt-4o"))
    assert u.sentence.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    words = np.array([0.1, 0.9, 0.2, 0.3, 0.4, 0.35, 0.0, 0.05])
    np.testing.assert_array_equal(gf.sentence_lift(u, words, 0.0), words)
    np.testing.assert_allclose(gf.sentence_lift(u, words, 1.0), [0.9, 0.9, 0.9, 0.4, 0.4, 0.4, 0.05, 0.05])
    half = gf.sentence_lift(u, words, 0.5)
    np.testing.assert_allclose(half, 0.5 * words + 0.5 * gf.sentence_lift(u, words, 1.0))
    # with the lift, a budget of one sentence keeps the sentence of the best word whole
    from ctxzip.select import select_to_budget

    counter = get_counter("gpt-4o")
    sel = select_to_budget([u], [gf.sentence_lift(u, words, 1.0)], counter.count("One two three."), counter)
    assert sel.texts[0].strip() == "One two three."
    sel = select_to_budget([u], [words], counter.count("One two three."), counter)
    assert sel.texts[0].strip() != "One two three."


# ---------------------------------------------------------------------------------------------- compressor
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("gemfilter") / "tiny-llama"
    model = _llama(num_layers=4)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_config_validation():
    with pytest.raises(ConfigError, match="smooth"):
        gf.GemFilterCompressor(smooth=4)
    with pytest.raises(ConfigError, match="pool"):
        gf.GemFilterCompressor(pool="median")
    with pytest.raises(ConfigError, match="layer"):
        gf.GemFilterCompressor(layer=-1)
    with pytest.raises(ConfigError, match="template"):
        gf.GemFilterCompressor(template="markdown")
    with pytest.raises(ConfigError, match="max_window"):
        gf.GemFilterCompressor(max_window=10)
    with pytest.raises(ConfigError, match="queries"):
        gf.GemFilterCompressor(queries=-2)
    with pytest.raises(ConfigError, match="weights"):
        gf.GemFilterCompressor(weights="max")
    with pytest.raises(ConfigError, match="sentence"):
        gf.GemFilterCompressor(sentence=1.5)
    with pytest.raises(ConfigError, match="unknown option"):
        gf.GemFilterCompressor(topk=3)


def test_compressor_budget_order_protection_and_details(tiny_dir):
    from ctxzip.registry import get_compressor

    comp = get_compressor("gemfilter", model=str(tiny_dir), layer=2, device="cpu")
    docs = [CORPUS, "Rome is old. The secret code is 4417. " * 6]
    request = CompressionRequest.create(
        docs, question="What is the secret code?", rate=0.3, protect={"patterns": [r"4417"]}
    )
    result = comp.compress(request)
    assert abs(result.compressed_tokens - result.details["budget"]) <= 0.05 * result.details["budget"]
    for d, original in zip(result.documents, docs, strict=False):
        pos = 0
        for span in d.spans:  # kept spans are ordered pieces of the original
            assert span.start >= pos and original[span.start : span.end] in original
            pos = span.end
        assert "".join(original[s.start : s.end] for s in d.spans) == d.text
    assert "4417" in result.documents[1].text
    assert result.details["layer"] == 2 and result.details["windows"] == 2  # 512-position model: two windows
    assert result.details["model_tokens"] > 0
    kept = result.details["kept_token_ids"]
    assert 0 < len(kept) < result.details["model_tokens"]
    # the kept model tokens decode to (nearly) the kept text: every kept word is in them
    decoded = comp._lm(comp.config).tokenizer.decode(list(kept))
    for word in result.documents[0].text.split()[:10]:
        assert word in decoded


def test_compressor_defaults_are_the_papers_scoring(tiny_dir):
    """By default the compressor scores with GemFilter's own rule: the last query's logits at layer r summed over
    heads, width-5 mean pooled over the context tokens, no sentence lift (the SnapKV-style vote and the sentence
    lift are opt-in)."""
    cfg = gf.GemFilterCompressor.Config()
    assert (cfg.queries, cfg.weights, cfg.smooth, cfg.sentence) == (1, "logit", 5, 0.0)
    comp = gf.GemFilterCompressor(model=str(tiny_dir), layer=2, device="cpu")
    model = comp._lm(comp.config).model
    context = CORPUS[:400]
    _, layer, cs = comp._score_context(comp.config, context, "What is the secret code?")
    assert layer == 2 and len(cs.windows) == 1
    ids = torch.from_numpy(np.concatenate([cs.prefix_ids, cs.token_ids, cs.query_ids])).view(1, -1)
    a, b = cs.prefix_ids.size, cs.prefix_ids.size + cs.token_ids.size
    expected = _pool(_manual_raw_scores(model, ids, 2, gemma=False)[a:b], 5)
    np.testing.assert_allclose(cs.scores[2], expected.double().numpy(), rtol=1e-4, atol=1e-4)
    # the opt-in vote scores differently, so the default above is not that one by accident
    vote = dataclasses.replace(comp.config, queries=0, weights="softmax")
    _, _, cs_vote = comp._score_context(vote, context, "What is the secret code?")
    assert not np.allclose(cs_vote.scores[2], cs.scores[2])


def test_compressor_per_call_options_and_inspect(tiny_dir):
    comp = gf.GemFilterCompressor(model=str(tiny_dir), layer=1, device="cpu")
    a = comp.compress(CompressionRequest.create(CORPUS, question="capital of Italy?", rate=0.4))
    b = comp.compress(CompressionRequest.create(CORPUS, question="capital of Italy?", rate=0.4, layer=3))
    assert a.details["layer"] == 1 and b.details["layer"] == 3
    with pytest.raises(ConfigError, match="layer must be in"):
        comp.compress(CompressionRequest.create(CORPUS, question="q?", rate=0.4, layer=9))
    sel = comp.inspect(CORPUS, "What is the secret code?", k=25)
    assert sel.k == 25 and sel.layer == 1 and np.all(np.diff(sel.positions) > 0)
    assert sel.all_scores.size == sel.context_tokens
    assert set(sel.positions.tolist()) == set(np.argsort(-sel.all_scores)[:25].tolist())
    assert comp.inspect(CORPUS, "q?", rate=0.5).k == round(0.5 * sel.context_tokens)
    with pytest.raises(ConfigError):
        comp.inspect(CORPUS, "q?", k=3, rate=0.5)
    with pytest.raises(InputError):
        comp.inspect(["not", "a", "string"], "q?", k=3)


def test_compressor_under_budget_and_empty(tiny_dir):
    comp = gf.GemFilterCompressor(model=str(tiny_dir), layer=1, device="cpu")
    r = comp.compress(CompressionRequest.create("short text", question="q?", rate=1.0))
    assert r.text == "short text" and "layer" not in r.details
    r = comp.compress(CompressionRequest.create("", question="q?", rate=0.5))
    assert r.text == ""


def test_import_ctxzip_stays_light():
    import subprocess
    import sys

    code = "import sys, ctxzip; import ctxzip.compressors.gemfilter; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- shipped models
@pytest.mark.slow
def test_smollm2_finds_a_needle():
    from ctxzip.bench.metrics import answer_hit

    needle = "The secret passphrase for the vault is purple elephant seventeen."
    filler = "The committee reviewed the quarterly budget and discussed the schedule for the next meeting. "
    context = filler * 20 + needle + " " + filler * 20
    comp = gf.GemFilterCompressor(model="smollm2-135m", device="cpu")
    result = comp.compress(
        CompressionRequest.create(context, question="What is the secret passphrase for the vault?", rate=0.15)
    )
    assert answer_hit(result.text, ["purple elephant seventeen"]) == 1.0
    assert result.details["layer"] == gf.DEFAULT_LAYERS["smollm2-135m"]
    sel = comp.inspect(context, "What is the secret passphrase for the vault?", rate=0.1)
    assert "elephant" in sel.text


@pytest.mark.slow
def test_gemma3_default_layer_is_global_and_scores():
    comp = gf.GemFilterCompressor(device="cpu")
    assert comp.config.model == "gemma-3-270m"  # the default model (docs/benchmarks/gemfilter.md)
    lm = comp._lm(comp.config)
    layer = gf.default_layer(lm.model, "gemma-3-270m")
    assert layer in gf.full_attention_layers(lm.model)
    assert gf.full_attention_layers(lm.model) == [5, 11, 17]
    sel = comp.inspect("Paris is the capital of France. " * 30, "What is the capital of France?", k=40)
    assert sel.k == 40 and np.all(np.isfinite(sel.all_scores)) and sel.layer == layer
    cfg = dataclasses.replace(comp.config, layer=4)
    with pytest.raises(ConfigError, match="sliding"):
        comp._layer(cfg, lm)


def test_generate_two_passes_and_reports_ttft(tiny_dir):
    from ctxzip.gemfilter_generate import generate, greedy_decode

    comp = gf.GemFilterCompressor(model=str(tiny_dir), layer=2, device="cpu")
    context = CORPUS[:400]
    report = generate(context, "What is the secret code?", k=30, max_new_tokens=6, compressor=comp)
    sel = report.selection
    assert sel.k == 30
    assert report.input_tokens == sel.prefix_ids.size + 30 + sel.query_ids.size
    assert report.full_input_tokens == sel.prefix_ids.size + sel.context_ids.size + sel.query_ids.size
    assert report.ttft_seconds >= report.select_seconds > 0
    assert report.full_ttft_seconds is not None and report.ttft_speedup is not None
    lm = comp._lm(comp.config)
    # the second pass is plain greedy decoding of prefix + kept tokens + question
    with torch.no_grad():
        ref = lm.model.generate(
            torch.from_numpy(sel.input_ids).view(1, -1), max_new_tokens=6, do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=None,
        )[0, sel.input_ids.size :].tolist()
    ids, first, total = greedy_decode(lm.model, torch.from_numpy(sel.input_ids).view(1, -1), 6, set())
    assert ids == ref and 0 < first <= total
    with_eos, _, _ = greedy_decode(lm.model, torch.from_numpy(sel.input_ids).view(1, -1), 6,
                                   {lm.tokenizer.eos_token_id})
    assert report.answer == lm.tokenizer.decode(with_eos, skip_special_tokens=True)
    # too long for the model: the full prompt is not run
    long = generate(CORPUS * 3, "code?", k=20, max_new_tokens=2, compressor=comp)
    assert long.full_answer is None and long.full_ttft_seconds is None and long.selection.windows >= 2
    with pytest.raises(ConfigError):
        generate(context, "", k=5, compressor=comp)


def test_frame_ids_plain_and_chat(tokenizer):
    pre, post = gf.frame_ids(tokenizer, "Where?", "plain")
    assert pre.size == 0 or pre.tolist() == tokenizer("", add_special_tokens=True)["input_ids"]
    assert tokenizer.decode(post.tolist()) == gf.QUESTION_TEMPLATE.format(question="Where?")
    with pytest.raises(ConfigError, match="chat template"):
        gf.frame_ids(tokenizer, "Where?", "chat")
    with pytest.raises(ConfigError, match="template"):
        gf.frame_ids(tokenizer, "Where?", "fancy")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    tok.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}" \
                        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    pre, post = gf.frame_ids(tok, "Where?", "chat")
    text = "the capital"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": text + gf.QUESTION_TEMPLATE.format(question="Where?")}],
        tokenize=False, add_generation_prompt=True,
    )
    assert tok.decode(pre.tolist()) + text + tok.decode(post.tolist()) == rendered
    assert gf.frame_ids(tok, None, "chat")[1].size > 0  # no question: the fixed suffix is the query
