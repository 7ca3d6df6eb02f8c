"""Selection units: the words of a document, with offsets, costs and protection.

A unit is a run of non-space characters *with the whitespace before it* (or a single CJK character), so the
concatenation of any subset of units, in order, is an order-preserving subsequence of the original text and no
two words are ever merged. Every compressor scores these units; the selector keeps some of them.

A document that parses as JSON (and ``protect.json`` is on) is segmented structurally: structure (keys, braces,
commas, scalars) becomes *dependent* units that are kept exactly when their member is kept, so the output is
always valid JSON (see :meth:`Units.close`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .protect import ProtectionRules, protected_ranges
from .tokens import TokenCounter

__all__ = ["Units", "segment", "reduce_by_units"]

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
_UNIT_RX = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)|\s+$")
_SENT_END = re.compile(r"[.!?。！？;:]['\")\]]*$")


@dataclass
class Units:
    text: str
    starts: np.ndarray  # int64, unit start (including leading whitespace)
    ends: np.ndarray  # int64
    forced: np.ndarray  # bool: must keep
    costs: np.ndarray  # int64: target-LLM tokens
    sentence: np.ndarray  # int64: sentence id
    # JSON structure (empty unless the document is JSON): owner member of each unit (-1 = root, always kept),
    # whether the unit is dependent structure, parent of each member, and each member's leading-comma unit.
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dependent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    member_parent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    member_comma: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    member_container: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    is_json: bool = False

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def total_cost(self) -> int:
        return int(self.costs.sum())

    def unit_text(self, i: int) -> str:
        return self.text[int(self.starts[i]) : int(self.ends[i])]

    def texts(self) -> list[str]:
        t = self.text
        return [t[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist())]

    @property
    def selectable(self) -> np.ndarray:
        if self.is_json:
            return ~self.dependent
        return np.ones(len(self), dtype=bool)

    def close(self, keep: np.ndarray) -> np.ndarray:
        """Complete a keep mask: forced units, and for JSON the structure of every member with kept content."""
        keep = keep | self.forced
        if not self.is_json or len(self) == 0:
            return keep
        n_members = self.member_parent.shape[0]
        alive = np.zeros(n_members, dtype=bool)
        content = keep & ~self.dependent & (self.owner >= 0)
        alive[self.owner[content]] = True
        forced_dep = self.forced & (self.owner >= 0)
        alive[self.owner[forced_dep]] = True
        # a member is alive if any descendant is; parents have smaller ids than children
        for m in range(n_members - 1, -1, -1):
            if alive[m] and self.member_parent[m] >= 0:
                alive[self.member_parent[m]] = True
        owned = self.owner >= 0
        keep = keep.copy()
        keep[self.dependent & ~owned] = True
        dep_owned = self.dependent & owned
        keep[dep_owned] = alive[self.owner[dep_owned]]
        keep[~self.dependent & owned & ~alive[np.maximum(self.owner, 0)]] = False
        keep |= self.forced & ~owned
        # the first alive member of each container loses its leading comma
        seen: set[int] = set()
        for m in range(n_members):
            if not alive[m]:
                continue
            c = int(self.member_container[m])
            if c in seen:
                continue
            seen.add(c)
            comma = int(self.member_comma[m])
            if comma >= 0:
                keep[comma] = False
        return keep

    def render(self, keep: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
        """Kept text and kept character spans (merged). Leading whitespace of the first kept unit is dropped."""
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return "", []
        starts = self.starts[idx].copy()
        ends = self.ends[idx]
        first = int(starts[0])
        lead = len(self.text[first : int(ends[0])]) - len(self.text[first : int(ends[0])].lstrip())
        if not self.is_json:
            starts[0] = first + lead
        # merge adjacent spans
        brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        span_starts = np.concatenate(([starts[0]], starts[brk]))
        span_ends = np.concatenate((ends[brk - 1], [ends[-1]]))
        t = self.text
        spans = list(zip(span_starts.tolist(), span_ends.tolist()))
        return "".join(t[s:e] for s, e in spans), spans


def _raw_units(text: str, offset: int = 0) -> tuple[list[int], list[int]]:
    starts, ends = [], []
    for m in _UNIT_RX.finditer(text):
        if m.end() > m.start():
            starts.append(m.start() + offset)
            ends.append(m.end() + offset)
    return starts, ends


def _sentences(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    n = starts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.zeros(n, dtype=bool)
    texts = [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    for i in range(1, n):
        prev = texts[i - 1]
        cur = texts[i]
        if _SENT_END.search(prev) or "\n" in cur[: len(cur) - len(cur.lstrip())]:
            new[i] = True
    return np.cumsum(new).astype(np.int64)


def _force(starts: np.ndarray, ends: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    forced = np.zeros(starts.shape[0], dtype=bool)
    if ranges.shape[0] == 0 or starts.shape[0] == 0:
        return forced
    # unit i overlaps [a, b) iff starts[i] < b and ends[i] > a
    lo = np.searchsorted(ends, ranges[:, 0], side="right")
    hi = np.searchsorted(starts, ranges[:, 1], side="left")
    delta = np.zeros(starts.shape[0] + 1, dtype=np.int64)
    np.add.at(delta, lo, 1)
    np.add.at(delta, np.maximum(hi, lo), -1)
    forced = np.cumsum(delta[:-1]) > 0
    return forced


# ---------------------------------------------------------------- JSON structure


class _JsonScan:
    """Scan JSON text into (start, end, kind, member) pieces with member/containers bookkeeping."""

    _WS = " \t\n\r"

    def __init__(self, text: str):
        self.t = text
        self.i = 0
        self.pieces: list[tuple[int, int, str, int]] = []  # start, end, kind(struct|string|scalar), owner
        self.parent: list[int] = []
        self.comma: list[int] = []  # piece index of leading comma or -1
        self.container: list[int] = []
        self.n_containers = 0

    def ws(self) -> None:
        t = self.t
        while self.i < len(t) and t[self.i] in self._WS:
            self.i += 1

    def piece(self, start: int, end: int, kind: str, owner: int) -> int:
        self.pieces.append((start, end, kind, owner))
        return len(self.pieces) - 1

    def value(self, owner: int) -> None:
        self.ws()
        t = self.t
        c = t[self.i]
        if c in "{[":
            close = "}" if c == "{" else "]"
            cid = self.n_containers
            self.n_containers += 1
            self.piece(self.i, self.i + 1, "struct", owner)
            self.i += 1
            self.ws()
            first = True
            while t[self.i] != close:
                comma = -1
                if not first:
                    comma = self.piece(self.i, self.i + 1, "struct", -2)  # owner fixed below
                    self.i += 1
                    self.ws()
                first = False
                m = len(self.parent)
                self.parent.append(owner)
                self.comma.append(comma)
                self.container.append(cid)
                if comma >= 0:
                    s, e, k, _ = self.pieces[comma]
                    self.pieces[comma] = (s, e, k, m)
                if c == "{":
                    ks = self.i
                    self.string_end()
                    self.piece(ks, self.i, "struct", m)
                    self.ws()
                    self.piece(self.i, self.i + 1, "struct", m)  # ':'
                    self.i += 1
                self.value(m)
                self.ws()
            self.piece(self.i, self.i + 1, "struct", owner)
            self.i += 1
        elif c == '"':
            s = self.i
            self.string_end()
            self.piece(s, s + 1, "struct", owner)
            if self.i - 1 > s + 1:
                self.piece(s + 1, self.i - 1, "string", owner)
            self.piece(self.i - 1, self.i, "struct", owner)
        else:
            s = self.i
            while self.i < len(t) and t[self.i] not in ",]} \t\n\r":
                self.i += 1
            self.piece(s, self.i, "scalar", owner)

    def string_end(self) -> None:
        t = self.t
        i = self.i + 1
        while t[i] != '"':
            i += 2 if t[i] == "\\" else 1
        self.i = i + 1


def _json_units(text: str) -> Units | None:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[" or len(text) > 5_000_000:
        return None
    try:
        json.loads(text)
    except ValueError:
        return None
    scan = _JsonScan(text)
    scan.value(-1)
    starts: list[int] = []
    ends: list[int] = []
    owner: list[int] = []
    dependent: list[bool] = []
    piece_unit: dict[int, int] = {}
    pos = 0  # whitespace before a piece is attached to it
    for p, (s, e, kind, own) in enumerate(scan.pieces):
        if kind == "string":
            ss, ee = _raw_units(text[s:e], s)
            if ss:
                ss[0] = s
                ee[-1] = e
            for a, b in zip(ss, ee):
                starts.append(a)
                ends.append(b)
                owner.append(own)
                dependent.append(False)
            pos = e
            continue
        piece_unit[p] = len(starts)
        starts.append(pos)
        ends.append(e)
        owner.append(own)
        dependent.append(kind == "struct")
        pos = e
    if starts:
        ends[-1] = len(text)
    comma_units = np.array([piece_unit.get(c, -1) if c >= 0 else -1 for c in scan.comma], dtype=np.int64)
    n = len(starts)
    return Units(
        text=text,
        starts=np.array(starts, dtype=np.int64),
        ends=np.array(ends, dtype=np.int64),
        forced=np.zeros(n, dtype=bool),
        costs=np.zeros(n, dtype=np.int64),
        sentence=np.array(owner, dtype=np.int64),
        owner=np.array(owner, dtype=np.int64),
        dependent=np.array(dependent, dtype=bool),
        member_parent=np.array(scan.parent, dtype=np.int64),
        member_comma=comma_units,
        member_container=np.array(scan.container, dtype=np.int64),
        is_json=True,
    )


# ---------------------------------------------------------------- public


def segment(text: str, protect: ProtectionRules, counter: TokenCounter) -> Units:
    """Split ``text`` into units, mark protected ones and cost each in target-LLM tokens."""
    units = _json_units(text) if protect.json else None
    if units is None:
        s, e = _raw_units(text)
        starts = np.array(s, dtype=np.int64)
        ends = np.array(e, dtype=np.int64)
        units = Units(
            text=text,
            starts=starts,
            ends=ends,
            forced=np.zeros(starts.shape[0], dtype=bool),
            costs=np.zeros(starts.shape[0], dtype=np.int64),
            sentence=_sentences(text, starts, ends),
        )
    units.forced = _force(units.starts, units.ends, protected_ranges(text, protect))
    if len(units):
        units.costs = np.array(counter.count_batch(units.texts()), dtype=np.int64)
    return units


def reduce_by_units(
    units: Units,
    tok_starts: Sequence[int] | np.ndarray,
    tok_ends: Sequence[int] | np.ndarray,
    tok_scores: Sequence[float] | np.ndarray,
    how: str = "mean",
) -> np.ndarray:
    """Map per-token scores (with char offsets into ``units.text``) to one score per unit.

    A token belongs to the unit containing its first non-space character. Units without tokens get ``nan``
    (callers usually fill with their neutral value). ``how`` is ``mean``, ``max``, ``sum`` or ``first``.
    """
    if how not in ("mean", "max", "sum", "first"):
        from .errors import ConfigError

        raise ConfigError(f"how must be one of mean, max, sum, first; got {how!r}")
    n = len(units)
    out = np.full(n, np.nan, dtype=np.float64)
    if n == 0:
        return out
    ts = np.asarray(tok_starts, dtype=np.int64)
    te = np.asarray(tok_ends, dtype=np.int64)
    sc = np.asarray(tok_scores, dtype=np.float64)
    ok = (te > ts) & np.isfinite(sc)
    ts, te, sc = ts[ok], te[ok], sc[ok]
    if ts.size == 0:
        return out
    # tokens often start with the space before a word: use the token's last char to place it
    anchor = te - 1
    unit = np.searchsorted(units.starts, anchor, side="right") - 1
    valid = (unit >= 0) & (anchor < units.ends[np.clip(unit, 0, n - 1)])
    unit, sc = unit[valid], sc[valid]
    if how == "first":
        order = np.unique(unit, return_index=True)
        out[order[0]] = sc[order[1]]
        return out
    if how == "max":
        res = np.full(n, -np.inf)
        np.maximum.at(res, unit, sc)
        has = np.isfinite(res)
        out[has] = res[has]
        return out
    total = np.bincount(unit, weights=sc, minlength=n)
    count = np.bincount(unit, minlength=n)
    has = count > 0
    out[has] = total[has] / count[has] if how == "mean" else total[has]
    return out
