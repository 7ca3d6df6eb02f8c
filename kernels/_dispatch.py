"""Backend choice for the ops of :mod:`ctxzip.kernels`: the Triton kernel or the PyTorch reference.

Rules, in order:

1. an explicit ``backend="triton" | "torch"`` argument of the op wins;
2. else the environment variable ``CTXZIP_KERNELS`` (``triton``, ``torch`` or ``auto``; unset means ``auto``);
3. ``auto`` picks Triton when every tensor is on a CUDA device and ``triton`` is importable, else the reference.

Forcing Triton on CPU tensors only works in Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is
first imported); that is how the test-suite runs the kernels without a GPU. Triton itself is never imported here,
only looked up, so choosing the reference costs nothing.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from ctxzip.errors import ConfigError, MissingDependencyError

Backend = Literal["triton", "torch"]

ENV_VAR = "CTXZIP_KERNELS"
_CHOICES = ("auto", "triton", "torch")


def triton_available() -> bool:
    """Whether ``import triton`` would find a module (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def requested_backend(backend: str | None = None) -> str:
    """The requested mode: the argument if given, else ``$CTXZIP_KERNELS``, else ``"auto"``; validated."""
    if backend is None:
        raw = os.environ.get(ENV_VAR, "").strip().lower()
        mode = raw or "auto"
        source = f"environment variable {ENV_VAR}={raw!r}"
    else:
        if not isinstance(backend, str):
            raise ConfigError(f"backend must be a string ('auto', 'triton' or 'torch'), got {type(backend).__name__}")
        mode = backend.strip().lower()
        source = f"backend={backend!r}"
    if mode not in _CHOICES:
        raise ConfigError(f"{source} is not valid; use one of {', '.join(_CHOICES)}")
    return mode


def choose_backend(*tensors: Any, backend: str | None = None) -> Backend:
    """Pick the implementation for an op over ``tensors`` (``None`` entries are skipped)."""
    mode = requested_backend(backend)
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.device.type == "cuda" for t in present)
    if mode == "torch":
        return "torch"
    if mode == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if not triton_available():
        raise MissingDependencyError(
            "the Triton backend was requested but 'triton' is not installed. "
            "Install it with: pip install 'ctxzip[kernels]'  (or: pip install triton), "
            f"or set {ENV_VAR}=torch"
        )
    if not on_cuda and not interpreting():
        raise ConfigError(
            "the Triton backend needs CUDA tensors; these are on "
            f"{sorted({t.device.type for t in present})}. Move them to a GPU, use backend='torch' / "
            f"{ENV_VAR}=torch, or set TRITON_INTERPRET=1 before Triton is imported to run the kernels "
            "in Triton's (slow) CPU interpreter"
        )
    return "triton"
