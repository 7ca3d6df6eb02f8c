"""LLMLingua-2's word selection: subword keep-probabilities → per-word mean → keep the top words to a budget.

``word_topk(probs, word_ids, keep=...)`` works on a batch of ``B`` chunks of ``L`` subwords. ``word_ids[b, l]``
is the index of the word that subword ``l`` belongs to (``-1`` for special tokens and padding, which are
ignored). With ``W = word_ids.max() + 1``:

* ``word_probs[b, w]`` is the mean of ``probs[b, l]`` over the subwords with ``word_ids[b, l] == w`` (float32);
  a word with no subword in row ``b`` (padding past the row's last word, or a gap in the ids) is ``-inf``.
* ``n_b`` is the number of words present in row ``b``; the budget is ``k_b`` words: ``keep`` itself when it is
  an int (clamped to ``n_b``), else ``ceil(keep * n_b)`` for a ratio in ``[0, 1]`` (up to a 1e-9 tolerance, so
  ``0.3 * 10`` keeps 3). ``keep`` may also be a tensor ``[B]``: integer dtype for per-row counts, float dtype
  for per-row ratios.
* ``keep_mask[b, w]`` is true for exactly ``k_b`` present words: those whose mean is at or above the row's
  ``k_b``-th largest mean (the threshold at the ``1 - k_b / n_b`` quantile), ties broken in favour of the
  earlier word. Equivalently: word ``w`` is kept iff fewer than ``k_b`` present words rank before it, where
  ``u`` ranks before ``w`` when ``mean_u > mean_w`` or (``mean_u == mean_w`` and ``u < w``).

The Triton kernel runs one program per row: a first pass builds the word means by comparing blocks of word ids
with blocks of subwords (no atomics, so it is deterministic), a second pass counts, for every word, the words
ranking before it and writes the mask. The reference does the same with ``scatter_add`` and a stable sort.
"""

from __future__ import annotations

import math
from typing import Any

from ctxzip._lazy import require
from ctxzip.errors import InputError

from . import _checks
from ._dispatch import choose_backend, interpreting

torch = require("torch", feature="ctxzip.kernels")

__all__ = ["word_topk", "word_topk_reference", "word_budget"]

_RATIO_EPS = 1e-9


def word_budget(keep: Any, present: Any) -> Any:
    """Per-row number of words to keep, int64 ``[B]``, from ``keep`` and the per-row word counts ``present``."""
    n = present.to(torch.int64)
    rows = n.shape[0]
    if isinstance(keep, torch.Tensor):
        if keep.dim() != 1 or keep.shape[0] != rows:
            raise InputError(f"keep as a tensor must have shape [B={rows}], got {tuple(keep.shape)}")
        if keep.dtype.is_floating_point:
            ratios = keep.detach().to(device=n.device, dtype=torch.float64)
            if not bool(((ratios >= 0) & (ratios <= 1)).all()):
                raise InputError("keep ratios must lie in [0, 1]; pass an integer tensor for word counts")
            k = torch.ceil(ratios * n - _RATIO_EPS).clamp_min(0).to(torch.int64)
        elif keep.dtype in _checks.INT_DTYPES:
            k = keep.detach().to(device=n.device, dtype=torch.int64)
            if bool((k < 0).any()):
                raise InputError("keep counts must be >= 0")
        else:
            raise InputError(f"keep tensor has dtype {keep.dtype}; use a float (ratios) or integer (counts) dtype")
        return torch.minimum(k, n)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise InputError(f"keep must be a ratio in [0, 1] (float), a word count (int) or a tensor [B], got {keep!r}")
    if isinstance(keep, int):
        if keep < 0:
            raise InputError(f"keep as a word count must be >= 0, got {keep}")
        return torch.clamp(n, max=keep)
    if not math.isfinite(keep) or not 0.0 <= keep <= 1.0:
        raise InputError(f"keep as a ratio must lie in [0, 1], got {keep}; pass an int to keep a number of words")
    return torch.ceil(n.to(torch.float64) * keep - _RATIO_EPS).clamp_min(0).to(torch.int64)


def _check(probs: Any, word_ids: Any) -> int:
    _checks.tensor("probs", probs, ndim=2, dtypes=_checks.FLOAT_DTYPES, what="of subword keep-probabilities [B, L]")
    _checks.tensor("word_ids", word_ids, ndim=2, dtypes=_checks.INT_DTYPES, what="of word indices [B, L]")
    if probs.shape != word_ids.shape:
        raise InputError(f"probs {tuple(probs.shape)} and word_ids {tuple(word_ids.shape)} must have the same shape")
    _checks.same_device(probs=probs, word_ids=word_ids)
    if word_ids.numel() == 0:
        return 0
    low = int(word_ids.min())
    if low < -1:
        raise InputError(f"word_ids must be >= 0, or -1 for special tokens/padding; found {low}")
    valid = word_ids >= 0
    if not bool(torch.isfinite(probs[valid]).all()):
        raise InputError("probs must be finite at every subword that belongs to a word")
    return int(word_ids.max()) + 1


def word_topk_reference(probs: Any, word_ids: Any, k: Any, num_words: int) -> tuple[Any, Any]:
    """PyTorch reference of :func:`word_topk` given the per-row budgets ``k`` (int64 ``[B]``) and ``W``."""
    rows = probs.shape[0]
    device = probs.device
    ids = word_ids.to(torch.int64)
    slot = torch.where(ids >= 0, ids, num_words)  # slot W collects the ignored subwords
    sums = torch.zeros(rows, num_words + 1, dtype=torch.float32, device=device)
    counts = torch.zeros(rows, num_words + 1, dtype=torch.float32, device=device)
    sums.scatter_add_(1, slot, probs.float())
    counts.scatter_add_(1, slot, torch.ones_like(sums[:, :1]).expand_as(slot))
    sums, counts = sums[:, :num_words], counts[:, :num_words]
    present = counts > 0
    word_probs = torch.where(present, sums / counts.clamp_min(1), torch.full_like(sums, float("-inf")))
    order = torch.sort(word_probs, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(num_words, device=device).expand(rows, num_words).contiguous())
    keep_mask = present & (rank < k.to(device).unsqueeze(1))
    return word_probs, keep_mask


def word_topk(
    probs: Any,
    word_ids: Any,
    *,
    keep: Any,
    backend: str | None = None,
) -> tuple[Any, Any]:
    """Per-word mean probabilities and the mask of the words to keep (see the module docstring).

    Args:
        probs: subword keep-probabilities ``[B, L]`` (float32, bfloat16 or float16).
        word_ids: word index of each subword ``[B, L]`` (integer; ``-1`` = special token / padding).
        keep: ratio in ``[0, 1]`` (float), word count (int), or a tensor ``[B]`` of either.
        backend: ``"triton"``, ``"torch"`` or ``"auto"``; default from ``$CTXZIP_KERNELS``.

    Returns:
        ``(word_probs, keep_mask)``: float32 ``[B, W]`` (``-inf`` for absent words) and bool ``[B, W]``.
    """
    num_words = _check(probs, word_ids)
    rows, length = probs.shape
    ids64 = word_ids.to(torch.int64)
    if num_words:
        present_n = torch.zeros(rows, num_words + 1, dtype=torch.bool, device=probs.device)
        present_n.scatter_(1, torch.where(ids64 >= 0, ids64, num_words), True)
        counts = present_n[:, :num_words].sum(dim=1)
    else:
        counts = torch.zeros(rows, dtype=torch.int64, device=probs.device)
    k = word_budget(keep, counts)
    if choose_backend(probs, word_ids, backend=backend) == "torch" or num_words == 0 or rows == 0:
        return word_topk_reference(probs, word_ids, k, num_words)
    from . import _tl_word_topk

    word_probs = torch.empty(rows, num_words, dtype=torch.float32, device=probs.device)
    keep_mask = torch.empty(rows, num_words, dtype=torch.int8, device=probs.device)
    p = _checks.row_major(probs)
    ids = _checks.row_major(word_ids)
    block = 128 if interpreting() else 32
    _tl_word_topk.word_topk_kernel[(rows,)](
        p, ids, k.to(torch.int32).contiguous(), word_probs, keep_mask,
        length, num_words,
        p.stride(0), ids.stride(0), word_probs.stride(0), keep_mask.stride(0),
        BLOCK_W=block,
        BLOCK_L=block * 2,
        num_warps=4,
    )
    return word_probs, keep_mask.bool()
