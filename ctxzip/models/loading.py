"""Load models once per process and share them, thread-safely, between every compressor that uses them.

:func:`load_causal_lm` returns a :class:`LoadedLM` (model, tokenizer, ref, device); :func:`load_encoder` a
``sentence_transformers.SentenceTransformer``. Both go through :func:`shared`, a keyed, locked, load-once table
that other model kinds (token classifiers, ...) use as well: the first caller of a key loads, concurrent callers
of the same key wait for it, callers of other keys are not blocked.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from .._lazy import require
from ..errors import ConfigError, ModelError
from .convert import ensure_converted
from .specs import DEFAULT_CAUSAL_LM, DEFAULT_ENCODER, ModelRef, resolve

__all__ = [
    "DTYPES",
    "QUANTIZE",
    "LoadedLM",
    "shared",
    "clear_shared",
    "pick_device",
    "resolve_dtype",
    "load_causal_lm",
    "load_encoder",
]

DTYPES = ("float32", "bfloat16", "float16")
# accepted by load_causal_lm besides DTYPES: the fastest dtype that is native on the device (resolve_dtype)
AUTO_DTYPE = "auto"
QUANTIZE = (None, "int8")

T = TypeVar("T")

_TABLE: dict[Hashable, Any] = {}
_KEY_LOCKS: dict[Hashable, threading.Lock] = {}
_TABLE_LOCK = threading.Lock()


def shared(key: Hashable, factory: Callable[[], T]) -> T:
    """Return the object stored under ``key``, calling ``factory()`` to build it the first time (once)."""
    with _TABLE_LOCK:
        if key in _TABLE:
            return _TABLE[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _TABLE_LOCK:
            if key in _TABLE:
                return _TABLE[key]
        value = factory()
        with _TABLE_LOCK:
            _TABLE[key] = value
        return value


def clear_shared() -> int:
    """Forget every shared model (they are freed once no compressor holds them); returns how many there were."""
    with _TABLE_LOCK:
        n = len(_TABLE)
        _TABLE.clear()
        _KEY_LOCKS.clear()
    return n


def pick_device(device: str | None) -> str:
    """``None``/``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; anything else is checked and returned."""
    torch = require("torch", feature="model loading")
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
    return device


@dataclass(frozen=True)
class LoadedLM:
    """A causal LM ready for scoring. ``model`` is in eval mode on ``device``; ``tokenizer`` is a fast tokenizer
    (needed for character offsets). ``dtype`` is the compute dtype of the transformer body; ``quantize`` is
    ``"int8"`` when its linear layers use dynamic int8 quantisation (CPU)."""

    model: Any
    tokenizer: Any
    ref: ModelRef
    device: str
    dtype: str
    quantize: str | None

    @property
    def max_length(self) -> int:
        """The model's context length (``max_position_embeddings``; 2048 when the config has none)."""
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def fingerprint(self) -> str:
        """Identifies everything about the loaded model that changes its scores (for cache keys)."""
        return f"{self.ref.name}@{self.ref.short_hash}:{self.dtype}:{self.quantize or 'none'}"


def resolve_dtype(dtype: str, device: str) -> str:
    """``dtype`` itself, or for ``"auto"`` the fastest dtype the device computes natively.

    ``"auto"`` is ``"bfloat16"`` on CUDA devices that support it and on CPUs whose oneDNN build runs bfloat16
    natively (AVX512-BF16 or AMX: on code.dev the codezip scorer ran 1.7x faster than float32 on one such core and
    kept 93% of the same lines), and ``"float32"`` everywhere else (emulated bfloat16 is slower than float32).
    """
    if dtype != AUTO_DTYPE:
        return dtype
    torch = require("torch", feature="causal-LM scoring")
    try:
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        if device.startswith("cpu"):
            return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    except (AttributeError, RuntimeError):  # an older torch without the probe: stay exact
        return "float32"
    return "float32"


def _check_lm_options(dtype: str, quantize: str | None, device: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} or {AUTO_DTYPE!r}, got {dtype!r}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize == "int8" and (dtype != "float32" or not device.startswith("cpu")):
        raise ConfigError(
            "quantize='int8' is dynamic int8 quantisation of a float32 model on CPU; call it with "
            "dtype='float32' and device='cpu' (on GPU use dtype='bfloat16' instead)"
        )


def _load_lm(ref: ModelRef, dtype: str, quantize: str | None, device: str) -> LoadedLM:
    torch = require("torch", feature="causal-LM scoring")
    transformers = require("transformers", feature="causal-LM scoring")
    directory = ensure_converted(ref)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"could not load the causal LM {ref.name!r} from {directory} ({type(exc).__name__}: {exc})"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{ref.name!r} has no fast tokenizer (tokenizer.json); ctxzip needs one for character offsets"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.to(device)
    if quantize == "int8":
        decoder = model.get_decoder()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(decoder, {torch.nn.Linear}, dtype=torch.qint8)
        if hasattr(model, "set_decoder"):
            model.set_decoder(quantized)
        else:
            model.model = quantized
    return LoadedLM(model, tokenizer, ref, device, dtype, quantize)


def load_causal_lm(
    spec: str | ModelRef = DEFAULT_CAUSAL_LM,
    *,
    dtype: str = "float32",
    quantize: str | None = None,
    device: str | None = None,
) -> LoadedLM:
    """Load (once per process) a causal LM for scoring.

    Args:
        spec: an offline default name, a local path or a Hugging Face id (see :func:`ctxzip.models.resolve`).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: the dtype of the transformer body;
            ``"auto"``: bfloat16 where the device runs it natively, else float32 (:func:`resolve_dtype`).
        quantize: ``"int8"`` for dynamic int8 quantisation of the body's linear layers (CPU, float32 only).
        device: ``"cpu"``, ``"cuda[:N]"`` or ``None`` for CUDA when available.
    """
    ref = resolve(spec)
    dev = pick_device(device)
    if dtype == AUTO_DTYPE:  # int8 quantisation works on a float32 body only, so "auto" means float32 there
        dtype = "float32" if quantize == "int8" else resolve_dtype(dtype, dev)
    _check_lm_options(dtype, quantize, dev)
    if ref.kind not in ("causal-lm", "unknown"):
        raise ModelError(
            f"{ref.name!r} is a {ref.kind} model, not a causal LM; pass a causal LM such as {DEFAULT_CAUSAL_LM!r}"
            + (" (or load it with load_encoder)" if ref.kind == "encoder" else "")
        )
    key = ("causal-lm", str(ref.path), ref.gguf_file, ref.weights_hash, dtype, quantize, dev)
    return shared(key, lambda: _load_lm(ref, dtype, quantize, dev))


def load_encoder(spec: str | ModelRef = DEFAULT_ENCODER, *, device: str | None = None) -> Any:
    """Load (once per process) a sentence-transformers encoder and return the ``SentenceTransformer``."""
    ref = resolve(spec)
    dev = pick_device(device)
    if ref.kind == "causal-lm" or ref.is_gguf:
        raise ModelError(
            f"{ref.name!r} is a causal LM, not a sentence encoder; pass an encoder such as {DEFAULT_ENCODER!r}"
        )

    def build() -> Any:
        st = require("sentence_transformers", feature="embedding models")
        try:
            return st.SentenceTransformer(str(ref.path), device=dev, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"could not load the encoder {ref.name!r} from {ref.path} ({type(exc).__name__}: {exc})"
            ) from exc

    return shared(("encoder", str(ref.path), ref.weights_hash, dev), build)
