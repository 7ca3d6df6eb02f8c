"""LongLLMLingua's contrastive score: ``NLL(token | context) - NLL(token | question, context)`` per position.

``hidden_plain[t]`` and ``hidden_cond[t]`` are the final hidden states that predict the same next token
``targets[t]`` without and with the question in front. A large positive score marks a token the question makes
more predictable. Ignored positions (``targets[t] == -100``) score ``0.0``.

The Triton path runs one kernel over both streams (``TWO_STREAMS`` in ``_tl_nll.py``), so every weight tile is
read once for both; the reference is the difference of two chunked :func:`fused_nll_reference` calls.
"""

from __future__ import annotations

from typing import Any

from ctxzip._lazy import require

from ._dispatch import choose_backend
from .fused_nll import check_lm_inputs, fused_nll_reference, lse_partials

torch = require("torch", feature="ctxzip.kernels")

__all__ = ["contrastive_nll", "contrastive_nll_reference"]


def contrastive_nll_reference(
    hidden_plain: Any, hidden_cond: Any, weight: Any, targets: Any, *, bias: Any = None
) -> Any:
    """PyTorch reference of :func:`contrastive_nll` (no input checks)."""
    plain = fused_nll_reference(hidden_plain, weight, targets, bias=bias)
    cond = fused_nll_reference(hidden_cond, weight, targets, bias=bias)
    return plain - cond


def contrastive_nll(
    hidden_plain: Any,
    hidden_cond: Any,
    weight: Any,
    targets: Any,
    *,
    bias: Any = None,
    backend: str | None = None,
) -> Any:
    """``NLL(plain) - NLL(cond)`` per position, float32 ``[T]``.

    Args:
        hidden_plain: hidden states ``[T, H]`` of the context alone.
        hidden_cond: hidden states ``[T, H]`` of the same context tokens conditioned on the question.
        weight: output embedding ``[V, H]``; bias: optional ``[V]``.
        targets: next-token ids ``[T]``; ``-100`` marks an ignored position (score ``0.0``).
        backend: ``"triton"``, ``"torch"`` or ``"auto"``; default from ``$CTXZIP_KERNELS``.
    """
    check_lm_inputs({"hidden_plain": hidden_plain, "hidden_cond": hidden_cond}, weight, targets, bias)
    if choose_backend(hidden_plain, hidden_cond, weight, targets, bias, backend=backend) == "torch":
        return contrastive_nll_reference(hidden_plain, hidden_cond, weight, targets, bias=bias)
    (plain, _), (cond, _) = lse_partials([hidden_plain, hidden_cond], weight, targets, bias, with_entropy=False)
    return plain - cond
