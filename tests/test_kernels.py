"""ctxzip.kernels: every Triton kernel (in Triton's CPU interpreter) against its PyTorch reference, the
references against naive definitions, the dispatcher, input checks, and one pass through a real SmolLM2 forward.

TRITON_INTERPRET must be set before Triton is first imported, hence the environment edit above the imports
(the kernel modules import Triton lazily, on their first Triton launch).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

torch = pytest.importorskip("torch")

from ctxzip.errors import ConfigError, InputError  # noqa: E402
from ctxzip.kernels import (  # noqa: E402
    IGNORE_INDEX,
    choose_backend,
    contrastive_nll,
    contrastive_nll_reference,
    fused_nll,
    fused_nll_reference,
    last_query_scores,
    last_query_scores_reference,
    naive_nll,
    word_topk,
)
from ctxzip.kernels.fused_nll import lse_partials  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

needs_triton = pytest.mark.skipif(
    not (os.environ.get("TRITON_INTERPRET") == "1" and __import__("importlib").util.find_spec("triton")),
    reason="needs triton and TRITON_INTERPRET=1 (set before triton was imported)",
)

# Triton vs reference: both compute in float32 from the same (possibly bf16) values; the gap is summation order.
NLL_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-5), torch.bfloat16: dict(atol=3e-4, rtol=1e-4)}
VOCAB = 1000  # not a multiple of any tile size (512 in the interpreter, 64/128 on GPU)


def _lm_inputs(num_pos: int, hidden: int, vocab: int, dtype, *, seed: int = 0, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(num_pos, hidden, generator=gen).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) * (2.0 / math.sqrt(hidden))).to(dtype)
    b = torch.randn(vocab, generator=gen).to(dtype) if bias else None
    t = torch.randint(0, vocab, (num_pos,), generator=gen)
    t[::5] = IGNORE_INDEX
    return h, w, t, b


def _naive_entropy(hidden, weight, bias):
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1).float()


# ---------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("num_pos", [1, 7, 513])
@pytest.mark.parametrize("chunk", [None, 3, 100])
def test_fused_nll_reference_matches_full_logits(num_pos, chunk):
    h, w, t, b = _lm_inputs(num_pos, 64, VOCAB, torch.float32)
    nll, ent = fused_nll_reference(h, w, t, bias=b, return_entropy=True, chunk_size=chunk)
    assert nll.dtype == torch.float32 and nll.shape == (num_pos,)
    torch.testing.assert_close(nll, naive_nll(h, w, t, bias=b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, _naive_entropy(h, w, b), atol=1e-4, rtol=1e-5)
    assert torch.all(nll[t == IGNORE_INDEX] == 0)
    assert torch.all(nll[t != IGNORE_INDEX] > 0)


def test_fused_nll_reference_bf16_matches_full_logits():
    h, w, t, b = _lm_inputs(33, 576, VOCAB, torch.bfloat16)
    torch.testing.assert_close(
        fused_nll(h, w, t, bias=b, backend="torch"), naive_nll(h, w, t, bias=b), atol=1e-4, rtol=1e-5
    )


def test_fused_nll_matches_known_values():
    # two-token vocabulary, logits (0, log 3): p = (1/4, 3/4)
    hidden = torch.tensor([[1.0], [1.0], [1.0]])
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    targets = torch.tensor([0, 1, IGNORE_INDEX])
    nll, ent = fused_nll(hidden, weight, targets, return_entropy=True, backend="torch")
    expected_ent = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(nll, torch.tensor([math.log(4.0), -math.log(0.75), 0.0]))
    torch.testing.assert_close(ent, torch.full((3,), expected_ent))


def test_contrastive_reference_is_difference_of_naive():
    h, w, t, b = _lm_inputs(17, 64, VOCAB, torch.float32)
    h2 = h + 0.5 * torch.randn_like(h)
    expected = naive_nll(h, w, t, bias=b) - naive_nll(h2, w, t, bias=b)
    torch.testing.assert_close(contrastive_nll(h, h2, w, t, bias=b, backend="torch"), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(contrastive_nll_reference(h, h, w, t), torch.zeros(17))


def _naive_last_query(q, keys, smooth, scale):
    num_q, dim = q.shape
    num_kv, num_pos, _ = keys.shape
    group = num_q // num_kv
    raw = torch.zeros(num_pos, dtype=torch.float64)
    for head in range(num_q):
        raw += (keys[head // group].double() @ q[head].double()) * scale
    half = smooth // 2
    padded = torch.nn.functional.pad(raw, (half, half))
    return torch.stack([padded[i : i + smooth].sum() / smooth for i in range(num_pos)]).float()


@pytest.mark.parametrize("num_pos", [1, 7, 513])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4), (8, 1)])
@pytest.mark.parametrize("smooth", [1, 5])
def test_last_query_reference_matches_definition(num_pos, heads, smooth):
    gen = torch.Generator().manual_seed(num_pos)
    q = torch.randn(heads[0], 64, generator=gen)
    k = torch.randn(heads[1], num_pos, 64, generator=gen)
    out = last_query_scores(q, k, smooth=smooth, backend="torch")
    assert out.shape == (num_pos,) and out.dtype == torch.float32
    torch.testing.assert_close(out, _naive_last_query(q, k, smooth, 1 / 8), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        last_query_scores_reference(q, k, smooth=smooth, scale=0.5), _naive_last_query(q, k, smooth, 0.5),
        atol=1e-4, rtol=1e-5,
    )


def _naive_word_topk(probs, word_ids, ks):
    rows, _ = probs.shape
    num_words = int(word_ids.max()) + 1 if word_ids.numel() else 0
    means = torch.full((rows, num_words), float("-inf"))
    keep = torch.zeros((rows, num_words), dtype=torch.bool)
    for r in range(rows):
        groups: dict[int, list[float]] = {}
        for p, w in zip(probs[r].tolist(), word_ids[r].tolist(), strict=True):
            if w >= 0:
                groups.setdefault(w, []).append(p)
        for w, ps in groups.items():
            means[r, w] = sum(ps) / len(ps)
        ranked = sorted(groups, key=lambda w: (-float(means[r, w]), w))
        for w in ranked[: int(ks[r])]:
            keep[r, w] = True
    return means, keep


def _word_batch(rows: int, length: int, *, seed: int, dtype=torch.float32, ties: bool = False):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(rows, length, generator=gen)
    if ties:
        probs = (probs * 4).floor() / 4
    ids = torch.sort(torch.randint(0, max(1, length // 2), (rows, length), generator=gen), dim=1).values
    ids[:, 0] = -1  # a leading special token
    if length > 4:
        ids[0, -3:] = -1  # padding at the end of the first chunk
    return probs.to(dtype), ids


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 513)])
@pytest.mark.parametrize("ties", [False, True])
def test_word_topk_reference_matches_definition(shape, ties):
    probs, ids = _word_batch(*shape, seed=shape[1], ties=ties)
    word_probs, keep = word_topk(probs, ids, keep=0.4, backend="torch")
    present = (word_probs > float("-inf")).sum(1)
    ks = torch.ceil(present.double() * 0.4 - 1e-9).long()
    means, expected = _naive_word_topk(probs, ids, ks)
    torch.testing.assert_close(word_probs, means, atol=1e-6, rtol=1e-6)
    assert torch.equal(keep, expected)
    assert torch.equal(keep.sum(1), ks)


def test_word_topk_budgets():
    probs = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.3, 0.7, 0.0], [0.2, 0.8, 0.6, 0.4, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[-1, 0, 1, 1, 2, 3, -1], [0, 0, 1, 2, -1, -1, -1]])
    # row 0 means: w0=0.1 w1=0.5 w2=0.3 w3=0.7; row 1: w0=0.5 w1=0.6 w2=0.4 (w3 absent)
    wp, keep = word_topk(probs, ids, keep=2, backend="torch")
    torch.testing.assert_close(wp, torch.tensor([[0.1, 0.5, 0.3, 0.7], [0.5, 0.6, 0.4, float("-inf")]]))
    assert keep.tolist() == [[False, True, False, True], [True, True, False, False]]
    _, keep = word_topk(probs, ids, keep=0.3, backend="torch")  # ceil(0.3*4)=2, ceil(0.3*3)=1
    assert keep.sum(1).tolist() == [2, 1]
    _, keep = word_topk(probs, ids, keep=torch.tensor([0, 9]), backend="torch")
    assert keep.sum(1).tolist() == [0, 3]
    _, keep = word_topk(probs, ids, keep=torch.tensor([1.0, 0.0]), backend="torch")
    assert keep.sum(1).tolist() == [4, 0]
    _, keep = word_topk(probs[:, :1].expand(2, 10).contiguous(), torch.arange(10).expand(2, 10), keep=0.3)
    assert keep.sum(1).tolist() == [3, 3]  # 0.3 * 10 keeps 3 despite float rounding; ties keep the first words
    assert keep[0].tolist() == [True] * 3 + [False] * 7


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 4), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    keep=st.floats(0.0, 1.0),
)
def test_word_topk_invariants(counts, seed, keep):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([-1] + [w for w, c in enumerate(counts) for _ in range(c)] + [-1, -1])[None]
    probs = (torch.rand(ids.shape, generator=gen) * 8).round() / 8  # coarse values: plenty of ties
    word_probs, mask = word_topk(probs, ids, keep=keep, backend="torch")
    k = math.ceil(len(counts) * keep - 1e-9)
    assert int(mask.sum()) == k
    kept, dropped = word_probs[mask], word_probs[~mask]
    if kept.numel() and dropped.numel():
        assert float(kept.min()) >= float(dropped.max())
    # ties at the threshold are resolved towards earlier words
    if kept.numel() and dropped.numel() and float(kept.min()) == float(dropped.max()):
        tie = float(kept.min())
        kept_tied = torch.nonzero(mask[0] & (word_probs[0] == tie)).flatten()
        dropped_tied = torch.nonzero(~mask[0] & (word_probs[0] == tie)).flatten()
        assert int(kept_tied.max()) < int(dropped_tied.min())


# ------------------------------------------------------------------------------------ Triton vs reference


def _fused_case(num_pos, hidden, dtype):
    h, w, t, b = _lm_inputs(num_pos, hidden, VOCAB, dtype, seed=num_pos + hidden)
    nll, ent = fused_nll(h, w, t, bias=b, return_entropy=True, backend="triton")
    ref_nll, ref_ent = fused_nll_reference(h, w, t, bias=b, return_entropy=True)
    torch.testing.assert_close(nll, ref_nll, **NLL_TOL[dtype])
    torch.testing.assert_close(ent, ref_ent, **NLL_TOL[dtype])
    assert torch.all(nll[t == IGNORE_INDEX] == 0)
    if num_pos <= 7:  # the entropy-free variant of the kernel, against the full-logits cross-entropy
        plain = fused_nll(h, w, t, backend="triton")
        torch.testing.assert_close(plain, naive_nll(h, w, t), **NLL_TOL[dtype])


@needs_triton
@pytest.mark.parametrize("num_pos", [1, 7, 513])
@pytest.mark.parametrize("hidden", [64, 576])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_fused_nll_triton(num_pos, hidden, dtype):
    _fused_case(num_pos, hidden, dtype)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("hidden", [64, 576])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_fused_nll_triton_long(hidden, dtype):
    _fused_case(2049, hidden, dtype)


@needs_triton
def test_fused_nll_triton_mixed_dtypes_and_fp16():
    h, w, t, _ = _lm_inputs(19, 64, VOCAB, torch.float32)
    for hd, wd in [(torch.bfloat16, torch.float32), (torch.float16, torch.float16), (torch.float32, torch.bfloat16)]:
        got = fused_nll(h.to(hd), w.to(wd), t, backend="triton")
        torch.testing.assert_close(got, naive_nll(h.to(hd), w.to(wd), t), atol=3e-4, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("n_split", [2, 3])
def test_fused_nll_triton_vocab_split_merge(n_split):
    h, w, t, b = _lm_inputs(9, 64, 3 * VOCAB, torch.float32, seed=5)
    ((nll, ent),) = lse_partials([h], w, t, b, with_entropy=True, n_split=n_split)
    ref_nll, ref_ent = fused_nll_reference(h, w, t, bias=b, return_entropy=True)
    torch.testing.assert_close(nll, ref_nll, **NLL_TOL[torch.float32])
    torch.testing.assert_close(ent, ref_ent, **NLL_TOL[torch.float32])


@needs_triton
def test_fused_nll_triton_strided_hidden():
    h, w, t, b = _lm_inputs(12, 64, VOCAB, torch.float32, seed=9)
    wide = torch.cat([h, torch.randn(12, 30)], dim=1)[:, :64]  # row stride 94
    torch.testing.assert_close(
        fused_nll(wide, w, t, bias=b, backend="triton"), naive_nll(h, w, t, bias=b), **NLL_TOL[torch.float32]
    )


@needs_triton
@pytest.mark.parametrize("num_pos", [1, 7, 513, pytest.param(2049, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_contrastive_triton(num_pos, dtype):
    h, w, t, b = _lm_inputs(num_pos, 64, VOCAB, dtype, seed=num_pos)
    h2 = (h.float() + 0.5 * torch.randn(h.shape)).to(dtype)
    got = contrastive_nll(h, h2, w, t, bias=b, backend="triton")
    torch.testing.assert_close(got, contrastive_nll_reference(h, h2, w, t, bias=b), **NLL_TOL[dtype])
    assert torch.all(got[t == IGNORE_INDEX] == 0)


LQ_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-5), torch.bfloat16: dict(atol=2e-4, rtol=1e-4)}


@needs_triton
@pytest.mark.parametrize("num_pos", [1, 7, 513, pytest.param(2049, marks=pytest.mark.slow)])
@pytest.mark.parametrize("heads,dim", [((9, 3), 64), ((4, 4), 80), ((8, 1), 128)])
@pytest.mark.parametrize("smooth", [1, 5, 31])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_last_query_triton(num_pos, heads, dim, smooth, dtype):
    gen = torch.Generator().manual_seed(num_pos * 7 + smooth)
    q = torch.randn(heads[0], dim, generator=gen).to(dtype)
    k = torch.randn(heads[1], num_pos, dim, generator=gen).to(dtype)
    got = last_query_scores(q, k, smooth=smooth, backend="triton")
    torch.testing.assert_close(got, last_query_scores_reference(q, k, smooth=smooth), **LQ_TOL[dtype])


@needs_triton
def test_last_query_triton_strided_keys():
    gen = torch.Generator().manual_seed(3)
    cache = torch.randn(1, 2, 40, 64, generator=gen)  # [B, Hkv, T_max, D] cache, first 33 positions used
    k = cache[0, :, :33]
    q = torch.randn(6, 64, generator=gen)
    torch.testing.assert_close(
        last_query_scores(q, k, backend="triton"), last_query_scores_reference(q, k, smooth=5), atol=1e-4, rtol=1e-5
    )


@needs_triton
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 513), pytest.param((2, 2049), marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("ties", [False, True])
def test_word_topk_triton(shape, dtype, ties):
    probs, ids = _word_batch(*shape, seed=sum(shape), dtype=dtype, ties=ties)
    keeps = (0.5, 3, torch.linspace(0, 1, shape[0]), torch.arange(shape[0]) * 2)
    for keep in keeps if shape[1] < 100 else keeps[::2]:
        wp, mask = word_topk(probs, ids, keep=keep, backend="triton")
        ref_wp, ref_mask = word_topk(probs, ids, keep=keep, backend="torch")
        assert wp.dtype == torch.float32 and mask.dtype == torch.bool
        torch.testing.assert_close(wp, ref_wp, atol=1e-6, rtol=1e-6)
        assert torch.equal(mask, ref_mask)


# ---------------------------------------------------------------------------------- dispatch and checks


def test_dispatch_rules(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("CTXZIP_KERNELS", raising=False)
    assert choose_backend(cpu) == "torch"  # auto on CPU tensors
    monkeypatch.setenv("CTXZIP_KERNELS", "torch")
    assert choose_backend(cpu) == "torch"
    assert choose_backend(cpu, backend="auto") == "torch"
    monkeypatch.setenv("CTXZIP_KERNELS", "cuda")
    with pytest.raises(ConfigError, match="CTXZIP_KERNELS"):
        choose_backend(cpu)
    with pytest.raises(ConfigError, match="backend"):
        choose_backend(cpu, backend="fast")
    monkeypatch.setenv("CTXZIP_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="CUDA tensors"):
        choose_backend(cpu)


@needs_triton
def test_env_var_selects_triton(monkeypatch):
    monkeypatch.setenv("CTXZIP_KERNELS", "triton")
    h, w, t, _ = _lm_inputs(3, 64, 50, torch.float32)
    assert choose_backend(h) == "triton"
    torch.testing.assert_close(fused_nll(h, w, t), naive_nll(h, w, t), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fused_nll(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(3, dtype=torch.long)), "H=4"),
        (lambda: fused_nll(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long)), "targets"),
        (lambda: fused_nll(torch.zeros(3, 4), torch.zeros(5, 4), torch.tensor([0, 5, 1])), r"\[0, 5\)"),
        (lambda: fused_nll(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3)), "dtype"),
        (lambda: fused_nll(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(5, 4), torch.zeros(3).long()), "dtype"),
        (lambda: fused_nll(torch.zeros(4), torch.zeros(5, 4), torch.zeros(3).long()), "2-D"),
        (lambda: fused_nll([[0.0]], torch.zeros(5, 1), torch.zeros(1).long()), "torch.Tensor"),
        (lambda: fused_nll(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3).long(), bias=torch.zeros(4)), "bias"),
        (lambda: fused_nll(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3).long(), chunk_size=0), "chunk_size"),
        (lambda: contrastive_nll(torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(3).long()),
         "same positions"),
        (lambda: last_query_scores(torch.zeros(3, 8), torch.zeros(2, 5, 8)), "multiple"),
        (lambda: last_query_scores(torch.zeros(2, 8), torch.zeros(2, 5, 4)), "head dim"),
        (lambda: last_query_scores(torch.zeros(2, 8), torch.zeros(2, 5, 8), smooth=4), "odd"),
        (lambda: last_query_scores(torch.zeros(2, 8), torch.zeros(2, 5, 8), scale=-1.0), "scale"),
        (lambda: word_topk(torch.zeros(2, 3), torch.zeros(2, 4).long(), keep=0.5), "same shape"),
        (lambda: word_topk(torch.zeros(2, 3), torch.full((2, 3), -2), keep=0.5), ">= 0"),
        (lambda: word_topk(torch.zeros(2, 3), torch.zeros(2, 3).long(), keep=1.5), r"\[0, 1\]"),
        (lambda: word_topk(torch.zeros(2, 3), torch.zeros(2, 3).long(), keep=-1), ">= 0"),
        (lambda: word_topk(torch.zeros(2, 3), torch.zeros(2, 3).long(), keep=torch.ones(3)), r"\[B=2\]"),
        (lambda: word_topk(torch.full((1, 2), float("nan")), torch.zeros(1, 2).long(), keep=1), "finite"),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_empty_inputs():
    h, w = torch.zeros(0, 8), torch.zeros(5, 8)
    assert fused_nll(h, w, torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert last_query_scores(torch.zeros(2, 8), torch.zeros(1, 0, 8)).shape == (0,)
    wp, keep = word_topk(torch.zeros(2, 3), torch.full((2, 3), -1), keep=0.5)
    assert wp.shape == (2, 0) and keep.shape == (2, 0)


def test_import_ctxzip_does_not_import_triton():
    code = (
        "import sys, ctxzip; assert 'torch' not in sys.modules and 'triton' not in sys.modules; "
        "import ctxzip.kernels as k, torch; "
        "k.fused_nll(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)); "
        "print('triton' in sys.modules)"
    )
    env = {key: v for key, v in os.environ.items() if key not in ("CTXZIP_KERNELS", "TRITON_INTERPRET")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_fused_nll_through_smollm2_forward():
    pytest.importorskip("transformers")
    from ctxzip.models import load_causal_lm

    lm = load_causal_lm("smollm2-135m", device="cpu")
    ids = lm.tokenizer("The capital of France is Paris. The capital of Italy is Rome.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model(ids, output_hidden_states=True)
    hidden = out.hidden_states[-1][0, :-1]  # final (normed) hidden states predicting tokens 1..T-1
    targets = ids[0, 1:]
    weight = lm.model.get_output_embeddings().weight.detach()
    assert tuple(weight.shape) == (49152, 576)
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), targets, reduction="none")
    torch.testing.assert_close(fused_nll(hidden, weight, targets, backend="torch"), expected, atol=2e-4, rtol=1e-4)
    if os.environ.get("TRITON_INTERPRET") == "1" and __import__("importlib").util.find_spec("triton"):
        got, ent = fused_nll(hidden, weight, targets, backend="triton", return_entropy=True)
        torch.testing.assert_close(got, expected, atol=5e-4, rtol=1e-4)
        logp = torch.log_softmax(out.logits[0, :-1].double(), dim=-1)
        torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1).float(), atol=5e-4, rtol=1e-4)
        # the repeated pattern makes the second " capital" cheaper than the first (got[j - 1] scores token j)
        toks = lm.tokenizer.convert_ids_to_tokens(ids[0].tolist())
        first, second = [j for j, tok in enumerate(toks) if "capital" in tok][:2]
        assert float(got[second - 1]) < float(got[first - 1])
