"""GemFilter's token scores: the last query position's attention logits against every key, smoothed.

``last_query_scores(q_last, keys)`` computes, for every key position ``t``::

    raw[t] = scale * sum_h  q_last[h] . keys[h // group, t]        group = Hq // Hkv  (GQA)
    out[t] = (1 / smooth) * sum_{j = t - smooth//2}^{t + smooth//2} raw[j]     (raw[j] = 0 outside [0, T))

i.e. logits (not probabilities) summed over query heads, then ``avg_pool1d(kernel=smooth, stride=1,
padding=smooth//2)`` with zero padding counted in the mean (``count_include_pad=True``): the output has the same
length ``T`` and the first/last ``smooth//2`` entries are averaged with zeros, exactly as GemFilter does.
``smooth`` must be odd so the window is centred. ``scale`` defaults to ``1/sqrt(D)``; any positive scale gives
the same ranking.

The Triton kernel reads each key once: because the sum over query heads is linear, it first sums the ``group``
query heads that share a kv head, then takes one dot product per key, and applies the smoothing window inside the
program (each program computes ``smooth//2`` extra positions on both sides instead of a second pass).
"""

from __future__ import annotations

import math
from typing import Any

from ctxzip._lazy import require
from ctxzip.errors import InputError

from . import _checks
from ._dispatch import choose_backend, interpreting

torch = require("torch", feature="ctxzip.kernels")

__all__ = ["last_query_scores", "last_query_scores_reference", "MAX_SMOOTH"]

MAX_SMOOTH = 255


def _check(q_last: Any, keys: Any, smooth: Any, scale: Any) -> tuple[int, int, int, int, float]:
    _checks.tensor("q_last", q_last, ndim=2, dtypes=_checks.FLOAT_DTYPES, what="(last query [Hq, D])")
    _checks.tensor("keys", keys, ndim=3, dtypes=_checks.FLOAT_DTYPES, what="(keys of one layer [Hkv, T, D])")
    _checks.same_device(q_last=q_last, keys=keys)
    num_q, dim = q_last.shape
    num_kv, num_pos, k_dim = keys.shape
    if k_dim != dim:
        raise InputError(f"q_last has head dim {dim} but keys have {k_dim}")
    if num_q < 1 or num_kv < 1 or dim < 1:
        raise InputError(f"q_last {tuple(q_last.shape)} and keys {tuple(keys.shape)} must have >= 1 head and dim")
    if num_q % num_kv:
        raise InputError(
            f"query heads ({num_q}) must be a multiple of kv heads ({num_kv}) for grouped-query attention; "
            "pass keys as [Hkv, T, D] (batch removed) and q_last as [Hq, D]"
        )
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1 or smooth % 2 == 0:
        raise InputError(f"smooth must be an odd int >= 1 (a centred window; 1 = no smoothing), got {smooth!r}")
    if smooth > MAX_SMOOTH:
        raise InputError(f"smooth must be <= {MAX_SMOOTH}, got {smooth}")
    if scale is None:
        scale_f = 1.0 / math.sqrt(dim)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise InputError(f"scale must be a positive finite number or None (1/sqrt(D)), got {scale!r}")
    else:
        scale_f = float(scale)
    return num_q, num_kv, num_pos, dim, scale_f


def last_query_scores_reference(q_last: Any, keys: Any, *, smooth: int = 5, scale: float | None = None) -> Any:
    """PyTorch reference of :func:`last_query_scores` (float32; checks only ``smooth`` and ``scale``)."""
    num_q, dim = q_last.shape
    num_kv, num_pos, _ = keys.shape
    scale_f = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    q = q_last.float().reshape(num_kv, num_q // num_kv, dim)
    # per-head logits [Hkv, group, T], summed over all query heads
    raw = torch.einsum("kgd,ktd->kgt", q, keys.float()).sum(dim=(0, 1)) * scale_f
    if smooth == 1 or num_pos == 0:
        return raw
    pooled = torch.nn.functional.avg_pool1d(
        raw.view(1, 1, num_pos), kernel_size=smooth, stride=1, padding=smooth // 2, count_include_pad=True
    )
    return pooled.view(num_pos)


def last_query_scores(
    q_last: Any,
    keys: Any,
    *,
    smooth: int = 5,
    scale: float | None = None,
    backend: str | None = None,
) -> Any:
    """Smoothed last-query attention logits per key position, float32 ``[T]`` (see the module docstring).

    Args:
        q_last: query of the last position ``[Hq, D]`` (after rotary embedding, like the keys).
        keys: keys of the same layer ``[Hkv, T, D]``; ``Hq`` must be a multiple of ``Hkv``.
        smooth: odd width of the mean filter (zero padding counted); 1 disables smoothing.
        scale: logit scale, default ``1/sqrt(D)``.
        backend: ``"triton"``, ``"torch"`` or ``"auto"``; default from ``$CTXZIP_KERNELS``.
    """
    num_q, num_kv, num_pos, dim, scale_f = _check(q_last, keys, smooth, scale)
    if choose_backend(q_last, keys, backend=backend) == "torch":
        return last_query_scores_reference(q_last, keys, smooth=smooth, scale=scale_f)
    out = torch.empty(num_pos, dtype=torch.float32, device=keys.device)
    if num_pos == 0:
        return out
    from . import _tl_last_query

    half = smooth // 2
    block_t = max(64 if interpreting() else 128, 1 << (2 * smooth - 1).bit_length())
    out_block = block_t - 2 * half
    block_d = min(128, 1 << (dim - 1).bit_length())
    q = _checks.row_major(q_last)
    k = _checks.row_major(keys)
    grid = (math.ceil(num_pos / out_block),)
    _tl_last_query.last_query_kernel[grid](
        q, k, out,
        num_pos, dim, num_q // num_kv, scale_f, num_kv,
        q.stride(0), k.stride(0), k.stride(1),
        HALF=half,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=4,
    )
    return out
