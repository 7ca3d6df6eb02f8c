"""Task files of the benchmark: QA rows and code rows, one JSON object a line (``.jsonl`` or ``.jsonl.gz``).

QA rows (``nq20``, ``qmsum``, ``locomo``, ``kv75``, ``needle``)::

    {"id", "task", "question", "answers": [str], "docs": [{"title", "text"}], "gold_docs": [int],
     "gold_spans": [str], "reference": str (optional)}

Code rows: ``{"id", "task": "code", "language", "instruction", "context", "prefix", "target"}``. The code
``context`` is split into one document per file at its ``# file: <path>`` header lines (the header stays in the
document's text); ``prefix`` is passed as the question and ``instruction`` as the instruction, so neither is
ever compressed.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import ConfigError, InputError

__all__ = ["QARow", "CodeRow", "Row", "load_rows", "task_name", "split_code_files", "code_prompt"]

_FILE_HEADER = re.compile(r"^(?:#|//) file: (.+)$", re.M)


@dataclass(frozen=True)
class QARow:
    id: str
    task: str
    question: str
    answers: tuple[str, ...]
    docs: tuple[tuple[str, str], ...]  # (title, text)
    gold_docs: tuple[int, ...] = ()
    gold_spans: tuple[str, ...] = ()
    reference: str = ""

    kind = "qa"

    def __post_init__(self) -> None:
        for i in self.gold_docs:
            if not 0 <= i < len(self.docs):
                raise InputError(f"row {self.id!r}: gold_docs index {i} is outside its {len(self.docs)} docs")

    @property
    def instruction(self) -> str | None:
        return None

    @property
    def documents(self) -> list[dict[str, str]]:
        return [{"title": t, "text": x} for t, x in self.docs]

    @property
    def gold_answer(self) -> str | None:
        """The answer whose NLL the reader measures: the first answer, else the reference, else ``None``."""
        for a in self.answers:
            if a.strip():
                return a
        return self.reference if self.reference.strip() else None


@dataclass(frozen=True)
class CodeRow:
    id: str
    task: str
    language: str
    instruction: str
    context: str
    prefix: str
    target: str
    docs: tuple[tuple[str, str], ...] = field(default=())

    kind = "code"

    def __post_init__(self) -> None:
        if not self.docs:
            object.__setattr__(self, "docs", tuple(split_code_files(self.context)))

    @property
    def question(self) -> str:
        return self.prefix

    @property
    def documents(self) -> list[dict[str, str]]:
        return [{"title": t, "text": x} for t, x in self.docs]

    @property
    def answers(self) -> tuple[str, ...]:
        return ()

    @property
    def gold_docs(self) -> tuple[int, ...]:
        return ()

    @property
    def gold_spans(self) -> tuple[str, ...]:
        return ()


Row = Union[QARow, CodeRow]


def split_code_files(context: str) -> list[tuple[str, str]]:
    """Split a code context at its ``# file: <path>`` lines into ``(path, text)`` documents.

    Text before the first header (a file cut at its start) is its own document titled ``""``. Joining the
    texts with blank lines gives back the context up to the blank lines between files."""
    heads = list(_FILE_HEADER.finditer(context))
    if not heads:
        return [("", context)] if context.strip() else []
    out: list[tuple[str, str]] = []
    lead = context[: heads[0].start()]
    if lead.strip():
        out.append(("", lead.rstrip("\n")))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(context)
        text = context[m.start() : end].rstrip("\n")
        out.append((m.group(1).strip(), text))
    return out


def code_prompt(instruction: str | None, context: str, prefix: str) -> str:
    """What the code reader completes: the instruction, the (compressed) context, then the prefix."""
    parts = []
    if instruction and instruction.strip():
        parts.append(instruction.strip() + "\n\n")
    if context.strip():
        parts.append(context.rstrip() + "\n\n\n")
    parts.append(prefix)
    return "".join(parts)


def task_name(path: str | Path) -> str:
    """``nq20.dev`` for ``.../nq20.dev.jsonl.gz``."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _str(obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    v = obj.get(key, default)
    if not isinstance(v, str):
        raise InputError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    return v


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = obj.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(f"{where}: field {key!r} must be a list of strings")
    return tuple(v)


def parse_row(obj: Any, where: str) -> Row:
    """Validate one decoded JSON line into a :class:`QARow` or :class:`CodeRow`."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a row must be a JSON object, got {type(obj).__name__}")
    rid = str(obj.get("id", where))
    if "prefix" in obj and "target" in obj:
        return CodeRow(
            id=rid,
            task=_str(obj, "task", where, "code"),
            language=_str(obj, "language", where, ""),
            instruction=_str(obj, "instruction", where, ""),
            context=_str(obj, "context", where),
            prefix=_str(obj, "prefix", where),
            target=_str(obj, "target", where),
        )
    docs_raw = obj.get("docs")
    if not isinstance(docs_raw, list):
        raise InputError(f"{where}: a QA row needs 'docs' (a list of {{'title','text'}}); code rows need 'prefix'")
    docs = []
    for j, d in enumerate(docs_raw):
        if isinstance(d, str):
            docs.append(("", d))
        elif isinstance(d, dict) and isinstance(d.get("text"), str):
            docs.append((str(d.get("title") or ""), d["text"]))
        else:
            raise InputError(f"{where}: docs[{j}] must be a string or an object with a 'text' string")
    gold = obj.get("gold_docs") or []
    if not isinstance(gold, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in gold):
        raise InputError(f"{where}: 'gold_docs' must be a list of integers")
    return QARow(
        id=rid,
        task=_str(obj, "task", where, ""),
        question=_str(obj, "question", where),
        answers=_str_list(obj, "answers", where),
        docs=tuple(docs),
        gold_docs=tuple(gold),
        gold_spans=_str_list(obj, "gold_spans", where),
        reference=_str(obj, "reference", where, "") if obj.get("reference") is not None else "",
    )


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        yield from fh


def load_rows(path: str | Path, *, limit: int | None = None) -> list[Row]:
    """Read the first ``limit`` rows (all when ``None``) of a task file, validating each."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"task file {str(p)!r} does not exist")
    rows: list[Row] = []
    seen: set[str] = set()
    for n, line in enumerate(_lines(p), start=1):
        if not line.strip():
            continue
        where = f"{p.name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
        row = parse_row(obj, where)
        if row.id in seen:
            raise InputError(f"{where}: duplicate row id {row.id!r}")
        seen.add(row.id)
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise InputError(f"task file {str(p)!r} has no rows")
    return rows
