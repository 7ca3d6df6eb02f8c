"""The benchmark harness behind ``ctxzip bench``: task files, metrics, the runner, the reader and the plots.

``import ctxzip.bench`` is light; models load only when a run needs a reader or a model-based compressor.
"""

from __future__ import annotations

from .data import CodeRow, QARow, load_rows, task_name
from .metrics import (
    answer_hit,
    doc_kept,
    edit_similarity,
    exact_match,
    normalize_answer,
    reader_em,
    span_recall_one,
)
from .runner import PEER_METHOD, BenchConfig, BenchReport, Budget, Summary, run_bench, score_row, summarize

__all__ = [
    "PEER_METHOD",
    "BenchConfig",
    "BenchReport",
    "Budget",
    "CodeRow",
    "QARow",
    "Summary",
    "answer_hit",
    "doc_kept",
    "edit_similarity",
    "exact_match",
    "load_rows",
    "normalize_answer",
    "reader_em",
    "run_bench",
    "score_row",
    "span_recall_one",
    "summarize",
    "task_name",
]
