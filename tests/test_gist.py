"""gist soft compression: config checks, encoder shapes and pooling, weights, segment cache, generation, training."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ctxzip.errors import CacheError, ConfigError, ModelError
from ctxzip.gist.config import GistConfig, TrainConfig

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the capital "
        "of Germany. A journey of a thousand miles begins with a single step. ")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from ctxzip.models import load_causal_lm
    from ctxzip.models.testing import make_tiny_causal_lm

    torch.manual_seed(0)
    d = make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_gist"), layers=4, max_position_embeddings=512)
    return load_causal_lm(str(d), device="cpu")


@pytest.fixture(scope="module")
def gist_cfg():
    return GistConfig(decoder="tiny", factor=4, factors=(4, 8), max_segment_tokens=24, frozen_layers=1,
                      trainable_layers=1, projector_hidden=16)


@pytest.fixture(scope="module")
def tiny_gist(tiny_lm, gist_cfg, tmp_path_factory):
    from ctxzip.gist.api import load_gist
    from ctxzip.gist.model import GistEncoder

    torch.manual_seed(1)
    enc = GistEncoder(gist_cfg, tiny_lm.model)
    with torch.no_grad():  # non-zero projector so the test exercises every trainable part
        enc.proj_out.weight.normal_(0, 0.2)
    path = enc.save(tmp_path_factory.mktemp("gist_w") / "tiny.safetensors", dtype="float32")
    return load_gist(path, decoder=tiny_lm)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, msg", [
    ({"factor": 3}, "not one of the trained factors"),
    ({"factors": ()}, "non-empty"),
    ({"max_segment_tokens": 4}, "at least the largest factor"),
    ({"frozen_layers": -1}, "frozen_layers"),
    ({"causal": "yes"}, "causal"),
])
def test_gist_config_rejects(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        GistConfig(**kwargs)


def test_gist_config_json_roundtrip():
    cfg = GistConfig(factor=8, causal=False)
    assert GistConfig.from_mapping(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="unknown gist config"):
        GistConfig.from_mapping({"factorr": 4})


@pytest.mark.parametrize("kwargs, msg", [
    ({"recon_weight": 1.5}, "recon_weight"),
    ({"lr": 0}, "lr"),
    ({"segment_tokens": 4}, "segment_tokens"),
    ({"out_dir": ""}, "out_dir"),
    ({"schedule": "linear"}, "schedule"),
    ({"warmup_steps": -1}, "warmup_steps"),
])
def test_train_config_rejects(kwargs, msg):
    base = {"out_dir": "/tmp/x"}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**base)


def test_learning_rate_schedule():
    const = TrainConfig(out_dir="/tmp/x", lr=1e-3)
    assert {const.lr_at(s) for s in (0, 10, 99_999)} == {1e-3}
    cos = TrainConfig(out_dir="/tmp/x", lr=1e-3, schedule="cosine", warmup_steps=10, max_steps=110)
    warm = [cos.lr_at(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(1e-4) and warm[-1] == pytest.approx(1e-3)
    decay = [cos.lr_at(s) for s in range(10, 111)]
    assert decay[0] == pytest.approx(1e-3) and decay[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[50] == pytest.approx(0.55e-3)  # half-way: the mean of lr and lr/10
    assert cos.lr_at(500) == pytest.approx(1e-4)  # past max_steps it stays at the floor


# ---------------------------------------------------------------- encoder
def test_encoder_vector_counts_and_padding(tiny_gist):
    enc = tiny_gist.encoder
    ids = torch.randint(3, 300, (2, 13))
    with torch.no_grad():
        vecs, counts = enc(ids, torch.tensor([13, 6]), 4)
        alone, c1 = enc(ids[1:, :6], torch.tensor([6]), 4)
    assert vecs.shape == (2, 4, enc.hidden_size)
    assert counts.tolist() == [4, 2] and c1.tolist() == [2]
    # right padding does not change a shorter segment's vectors (pads are masked and excluded from the mean)
    assert torch.allclose(vecs[1, :2], alone[0], atol=1e-5)


def test_untrained_encoder_is_mean_pooled_embeddings(tiny_lm, gist_cfg):
    from ctxzip.gist.model import GistEncoder

    enc = GistEncoder(gist_cfg, tiny_lm.model)
    ids = torch.randint(3, 300, (1, 10))
    with torch.no_grad():
        vecs, _ = enc(ids, torch.tensor([10]), 4)
        emb = tiny_lm.model.get_input_embeddings()(ids)[0]
    expected = torch.stack([emb[0:4].mean(0), emb[4:8].mean(0), emb[8:10].mean(0)])
    assert torch.allclose(vecs[0], expected, atol=1e-6)


def test_non_causal_encoder_sees_later_tokens(tiny_lm, gist_cfg):
    from ctxzip.gist.model import GistEncoder

    torch.manual_seed(2)
    enc = GistEncoder(gist_cfg.replace(causal=False), tiny_lm.model)
    with torch.no_grad():
        enc.proj_out.weight.normal_(0, 0.5)
        a = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
        b = a.clone()
        b[0, 7] = 40
        va, _ = enc(a, torch.tensor([8]), 4)
        vb, _ = enc(b, torch.tensor([8]), 4)
        enc_c = GistEncoder(gist_cfg, tiny_lm.model)
        enc_c.load_state_dict(enc.state_dict())
        ca, _ = enc_c(a, torch.tensor([8]), 4)
        cb, _ = enc_c(b, torch.tensor([8]), 4)
    assert not torch.allclose(va[0, 0], vb[0, 0])  # bidirectional: the first group sees token 7
    assert torch.allclose(ca[0, 0], cb[0, 0])  # causal: it does not


def test_encoder_rejects_untrained_factor_and_deep_config(tiny_gist, tiny_lm, gist_cfg):
    from ctxzip.gist.model import GistEncoder

    with pytest.raises(ConfigError, match="trained factors"):
        tiny_gist.encoder(torch.ones((1, 8), dtype=torch.long), torch.tensor([8]), 2)
    with pytest.raises(ConfigError, match="decoder has 4 layers"):
        GistEncoder(gist_cfg.replace(frozen_layers=4), tiny_lm.model)


def test_weights_roundtrip_and_bad_file(tiny_gist, tiny_lm, tmp_path):
    from ctxzip.gist.model import GistEncoder

    path = tiny_gist.encoder.save(tmp_path / "w.safetensors", dtype="float32")
    again = GistEncoder.load(path, tiny_lm.model)
    ids = torch.randint(3, 300, (1, 9))
    with torch.no_grad():
        a, _ = tiny_gist.encoder(ids, torch.tensor([9]), 8)
        b, _ = again(ids, torch.tensor([9]), 8)
    assert torch.equal(a, b)
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        GistEncoder.load(tmp_path / "bad.safetensors", tiny_lm.model)
    with pytest.raises(ModelError, match="do not exist"):
        GistEncoder.load(tmp_path / "missing.safetensors", tiny_lm.model)


# ---------------------------------------------------------------- compress + cache
def test_vectors_codec_roundtrip_and_corruption():
    from ctxzip.gist.api import decode_vectors, encode_vectors

    arr = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    blob = encode_vectors(arr)
    assert np.array_equal(decode_vectors(blob, 4), arr.astype(np.float16))
    with pytest.raises(CacheError):
        decode_vectors(blob[:-2] + b"\x00\x01", 4)
    with pytest.raises(CacheError, match="shape"):
        decode_vectors(blob, 5)


def test_compress_splits_segments_and_uses_cache(tiny_gist):
    from ctxzip.cache import open_cache
    from ctxzip.gist.api import compress

    cache = open_cache("memory")
    long_text = TEXT * 2
    n_tok = len(tiny_gist.lm.tokenizer(long_text, add_special_tokens=False)["input_ids"])
    first = compress([long_text, "Paris is the capital of France."], model=tiny_gist, factor=4, cache=cache)
    n_long = math.ceil(n_tok / 24)
    assert len(first.segments) == n_long + 1
    assert all(s.n_tokens <= 24 for s in first.segments)
    assert first.n_tokens == n_tok + first.segments[-1].n_tokens
    assert all(s.n_vectors == math.ceil(s.n_tokens / 4) for s in first.segments)
    assert first.cache_hits == 0 and cache.stats().writes == len({s.key for s in first.segments})
    second = compress([long_text, "Paris is the capital of France."], model=tiny_gist, factor=4, cache=cache)
    assert second.cache_hits == len(second.segments)
    for a, b in zip(first.segments, second.segments):
        assert np.array_equal(a.vectors, b.vectors)
    uncached = compress([long_text], model=tiny_gist, factor=4, cache=False)
    assert np.array_equal(uncached.segments[0].vectors, first.segments[0].vectors)
    eight = compress([long_text], model=tiny_gist, factor=8, cache=cache)
    assert eight.cache_hits == 0 and eight.segments[0].key != first.segments[0].key
    assert first.rate == pytest.approx(first.decoder_positions / first.n_tokens)


def test_compress_recomputes_corrupt_cache_entry(tiny_gist):
    from ctxzip.cache import open_cache
    from ctxzip.gist.api import compress

    cache = open_cache("memory")
    good = compress(["Berlin is the capital of Germany."], model=tiny_gist, cache=cache)
    key = good.segments[0].key
    cache.set_many({key: b"garbage"})
    again = compress(["Berlin is the capital of Germany."], model=tiny_gist, cache=cache)
    assert again.cache_hits == 0 and cache.stats().errors == 1
    assert np.array_equal(again.segments[0].vectors, good.segments[0].vectors)


def test_compress_rejects_bad_input(tiny_gist):
    from ctxzip.errors import InputError
    from ctxzip.gist.api import compress

    with pytest.raises(ConfigError, match="trained for"):
        compress("text", model=tiny_gist, factor=2, cache=False)
    with pytest.raises(InputError):
        compress([1, 2], model=tiny_gist, cache=False)


# ---------------------------------------------------------------- generate
def test_generate_matches_manual_greedy_decoding(tiny_gist):
    from ctxzip.gist.api import compress, decoder_inputs, generate

    ctx = compress([TEXT], model=tiny_gist, factor=4, cache=False)
    out = generate(None, ctx, "capital of France?", gist=tiny_gist, max_new_tokens=5, eos_token_id=None)
    emb = decoder_inputs(tiny_gist, ctx, "\nQuestion: capital of France?\nAnswer:")
    model = tiny_gist.lm.model
    toks = []
    with torch.no_grad():
        for _ in range(5):
            nxt = int(model(inputs_embeds=emb).logits[0, -1].argmax())
            toks.append(nxt)
            emb = torch.cat([emb, model.get_input_embeddings()(torch.tensor([[nxt]]))], 1)
    assert list(out.token_ids) == toks
    for given in (model, tiny_gist.lm):  # a Hugging Face model or a LoadedLM give the same tokens
        again = generate(given, ctx, "capital of France?", gist=tiny_gist, max_new_tokens=5, eos_token_id=None)
        assert again.token_ids == out.token_ids
    assert out.prompt_positions == ctx.decoder_positions + len(
        tiny_gist.lm.tokenizer("\nQuestion: capital of France?\nAnswer:", add_special_tokens=False)["input_ids"])


def test_generate_rejects_foreign_context(tiny_gist):
    import dataclasses

    from ctxzip.gist.api import compress, generate

    ctx = compress([TEXT], model=tiny_gist, cache=False)
    other = dataclasses.replace(ctx, fingerprint="someone-else")
    with pytest.raises(ModelError, match="other gist weights"):
        generate(None, other, "q", gist=tiny_gist)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(None, ctx, "q", gist=tiny_gist, max_new_tokens=0)


# ---------------------------------------------------------------- training + evaluation
def _corpus(tok):
    from ctxzip.gist.data import TextDoc, TokenizedCorpus

    return TokenizedCorpus([TextDoc("a", TEXT * 6)], tok)


def test_training_resume_equals_uninterrupted_run(tiny_lm, gist_cfg, tmp_path):
    from ctxzip.gist.train import train

    corpus = _corpus(tiny_lm.tokenizer)

    def cfg(out, steps):
        return TrainConfig(out_dir=str(out), segment_tokens=16, continuation_tokens=8, batch_size=2, lr=1e-2,
                           max_steps=steps, checkpoint_every=2, max_minutes=5)

    straight = train(cfg(tmp_path / "a", 6), gist_cfg, lm=tiny_lm, corpus=corpus)
    train(cfg(tmp_path / "b", 3), gist_cfg, lm=tiny_lm, corpus=corpus)
    resumed = train(cfg(tmp_path / "b", 6), gist_cfg, lm=tiny_lm, corpus=corpus)
    assert straight.steps == 6 and resumed.start_step == 3 and resumed.steps == 6
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    lines = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {r["task"] for r in lines} <= {"cont", "recon"} and all(r["factor"] in (4, 8) for r in lines)
    with pytest.raises(ConfigError, match="resume with the same options"):
        train(cfg(tmp_path / "b", 7), gist_cfg.replace(projector_hidden=8), lm=tiny_lm, corpus=corpus)


def test_training_lowers_continuation_loss(tiny_lm, gist_cfg, tmp_path):
    from ctxzip.gist.train import train

    corpus = _corpus(tiny_lm.tokenizer)
    cfg = TrainConfig(out_dir=str(tmp_path), segment_tokens=16, continuation_tokens=8, batch_size=4, lr=3e-3,
                      max_steps=30, checkpoint_every=100, max_minutes=5, recon_weight=0.0)
    train(cfg, gist_cfg.replace(factors=(4,)), lm=tiny_lm, corpus=corpus)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_evaluate_reports_consistent_numbers(tiny_gist):
    from ctxzip.gist.data import TextDoc
    from ctxzip.gist.evaluate import evaluate

    rep = evaluate(tiny_gist, [TextDoc("a", TEXT * 6)], windows=4, segment_tokens=16, continuation_tokens=8)
    assert [r.factor for r in rep.factors] == [4, 8]
    for r in rep.factors:
        assert r.gap_closed == pytest.approx((r.nll_none - r.nll_gist) / (r.nll_none - r.nll_full))
        assert 0.0 <= r.recon_accuracy <= 1.0 and r.vectors_per_segment == math.ceil(16 / r.factor)
    assert "gap closed" in rep.table()


def test_time_to_first_token_report(tiny_gist):
    from ctxzip.gist.evaluate import time_to_first_token

    rep = time_to_first_token(tiny_gist, TEXT * 2, "capital?", factor=4)
    assert rep.cache_hits == rep.segments and rep.gist_positions < rep.full_positions
    assert rep.full_seconds > 0 and rep.gist_cached_seconds > 0


def test_split_holds_out_every_eighth_document():
    from ctxzip.gist.data import TextDoc, split_corpus

    docs = [TextDoc(f"d{i:02d}", "x") for i in range(16)]
    train_docs, held = split_corpus(docs)
    assert [d.name for d in held] == ["d07", "d15"] and len(train_docs) == 14
    assert not {d.name for d in held} & {d.name for d in train_docs}


def test_import_gist_stays_light():
    code = "import sys, ctxzip.gist; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_rejects_bad_factors():
    from ctxzip.cli import main

    assert main(["train-gist", "--out", "/tmp/unused-gist", "--factors", "4,x"]) == 2


def test_gist_answer_nll_splices_vectors_into_the_reader_prompt(tiny_gist):
    from ctxzip.bench.reader import qa_prompt
    from ctxzip.gist.api import compress
    from ctxzip.gist.evaluate import gist_answer_nll
    from ctxzip.gist.model import CONT, SEP

    ctx = compress([TEXT, "Berlin is the capital of Germany."], model=tiny_gist, factor=4, cache=False)
    got = gist_answer_nll(tiny_gist, ctx, "capital of France?", "Paris")
    tok, model = tiny_gist.lm.tokenizer, tiny_gist.lm.model
    before, after = qa_prompt("@@", "capital of France?").split("@@")
    emb = model.get_input_embeddings()
    def ids(s):
        return (torch.tensor(tok(s, add_special_tokens=False)["input_ids"]))
    ans = ids(" Paris")
    special = tiny_gist.encoder.special.detach()
    rows = [emb(ids(before))]
    for s in ctx.segments:
        rows += [special[SEP][None], torch.from_numpy(s.vectors.astype(np.float32))]
    rows += [special[CONT][None], emb(torch.cat([ids(after), ans]))]
    with torch.no_grad():
        x = torch.cat([r.detach() for r in rows], 0)[None]
        logits = model(inputs_embeds=x).logits[0, -len(ans) - 1 : -1]
        want = float(torch.nn.functional.cross_entropy(logits, ans))
    assert got == pytest.approx(want, rel=1e-5)
    other = gist_answer_nll(tiny_gist, ctx, "capital of France?", "Berlin Berlin")
    assert other != pytest.approx(got)
