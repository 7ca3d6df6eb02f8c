"""Quality metrics of the benchmark harness, defined once and unit-tested on hand-made rows.

Row level (one compressed context):

* :func:`answer_hit` -- 1.0 when some gold answer, normalised (:func:`normalize_answer`), is a substring of the
  normalised compressed context; ``None`` when the row has no (non-empty) answers.
* :func:`span_recall_one` -- share of a gold span's normalised words found in order (longest common
  subsequence over words) in the compressed text.
* :func:`span_recall_in_docs` -- the same, localised: the document is aligned word by word with its compressed
  text (one longest common subsequence), and the span's share is the share of *its own positions* in the
  document that the alignment keeps (the best occurrence when the span occurs more than once).
* :func:`doc_kept` -- share of a document's normalised words found in order in its compressed text;
  a gold document counts as kept when that share is at least one half (:data:`GOLD_DOC_KEEP`).
* :func:`edit_similarity` / :func:`exact_match` -- one predicted code line against the target line.
* :func:`reader_em` -- the lost-in-the-middle "best subspan" EM: some normalised answer is contained in the
  normalised prediction.

Aggregates are computed by :mod:`ctxzip.bench.runner` from the per-row values: ``answer_recall`` is the mean
of ``answer_hit`` over rows with answers, ``span_recall`` the mean over all gold spans of all rows (pooled),
``gold_doc_recall`` the share of all gold documents (pooled) that were kept.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

__all__ = [
    "GOLD_DOC_KEEP",
    "normalize_answer",
    "normalized_words",
    "lcs_words",
    "answer_hit",
    "span_recall_one",
    "kept_flags",
    "span_recall_in_docs",
    "doc_kept",
    "edit_similarity",
    "exact_match",
    "reader_em",
    "mean",
]

#: A gold document counts as kept when at least this share of its words survives.
GOLD_DOC_KEEP = 0.5

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD / lost-in-the-middle normalisation: lower case, ASCII punctuation removed, the articles
    *a*, *an*, *the* removed, whitespace collapsed to single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalized_words(text: str) -> list[str]:
    """The words of :func:`normalize_answer` ``(text)``."""
    return normalize_answer(text).split()


def lcs_words(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists (rapidfuzz, bit-parallel)."""
    if not a or not b:
        return 0
    from rapidfuzz.distance import LCSseq

    return int(LCSseq.similarity(list(a), list(b)))


def _answers(answers: Iterable[str]) -> list[str]:
    out = []
    for a in answers:
        n = normalize_answer(a)
        if n:
            out.append(n)
    return out


def answer_hit(context: str, answers: Iterable[str]) -> float | None:
    """1.0 if some normalised answer is a substring of the normalised ``context``, 0.0 if none is,
    ``None`` when there is no non-empty answer (the row does not count towards ``answer_recall``)."""
    norm = _answers(answers)
    if not norm:
        return None
    ctx = normalize_answer(context)
    return 1.0 if any(a in ctx for a in norm) else 0.0


def span_recall_one(span: str, compressed: str | Sequence[str]) -> float | None:
    """Share of ``span``'s normalised words found in order in ``compressed`` (text or its normalised words).

    ``None`` for a span without words (it does not count)."""
    words = normalized_words(span)
    if not words:
        return None
    ctx_words = normalized_words(compressed) if isinstance(compressed, str) else compressed
    return lcs_words(words, ctx_words) / len(words)


def kept_flags(original_words: Sequence[str], compressed_words: Sequence[str]) -> list[bool]:
    """For each original word: does one longest-common-subsequence alignment with the compressed words keep it?"""
    if not original_words:
        return []
    if not compressed_words:
        return [False] * len(original_words)
    from rapidfuzz.distance import LCSseq

    flags = [True] * len(original_words)
    for op in LCSseq.editops(list(original_words), list(compressed_words)):
        if op.tag == "delete":
            flags[op.src_pos] = False
    return flags


def _occurrences(needle: Sequence[str], hay: Sequence[str]) -> list[int]:
    n = len(needle)
    first = needle[0]
    return [i for i in range(len(hay) - n + 1) if hay[i] == first and list(hay[i : i + n]) == list(needle)]


def span_recall_in_docs(
    span: str,
    original_words: Sequence[Sequence[str]],
    flags: Sequence[Sequence[bool]] | None = None,
    compressed_words: Sequence[Sequence[str]] | None = None,
) -> float | None:
    """Localised span recall: the best, over the span's occurrences in the original documents (normalised
    words), of the share of its positions kept by the alignment (:func:`kept_flags`) of that document.

    Give ``flags`` (one list per document) or ``compressed_words`` to compute them. A span that occurs in no
    document falls back to :func:`span_recall_one` against all compressed words. ``None`` for a span without
    words."""
    words = normalized_words(span)
    if not words:
        return None
    if flags is None:
        if compressed_words is None:
            raise ValueError("span_recall_in_docs needs flags or compressed_words")
        flags = [kept_flags(o, c) for o, c in zip(original_words, compressed_words, strict=True)]
    best: float | None = None
    for ow, fl in zip(original_words, flags, strict=True):
        for i in _occurrences(words, ow):
            share = sum(fl[i : i + len(words)]) / len(words)
            best = share if best is None else max(best, share)
    if best is not None:
        return best
    all_compressed = [w for cw in (compressed_words or []) for w in cw]
    if compressed_words is None:
        all_compressed = [w for ow, fl in zip(original_words, flags, strict=True) for w, k in zip(ow, fl, strict=True) if k]
    return lcs_words(words, all_compressed) / len(words)


def doc_kept(original: str, compressed: str) -> float:
    """Share of the document's normalised words found in order in its compressed text (1.0 if it has none)."""
    words = normalized_words(original)
    if not words:
        return 1.0
    return lcs_words(words, normalized_words(compressed)) / len(words)


def _first_line(prediction: str) -> str:
    for line in prediction.splitlines():
        if line.strip():
            return line
    return ""


def edit_similarity(prediction: str, target: str) -> float:
    """Normalised Levenshtein similarity in [0, 1] between the first non-blank line of ``prediction`` and
    ``target``, both stripped of surrounding whitespace (``1 - distance / max(len)``, rapidfuzz)."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_similarity(_first_line(prediction).strip(), target.strip()))


def exact_match(prediction: str, target: str) -> float:
    """1.0 when the first non-blank predicted line equals ``target`` after stripping surrounding whitespace."""
    return 1.0 if _first_line(prediction).strip() == target.strip() else 0.0


def reader_em(prediction: str, answers: Iterable[str]) -> float | None:
    """lost-in-the-middle ``best_subspan_em``: 1.0 when some normalised answer is contained in the normalised
    prediction; ``None`` without answers."""
    norm = _answers(answers)
    if not norm:
        return None
    pred = normalize_answer(prediction)
    return 1.0 if any(a in pred for a in norm) else 0.0


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the non-``None`` values; ``None`` when there are none."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
