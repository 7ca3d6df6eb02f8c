"""Token-scoring kernels: fused Triton kernels on CUDA with a PyTorch reference beside each.

Ops (each validates its inputs and raises :class:`ctxzip.errors.InputError` with the fix):

* :func:`fused_nll` — per-token NLL (and entropy) from hidden states and the output embedding, no ``[T, V]``
  logits in memory;
* :func:`contrastive_nll` — LongLLMLingua's ``NLL(plain) - NLL(with question)``, both streams in one pass;
* :func:`last_query_scores` — GemFilter's last-query attention logits, GQA-aware, with the width-``smooth``
  mean filter;
* :func:`word_topk` — LLMLingua-2's per-word mean of subword probabilities and the top-words mask.

Each op runs its Triton kernel when all tensors are on CUDA and ``triton`` is importable, else its PyTorch
reference; ``CTXZIP_KERNELS=triton|torch`` (or the ``backend=`` argument) overrides. Importing this package
imports torch but never Triton; Triton is imported on the first Triton launch.
"""

from __future__ import annotations

from ._dispatch import ENV_VAR, choose_backend, interpreting, triton_available
from .contrastive import contrastive_nll, contrastive_nll_reference
from .fused_nll import IGNORE_INDEX, fused_nll, fused_nll_reference, naive_nll
from .last_query import last_query_scores, last_query_scores_reference
from .word_topk import word_budget, word_topk, word_topk_reference

__all__ = [
    "ENV_VAR",
    "IGNORE_INDEX",
    "choose_backend",
    "contrastive_nll",
    "contrastive_nll_reference",
    "fused_nll",
    "fused_nll_reference",
    "interpreting",
    "last_query_scores",
    "last_query_scores_reference",
    "naive_nll",
    "triton_available",
    "word_budget",
    "word_topk",
    "word_topk_reference",
]
