"""Tables and plots of benchmark summaries: the Markdown table and the quality-vs-rate PNG of ``--sweep``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .._lazy import require
from .runner import Summary

__all__ = ["QUALITY_METRICS", "markdown_table", "plot_sweep"]

#: quality metrics drawn against the achieved rate, in this order, when some summary has them
QUALITY_METRICS = (
    "answer_recall",
    "span_recall",
    "gold_doc_recall",
    "edit_similarity",
    "exact_match",
    "reader_em",
)

_HEAD = {
    "method": "method",
    "rate_requested": "rate",
    "target_tokens": "target tokens",
    "rate_achieved": "achieved",
    "answer_recall": "answer recall",
    "span_recall": "span recall",
    "gold_doc_recall": "gold-doc recall",
    "edit_similarity": "edit sim.",
    "exact_match": "EM",
    "reader_em": "reader EM",
    "reader_nll": "reader NLL",
    "tokens_per_s": "tokens/s",
    "seconds": "seconds",
    "peak_rss_mb": "peak RSS MB",
    "n": "n",
}


def _fmt(name: str, value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if name in ("tokens_per_s", "peak_rss_mb"):
            return f"{value:,.0f}"
        if name == "seconds":
            return f"{value:.1f}"
        if name == "rate_requested":
            return f"{value:g}"
        return f"{value:.3f}"
    return str(value)


def _columns(summaries: Sequence[Summary]) -> list[str]:
    cols = ["method", "n"]
    cols.append("target_tokens" if any(s.target_tokens is not None for s in summaries) else "rate_requested")
    cols.append("rate_achieved")
    for m in (*QUALITY_METRICS, "reader_nll"):
        if any(getattr(s, m) is not None for s in summaries):
            cols.append(m)
    cols += ["tokens_per_s", "seconds", "peak_rss_mb"]
    return cols


def markdown_table(summaries: Sequence[Summary]) -> str:
    """One row per summary; quality columns only where some summary measures them."""
    if not summaries:
        return ""
    cols = _columns(summaries)
    lines = [
        "| " + " | ".join(_HEAD[c] for c in cols) + " |",
        "|" + "|".join("---" if c == "method" else "---:" for c in cols) + "|",
    ]
    for s in summaries:
        lines.append("| " + " | ".join(_fmt(c, getattr(s, c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(summaries: Sequence[Summary], path: str | Path, *, title: str | None = None) -> Path:
    """Draw each quality metric against the achieved rate, one line per method; save a PNG at ``path``."""
    matplotlib = require("matplotlib", feature="the --sweep plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", feature="the --sweep plot")
    metrics = [m for m in QUALITY_METRICS if any(getattr(s, m) is not None for s in summaries)]
    if not metrics:
        metrics = ["rate_achieved"]
    methods: list[str] = []
    for s in summaries:
        if s.method not in methods:
            methods.append(s.method)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in methods:
            pts = sorted(
                (s.rate_achieved, getattr(s, metric))
                for s in summaries
                if s.method == method and s.rate_achieved is not None and getattr(s, metric) is not None
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("achieved rate (compressed / original tokens)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
