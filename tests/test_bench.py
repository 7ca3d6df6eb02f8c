"""The benchmark harness: metric values on hand-made rows (answers worked out by hand), data loading,
aggregation, resume, determinism, external scoring and the CLI. No model is loaded except in the reader tests,
which use a tiny random model built from a config."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from ctxzip.bench import metrics as M
from ctxzip.bench.data import CodeRow, QARow, code_prompt, load_rows, split_code_files, task_name
from ctxzip.bench.llmlingua_peer import _compress, _Tracker
from ctxzip.bench.runner import BenchConfig, Budget, external_records, run_bench, score_row, summarize
from ctxzip.errors import ConfigError, InputError


# ----------------------------------------------------------------------------------------------- metrics
def test_normalize_answer_squad_rules():
    assert M.normalize_answer("The  U.S.A., an answer!") == "usa answer"
    assert M.normalize_answer("A cat and THE dog") == "cat and dog"
    assert M.normalize_answer("theory of anthems") == "theory of anthems"  # articles only as whole words
    assert M.normalize_answer("  ") == ""


def test_answer_hit():
    ctx = "In 1961, the U.S. severed diplomatic ties with Cuba."
    assert M.answer_hit(ctx, ["1961", "1962"]) == 1.0
    assert M.answer_hit(ctx, ["1962"]) == 0.0
    assert M.answer_hit(ctx, ["the u.s. severed"]) == 1.0  # normalised both sides: "us severed"
    assert M.answer_hit(ctx, []) is None
    assert M.answer_hit(ctx, ["The", "  "]) is None  # answers that normalise to nothing do not count


def test_span_recall_one_is_word_lcs():
    # span words (article dropped): quick brown fox jumps; LCS with "quick fox jumps over brown" = 3 -> 3/4
    assert M.span_recall_one("The quick brown fox jumps.", "quick fox jumps over brown") == pytest.approx(0.75)
    assert M.span_recall_one("quick brown", "") == 0.0
    assert M.span_recall_one("the, a", "anything") is None


def test_kept_flags_and_localised_span_recall():
    orig = M.normalized_words("alpha beta gamma delta epsilon")
    comp = M.normalized_words("alpha gamma epsilon")
    assert M.kept_flags(orig, comp) == [True, False, True, False, True]
    # span beta gamma delta sits at positions 1..3 of which only gamma is kept: 1/3
    assert M.span_recall_in_docs("beta gamma delta", [orig], compressed_words=[comp]) == pytest.approx(1 / 3)
    # the same words kept elsewhere do not count: "red blue" is dropped in doc 0, but kept in doc 1
    docs = [M.normalized_words("red blue"), M.normalized_words("red blue green")]
    comp2 = [[], M.normalized_words("red blue")]
    assert M.span_recall_in_docs("red blue", docs, compressed_words=comp2) == 1.0  # best occurrence
    assert M.span_recall_in_docs("red blue green", docs, compressed_words=comp2) == pytest.approx(2 / 3)
    # a span found in no document falls back to the LCS with all compressed words: "blue" of "blue zebra"
    assert M.span_recall_in_docs("blue zebra", docs, compressed_words=comp2) == 0.5


def test_doc_kept_share():
    assert M.doc_kept("one two three four", "one three") == 0.5
    assert M.doc_kept("one two three four", "four one") == 0.25  # in order: only one of them
    assert M.doc_kept("", "") == 1.0


def test_edit_similarity_and_exact_match():
    # Levenshtein("return x", "return y") = 1 over max length 8
    assert M.edit_similarity("return x", "return y") == pytest.approx(1 - 1 / 8)
    assert M.edit_similarity("\n\n    return x\nmore", "return x") == 1.0  # first non-blank line, stripped
    assert M.edit_similarity("", "abcd") == 0.0
    assert M.exact_match("  try:  ", "try:") == 1.0
    assert M.exact_match("try :", "try:") == 0.0


def test_reader_em_contains_normalised_answer():
    assert M.reader_em("It was in 1961, I think.", ["1961"]) == 1.0
    assert M.reader_em("It was in 1961.", ["the 1962"]) == 0.0
    assert M.reader_em("Dolores Park, on a sunny day", ["Dolores park"]) == 1.0
    assert M.reader_em("anything", []) is None


def test_mean_skips_none():
    assert M.mean([1.0, None, 0.0]) == 0.5
    assert M.mean([None]) is None


# ----------------------------------------------------------------------------------------------- rows
def _qa(rid="q1", **kw):
    base = dict(
        id=rid, task="t", question="when did it happen", answers=("1961",),
        docs=(("A", "It happened in 1961 in Havana."), ("B", "Nothing to see here at all.")),
        gold_docs=(0,), gold_spans=("It happened in 1961",),
    )
    base.update(kw)
    return QARow(**base)


def test_score_row_by_hand():
    row = _qa()
    # doc 0 keeps "happened 1961" of [it happened in 1961 in havana] -> 2/6 words, below one half
    rec = score_row(row, "happened 1961", ["happened 1961", ""])
    assert rec["answer_hit"] == 1.0
    # span words [it happened in 1961]: kept happened, 1961 -> 2/4
    assert rec["span_recalls"] == [pytest.approx(0.5)]
    assert rec["gold_doc_fractions"] == [pytest.approx(2 / 6)]
    # without per-document texts the span is matched against the whole context, the gold docs are unmeasured
    rec2 = score_row(row, "it happened 1961", None)
    assert rec2["span_recalls"] == [pytest.approx(0.75)]
    assert rec2["gold_doc_fractions"] is None
    with pytest.raises(InputError):
        score_row(row, "x", ["only one"])


def test_summarize_pools_tokens_and_spans():
    recs = [
        {"method": "m", "rate_requested": 0.5, "target_model": "gpt-4o", "origin_tokens": 100,
         "compressed_tokens": 50, "seconds": 1.0, "answer_hit": 1.0, "span_recalls": [1.0, 0.0, 0.5],
         "gold_doc_fractions": [0.5], "peak_rss_mb": 100.0},
        {"method": "m", "rate_requested": 0.5, "target_model": "gpt-4o", "origin_tokens": 300,
         "compressed_tokens": 30, "seconds": 3.0, "answer_hit": 0.0, "span_recalls": [0.5],
         "gold_doc_fractions": [0.49, 1.0], "peak_rss_mb": 120.0},
        {"method": "m", "rate_requested": 0.5, "target_model": "gpt-4o", "origin_tokens": 0,
         "compressed_tokens": 0, "seconds": 0.0, "answer_hit": None, "span_recalls": [],
         "gold_doc_fractions": [], "peak_rss_mb": None},
    ]
    s = summarize("t", recs)
    assert s.n == 3
    assert s.rate_achieved == pytest.approx(80 / 400)  # summed, not the mean of 0.5 and 0.1
    assert s.answer_recall == 0.5  # the row without answers does not count
    assert s.n_answers == 2
    assert s.span_recall == pytest.approx((1.0 + 0.0 + 0.5 + 0.5) / 4)  # pooled over spans
    assert s.gold_doc_recall == pytest.approx(2 / 3)  # 0.5 and 1.0 are kept, 0.49 is not
    assert s.tokens_per_s == pytest.approx(400 / 4.0)
    assert s.seconds == 4.0
    assert s.peak_rss_mb == 120.0
    d = s.to_dict()
    for key in ("task", "n", "method", "rate_requested", "rate_achieved", "answer_recall", "span_recall",
                "gold_doc_recall", "tokens_per_s", "seconds", "peak_rss_mb"):
        assert key in d
    assert "edit_similarity" not in d and "reader_em" not in d


def test_summarize_code_and_reader_fields():
    recs = [
        {"method": "m", "rate_requested": 0.5, "origin_tokens": 10, "compressed_tokens": 5, "seconds": 1.0,
         "answer_hit": None, "span_recalls": [], "gold_doc_fractions": [], "edit_similarity": 1.0,
         "exact_match": 1.0},
        {"method": "m", "rate_requested": 0.5, "origin_tokens": 10, "compressed_tokens": 5, "seconds": 1.0,
         "answer_hit": None, "span_recalls": [], "gold_doc_fractions": [], "edit_similarity": 0.5,
         "exact_match": 0.0},
    ]
    d = summarize("code", recs).to_dict()
    assert d["edit_similarity"] == 0.75 and d["exact_match"] == 0.5
    assert d["answer_recall"] is None and d["span_recall"] is None and d["gold_doc_recall"] is None


# ----------------------------------------------------------------------------------------------- data
def test_split_code_files():
    ctx = "lead line\n# file: a.py\nx = 1\n\n# file: pkg/b.py\ny = 2\n\n\n"
    assert split_code_files(ctx) == [("", "lead line"), ("a.py", "# file: a.py\nx = 1"),
                                     ("pkg/b.py", "# file: pkg/b.py\ny = 2")]
    assert split_code_files("no header\n") == [("", "no header\n")]
    assert split_code_files("   ") == []


def test_code_prompt_keeps_prefix_last():
    p = code_prompt("Complete the next line of code.", "def f():\n    pass\n\n", "def g(x):\n")
    assert p == "Complete the next line of code.\n\ndef f():\n    pass\n\n\ndef g(x):\n"
    assert code_prompt(None, "", "def g():\n") == "def g():\n"


def _write(path: Path, rows: list[dict], gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


QA_ROWS = [
    {"id": f"r{i}", "task": "toy", "question": f"what is the code of item {i}?", "answers": [f"code{i}x"],
     "docs": [{"title": "noise", "text": " ".join(f"filler{j} word{j}" for j in range(40))},
              {"title": "gold", "text": f"The code of item {i} is code{i}x. " + "more text here " * 10}],
     "gold_docs": [1], "gold_spans": [f"The code of item {i} is code{i}x."]}
    for i in range(4)
]


def test_load_rows_and_validation(tmp_path):
    f = _write(tmp_path / "toy.dev.jsonl.gz", QA_ROWS, gz=True)
    assert task_name(f) == "toy.dev"
    rows = load_rows(f, limit=3)
    assert [r.id for r in rows] == ["r0", "r1", "r2"]
    assert rows[0].documents[1]["title"] == "gold" and rows[0].gold_docs == (1,)
    code = {"id": "c", "task": "code", "language": "python", "instruction": "Complete.",
            "context": "# file: a.py\nx = 1\n", "prefix": "def f():\n", "target": "return 1"}
    (crow,) = load_rows(_write(tmp_path / "code.jsonl", [code]))
    assert isinstance(crow, CodeRow) and crow.question == "def f():\n" and crow.instruction == "Complete."
    bad = _write(tmp_path / "bad.jsonl", [dict(QA_ROWS[0], gold_docs=[5])])
    with pytest.raises(InputError, match="gold_docs"):
        load_rows(bad)
    dup = _write(tmp_path / "dup.jsonl", [QA_ROWS[0], QA_ROWS[0]])
    with pytest.raises(InputError, match="duplicate"):
        load_rows(dup)
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="junk.jsonl:1"):
        load_rows(tmp_path / "junk.jsonl")
    with pytest.raises(ConfigError):
        load_rows(f, limit=0)


def test_config_validation():
    with pytest.raises(ConfigError):
        BenchConfig(task_file="x.jsonl")  # no method
    with pytest.raises(ConfigError):
        BenchConfig(task_file="x.jsonl", methods=("truncate",))  # no budget
    with pytest.raises(ConfigError):
        Budget(rate=1.5)
    with pytest.raises(ConfigError):
        Budget(rate=0.5, target_tokens=10)
    with pytest.raises(ConfigError):
        BenchConfig(task_file="x.jsonl", methods=("a", "a"), budgets=(Budget(rate=0.5),))


# ----------------------------------------------------------------------------------------------- runner
def test_run_bench_truncate_resume_and_side_by_side(tmp_path):
    task = _write(tmp_path / "toy.dev.jsonl", QA_ROWS)
    out = tmp_path / "runs.jsonl"
    cfg = BenchConfig(task_file=str(task), methods=("truncate", "random"),
                      budgets=(Budget(rate=0.5), Budget(rate=0.25)), out=str(out))
    rep = run_bench(cfg, progress=False)
    assert len(rep.summaries) == 4 and len(out.read_text().splitlines()) == 16
    by = {(s.method, s.rate_requested): s for s in rep.summaries}
    trunc = by[("truncate", 0.5)]
    assert trunc.n == 4 and trunc.task == "toy.dev"
    assert abs(trunc.rate_achieved - 0.5) < 0.06
    # truncate keeps the first half: the noise document, never the gold one at the end
    assert trunc.answer_recall == 0.0 and trunc.gold_doc_recall == 0.0 and trunc.span_recall == 0.0
    assert trunc.tokens_per_s > 0 and trunc.peak_rss_mb > 0
    # resume: nothing is recomputed, the file does not grow, and the figures are the same
    rep2 = run_bench(cfg, progress=False)
    assert len(out.read_text().splitlines()) == 16
    assert [s.to_dict() for s in rep2.summaries] == [s.to_dict() for s in rep.summaries]
    # a record written by another implementation version is recomputed, not reused
    lines = out.read_text().splitlines()
    stale = [json.dumps(dict(json.loads(ln), method_version="0")) for ln in lines[:4]]
    out.write_text("\n".join(stale) + "\n")
    run_bench(cfg, progress=False)
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(recs) == 4 + 16 and {r["method_version"] for r in recs[4:]} == {"1"}
    # deterministic: a fresh run of random gives the same records
    cfg3 = BenchConfig(task_file=str(task), methods=("random",), budgets=(Budget(rate=0.25),))
    a = [r["compressed_tokens"] for r in run_bench(cfg3, progress=False).records]
    b = [r["compressed_tokens"] for r in run_bench(cfg3, progress=False).records]
    assert a == b


class _FakeReader:
    name = "fake"

    def complete_line(self, prompt: str) -> str:
        # "completes" by echoing the last prefix line: right for the row below, since target == that line
        return prompt.rstrip("\n").split("\n")[-1]

    def answer(self, context: str, question: str) -> str:
        return context[:40]

    def answer_nll(self, context: str, question: str, answer: str) -> float:
        return float(len(answer))


def test_code_rows_and_reader_metrics(tmp_path):
    code = [{"id": "c1", "task": "code", "language": "python", "instruction": "Complete the next line.",
             "context": "# file: a.py\n" + "x = 1\n" * 50, "prefix": "def f():\n    return 1\n",
             "target": "    return 1"},
            {"id": "c2", "task": "code", "language": "python", "instruction": "Complete the next line.",
             "context": "# file: a.py\n" + "y = 2\n" * 50, "prefix": "def g():\n    pass\n", "target": "pas"}]
    task = _write(tmp_path / "code.dev.jsonl", code)
    cfg = BenchConfig(task_file=str(task), methods=("truncate",), budgets=(Budget(rate=0.5),), code_reader="fake")
    (s,) = run_bench(cfg, progress=False, reader_factory=lambda spec: _FakeReader()).summaries
    # c1: exact; c2: "pass" vs "pas": 1 - 1/4
    assert s.exact_match == 0.5
    assert s.edit_similarity == pytest.approx((1.0 + 0.75) / 2)
    qa = _write(tmp_path / "toy.jsonl", QA_ROWS[:2])
    cfg = BenchConfig(task_file=str(qa), methods=("truncate",), budgets=(Budget(rate=1.0),), reader="fake")
    (s,) = run_bench(cfg, progress=False, reader_factory=lambda spec: _FakeReader()).summaries
    assert s.reader_em == 0.0  # the first 40 characters are filler
    assert s.reader_nll == pytest.approx(len("code0x"))  # mean over rows of the fake NLL (len of the answer)


def test_external_records_counted_and_scored_here(tmp_path):
    task = _write(tmp_path / "toy.jsonl", QA_ROWS[:2])
    rows = load_rows(task)
    gold = QA_ROWS[0]["docs"][1]["text"]
    lines = [{"id": "r0", "method": "peer", "rate": 0.5, "context": gold, "documents": ["", gold], "seconds": 2.0},
             {"id": "r1", "method": "peer", "rate": 0.5, "context": "nothing"},
             {"id": "unknown", "method": "peer", "rate": 0.5, "context": "x"}]
    recs = external_records("toy", rows, lines, "gpt-4o")
    assert [r["id"] for r in recs] == ["r0", "r1"]
    from ctxzip.tokens import get_counter

    c = get_counter("gpt-4o")
    origin = c.count("\n\n".join(d["text"] for d in QA_ROWS[0]["docs"]))
    assert recs[0]["origin_tokens"] == origin and recs[0]["compressed_tokens"] == c.count(gold)
    assert recs[0]["answer_hit"] == 1.0 and recs[0]["gold_doc_fractions"] == [1.0]
    assert recs[1]["gold_doc_fractions"] is None  # no per-document texts: unmeasured, not zero
    s = summarize("toy", recs)
    assert s.answer_recall == 0.5 and s.gold_doc_recall == 1.0 and s.n_gold_docs == 1
    ext = _write(tmp_path / "peer.jsonl", lines)
    cfg = BenchConfig(task_file=str(task), external=(str(ext),))
    (s2,) = run_bench(cfg, progress=False).summaries
    assert s2.method == "peer" and s2.n == 2 and s2.answer_recall == 0.5


# ----------------------------------------------------------------------------------------------- cli
def test_cli_json_and_sweep(tmp_path, capsys):
    from ctxzip.bench.cli import main

    task = _write(tmp_path / "toy.dev.jsonl", QA_ROWS)
    assert main([str(task), "--method", "truncate", "--rate", "0.5", "--json", "--no-progress"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["task"] == "toy.dev" and d["n"] == 4 and d["method"] == "truncate" and d["rate_requested"] == 0.5
    for key in ("rate_achieved", "answer_recall", "span_recall", "gold_doc_recall", "tokens_per_s", "seconds",
                "peak_rss_mb"):
        assert key in d
    out = tmp_path / "runs" / "toy.jsonl"
    rc = main([str(task), "-m", "truncate,random", "--sweep", "0.5,0.25", "--out", str(out), "--json",
               "--no-progress"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 4 and {x["method"] for x in data} == {"truncate", "random"}
    png = tmp_path / "runs" / "toy-sweep.png"
    md = tmp_path / "runs" / "toy-sweep.md"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = md.read_text()
    assert table.startswith("| method |") and table.count("\n") == 6
    assert main([str(task), "--method", "nope", "--rate", "0.5", "--no-progress"]) == 2
    assert main([str(task), "--method", "truncate", "--rate", "0.5", "--config", "other:x=1"]) == 2


def test_method_specs_with_variants(tmp_path):
    from ctxzip.bench.runner import parse_method_spec, split_methods

    assert split_methods("a, b[k=1,j=\"x,y\"],c") == ["a", 'b[k=1,j="x,y"]', "c"]
    assert parse_method_spec("random[seed=3,mode=fast]") == ("random", {"seed": 3, "mode": "fast"})
    assert parse_method_spec("truncate") == ("truncate", {})
    with pytest.raises(ConfigError):
        parse_method_spec("random[seed]")
    task = _write(tmp_path / "toy.jsonl", QA_ROWS[:2])
    cfg = BenchConfig(task_file=str(task), methods=("random", "random[seed=1]"), budgets=(Budget(rate=0.25),))
    labels = [s.method for s in run_bench(cfg, progress=False).summaries]
    assert labels == ["random", "random(seed=1)"]


def test_cli_config_parsing():
    from ctxzip.bench.cli import parse_configs

    assert parse_configs(["seed=3", "random:seed=4", "truncate:keep=\"end\""], ["random", "truncate"]) == {
        "random": {"seed": 4}, "truncate": {"seed": 3, "keep": "end"}}
    with pytest.raises(ConfigError):
        parse_configs(["novalue"], ["random"])


@pytest.mark.parametrize("flags, qa_reader, code_reader", [
    ([], None, "smollm2-135m"),
    (["--reader", "gemma-3-270m"], "gemma-3-270m", "gemma-3-270m"),  # --reader also completes the code rows
    (["--reader", "gemma-3-270m", "--code-reader", "smollm2-135m"], "gemma-3-270m", "smollm2-135m"),
    (["--code-reader", "gemma-3-270m"], None, "gemma-3-270m"),
    (["--reader", "gemma-3-270m", "--no-code-reader"], "gemma-3-270m", None),
])
def test_cli_reader_flags(flags, qa_reader, code_reader):
    import argparse

    from ctxzip.bench.cli import _configure, build_config

    p = argparse.ArgumentParser()
    _configure(p)
    cfg = build_config(p.parse_args(["rows.jsonl", "-m", "truncate", "-r", "0.5", *flags]))
    assert (cfg.reader, cfg.code_reader) == (qa_reader, code_reader)


# ----------------------------------------------------------------------------------------------- peer bookkeeping
def test_peer_tracker_follows_surviving_positions():
    t = _Tracker()
    t.step([10, 11, 12, 13, 14, 15], [10, 12, 13, 15])  # drops positions 1 and 4
    assert t.cur == [0, 2, 3, 5]
    t.step([12, 13, 15], [12, 15])  # the KV cache moved position 0 out; then drops 13 (position 3)
    assert t.popped == [0] and t.cur == [2, 5]
    t.start = 1
    assert t.final_positions() == [2, 5]
    bad = _Tracker()
    bad.step([1, 2, 3], [4])
    assert not bad.ok and bad.final_positions() is None


class _BoundaryPeer:
    """Stands in for LLMLingua's PromptCompressor: fails like ``get_prefix_length`` while the question ends in
    whitespace (the BPE merge across the question/context boundary) and records every call."""

    def __init__(self, fail_always: bool = False) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.fail_always = fail_always

    def compress_prompt(self, *, context, question, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append((list(context), question))
        if self.fail_always or question != question.rstrip():
            raise AssertionError
        return {"compressed_prompt": "".join(context)}


def test_peer_retries_boundary_assertion_with_rstripped_question_only():
    docs = ["\n  first doc", "second"]
    pc = _BoundaryPeer()
    res, rstripped = _compress(pc, _Tracker(), docs, "def f():\n", 5)
    assert rstripped and res["compressed_prompt"] == "\n  first docsecond"
    assert pc.calls == [(docs, "def f():\n"), (docs, "def f():")]  # documents passed unchanged both times
    pc = _BoundaryPeer()
    assert _compress(pc, _Tracker(), docs, "def f():", 5)[1] is False and len(pc.calls) == 1
    for question in ["no trailing space", "trailing newline\n"]:  # a failure the retry cannot fix is raised
        with pytest.raises(AssertionError):
            _compress(_BoundaryPeer(fail_always=True), _Tracker(), docs, question, 5)


# ----------------------------------------------------------------------------------------------- reader
@pytest.fixture(scope="module")
def tiny_reader(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ctxzip.bench.reader import load_reader
    from ctxzip.models.testing import make_tiny_causal_lm

    d = make_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), max_position_embeddings=128)
    return load_reader(str(d), code_max_new_tokens=8, qa_max_new_tokens=8)


def test_reader_nll_matches_manual_cross_entropy(tiny_reader):
    import torch

    from ctxzip.bench.reader import qa_prompt

    r = tiny_reader
    ctx, q = "Paris is the capital of France. " * 3, "What is the capital of France?"
    nll = r.answer_nll(ctx, q, "Paris")
    ans = r._encode("Paris" if r.chat else " Paris")
    prompt = r._chat_ids(qa_prompt(ctx, q))
    prompt = prompt[max(0, len(prompt) + len(ans) - r.max_length):]  # the reader cuts long prompts on the left
    with torch.inference_mode():
        logits = r.model(input_ids=torch.tensor([prompt + ans])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    manual = -sum(float(logp[len(prompt) - 1 + k, a]) for k, a in enumerate(ans)) / len(ans)
    assert nll == pytest.approx(manual, rel=1e-4)
    assert math.isfinite(nll) and nll > 0


def test_reader_completion_is_one_line_and_deterministic(tiny_reader):
    p = code_prompt("Complete the next line of code.", "def add(a, b):\n    return a + b\n", "class Point:\n")
    a = tiny_reader.complete_line(p)
    assert "\n" not in a
    assert a == tiny_reader.complete_line(p)
    ans = tiny_reader.answer("The answer to the question is 42.", "What is the answer?")
    assert isinstance(ans, str) and ans == tiny_reader.answer("The answer to the question is 42.", "What is the answer?")


def test_code_prompt_ending_in_white_space_is_healed(tiny_reader, monkeypatch):
    r = tiny_reader
    ids = r._encode("def f(x):\n    y = x + 1\n")
    healed_ids, text, allowed = r._heal(ids)
    assert text == r.tokenizer.decode([ids[-1]]) and text and not text.strip() and healed_ids == ids[:-1]
    assert ids[-1] in allowed and all(r.tokenizer.decode([i]).startswith(text) for i in allowed)
    assert r._heal(r._encode("x = 1"))[2] is None  # a prompt that ends in code is left alone
    # the first generated token is drawn from the healed set only, and its healed text is not part of the line
    seen = {}
    real = r._greedy

    def spy(ids_, max_new, stop_at_line, first_allowed=None):
        seen["ids"], seen["allowed"] = ids_, first_allowed
        return real(ids_, max_new, stop_at_line, first_allowed)

    monkeypatch.setattr(r, "_greedy", spy)
    line = r.complete_line("def f(x):\n    y = x + 1\n")
    assert seen["ids"] == healed_ids and seen["allowed"] == allowed and "\n" not in line


def test_healed_first_token_is_the_best_allowed_one(tiny_reader):
    import torch

    r = tiny_reader
    ids, text, allowed = r._heal(r._encode("a = 1\nb = 2\n"))
    out = r._greedy(ids, 1, stop_at_line=False, first_allowed=allowed)
    with torch.inference_mode():
        logits = r.model(input_ids=torch.tensor([ids])).logits[0, -1]
    best = max(allowed, key=lambda i: float(logits[i]))
    assert out == r.tokenizer.decode([best]) and out.startswith(text)


@pytest.mark.slow
def test_shipped_reader_prefers_the_answer_in_its_context():
    pytest.importorskip("torch")
    from ctxzip.bench.reader import load_reader

    r = load_reader("smollm2-135m")
    ctx = "Internal memo. The secret code of the vault is 7421. Do not share it."
    q = "What is the secret code of the vault?"
    assert r.answer_nll(ctx, q, "7421") < r.answer_nll(ctx, q, "9836")
    line = r.complete_line("def add(a, b):\n    ")
    assert "\n" not in line and line.strip()
    # a prefix that ends with a newline: the next statement, not a comment (reader version 1 wrote "#   return")
    line = r.complete_line("def mean(values):\n    total = sum(values)\n    count = len(values)\n")
    assert not line.lstrip().startswith("#") and line.startswith("    ")
