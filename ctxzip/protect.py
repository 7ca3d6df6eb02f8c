"""Protected spans: text that compression never drops or alters.

Every selection unit in ctxzip is a whitespace-delimited word with its leading whitespace (or one CJK
character), so a number, id or identifier is always kept whole or dropped whole. A rule that is *on* goes further:
every unit overlapping a match is kept, byte for byte.

==============  =======  ==========================================================================
rule            default  matches
==============  =======  ==========================================================================
force           ()       caller-given exact strings (e.g. ``force=("Answer:",)``)
patterns        ()       caller-given regular expressions
urls            on       ``http(s)://...``, ``www....``
emails          on       ``name@host.tld``
paths           on       ``/abs/path``, ``./rel``, ``~/x``, ``C:\\x``, ``dir/file.ext``
code_blocks     on       fenced Markdown code blocks (````` ``` `````/``~~~``), unterminated fences to the end
markdown        on       Markdown headings (``# ...`` lines) and link targets (``](target)``)
json            on       a document that parses as JSON keeps its structure and stays valid JSON: words inside
                         string values may be dropped, and whole members/elements may be dropped, never half
numbers         off      numbers and digits (LLMLingua's ``force_reserve_digit``)
ids             off      UUIDs and hex ids (>= 7 hex digits with a letter and a digit)
identifiers     off      CamelCase and snake_case identifiers
==============  =======  ==========================================================================

``numbers``, ``ids`` and ``identifiers`` are off by default because in data-heavy input (key-value dumps, logs,
code) they are most of the text, and keeping all of them would make any budget unreachable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["ProtectionRules", "protected_ranges"]

_URL = r"(?:https?|ftp)://[^\s<>\"'`\]\)]+|\bwww\.[^\s<>\"'`\]\)]+"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_PATH = (
    r"(?<![\w/$])(?:~|\.{1,2})?/(?:[\w.@+-]+/)+[\w.@+-]+/?"
    r"|(?<![\w/$])(?:~|\.{1,2})/[\w.@+-]+"
    r"|\b[A-Za-z]:\\(?:[\w.@ +-]+\\)*[\w.@+-]+"
    r"|(?<![\w/$])(?:[\w.@+-]+/)+[\w@+-]+\.[a-z0-9]{1,5}(?![\w/])"
)
_FENCE = r"(?ms)^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)"
_HEADING = r"^[ \t]{0,3}#{1,6}[ \t][^\n]*"
_LINK_TARGET = r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)"
_NUMBER = r"\d+(?:[.,:]\d+)*"
_UUID = r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
_HEX = r"\b(?:0x)?(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,64}\b"
_IDENT = r"\b[a-z]+(?:[A-Z][a-z0-9]*)+\b|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b|\b[A-Za-z]\w*_\w+\b"


@dataclass(frozen=True)
class ProtectionRules:
    force: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    urls: bool = True
    emails: bool = True
    paths: bool = True
    code_blocks: bool = True
    markdown: bool = True
    json: bool = True
    numbers: bool = False
    ids: bool = False
    identifiers: bool = False

    def __post_init__(self) -> None:
        for name in ("force", "patterns"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"protect.{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(v for v in value if v))
        for f in fields(self):
            if f.name not in ("force", "patterns") and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"protect.{f.name} must be true or false, got {getattr(self, f.name)!r}")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"protect.patterns has an invalid regular expression {p!r}: {exc}") from None

    @classmethod
    def coerce(cls, value: Any) -> ProtectionRules:
        """Accept None, a ProtectionRules, a mapping of its fields, or a list of force strings."""
        if value is None:
            return cls()
        if isinstance(value, ProtectionRules):
            return value
        if isinstance(value, Mapping):
            valid = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - valid)
            if unknown:
                raise ConfigError(f"unknown protection rule(s) {unknown}; valid rules: {', '.join(sorted(valid))}")
            return cls(**dict(value))
        if isinstance(value, (list, tuple)):
            return cls(force=tuple(value))
        if value is False:
            return cls.none()
        raise ConfigError(
            f"protect must be None, False, a dict of rules or a list of force strings, got {type(value).__name__}"
        )

    @classmethod
    def none(cls) -> ProtectionRules:
        """No protection at all except JSON validity (which keeps output parseable)."""
        return cls(urls=False, emails=False, paths=False, code_blocks=False, markdown=False)

    def with_force(self, extra: Iterable[str]) -> ProtectionRules:
        return replace(self, force=self.force + tuple(extra))

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        parts: list[str] = []
        if self.force:
            parts += [re.escape(s) for s in sorted(self.force, key=len, reverse=True)]
        parts += [f"(?:{p})" for p in self.patterns]
        for on, rx in (
            (self.urls, _URL),
            (self.emails, _EMAIL),
            (self.paths, _PATH),
            (self.markdown, _HEADING),
            (self.markdown, _LINK_TARGET),
            (self.numbers, _NUMBER),
            (self.ids, _UUID),
            (self.ids, _HEX),
            (self.identifiers, _IDENT),
        ):
            if on:
                parts.append(f"(?:{rx})")
        if not parts:
            return None
        return re.compile("|".join(parts), re.MULTILINE)

    def cache_key(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FENCE_RX = re.compile(_FENCE)


def protected_ranges(text: str, rules: ProtectionRules) -> np.ndarray:
    """Character ranges ``[[start, end), ...]`` that must be kept (sorted, possibly overlapping)."""
    out: list[tuple[int, int]] = []
    if rules.code_blocks and ("```" in text or "~~~" in text):
        out += [(m.start(), m.end()) for m in _FENCE_RX.finditer(text)]
    rx = rules._regex
    if rx is not None:
        out += [(m.start(), m.end()) for m in rx.finditer(text) if m.end() > m.start()]
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.array(sorted(out), dtype=np.int64)
    return arr
