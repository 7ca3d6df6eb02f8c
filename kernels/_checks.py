"""Input checks shared by the launchers of :mod:`ctxzip.kernels`; every failure is an :class:`InputError`."""

from __future__ import annotations

from typing import Any

from ctxzip._lazy import require
from ctxzip.errors import InputError

torch = require("torch", feature="ctxzip.kernels")

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def tensor(name: str, value: Any, *, ndim: int, dtypes: tuple[Any, ...], what: str) -> Any:
    """``value`` must be a torch tensor with ``ndim`` dimensions and one of ``dtypes``."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor {what}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise InputError(f"{name} must be {ndim}-D {what}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise InputError(f"{name} has dtype {str(value.dtype).replace('torch.', '')}; use one of: {allowed}")
    return value


def same_device(**tensors: Any) -> None:
    """All given (non-None) tensors must live on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise InputError(f"all tensors must be on the same device; got {listing}")


def positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    return value


def row_major(t: Any) -> Any:
    """``t`` with a unit stride on its last dimension (a copy only when needed)."""
    return t if t.stride(-1) == 1 else t.contiguous()
