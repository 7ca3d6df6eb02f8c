"""The benchmark runner: compress every row of a task file with every method at every budget, score, aggregate.

One *record* (a JSON line of ``--out``) is written per row per method per budget; runs resume from the records
already in ``--out`` (same task, row, method, budget, target model and reader). A *summary* aggregates the
records of one method at one budget over the selected rows; see ``docs/benchmarks/bench.md`` for every field.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, CtxzipError, InputError
from . import metrics as M
from .data import CodeRow, Row, code_prompt, load_rows, task_name
from .reader import DEFAULT_READER, READER_VERSION, Reader

__all__ = [
    "PEER_METHOD",
    "Budget",
    "BenchConfig",
    "Summary",
    "BenchReport",
    "score_row",
    "summarize",
    "run_bench",
    "external_records",
    "peer_dir",
]

#: The reference implementation, run in its own environment (benchmarks/setup_llmlingua.sh).
PEER_METHOD = "llmlingua-0.2.2"
_PEER_SCRIPT = Path(__file__).with_name("llmlingua_peer.py")


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Budget:
    """One budget: a rate (compressed/original tokens) or an absolute token count."""

    rate: float | None = None
    target_tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.target_tokens is None):
            raise ConfigError("a budget is either rate=R or target_tokens=N")
        if self.rate is not None:
            if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
                raise ConfigError(f"rate must be a number in (0, 1], got {self.rate!r}")
            if not (0.0 < float(self.rate) <= 1.0) or not math.isfinite(float(self.rate)):
                raise ConfigError(f"rate must be in (0, 1], got {self.rate!r}")
            object.__setattr__(self, "rate", float(self.rate))
        if self.target_tokens is not None and (
            isinstance(self.target_tokens, bool) or not isinstance(self.target_tokens, int) or self.target_tokens <= 0
        ):
            raise ConfigError(f"target_tokens must be a positive integer, got {self.target_tokens!r}")

    @property
    def label(self) -> str:
        return f"rate {self.rate:g}" if self.rate is not None else f"{self.target_tokens} tokens"


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``methods`` are compressor names (or :data:`PEER_METHOD`); ``external`` are JSONL files of
    compressed contexts produced elsewhere, scored the same way."""

    task_file: str
    methods: tuple[str, ...] = ()
    budgets: tuple[Budget, ...] = ()
    target_model: str = "gpt-4o"
    limit: int | None = None
    reader: str | None = None
    code_reader: str | None = DEFAULT_READER
    seed: int = 0
    out: str | None = None
    method_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    external: tuple[str, ...] = ()
    peer_dir: str | None = None
    cache: str | None = None  # ctxzip.cache spec ("sqlite", "memory", "redis://..."); None: no cache

    def __post_init__(self) -> None:
        if self.cache is not None and (not isinstance(self.cache, str) or not self.cache.strip()):
            raise ConfigError("cache must be a cache spec such as 'sqlite' or 'redis://host:6379/0', or None")
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "external", tuple(self.external))
        if not isinstance(self.task_file, (str, os.PathLike)) or not str(self.task_file):
            raise ConfigError("task_file must be the path of a .jsonl or .jsonl.gz task file")
        if not self.methods and not self.external:
            raise ConfigError("give at least one method (--method NAME) or an --external results file")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"a method is listed twice: {list(self.methods)}")
        for m in self.methods:
            if not isinstance(m, str) or not m.strip():
                raise ConfigError(f"method names must be non-empty strings, got {m!r}")
        if self.methods and not self.budgets:
            raise ConfigError("give a budget: --rate R (or a list R1,R2), --sweep R1,R2,... or --target-tokens N")
        for b in self.budgets:
            if not isinstance(b, Budget):
                raise ConfigError(f"budgets must be Budget objects, got {type(b).__name__}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ConfigError("a budget is listed twice")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0):
            raise ConfigError(f"limit must be a positive integer, got {self.limit!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.target_model, str) or not self.target_model.strip():
            raise ConfigError("target_model must be a model name such as 'gpt-4o'")
        if not isinstance(self.method_config, Mapping):
            raise ConfigError("method_config must map method names to their config")
        for name, cfg in self.method_config.items():
            if not isinstance(cfg, Mapping):
                raise ConfigError(f"method_config[{name!r}] must be a mapping of options")
        object.__setattr__(
            self, "method_config", MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.method_config.items()})
        )

    @property
    def task(self) -> str:
        return task_name(self.task_file)


# ------------------------------------------------------------------------------------------------ scoring
def score_row(row: Row, context: str, doc_texts: Sequence[str] | None) -> dict[str, Any]:
    """Context metrics of one compressed row.

    ``context`` is the whole compressed context; ``doc_texts`` the compressed text of each original document
    (``""`` when dropped), or ``None`` when the method does not say which text came from which document.

    Returns ``answer_hit`` (None without answers), ``span_recalls`` (one value per gold span with words) and
    ``gold_doc_fractions`` (kept-word share of each gold document; ``None`` without ``doc_texts``). With
    ``doc_texts`` a span's recall is localised (:func:`~ctxzip.bench.metrics.span_recall_in_docs`); without,
    it is its word LCS with the whole compressed context.
    """
    if doc_texts is not None and len(doc_texts) != len(row.docs):
        raise InputError(f"row {row.id!r}: {len(doc_texts)} compressed documents for {len(row.docs)} documents")
    out: dict[str, Any] = {"answer_hit": M.answer_hit(context, row.answers)}
    spans: list[float] = []
    if row.gold_spans:
        if doc_texts is not None:
            orig_words = [M.normalized_words(t) for _, t in row.docs]
            flags = [M.kept_flags(o, M.normalized_words(c)) for o, c in zip(orig_words, doc_texts, strict=True)]
            values = [M.span_recall_in_docs(span, orig_words, flags) for span in row.gold_spans]
        else:
            ctx_words = M.normalized_words(context)
            values = [M.span_recall_one(span, ctx_words) for span in row.gold_spans]
        spans = [v for v in values if v is not None]
    out["span_recalls"] = spans
    if row.gold_docs:
        out["gold_doc_fractions"] = (
            [M.doc_kept(row.docs[i][1], doc_texts[i]) for i in row.gold_docs] if doc_texts is not None else None
        )
    else:
        out["gold_doc_fractions"] = []
    return out


# ------------------------------------------------------------------------------------------------ summaries
@dataclass(frozen=True)
class Summary:
    """The aggregate of one method at one budget over ``n`` rows. Metrics are ``None`` when no row measures
    them (e.g. ``span_recall`` on a task without gold spans)."""

    task: str
    n: int
    method: str
    rate_requested: float | None
    target_tokens: int | None
    target_model: str
    rate_achieved: float | None
    origin_tokens: int
    compressed_tokens: int
    answer_recall: float | None
    span_recall: float | None
    gold_doc_recall: float | None
    tokens_per_s: float | None
    seconds: float
    peak_rss_mb: float | None
    edit_similarity: float | None = None
    exact_match: float | None = None
    reader: str | None = None
    reader_em: float | None = None
    reader_nll: float | None = None
    n_answers: int = 0
    n_spans: int = 0
    n_gold_docs: int = 0
    load_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "task": self.task,
            "n": self.n,
            "method": self.method,
            "rate_requested": self.rate_requested,
            "rate_achieved": self.rate_achieved,
            "answer_recall": self.answer_recall,
            "span_recall": self.span_recall,
            "gold_doc_recall": self.gold_doc_recall,
            "tokens_per_s": self.tokens_per_s,
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
        }
        if self.target_tokens is not None:
            d["target_tokens"] = self.target_tokens
        if self.edit_similarity is not None or self.exact_match is not None:
            d["edit_similarity"] = self.edit_similarity
            d["exact_match"] = self.exact_match
        if self.reader_em is not None or self.reader_nll is not None:
            d["reader_em"] = self.reader_em
            d["reader_nll"] = self.reader_nll
        if self.reader is not None:
            d["reader"] = self.reader
        d.update(
            target_model=self.target_model,
            origin_tokens=self.origin_tokens,
            compressed_tokens=self.compressed_tokens,
            n_answers=self.n_answers,
            n_spans=self.n_spans,
            n_gold_docs=self.n_gold_docs,
            load_seconds=self.load_seconds,
        )
        return d


def summarize(task: str, records: Sequence[Mapping[str, Any]]) -> Summary:
    """Aggregate the records of one method at one budget (see the module docstring of :mod:`.metrics`)."""
    if not records:
        raise ConfigError("summarize() needs at least one record")
    first = records[0]
    origin = sum(int(r["origin_tokens"]) for r in records)
    compressed = sum(int(r["compressed_tokens"]) for r in records)
    seconds = sum(float(r["seconds"]) for r in records)
    spans = [v for r in records for v in (r.get("span_recalls") or [])]
    golds = [v for r in records if r.get("gold_doc_fractions") is not None for v in r["gold_doc_fractions"]]
    gold_measured = any(r.get("gold_doc_fractions") for r in records)
    answers = [r.get("answer_hit") for r in records if r.get("answer_hit") is not None]
    rss = [float(r["peak_rss_mb"]) for r in records if r.get("peak_rss_mb") is not None]
    loads = [float(r["load_seconds"]) for r in records if r.get("load_seconds") is not None]
    readers = {r.get("reader") for r in records if r.get("reader")}
    return Summary(
        task=task,
        n=len(records),
        method=str(first["method"]),
        rate_requested=first.get("rate_requested"),
        target_tokens=first.get("target_tokens"),
        target_model=str(first.get("target_model", "gpt-4o")),
        rate_achieved=compressed / origin if origin else None,
        origin_tokens=origin,
        compressed_tokens=compressed,
        answer_recall=M.mean(answers),
        span_recall=M.mean(spans),
        gold_doc_recall=(sum(1 for v in golds if v >= M.GOLD_DOC_KEEP) / len(golds)) if golds else None,
        tokens_per_s=origin / seconds if seconds > 0 else None,
        seconds=seconds,
        peak_rss_mb=max(rss) if rss else None,
        edit_similarity=M.mean(r.get("edit_similarity") for r in records),
        exact_match=M.mean(r.get("exact_match") for r in records),
        reader=", ".join(sorted(readers)) if readers else None,
        reader_em=M.mean(r.get("reader_em") for r in records),
        reader_nll=M.mean(r.get("reader_nll") for r in records),
        n_answers=len(answers),
        n_spans=len(spans),
        n_gold_docs=len(golds) if gold_measured else 0,
        load_seconds=max(loads) if loads else None,
    )


@dataclass(frozen=True)
class BenchReport:
    task: str
    summaries: tuple[Summary, ...]
    records: tuple[Mapping[str, Any], ...]

    def to_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.summaries]


# ------------------------------------------------------------------------------------------------ memory
def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory (MiB): ``VmHWM`` since the last reset, else the process's lifetime peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _free_models() -> None:
    mod = sys.modules.get("ctxzip.models.loading")
    if mod is not None and hasattr(mod, "clear_shared"):
        mod.clear_shared()
    gc.collect()


# ------------------------------------------------------------------------------------------------ helpers
def _seed_all(seed: int, row_id: str) -> None:
    s = zlib.crc32(f"{seed}:{row_id}".encode()) & 0x7FFFFFFF
    random.seed(s)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(s)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(s)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_methods(text: str) -> list[str]:
    """Split ``"a,b[k=1,j=2],c"`` at the commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            if cur.strip():
                out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name[key=value,...]"`` (values JSON, else strings) -> (name, config)."""
    spec = spec.strip()
    if "[" not in spec:
        return spec, {}
    if not spec.endswith("]") or spec.index("[") == 0:
        raise ConfigError(f"method {spec!r}: write NAME or NAME[key=value,...]")
    name, inner = spec[: spec.index("[")], spec[spec.index("[") + 1 : -1]
    conf: dict[str, Any] = {}
    for item in split_methods(inner):
        if "=" not in item:
            raise ConfigError(f"method {spec!r}: option {item!r} is not key=value")
        k, v = item.split("=", 1)
        conf[k.strip()] = _value(v.strip())
    return name, conf


def method_label(name: str, config: Mapping[str, Any] | None) -> str:
    """``name`` or ``name(k=v,...)`` when the method runs with a non-default config."""
    if not config:
        return name
    inner = ",".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(config.items()))
    return f"{name}({inner})"


def _key(task: str, rid: str, method: str, budget: Budget, target_model: str, reader: str | None) -> tuple:
    return (task, rid, method, budget.rate, budget.target_tokens, target_model, reader,
            READER_VERSION if reader is not None else None)


def _method_version(name: str) -> str | None:
    """The implementation version of compressor ``name`` (``None`` for the LLMLingua peer, which has none)."""
    if name == PEER_METHOD:
        return None
    from ..registry import compressor_class

    return str(getattr(compressor_class(name), "version", ""))


def _record_key(rec: Mapping[str, Any]) -> tuple:
    return (
        rec.get("task"),
        rec.get("id"),
        rec.get("method"),
        rec.get("rate_requested"),
        rec.get("target_tokens"),
        rec.get("target_model"),
        rec.get("reader"),
        rec.get("reader_version") if rec.get("reader") is not None else None,
    )


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of an ``--out`` file (lines cut by an interrupted run are skipped)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec and "method" in rec:
                out.append(rec)
    return out


def _reader_for(row: Row, cfg: BenchConfig) -> str | None:
    return cfg.code_reader if isinstance(row, CodeRow) else cfg.reader


def _apply_reader(rec: dict[str, Any], row: Row, context: str, reader: Reader | None) -> None:
    if reader is None:
        return
    rec["reader"] = reader.name
    rec["reader_version"] = READER_VERSION
    if isinstance(row, CodeRow):
        pred = reader.complete_line(code_prompt(row.instruction, context, row.prefix))
        rec["prediction"] = pred
        rec["edit_similarity"] = M.edit_similarity(pred, row.target)
        rec["exact_match"] = M.exact_match(pred, row.target)
        return
    pred = reader.answer(context, row.question)
    rec["reader_prediction"] = pred
    rec["reader_em"] = M.reader_em(pred, row.answers)
    gold = row.gold_answer
    rec["reader_nll"] = reader.answer_nll(context, row.question, gold) if gold else None


class _Progress:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self._p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def add(self, description: str, total: int) -> Any:
        return self._p.add_task(description, total=total) if self._p is not None else None

    def advance(self, task: Any, n: int = 1) -> None:
        if self._p is not None and task is not None:
            self._p.advance(task, n)

    def log(self, message: str) -> None:
        if self._p is not None:
            self._p.console.log(message)
        else:
            print(message, file=sys.stderr)


# ------------------------------------------------------------------------------------------------ external
def external_records(
    task: str,
    rows: Sequence[Row],
    lines: Iterable[Mapping[str, Any]],
    target_model: str,
    *,
    default_method: str = "external",
) -> list[dict[str, Any]]:
    """Score compressed contexts produced elsewhere (``{"id", "method", "rate" | "target_tokens", "context",
    "documents"?, "seconds"?, "peak_rss_mb"?}`` per line) exactly as ctxzip's own: tokens are counted here with
    the target tokenizer over the documents joined by a blank line, like :class:`CompressionResult` does."""
    from ..select import DOC_SEPARATOR
    from ..tokens import get_counter

    counter = get_counter(target_model)
    by_id = {r.id: r for r in rows}
    out = []
    for line in lines:
        row = by_id.get(str(line.get("id")))
        if row is None:
            continue
        context = line.get("context")
        if not isinstance(context, str):
            raise InputError(f"external record {line.get('id')!r} has no 'context' string")
        docs = line.get("documents")
        if docs is not None and (not isinstance(docs, list) or len(docs) != len(row.docs)):
            docs = None
        originals = [t for _, t in row.docs]
        rate = line.get("rate", line.get("rate_requested"))
        rec: dict[str, Any] = {
            "task": task,
            "id": row.id,
            "kind": row.kind,
            "method": str(line.get("method") or default_method),
            "rate_requested": float(rate) if rate is not None else None,
            "target_tokens": line.get("target_tokens"),
            "target_model": target_model,
            "tokenizer": counter.name,
            "origin_tokens": counter.count(DOC_SEPARATOR.join(t for t in originals if t)),
            "compressed_tokens": counter.count(context),
            "seconds": float(line.get("seconds") or 0.0),
            "peak_rss_mb": line.get("peak_rss_mb"),
            "load_seconds": line.get("load_seconds"),
            "context": context,
        }
        rec.update(score_row(row, context, docs))
        out.append(rec)
    return out


def peer_dir(path: str | None = None) -> Path:
    """The LLMLingua environment built by ``benchmarks/setup_llmlingua.sh``."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("CTXZIP_LLMLINGUA_DIR")
    if env:
        return Path(env).expanduser()
    from ..paths import cache_dir

    return cache_dir().joinpath("llmlingua")


def _run_peer(cfg: BenchConfig, rows: Sequence[Row], progress: _Progress) -> list[dict[str, Any]]:
    """Compress ``rows`` with LLMLingua 0.2.2 in its own environment; returns its result lines."""
    base = peer_dir(cfg.peer_dir)
    python = base / "venv" / "bin" / "python"
    model = base / "smollm2"
    if not python.exists() or not (model / "config.json").exists():
        raise CtxzipError(
            f"{PEER_METHOD}: no peer environment at {base}; build it with benchmarks/setup_llmlingua.sh "
            f"(or point CTXZIP_LLMLINGUA_DIR / --peer-dir at one)"
        )
    for b in cfg.budgets:
        if b.rate is None:
            raise ConfigError(f"{PEER_METHOD} runs with --rate budgets only")
    from ..paths import cache_dir

    results = cache_dir("bench", PEER_METHOD) / f"{cfg.task}.jsonl"
    wanted = {(r.id, b.rate) for r in rows for b in cfg.budgets}
    fd, req_path = tempfile.mkstemp(prefix="ctxzip-peer-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:  # row-major: an interrupted run still has every rate on the same rows
                for b in cfg.budgets:
                    fh.write(json.dumps({"id": row.id, "rate": b.rate, "docs": [t for _, t in row.docs],
                                         "question": row.question}) + "\n")
        env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(base / "tiktoken"), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_VERBOSITY="error", PYTHONHASHSEED=str(cfg.seed))
        cmd = [str(python), str(_PEER_SCRIPT), "--requests", req_path, "--model", str(model), "--out", str(results),
               "--seed", str(cfg.seed)]
        task = progress.add(f"{PEER_METHOD} (peer env)", total=len(wanted))
        progress.log(f"{PEER_METHOD}: {' '.join(cmd)} (results in {results})")
        done_before = sum(1 for r in read_records(results) if (r.get("id"), r.get("rate")) in wanted)
        progress.advance(task, done_before)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tail: list[str] = []
        for line in proc.stderr or ():
            tail = (tail + [line.rstrip()])[-20:]
            if line.startswith(f"{PEER_METHOD}: ") and "/" in line.split()[1]:
                progress.advance(task)
        if proc.wait() != 0:
            raise CtxzipError(f"{PEER_METHOD} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    finally:
        os.unlink(req_path)
    return [r for r in read_records(results) if (r.get("id"), r.get("rate")) in wanted]


# ------------------------------------------------------------------------------------------------ main loop
def run_bench(
    cfg: BenchConfig,
    *,
    progress: bool = True,
    reader_factory: Callable[[str], Reader] | None = None,
) -> BenchReport:
    """Run ``cfg`` and return its summaries (one per method and budget) and records (one per row)."""
    from ..registry import get_compressor
    from ..types import CompressionRequest

    rows = load_rows(cfg.task_file, limit=cfg.limit)
    task = cfg.task
    out_path = Path(cfg.out) if cfg.out else None
    previous = read_records(out_path) if out_path else []
    done = {_record_key(r): r for r in previous}
    readers: dict[str, Reader] = {}

    def get_reader(spec: str | None) -> Reader | None:
        if spec is None:
            return None
        if spec not in readers:
            if reader_factory is not None:
                readers[spec] = reader_factory(spec)
            else:
                from .reader import load_reader

                readers[spec] = load_reader(spec)
        return readers[spec]

    collected: list[dict[str, Any]] = []
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    out_fh = out_path.open("a", encoding="utf-8") if out_path else None

    def emit(rec: dict[str, Any]) -> None:
        collected.append(rec)
        if out_fh is not None:
            out_fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out_fh.flush()

    try:
        with _Progress(progress) as bar:
            for spec in cfg.methods:
                name, conf = parse_method_spec(spec)
                conf.update(cfg.method_config.get(spec, {}))
                label = method_label(name, conf)
                current = _method_version(name)
                todo: list[tuple[Budget, Row]] = []
                for b in cfg.budgets:
                    for row in rows:
                        k = _key(task, row.id, label, b, cfg.target_model, _reader_for(row, cfg))
                        # a record of another implementation version is recomputed (and the new one appended)
                        if k in done and (current is None or str(done[k].get("method_version", "")) == current):
                            collected.append(done[k])
                        else:
                            todo.append((b, row))
                if name == PEER_METHOD:
                    if conf:
                        raise ConfigError(f"{PEER_METHOD} runs with the fixed LongLLMLingua settings; no --config")
                    todo_ids = {row.id for _, row in todo}
                    need = [row for row in rows if row.id in todo_ids]
                    if need:
                        lines = _run_peer(cfg, need, bar)
                        recs = external_records(task, need, lines, cfg.target_model, default_method=PEER_METHOD)
                        by = {(r["id"], r["rate_requested"]): r for r in recs}
                        peer_pending: list[tuple[dict[str, Any], Row, str]] = []
                        for b, row in todo:
                            rec = by.get((row.id, b.rate))
                            if rec is None:
                                continue
                            context = rec.pop("context")
                            rec["seed"] = cfg.seed
                            if _reader_for(row, cfg) is None:
                                emit(rec)
                            else:
                                peer_pending.append((rec, row, context))
                        _read_pending(peer_pending, cfg, get_reader, emit, bar, PEER_METHOD)
                    continue
                if not todo:
                    continue
                readers.clear()
                _free_models()
                _reset_peak_rss()
                t0 = time.perf_counter()
                comp = get_compressor(name, **conf)
                comp.load()
                load_seconds = time.perf_counter() - t0
                version = getattr(comp, "version", "")
                ptask = bar.add(f"{label}", total=len(todo))
                pending: list[tuple[dict[str, Any], Row, str]] = []
                for b, row in todo:
                    _seed_all(cfg.seed, row.id)
                    req = CompressionRequest.create(
                        row.documents,
                        question=row.question,
                        instruction=row.instruction,
                        rate=b.rate,
                        target_tokens=b.target_tokens,
                        target_model=cfg.target_model,
                        seed=cfg.seed,
                        cache=cfg.cache or False,
                    )
                    res = comp.compress(req)
                    peak = _peak_rss_mb()
                    docs_by_index = {d.index: d.text for d in res.documents}
                    doc_texts = [docs_by_index.get(i, "") for i in range(len(row.docs))]
                    rec: dict[str, Any] = {
                        "task": task,
                        "id": row.id,
                        "kind": row.kind,
                        "method": label,
                        "method_version": version,
                        "rate_requested": b.rate,
                        "target_tokens": b.target_tokens,
                        "target_model": cfg.target_model,
                        "tokenizer": res.tokenizer,
                        "origin_tokens": res.origin_tokens,
                        "compressed_tokens": res.compressed_tokens,
                        "seconds": res.seconds,
                        "peak_rss_mb": peak,
                        "load_seconds": load_seconds,
                        "seed": cfg.seed,
                    }
                    rec.update(score_row(row, res.text, doc_texts))
                    if _reader_for(row, cfg) is None:
                        emit(rec)
                    else:  # read after all compressions, so the reader's memory stays out of peak_rss_mb
                        pending.append((rec, row, res.text))
                    bar.advance(ptask)
                del comp
                _read_pending(pending, cfg, get_reader, emit, bar, label)
            for path in cfg.external:
                lines = read_records(path)
                if not lines:
                    raise InputError(f"external results file {path!r} has no records")
                recs = external_records(task, rows, lines, cfg.target_model, default_method=Path(path).stem)
                if cfg.budgets:
                    keep = {b.rate for b in cfg.budgets}
                    recs = [r for r in recs if r["rate_requested"] in keep]
                by_id = {r.id: r for r in rows}
                ext_pending: list[tuple[dict[str, Any], Row, str]] = []
                for rec in recs:
                    row = by_id[rec["id"]]
                    context = rec.pop("context")
                    rec["external"] = str(path)
                    rec["seed"] = cfg.seed
                    reader_spec = _reader_for(row, cfg)
                    if reader_spec is not None:
                        rec["reader"] = reader_spec
                        rec["reader_version"] = READER_VERSION
                    prev = done.get(_record_key(rec))
                    if prev is not None:
                        collected.append(prev)
                    elif reader_spec is None:
                        emit(rec)
                    else:
                        ext_pending.append((rec, row, context))
                _read_pending(ext_pending, cfg, get_reader, emit, bar, Path(path).name)
    finally:
        if out_fh is not None:
            out_fh.close()
    return BenchReport(task=task, summaries=tuple(_group(task, collected)), records=tuple(collected))


def _read_pending(
    pending: Sequence[tuple[dict[str, Any], Row, str]],
    cfg: BenchConfig,
    get_reader: Callable[[str | None], Reader | None],
    emit: Callable[[dict[str, Any]], None],
    bar: _Progress,
    label: str,
) -> None:
    """Run the reader over compressed rows, then write their records."""
    if not pending:
        return
    task = bar.add(f"{label} reader", total=len(pending))
    for rec, row, context in pending:
        _seed_all(cfg.seed, row.id)
        _apply_reader(rec, row, context, get_reader(_reader_for(row, cfg)))
        emit(rec)
        bar.advance(task)


def _group(task: str, records: Sequence[Mapping[str, Any]]) -> list[Summary]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r.get("rate_requested"), r.get("target_tokens")), []).append(r)
    out = [summarize(task, recs) for recs in groups.values()]
    return out
