"""Developer-visible training text for the gist encoder, with a fixed held-out split.

Sources (under ``/work/shared/data`` by default): the Paul Graham essays, the QMSum validation transcripts and the
SQuAD dev articles. The NQ passages are left out on purpose, so ``nq20`` evaluations read passages the encoder
never saw, and no ``bench/*.jsonl.gz`` row is ever read. Every 8th document (sorted by name) is held out for
evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["TextDoc", "load_corpus", "split_corpus", "TokenizedCorpus", "HOLDOUT_EVERY"]

HOLDOUT_EVERY = 8


@dataclass(frozen=True)
class TextDoc:
    name: str
    text: str


def load_corpus(data_dir: str | Path) -> list[TextDoc]:
    """Every training/evaluation document, sorted by name. Raises ConfigError when none is found."""
    root = Path(data_dir)
    docs: list[TextDoc] = []
    for path in sorted((root / "needle" / "PaulGrahamEssays").glob("*.txt")):
        docs.append(TextDoc(f"essay/{path.stem}", path.read_text(encoding="utf-8", errors="replace")))
    qmsum = root / "qmsum" / "val.jsonl"
    if qmsum.is_file():
        with qmsum.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                row = json.loads(line)
                turns = row.get("meeting_transcripts") or []
                text = "\n".join(f"{t.get('speaker', '')}: {t.get('content', '')}" for t in turns)
                docs.append(TextDoc(f"qmsum/{i:03d}", text))
    squad = root / "squad" / "dev-5articles.json"
    if squad.is_file():
        data = json.loads(squad.read_text(encoding="utf-8"))
        for art in data.get("data", []):
            text = "\n\n".join(p.get("context", "") for p in art.get("paragraphs", []))
            docs.append(TextDoc(f"squad/{art.get('title', '')}", text))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ConfigError(
            f"no training text under {root} (expected needle/PaulGrahamEssays/*.txt, qmsum/val.jsonl, "
            "squad/dev-5articles.json); pass --data-dir pointing at the shared data folder"
        )
    return sorted(docs, key=lambda d: d.name)


def split_corpus(docs: Sequence[TextDoc]) -> tuple[list[TextDoc], list[TextDoc]]:
    """``(train, held_out)``: every ``HOLDOUT_EVERY``-th document by name is held out (deterministic)."""
    ordered = sorted(docs, key=lambda d: d.name)
    held = [d for i, d in enumerate(ordered) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    train = [d for i, d in enumerate(ordered) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    return train, held


class TokenizedCorpus:
    """Token ids of each document and random fixed-length windows over them (seeded, reproducible)."""

    def __init__(self, docs: Sequence[TextDoc], tokenizer: Any) -> None:
        self.names = [d.name for d in docs]
        self.ids = [
            np.asarray(tokenizer(d.text, add_special_tokens=False)["input_ids"], dtype=np.int64) for d in docs
        ]

    def windows(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` windows of ``length`` tokens, documents drawn in proportion to their usable length."""
        usable = np.array([max(0, len(x) - length + 1) for x in self.ids], dtype=np.float64)
        if usable.sum() == 0:
            raise ConfigError(f"no document has {length} tokens; use shorter segments/continuations")
        docs = rng.choice(len(self.ids), size=n, p=usable / usable.sum())
        out = np.empty((n, length), dtype=np.int64)
        for row, d in enumerate(docs):
            start = int(rng.integers(0, int(usable[d])))
            out[row] = self.ids[d][start : start + length]
        return out
