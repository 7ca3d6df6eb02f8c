"""The shipped gist weights for SmolLM2-135M: size, format, and that they run end to end (slow: real model)."""

from __future__ import annotations

import math

import pytest

from ctxzip.gist.api import SHIPPED_WEIGHTS

pytestmark = pytest.mark.slow

PASSAGE = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
           "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")


def test_shipped_weights_are_small_fp16_safetensors_with_a_card():
    safetensors = pytest.importorskip("safetensors")
    assert SHIPPED_WEIGHTS.is_file()
    assert SHIPPED_WEIGHTS.stat().st_size <= 20 * 2**20
    assert (SHIPPED_WEIGHTS.parent / "MODEL_CARD.md").is_file()
    with safetensors.safe_open(str(SHIPPED_WEIGHTS), framework="pt") as fh:
        meta = fh.metadata()
        dtypes = {str(fh.get_slice(k).get_dtype()) for k in fh.keys()}
    assert meta["format"] == "ctxzip-gist-v1" and '"decoder": "smollm2-135m"' in meta["config"]
    assert dtypes == {"F16"}


def test_shipped_gist_compresses_and_generates():
    pytest.importorskip("torch")
    import ctxzip.gist
    from ctxzip.cache import open_cache

    gm = ctxzip.gist.load_gist()
    assert gm.hidden_size == 576
    cache = open_cache("memory")
    n = len(gm.lm.tokenizer(PASSAGE, add_special_tokens=False)["input_ids"])
    for factor in (4, 8):
        ctx = ctxzip.gist.compress([PASSAGE], model=gm, factor=factor, cache=cache)
        assert ctx.n_vectors == math.ceil(n / factor) and ctx.n_tokens == n
    again = ctxzip.gist.compress([PASSAGE], model=gm, factor=4, cache=cache)
    assert again.cache_hits == 1
    out = ctxzip.gist.generate(None, again, "Who designed the tower?", gist=gm, max_new_tokens=4)
    assert 1 <= len(out.token_ids) <= 4 and isinstance(out.text, str)
    assert out.prompt_positions < n
