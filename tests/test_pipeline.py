"""Pipelines: stage composition, the budget split rule, spans back to the original, config from dict/YAML."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ctxzip
from ctxzip import cli
from ctxzip.errors import ConfigError, UnknownNameError
from ctxzip.pipeline import Pipeline, compose_spans

DOCS = [
    "Marie Curie was born in Warsaw in 1867. She studied physics in Paris and won two Nobel prizes. " * 5,
    "The manual lives at https://example.com/docs/manual and the config in ./conf/app.yaml for reference. " * 3,
    "Photosynthesis converts light into chemical energy. Plants, algae and bacteria use it every day. " * 5,
]


def _request(**kw):
    return ctxzip.CompressionRequest.create(DOCS, **kw)


def _within(result, budget, tol=0.05):
    return abs(result.compressed_tokens - budget) <= tol * budget


def test_stage_targets_follow_the_documented_rule():
    assert Pipeline(["truncate", "random"]).stage_targets(100) == [200, 100]
    assert Pipeline(["truncate", "random", "truncate"]).stage_targets(100) == [400, 200, 100]
    assert Pipeline(["truncate", "random"], headroom=3).stage_targets(50) == [150, 50]
    p = Pipeline([{"method": "truncate", "budget_factor": 1.5}, "random"])
    assert p.stage_targets(100) == [150, 100]


@pytest.mark.parametrize("rate", [0.2, 0.35, 0.6])
def test_two_stage_pipeline_meets_budget_and_is_a_subsequence_of_the_original(rate):
    p = Pipeline([("truncate", {"side": "tail"}), "random"])
    r = p.compress(_request(rate=rate))
    budget = round(rate * r.origin_tokens)
    assert _within(r, budget)
    assert r.method == "pipeline" and r.details["spans_exact"] is True
    assert [s["method"] for s in r.details["stages"]] == ["truncate", "random"]
    for d in r.documents:
        assert "".join(DOCS[d.index][s.start : s.end] for s in d.spans) == d.text


def test_protected_spans_survive_every_stage():
    p = Pipeline(["random", ("truncate", {"side": "tail"})])
    r = p.compress(_request(rate=0.3, protect={"force": ["Nobel prizes"]}))
    assert "https://example.com/docs/manual" in r.text
    assert "./conf/app.yaml" in r.text
    assert "Nobel prizes" in r.text


def test_a_stage_whose_target_exceeds_its_input_is_skipped():
    p = Pipeline(["truncate", "random"])
    r = p.compress(_request(rate=0.9))  # first stage target = 1.8 x budget > input
    assert r.details["stages"][0]["skipped"] is True
    assert r.details["stages"][1]["skipped"] is False


def test_under_budget_request_is_returned_whole():
    r = Pipeline(["truncate"]).compress(_request(rate=1.0))
    assert [d.text for d in r.documents] == DOCS


def test_first_available_method_of_a_list_is_used():
    p = Pipeline([{"method": ["no-such-compressor", "truncate"]}])
    assert p.stage_names == ("truncate",)
    with pytest.raises(UnknownNameError):
        Pipeline(["no-such-compressor"])


@pytest.mark.parametrize(
    "stages, match",
    [
        ([], "at least one stage"),
        ("truncate", "must be a list"),
        ([{"method": "truncate", "oops": 1}], "needs 'method'"),
        ([{"method": "truncate", "budget_factor": 0.5}], "budget_factor"),
        (["pipeline"], "cannot be 'pipeline'"),
        ([42], "stage 0"),
    ],
)
def test_bad_stage_config_fails_with_a_clear_error(stages, match):
    with pytest.raises(ConfigError, match=match):
        Pipeline(stages)


def test_headroom_must_be_at_least_one():
    with pytest.raises(ConfigError, match="headroom"):
        Pipeline(["truncate"], headroom=0.5)


def test_registered_and_configurable_from_a_dict():
    r = ctxzip.compress(DOCS, method="pipeline", config={"stages": ["random", "truncate"]}, rate=0.3)
    assert r.method == "pipeline"
    assert _within(r, round(0.3 * r.origin_tokens))
    assert ctxzip.get_compressor("pipeline", stages=["truncate"]).stage_names == ("truncate",)


def test_unknown_per_call_option_is_rejected():
    with pytest.raises(ConfigError, match="unknown per-call option"):
        Pipeline(["truncate"]).compress(_request(rate=0.3, side="tail"))


def test_cli_builds_a_pipeline_from_yaml(tmp_path, capsys):
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("stages:\n  - method: truncate\n    config: {side: tail}\n  - random\nheadroom: 2.5\n")
    src = tmp_path / "in.txt"
    src.write_text(DOCS[0])
    assert cli.main(["compress", str(src), "--config", str(cfg), "--rate", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "pipeline"
    budget = round(0.3 * out["origin_tokens"])
    assert abs(out["compressed_tokens"] - budget) <= 0.05 * budget


@st.composite
def _spans(draw):
    text = draw(st.text(alphabet="abcdefgh ", min_size=1, max_size=80))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=12))))
    pts = [0, *cuts, len(text)]
    outer = [(a, b) for k, (a, b) in enumerate(zip(pts, pts[1:], strict=False)) if b > a and k % 2 == 0]
    mid = "".join(text[a:b] for a, b in outer)
    icuts = sorted(set(draw(st.lists(st.integers(0, len(mid)), max_size=12))))
    ipts = [0, *icuts, len(mid)]
    inner = [(a, b) for k, (a, b) in enumerate(zip(ipts, ipts[1:], strict=False)) if b > a and k % 2 == 1]
    return text, outer, inner


@settings(max_examples=150, deadline=None)
@given(_spans())
def test_compose_spans_maps_back_to_the_original(case):
    text, outer, inner = case
    mid = "".join(text[a:b] for a, b in outer)
    expect = "".join(mid[a:b] for a, b in inner)
    got = compose_spans(outer, inner)
    assert "".join(text[a:b] for a, b in got) == expect
    assert all(a < b for a, b in got)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(got, got[1:], strict=False))  # sorted, merged
