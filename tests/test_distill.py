"""`ctxzip distill`: labels from teachers, pair alignment and its filters, student training and exact reload."""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402
from lingua2_tiny import SENTENCES, make_bert_base  # noqa: E402

from ctxzip import distill  # noqa: E402
from ctxzip.errors import ConfigError, ModelError  # noqa: E402
from ctxzip.models.token_classifier import build_student, load_student, load_token_classifier, save_student  # noqa: E402


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(make_bert_base(tmp_path_factory.mktemp("base")))


def _words(lab: distill.Labeled, keep: int = 1) -> list[str]:
    return [lab.text[a:b].strip() for a, b, x in zip(lab.starts, lab.ends, lab.labels, strict=True) if x == keep]


def test_align_pair_labels_the_compressed_words_in_order():
    original = "The quick brown fox jumps over the lazy dog and the fox sleeps."
    al = distill.align_pair(original, "quick fox jumps lazy dog, fox sleeps")
    assert _words(al.labeled) == ["quick", "fox", "jumps", "lazy", "dog", "fox", "sleeps."]
    assert al.variation_rate == 0.0 and al.alignment_gap == 0.0
    bad = distill.align_pair(original, "a purple elephant sings")
    assert bad.variation_rate == 1.0 and sum(bad.labeled.labels) == 0
    # a word that occurs only outside the window is a hit but not a match: the alignment gap grows
    far = distill.align_pair(original, "dog quick", window=3)
    assert far.alignment_gap > 0


def test_pair_labels_filter_by_variation_rate_and_gap(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    rows = [{"original": s, "compressed": " ".join(s.split()[::2])} for s in SENTENCES] * 3
    rows.append({"original": SENTENCES[0], "compressed": "completely unrelated hallucinated summary words"})
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    kept, stats = distill.pair_labels(path, vr_quantile=0.9)
    assert stats["pairs"] == len(rows) and stats["kept"] < len(rows)
    assert all(sum(k.labels) > 0 for k in kept)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"original": "x"}\n')
    with pytest.raises(distill.InputError, match="original"):
        distill.pair_labels(bad)


def test_top_share_labels_the_highest_scores():
    labels = distill._top_share(np.array([0.1, 5.0, 3.0, 0.2]), 0.5)
    assert labels.tolist() == [0, 1, 1, 0]


def test_corpus_reads_only_developer_sources(tmp_path):
    (tmp_path / "nq").mkdir()
    (tmp_path / "squad").mkdir()
    (tmp_path / "bench").mkdir()
    with gzip.open(tmp_path / "nq" / "nq-open-oracle.dev.jsonl.gz", "wt", encoding="utf-8") as fh:
        for s in SENTENCES:
            fh.write(json.dumps({"question": "q", "answers": ["a"], "ctxs": [{"title": "T", "text": s * 2}]}) + "\n")
    ctx = SENTENCES[1]
    squad = {"data": [{"paragraphs": [{"context": ctx, "qas": [
        {"question": "capital?", "answers": [{"text": "Berlin", "answer_start": ctx.index("Berlin")}]}]}]}]}
    (tmp_path / "squad" / "dev-5articles.json").write_text(json.dumps(squad))
    with gzip.open(tmp_path / "bench" / "nq20.dev.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"docs": [{"text": "BENCH ROW TEXT " * 10}]}) + "\n")
    passages = distill.load_corpus(tmp_path, limit=50)
    assert {p.source for p in passages} == {"nq", "squad"}
    assert not any("BENCH" in p.text for p in passages)
    sq = [p for p in passages if p.source == "squad"][0]
    assert [sq.text[a:b] for a, b in sq.answers] == ["Berlin"]
    with pytest.raises(distill.InputError):
        distill.load_corpus(tmp_path / "missing")


README = """# demo-package

[![build](https://img.shields.io/badge/build-passing-green.svg)](https://example.org)

The demo package parses configuration files and reports every `error` it finds, with the
line number and a short explanation of how to fix it.

```python
import demo
demo.parse("config.toml")
```

    indented_code = True  # an indented code block

| column | value |
|---|---|
| a | b |

It is written in pure Python and has no dependencies, so it installs quickly on any platform you use.
"""


def test_prose_paragraphs_drop_code_tables_and_markup():
    paras = distill.prose_paragraphs(README)
    assert paras == [
        "The demo package parses configuration files and reports every error it finds, with the line number and "
        "a short explanation of how to fix it.",
        "It is written in pure Python and has no dependencies, so it installs quickly on any platform you use.",
    ]


def test_local_corpus_reads_offline_prose_only(tmp_path):
    site = tmp_path / "site"
    (site / "demo-1.0.dist-info").mkdir(parents=True)
    (site / "demo-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n\n" + README * 3, encoding="utf-8")
    (site / "demo").mkdir()
    (site / "demo" / "README.md").write_text(" ".join(SENTENCES[i] for i in (0, 1, 2, 5, 6)) * 2, encoding="utf-8")
    (site / "demo" / "LICENSE.md").write_text("Permission is hereby granted, free of charge. " * 20)
    lib = tmp_path / "lib"
    lib.mkdir()
    doc = " ".join([SENTENCES[1], SENTENCES[5], SENTENCES[2]] * 2)
    (lib / "mod.py").write_text(f'"""{doc}"""\n\ndef f():\n    """{doc}"""\n', encoding="utf-8")
    passages = distill.load_local_corpus(limit=40, max_words=60, site_packages=site, stdlib=lib, turns_share=0.3)
    sources = {p.source for p in passages}
    assert {"packages", "docs", "stdlib"} <= sources and "turns" in sources
    text = "\n".join(p.text for p in passages)
    assert "import demo" not in text and "Permission is hereby granted" not in text and "|" not in text
    turns = [p for p in passages if p.source == "turns"]
    for p in turns:
        assert all(line.split(": ", 1)[0] in distill.SPEAKERS for line in p.text.splitlines())
    with pytest.raises(ConfigError):
        distill.load_local_corpus(turns_share=1.0)


def test_lm_teacher_labels_keep_the_share_and_the_answers(tmp_path):
    from ctxzip.models.testing import make_tiny_causal_lm

    lm_dir = make_tiny_causal_lm(tmp_path / "lm")
    text = SENTENCES[1] + " " + SENTENCES[2]
    ans = (text.index("Berlin"), text.index("Berlin") + len("Berlin"))
    passages = [distill.Passage(text, "squad", (ans,)), distill.Passage(SENTENCES[5], "nq")]
    labs = distill.lm_teacher_labels(passages, model=str(lm_dir), keep_rate=0.3)
    assert "Berlin" in _words(labs[0])
    n = len(labs[1].labels)
    assert sum(labs[1].labels) == max(1, round(0.3 * n))
    with pytest.raises(ConfigError):
        distill.lm_teacher_labels(passages, model=str(lm_dir), keep_rate=1.5)


def test_distill_config_validates():
    with pytest.raises(ConfigError, match="--tune"):
        distill.DistillConfig(layers=2, tune=3)
    with pytest.raises(ConfigError, match="--layers"):
        distill.DistillConfig(layers=9)


def _labeled(n: int = 24) -> list[distill.Labeled]:
    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)] + " " + SENTENCES[(i + 3) % len(SENTENCES)]
        starts, ends = distill.word_spans(text)
        # a learnable rule: keep capitalised words and numbers
        labels = [int(text[a:b].strip()[:1].isupper() or text[a:b].strip()[:1].isdigit())
                  for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        out.append(distill.Labeled(text, "test", tuple(starts.tolist()), tuple(ends.tolist()), tuple(labels)))
    return out


def test_training_learns_and_reload_reproduces_predictions_exactly(base_dir, tmp_path):
    items = _labeled()
    cfg = distill.DistillConfig(layers=2, tune=1, max_len=64, batch_size=8, lr=3e-3, epochs=12, max_minutes=2,
                                base=base_dir, threads=1)
    model, tok, stats = distill.train_student(items, cfg)
    assert stats["steps"] > 0 and stats["final_loss"] < 0.6
    out = save_student(model, tmp_path / "student", tuned_layers=1, base=base_dir, dtype="float16")
    agree = distill.agreement(model, tok, items, max_len=64)
    assert agree["accuracy"] > 0.75 and agree["auc"] > 0.65  # chance: 0.5
    reloaded, _ = load_student(out)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        a = model(**enc).logits
        b = reloaded(**enc).logits
    assert torch.equal(a, b)
    # the compressor path gives the same word probabilities as the in-memory student
    from ctxzip.compressors.lingua2 import Lingua2Compressor

    clf = load_token_classifier(str(out), device="cpu")
    assert torch.equal(clf.model(**enc).logits, a)
    probs = Lingua2Compressor(model=str(out), device="cpu").word_probs([SENTENCES[2]])[0].probs
    assert np.all((probs >= 0) & (probs <= 1))


def test_student_refuses_a_different_base(base_dir, tmp_path):
    model, _ = build_student(2, base=base_dir)
    out = save_student(model, tmp_path / "s", tuned_layers=1, base=base_dir)
    meta = json.loads((out / "student.json").read_text())
    meta["base_sha256"] = "0" * 64
    (out / "student.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="different"):
        load_student(out)


def test_distill_cli_trains_from_a_labels_file(base_dir, tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(it.to_json() for it in _labeled(12)) + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    distill.add_parser(sub)
    args = parser.parse_args(["distill", "--labels", str(labels), "--base", base_dir, "--layers", "2", "--tune", "1",
                              "--epochs", "2", "--max-len", "64", "--threads", "1", "--out", str(tmp_path / "o"),
                              "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training"]["steps"] > 0 and 0.0 <= report["agreement"]["accuracy"] <= 1.0
    assert (tmp_path / "o" / "student.safetensors").is_file()
    assert json.loads((tmp_path / "o" / "student.json").read_text())["card"]["data"]["train_passages"] > 0
