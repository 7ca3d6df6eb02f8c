"""Syntax-aware chunking of source code, for :mod:`ctxzip.compressors.codezip`.

:func:`chunk_code` splits a source file into **chunks** that cover every line exactly once, in order:

* ``function`` chunks: a function or method with its decorators and the comments just above it;
* ``class`` chunks: the header of a class-like container (class, impl, trait, namespace, ...) whose members are
  chunks of their own (their ``parent`` is the header), and ``footer`` chunks with the container's closing lines;
* ``code`` chunks: everything else (imports, constants, top-level statements), consecutive small ones merged.

Each function chunk carries a **statement tree** (:class:`Node`): the function itself at the root and, below it,
every statement that sits on lines of its own, so that dropping a node's lines (and its subtree) leaves code that
is still syntactically sound. A node's *own* lines are its lines minus its children's: the signature and closing
brace of a function, the ``if ...:`` / ``} else {`` lines of a compound statement.

Parsers: Python with the standard library's :mod:`ast` (tree-sitter-python when ``ast`` rejects the source, e.g.
a file cut off mid-statement); JavaScript, TypeScript (and TSX), Java, Go, Rust, C and
C++ with tree-sitter and the grammar packages from PyPI (``tree-sitter-javascript`` ...), which ship compiled
grammars and work offline. Other languages, and sources that do not parse, fall back to a regular-expression
splitter (top-level blocks separated by blank lines or definition keywords), without statement trees.

Lines are split at ``"\\n"`` only and keep their line endings, so ``"".join(layout.lines) == text``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import re
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._lazy import require
from .errors import ConfigError

__all__ = [
    "LANGUAGES",
    "Node",
    "Fill",
    "Chunk",
    "CodeLayout",
    "chunk_code",
    "detect_language",
    "normalize_language",
    "comment_prefix",
    "split_lines",
    "syntax_errors",
]

#: languages with a syntax-aware chunker (``"unknown"`` uses the regular-expression fallback)
LANGUAGES = ("python", "javascript", "typescript", "tsx", "java", "go", "rust", "c", "cpp")

_ALIASES = {
    "py": "python", "python3": "python", "py3": "python",
    "js": "javascript", "jsx": "javascript", "node": "javascript", "mjs": "javascript", "cjs": "javascript",
    "ts": "typescript",
    "golang": "go",
    "rs": "rust",
    "h": "c",
    "c++": "cpp", "cxx": "cpp", "cc": "cpp", "hpp": "cpp", "hh": "cpp", "hxx": "cpp",
}

_EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".java": "java", ".go": "go", ".rs": "rust", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp", ".c++": "cpp",
}

# tree-sitter grammar package and the function returning its language, per language
_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),  # only for sources that ast cannot parse
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "java": ("tree_sitter_java", "language"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}


def normalize_language(name: str | None) -> str | None:
    """Canonical language name (``"py"`` → ``"python"``), ``None`` for None/auto, ``"unknown"`` otherwise."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"language must be a string such as 'python' or 'go', got {type(name).__name__}")
    low = name.strip().lower()
    if low in ("", "auto"):
        return None
    if low.startswith("."):
        return _EXTENSIONS.get(low, "unknown")
    low = _ALIASES.get(low, low)
    return low if low in LANGUAGES else "unknown"


def comment_prefix(language: str) -> str:
    """The line-comment syntax of ``language``: ``#`` for Python (and unknown languages), ``//`` otherwise."""
    return "#" if language in ("python", "unknown") else "//"


# ------------------------------------------------------------------------------------------- detection

_SIGNALS: tuple[tuple[str, str, float], ...] = (
    ("python", r"^\s*def \w+\(.*\)\s*(->\s*[^:]+)?:\s*$", 3.0),
    ("python", r"^\s*(from [\w.]+ )?import [\w.]+(\s+as \w+)?\s*$", 1.0),
    ("python", r"^\s*class \w+(\(.*\))?:\s*$", 3.0),
    ("python", r"^\s*(elif .*|else|try|finally):\s*$", 1.0),
    ("python", r"\bself\.\w+", 0.5),
    ("go", r"^package \w+\s*$", 4.0),
    ("go", r"^func (\(\w+ \*?\w+\) )?\w+\(", 4.0),
    ("go", r":= ", 1.0),
    ("rust", r"^\s*(pub(\(crate\))? )?fn \w+", 4.0),
    ("rust", r"^\s*(use \w+::|impl(<.*>)? \w+|let mut )", 2.0),
    ("java", r"^\s*(public|private|protected)( static)?( final)? (class|interface|enum|record) \w+", 4.0),
    ("java", r"^\s*import java\.", 4.0),
    ("java", r"^\s*package [\w.]+;\s*$", 3.0),
    ("cpp", r"^\s*#include <\w+>\s*$", 2.0),
    ("cpp", r"\bstd::|^\s*namespace \w+|^\s*template\s*<|\bpublic:|\bprivate:", 2.0),
    ("c", r"^\s*#include [<\"][\w/]+\.h[>\"]", 2.5),
    ("c", r"^\s*(static )?(int|void|char|unsigned|size_t|struct \w+ \*?)\s*\*?\w+\(", 1.5),
    ("typescript", r"^\s*(export )?(interface|type) \w+.*[={]", 3.0),
    ("typescript", r"\w+\??: (string|number|boolean|any|void)\b", 2.0),
    ("javascript", r"^\s*(export )?(async )?function\*? \w+\(", 2.5),
    ("javascript", r"^\s*(const|let|var) \w+ = (require\(|\(.*\) =>|async )", 2.0),
    ("javascript", r"^\s*import .* from ['\"]", 1.5),
    ("javascript", r"\bconsole\.log\(|===", 1.0),
)


def declared_language(hint: str | None = None, filename: str | None = None) -> str | None:
    """The language named by ``hint`` (a name or alias) or else by ``filename``'s extension; None when neither
    names one of :data:`LANGUAGES`."""
    lang = normalize_language(hint)
    if lang is not None and lang != "unknown":
        return lang
    if filename:
        m = re.search(r"(\.[A-Za-z+]+)\s*$", filename.strip())
        if m and m.group(1).lower() in _EXTENSIONS:
            return _EXTENSIONS[m.group(1).lower()]
    return None


def detect_language(text: str, *, hint: str | None = None, filename: str | None = None) -> str:
    """Guess the language of ``text``: an explicit ``hint`` wins, then the file extension, then content cues.

    Returns one of :data:`LANGUAGES` or ``"unknown"``.
    """
    lang = declared_language(hint, filename)
    if lang is not None:
        return lang
    sample = text[:20000]
    first = sample.lstrip().split("\n", 1)[0]
    if first.startswith("#!"):
        for key, name in (("python", "python"), ("node", "javascript"), ("deno", "typescript")):
            if key in first:
                return name
    scores: dict[str, float] = {}
    for name, rx, weight in _SIGNALS:
        n = len(re.findall(rx, sample, flags=re.M))
        if n:
            scores[name] = scores.get(name, 0.0) + weight * min(n, 20)
    if scores.get("typescript", 0.0) > 0 and scores.get("javascript", 0.0) > 0:
        scores["typescript"] += scores["javascript"] * 0.5
    if scores.get("cpp", 0.0) > 0 and scores.get("c", 0.0) > 0:
        scores["cpp"] += scores["c"] * 0.5
    if not scores:
        return "unknown"
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] >= 3.0 else "unknown"


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Node:
    """A statement (or the function itself, at the root) on lines ``first..last`` (0-based, inclusive).

    ``children`` are the statements nested in it that start and end on lines of their own, in order.
    ``is_return`` marks return statements (and a Rust function's tail expression).
    """

    first: int
    last: int
    children: tuple[Node, ...] = ()
    is_return: bool = False

    def walk(self) -> list[Node]:
        """This node and all its descendants, in pre-order."""
        out: list[Node] = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


@dataclass(frozen=True)
class Fill:
    """Python only: when the header line ``header`` is kept but no code line of ``first..last`` is, the suite
    would be empty; an ``...`` statement indented by ``indent`` goes in its place."""

    header: int
    first: int
    last: int
    indent: str


@dataclass(frozen=True)
class Chunk:
    """Lines ``first..last`` of the file (0-based, inclusive). ``kind``: ``function``, ``class`` (a container's
    header), ``footer`` (its closing lines) or ``code``. ``parent`` is the index of the enclosing container's
    header chunk; ``body`` the statement tree of a function."""

    index: int
    first: int
    last: int
    kind: str
    name: str = ""
    parent: int | None = None
    body: Node | None = None

    @property
    def n_lines(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class CodeLayout:
    """A chunked source file. ``parsed`` is False when the fallback splitter was used (no syntax tree)."""

    language: str
    lines: tuple[str, ...]
    chunks: tuple[Chunk, ...]
    parsed: bool
    trivia: tuple[bool, ...]  # blank or comment-only line (outside string literals)
    fills: tuple[Fill, ...] = ()
    parser: str = "regex"  # "ast", "tree-sitter" or "regex"
    notes: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def chunk_text(self, i: int) -> str:
        c = self.chunks[i]
        return "".join(self.lines[c.first : c.last + 1])

    def ancestors(self, i: int) -> list[int]:
        """Header chunks enclosing chunk ``i``, innermost first."""
        out = []
        p = self.chunks[i].parent
        while p is not None:
            out.append(p)
            p = self.chunks[p].parent
        return out


def split_lines(text: str) -> list[str]:
    """Lines split at ``"\\n"`` with their endings kept (``"".join`` gives ``text`` back)."""
    if not text:
        return []
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


# ------------------------------------------------------------------------------------------- items

@dataclass
class _Item:
    """A top-level (or container-member) syntactic element before it becomes a chunk."""

    first: int
    last: int
    kind: str  # function | container | code
    name: str = ""
    body: Node | None = None
    members: list[_Item] | None = None  # containers: member items
    header_last: int = -1  # containers: last header line
    footer_first: int = -1  # containers: first footer line (-1: none)


def _build_chunks(items: list[_Item], n_lines: int, lines: Sequence[str], trivia: Sequence[bool],
                  merge_chars: int) -> list[Chunk]:
    """Turn items into chunks covering lines ``0..n_lines-1``: leading trivia joins the next item."""
    chunks: list[Chunk] = []

    def emit(its: list[_Item], lo: int, hi: int, parent: int | None) -> None:
        # lines lo..hi belong to this level; items are in order and inside that range
        pos = lo
        pending_code: list[int] = []  # indices of code chunks that may be merged

        def add(first: int, last: int, kind: str, name: str = "", body: Node | None = None) -> int:
            chunks.append(Chunk(len(chunks), first, last, kind, name, parent, body))
            return len(chunks) - 1

        for it in its:
            first = pos
            if it.kind == "container" and it.members:
                h = add(first, it.header_last, "class", it.name)
                emit(it.members, it.header_last + 1, (it.footer_first - 1) if it.footer_first >= 0 else it.last, h)
                if it.footer_first >= 0:
                    chunks.append(Chunk(len(chunks), it.footer_first, it.last, "footer", it.name, h, None))
                pending_code = []
            else:
                kind = "function" if it.kind == "function" else "code"
                idx = add(first, it.last, kind, it.name, it.body)
                if kind == "code":
                    prev = pending_code[-1] if pending_code else None
                    if prev is not None and prev == idx - 1:
                        a = chunks[prev]
                        size = sum(len(x) for x in lines[a.first : it.last + 1])
                        if size <= merge_chars:
                            chunks[prev] = Chunk(prev, a.first, it.last, "code", a.name, parent, None)
                            chunks.pop()
                            idx = prev
                    pending_code.append(idx)
                else:
                    pending_code = []
            pos = it.last + 1
        if pos <= hi:
            # trailing lines of this level (comments, blank lines): join the last chunk of the level
            if its and chunks and chunks[-1].parent == parent and chunks[-1].kind != "class":
                c = chunks[-1]
                chunks[-1] = Chunk(c.index, c.first, hi, c.kind, c.name, c.parent, c.body)
            else:
                chunks.append(Chunk(len(chunks), pos, hi, "code", "", parent, None))

    emit(items, 0, n_lines - 1, None)
    return chunks


# ------------------------------------------------------------------------------------------- python


def _python_trivia(text: str, lines: Sequence[str]) -> list[bool] | None:
    """Blank or comment-only lines, excluding lines inside (multi-line) string literals."""
    in_string = [False] * len(lines)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING or getattr(tokenize, "FSTRING_START", -1) == tok.type:
                for r in range(tok.start[0], tok.end[0]):  # rows after the first (1-based start → 0-based)
                    if r < len(in_string):
                        in_string[r] = True
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    out = []
    for i, line in enumerate(lines):
        s = line.strip()
        out.append(not in_string[i] and (not s or s.startswith("#")))
    return out


class _PySource:
    def __init__(self, lines: Sequence[str]):
        self.lines = lines
        self.fills: list[Fill] = []

    def own_line(self, node: ast.AST) -> bool:
        """True when ``node`` starts and ends on lines of its own (only whitespace/comments besides it)."""
        a, b = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
        if a < 0 or b >= len(self.lines):
            return False
        line_a = self.lines[a]
        if line_a[: node.col_offset].strip():  # type: ignore[attr-defined]
            return False
        rest = self.lines[b].rstrip("\r\n")[node.end_col_offset :].strip()  # type: ignore[attr-defined]
        return not rest or rest.startswith("#")

    def suites(self, node: ast.AST) -> list[list[ast.stmt]]:
        out: list[list[ast.stmt]] = []
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                if name == "orelse" and len(body) == 1 and isinstance(body[0], ast.If):
                    line = self.lines[body[0].lineno - 1]
                    if line.lstrip().startswith("elif"):
                        out.append(list(body))  # an elif: its own node, no suite to fill
                        continue
                out.append(list(body))
        for h in getattr(node, "handlers", None) or []:
            out.append(list(h.body))
        for case in getattr(node, "cases", None) or []:
            out.append(list(case.body))
        return out

    def tree(self, node: ast.AST) -> Node:
        first = node.lineno - 1  # type: ignore[attr-defined]
        last = node.end_lineno - 1  # type: ignore[attr-defined]
        children: list[Node] = []
        for suite in self.suites(node):
            elif_chain = (
                len(suite) == 1 and isinstance(suite[0], ast.If)
                and self.lines[suite[0].lineno - 1].lstrip().startswith("elif")
            )
            if not suite or not all(s.lineno - 1 > first and self.own_line(s) for s in suite):
                continue
            for s in suite:
                children.append(self.tree(s))
            if not elif_chain:
                indent = _indent(self.lines[suite[0].lineno - 1])
                end = suite[-1].end_lineno - 1  # type: ignore[operator]
                self.fills.append(Fill(first, suite[0].lineno - 1, end, indent))
        children.sort(key=lambda n: n.first)
        clean: list[Node] = []  # children never overlap; guard against odd line tables all the same
        for c in children:
            if not clean or c.first > clean[-1].last:
                clean.append(c)
        return Node(first, last, tuple(clean), is_return=isinstance(node, ast.Return))


def _python_items(tree: ast.Module, src: _PySource, depth: int = 0) -> list[_Item]:
    def item_of(stmt: ast.stmt, level: int) -> _Item:
        first = stmt.lineno - 1
        decos = getattr(stmt, "decorator_list", None) or []
        if decos:  # a decorator's expression starts on its '@' line
            first = min([first] + [d.lineno - 1 for d in decos])
        last = stmt.end_lineno - 1  # type: ignore[operator]
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = src.tree(stmt)
            body = Node(first, last, body.children, False)
            return _Item(first, last, "function", stmt.name, body=body)
        if isinstance(stmt, ast.ClassDef) and level < 3 and stmt.body:
            members_ok = all(s.lineno - 1 > stmt.lineno - 1 and src.own_line(s) for s in stmt.body)
            if members_ok:
                members = [item_of(s, level + 1) for s in stmt.body]
                header_last = members[0].first - 1
                src.fills.append(Fill(header_last, members[0].first, last, _indent(src.lines[stmt.body[0].lineno - 1])))
                return _Item(first, last, "container", stmt.name, members=members, header_last=header_last)
        name = ""
        if isinstance(stmt, ast.ClassDef):
            name = stmt.name
        return _Item(first, last, "code", name)

    items = [item_of(s, depth) for s in tree.body]
    return items


def _chunk_python(text: str, lines: list[str], merge_chars: int) -> CodeLayout | None:
    if re.search(r"\r(?!\n)|[\x0c]", text):
        return None  # line tables of ast and of split("\n") could disagree
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    trivia = _python_trivia(text, lines)
    if trivia is None:
        return None
    src = _PySource(lines)
    try:
        items = _python_items(tree, src)
    except RecursionError:
        return None
    items = _fix_decorated_firsts(items)
    chunks = _build_chunks(items, len(lines), lines, trivia, merge_chars)
    fills = tuple(f for f in src.fills if 0 <= f.header < f.first <= f.last)
    return CodeLayout("python", tuple(lines), tuple(chunks), True, tuple(trivia), fills, "ast")


def _fix_decorated_firsts(items: list[_Item]) -> list[_Item]:
    """Make sure items do not overlap (a decorator line may precede an item's reported start)."""
    prev_last = -1
    for it in items:
        if it.first <= prev_last:
            it.first = prev_last + 1
        if it.members:
            _fix_decorated_firsts(it.members)
        prev_last = it.last
    return items


# ------------------------------------------------------------------------------------------- tree-sitter

@functools.cache
def _parser(language: str) -> Any:
    ts = require("tree_sitter", feature="code chunking")
    module, fn = _GRAMMARS[language]
    try:
        grammar = importlib.import_module(module)
    except ImportError as exc:
        pkg = module.replace("_", "-")
        from .errors import MissingDependencyError

        raise MissingDependencyError(
            f"the tree-sitter grammar for {language} is not installed ({exc}); install it with: pip install {pkg}"
        ) from exc
    return ts.Parser(ts.Language(getattr(grammar, fn)()))


_FUNCTIONS = {
    "function_declaration", "generator_function_declaration", "method_definition", "function_definition",
    "method_declaration", "constructor_declaration", "compact_constructor_declaration", "function_item",
}
_CONTAINERS = {
    "class_declaration", "abstract_class_declaration", "class", "interface_declaration", "enum_declaration",
    "record_declaration", "impl_item", "trait_item", "mod_item", "namespace_definition", "class_specifier",
    "struct_specifier", "linkage_specification", "internal_module", "module", "class_definition",
}
_WRAPPERS = {"export_statement", "template_declaration", "declaration", "type_definition", "expression_statement",
             "ambient_declaration", "decorated_definition"}
_VAR_DECLS = {"lexical_declaration", "variable_declaration"}
_FUNC_VALUES = {"arrow_function", "function_expression", "function", "generator_function"}
_BLOCKS = {
    "block", "statement_block", "compound_statement", "statement_list", "switch_case", "switch_default",
    "switch_block_statement_group", "case_statement", "expression_case", "default_case", "type_case",
    "communication_case",
}
_CASES = _BLOCKS - {"block", "statement_block", "compound_statement", "statement_list"}
_COMMENTS = {"comment", "line_comment", "block_comment"}
_LABEL_FIELDS = {"value", "condition", "pattern", "label", "type", "types"}


class _TsSource:
    def __init__(self, data: bytes, language: str):
        self.data = data
        self.language = language
        self.blines = data.split(b"\n")
        self.fills: list[Fill] = []  # Python (tree-sitter path): suites that need an ``...`` when emptied
        self._groups: list[list[Any]] | None = None

    def span(self, node: Any) -> tuple[int, int]:
        a = node.start_point.row
        b = node.end_point.row
        if node.end_point.column == 0 and b > a:
            b -= 1
        return a, b

    def own_line(self, node: Any) -> bool:
        a, b = self.span(node)
        if self.blines[a][: node.start_point.column].strip():
            return False
        if node.end_point.column == 0 and node.end_point.row > a:
            return True
        rest = self.blines[node.end_point.row][node.end_point.column :].strip()
        return not rest or rest.startswith((b"//", b"/*")) or rest in (b";", b",", b":")

    def statements(self, block: Any) -> list[Any]:
        out: list[Any] = []
        for i, c in enumerate(block.children):
            if not c.is_named or c.type in _COMMENTS or c.type == "switch_label":
                continue
            if block.field_name_for_child(i) in _LABEL_FIELDS:
                continue
            if c.type == "statement_list":
                out.extend(self.statements(c))
            elif c.type in _CASES:
                continue  # case groups: reached through collect()
            else:
                out.append(c)
        return out

    def collect(self, node: Any) -> list[Any]:
        """The statements nested in ``node`` one level down (through blocks, clauses and expressions)."""
        out: list[Any] = []
        for c in node.named_children:
            if c.type in _COMMENTS:
                continue
            if c.type in _BLOCKS:
                stmts = self.statements(c)
                out.extend(stmts)
                if self._groups is not None and stmts:
                    self._groups.append(stmts)
                for inner in c.named_children:  # case groups inside a block (C switch bodies)
                    if inner.type in _CASES:
                        out.extend(self.collect_case(inner))
            else:
                out.extend(self.collect(c))
        return out

    def collect_case(self, case: Any) -> list[Any]:
        nested = [s for c in case.named_children if c.type in _CASES for s in self.collect_case(c)]
        return self.statements(case) + nested

    def is_return(self, node: Any) -> bool:
        if node.type in ("return_statement", "return_expression"):
            return True
        if node.type == "expression_statement" and node.named_child_count and node.named_children[0].type in (
            "return_expression",
        ):
            return True
        return False

    def tree(self, node: Any, depth: int = 0) -> Node:
        a, b = self.span(node)
        children: list[Node] = []
        if depth < 60:
            self._groups = [] if self.language == "python" else None
            stmts = self.collect(node)
            groups, self._groups = self._groups or [], None
            ok: set[int] = set()
            for s in stmts:
                sa, sb = self.span(s)
                if a < sa and (sb < b or self.language == "python") and sb <= b and self.own_line(s):
                    ok.add(s.id)
                    children.append(self.tree(s, depth + 1))
            for g in groups:
                if all(s.id in ok for s in g):
                    first_row = self.span(g[0])[0]
                    indent = self.blines[first_row][: g[0].start_point.column].decode("utf-8", "replace")
                    self.fills.append(Fill(a, first_row, self.span(g[-1])[1], indent))
        children.sort(key=lambda n: n.first)
        clean: list[Node] = []
        for c in children:
            if not clean or c.first > clean[-1].last:
                clean.append(c)
        return Node(a, b, tuple(clean), is_return=self.is_return(node))

    def function_tree(self, node: Any, body: Any) -> Node:
        root = self.tree(node)
        if self.language == "rust" and body is not None and body.type == "block":
            named = [c for c in body.named_children if c.type not in _COMMENTS]
            if named and not named[-1].type.endswith(("_statement", "_declaration", "_item")):
                ta, tb = self.span(named[-1])
                root = Node(root.first, root.last, tuple(
                    Node(c.first, c.last, c.children, True) if (c.first, c.last) == (ta, tb) else c
                    for c in root.children
                ), False)
        return root

    def name_of(self, node: Any) -> str:
        n = node.child_by_field_name("name")
        if n is None and node.type in ("impl_item", "trait_item"):
            n = node.child_by_field_name("type")
        if n is None:
            d = node.child_by_field_name("declarator")
            while d is not None and n is None:
                n = d if d.type.endswith("identifier") else d.child_by_field_name("name")
                if n is None:
                    d = d.child_by_field_name("declarator")
        return self.data[n.start_byte : n.end_byte].decode("utf-8", "replace") if n is not None else ""

    def item(self, node: Any, level: int) -> _Item:
        a, b = self.span(node)
        t = node.type
        if t in _FUNCTIONS and node.child_by_field_name("body") is not None:
            return _Item(a, b, "function", self.name_of(node), body=self.function_tree(node, node.child_by_field_name("body")))
        if t in _VAR_DECLS:
            decls = [c for c in node.named_children if c.type == "variable_declarator"]
            if len(decls) == 1:
                val = decls[0].child_by_field_name("value")
                if val is not None and val.type in _FUNC_VALUES and val.child_by_field_name("body") is not None:
                    return _Item(a, b, "function", self.name_of(decls[0]), body=self.function_tree(node, val.child_by_field_name("body")))
        if t in _CONTAINERS and level < 4:
            body = node.child_by_field_name("body")
            if body is not None:
                got = self.container(node, body, level)
                if got is not None:
                    return got
        if t in _WRAPPERS and level < 4:
            inner = [c for c in node.named_children if c.type in _FUNCTIONS | _CONTAINERS | _VAR_DECLS | _WRAPPERS]
            if len(inner) == 1:
                sub = self.item(inner[0], level)
                if sub.kind != "code":
                    sub.first = min(sub.first, a)
                    sub.last = max(sub.last, b)
                    if sub.kind == "function" and sub.body is not None:
                        sub.body = Node(sub.first, sub.last, sub.body.children, False)
                    return sub
        return _Item(a, b, "code", self.name_of(node) if t in _CONTAINERS else "")

    def container(self, node: Any, body: Any, level: int) -> _Item | None:
        a, b = self.span(node)
        members = [c for c in body.named_children if c.type not in _COMMENTS]
        if not members:
            return None
        if not all(self.own_line(m) for m in members):
            return None
        spans = [self.span(m) for m in members]
        if spans[0][0] <= a or (spans[-1][1] >= b and self.language != "python"):
            return None  # header or closing brace shares a line with a member
        for (_x0, x1), (y0, _y1) in zip(spans, spans[1:], strict=False):
            if y0 <= x1:
                return None
        items = [self.item(m, level + 1) for m in members]
        if not any(it.kind != "code" for it in items):
            return None  # data only (struct fields, interface members): one code chunk
        # leading comments of the first member stay with it: header ends at the body's opening line
        header_last = max(a, body.start_point.row)
        if header_last >= spans[0][0]:
            header_last = spans[0][0] - 1
        footer_first = spans[-1][1] + 1
        if self.language == "python":
            indent = self.blines[spans[0][0]][: members[0].start_point.column].decode("utf-8", "replace")
            self.fills.append(Fill(header_last, spans[0][0], spans[-1][1], indent))
        return _Item(a, b, "container", self.name_of(node), members=items, header_last=header_last,
                     footer_first=footer_first if footer_first <= b else -1)


def _ts_trivia(root: Any, lines: Sequence[str], src: _TsSource) -> list[bool]:
    comment_rows: set[int] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type in _COMMENTS:
            a, b = src.span(n)
            comment_rows.update(range(a, b + 1))
            continue
        if n.child_count:
            stack.extend(n.children)
    out = []
    for i, line in enumerate(lines):
        s = line.strip()
        out.append(not s or (i in comment_rows and (s.startswith(("//", "/*", "*", "#")))))
    return out


def _chunk_tree_sitter(text: str, lines: list[str], language: str, merge_chars: int) -> CodeLayout | None:
    data = text.encode("utf-8")
    parser = _parser(language)
    tree = parser.parse(data)
    root = tree.root_node
    notes: list[str] = []
    if root.has_error:
        notes.append("the source has syntax errors; chunks around them may be coarse")
    src = _TsSource(data, language)
    if len(src.blines) < len(lines):
        return None
    items: list[_Item] = []
    for c in root.named_children:
        if c.type in _COMMENTS:
            continue
        it = src.item(c, 0)
        if items and it.first <= items[-1].last:
            prev = items[-1]  # two elements share a line: one code chunk
            items[-1] = _Item(prev.first, max(prev.last, it.last), "code")
            continue
        items.append(it)
    if root.has_error and items and max(it.last - it.first + 1 for it in items) > 0.3 * len(lines) > 30:
        return None  # an error swallowed most of the file into one element: the line splitter does better
    trivia = _ts_trivia(root, lines, src)
    chunks = _build_chunks(items, len(lines), lines, trivia, merge_chars)
    fills = tuple(f for f in src.fills if 0 <= f.header < f.first <= f.last < len(lines))
    return CodeLayout(language, tuple(lines), tuple(chunks), True, tuple(trivia), fills, "tree-sitter", tuple(notes))


# ------------------------------------------------------------------------------------------- fallback

_DEF_START = re.compile(
    r"^(?:(?:export|public|private|protected|static|async|pub|fn|def|class|func|function|sub|proc|module|"
    r"interface|struct|impl|trait|local|defun|defn|procedure)\b|\(def)"
)


def _chunk_regex(text: str, lines: list[str], language: str, merge_chars: int) -> CodeLayout:
    """Top-level blocks: a new chunk starts at an unindented definition keyword or after a blank line that is
    followed by unindented code."""
    starts = [0]
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip() or line[0] in " \t}])":
            continue
        prev_blank = not lines[i - 1].strip()
        if _DEF_START.match(line) or prev_blank:
            starts.append(i)
    items = []
    for k, s in enumerate(starts):
        e = (starts[k + 1] - 1) if k + 1 < len(starts) else len(lines) - 1
        kind = "function" if _DEF_START.match(lines[s].lstrip()) else "code"
        items.append(_Item(s, e, kind))
    trivia = [not ln.strip() for ln in lines]
    chunks = _build_chunks(items, len(lines), lines, trivia, merge_chars)
    return CodeLayout(language, tuple(lines), tuple(chunks), False, tuple(trivia), (), "regex")


# ------------------------------------------------------------------------------------------- entry point


def chunk_code(text: str, language: str | None = None, *, filename: str | None = None,
               merge_chars: int = 800) -> CodeLayout:
    """Chunk ``text`` (see the module docstring). ``language`` may be a name, an alias, ``None``/``"auto"``."""
    if not isinstance(text, str):
        raise ConfigError(f"chunk_code takes source text as a string, got {type(text).__name__}")
    if not isinstance(merge_chars, int) or merge_chars < 0:
        raise ConfigError(f"merge_chars must be a non-negative integer, got {merge_chars!r}")
    lang = detect_language(text, hint=language, filename=filename)
    lines = split_lines(text)
    if not lines:
        return CodeLayout(lang, (), (), True, (), (), "regex")
    layout: CodeLayout | None = None
    if lang == "python":
        layout = _chunk_python(text, lines, merge_chars)
    if lang in _GRAMMARS and layout is None:  # Python that ast cannot parse: tree-sitter tolerates errors
        layout = _chunk_tree_sitter(text, lines, lang, merge_chars)
    if layout is None:
        layout = _chunk_regex(text, lines, lang, merge_chars)
    return layout


def syntax_errors(text: str, language: str) -> int:
    """How many syntax errors a parser finds in ``text``: 0 for Python that :func:`ast.parse` accepts (else 1 plus
    tree-sitter's count), for the tree-sitter languages the number of ``ERROR`` and missing nodes; 0 for
    languages without a parser."""
    lang = normalize_language(language)
    extra = 0
    if lang == "python":
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):
            extra = 1
        else:
            return 0
    if lang not in _GRAMMARS:
        return 0
    root = _parser(lang).parse(text.encode("utf-8")).root_node
    if not root.has_error:
        return extra
    count = extra
    stack = [root]
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            count += 1
        if n.has_error:
            stack.extend(n.children)
    return count
