"""Per-token negative log-likelihood (and entropy) without materialising the ``[T, V]`` logits.

``fused_nll(hidden, weight, targets)`` returns, for every position ``t``,
``logsumexp(z_t) - z_t[targets[t]]`` with ``z_t = hidden[t] @ weight.T (+ bias)``: the NLL of the next token
under the language-model head. All arithmetic is float32 whatever the input dtype.

Ignored positions: ``targets[t] == -100`` (``IGNORE_INDEX``, as in ``torch.nn.functional.cross_entropy``) gives
an NLL of exactly ``0.0``. The entropy does not depend on the target, so it is returned for every position,
ignored ones included (the last position of a sequence has no next token but still has an entropy).

Two implementations, picked by :func:`ctxzip.kernels._dispatch.choose_backend`:

* the Triton kernel (``ctxzip/kernels/_tl_nll.py``): each program owns a block of positions and a slice of the
  vocabulary, computes logit tiles ``[BLOCK_T, BLOCK_V]`` in registers and folds them into an online
  log-sum-exp, the running entropy numerator and the target logit. Only ``n_split`` float32 partials per
  position reach memory, which are merged here. Memory O(T·H + V·H + T·n_split).
* the PyTorch reference :func:`fused_nll_reference`: the same maths over chunks of ``chunk_size`` positions,
  so at most ``[chunk_size, V]`` float32 logits exist at once. Memory O(T·H + V·H + chunk_size·V).

:func:`naive_nll` is the textbook full-logits ``cross_entropy``; it exists for tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Any

from ctxzip._lazy import require
from ctxzip.errors import InputError

from . import _checks
from ._dispatch import choose_backend, interpreting

torch = require("torch", feature="ctxzip.kernels")

__all__ = ["IGNORE_INDEX", "fused_nll", "fused_nll_reference", "naive_nll", "default_chunk_size"]

IGNORE_INDEX = -100
# The reference keeps at most this many float32 logits alive per chunk (64 MiB).
_CHUNK_ELEMENTS = 1 << 24


def default_chunk_size(num_positions: int, vocab_size: int) -> int:
    """Rows per chunk of the reference: as many as fit in 2**24 float32 logits, at least 1."""
    return max(1, min(num_positions, _CHUNK_ELEMENTS // max(1, vocab_size)))


def check_lm_inputs(
    hiddens: dict[str, Any], weight: Any, targets: Any, bias: Any
) -> tuple[int, int, int]:
    """Validate the LM-head inputs shared by :func:`fused_nll` and ``contrastive_nll``; return ``(T, V, H)``."""
    first_name = next(iter(hiddens))
    for name, h in hiddens.items():
        _checks.tensor(name, h, ndim=2, dtypes=_checks.FLOAT_DTYPES, what="of final hidden states [T, H]")
    _checks.tensor("weight", weight, ndim=2, dtypes=_checks.FLOAT_DTYPES, what="(output embedding [V, H])")
    _checks.tensor("targets", targets, ndim=1, dtypes=_checks.INT_DTYPES, what="of next-token ids [T]")
    num_pos, hidden_size = hiddens[first_name].shape
    vocab, w_hidden = weight.shape
    for name, h in hiddens.items():
        if tuple(h.shape) != (num_pos, hidden_size):
            raise InputError(
                f"{name} has shape {tuple(h.shape)} but {first_name} has {(num_pos, hidden_size)}; "
                "both streams must score the same positions"
            )
    if w_hidden != hidden_size:
        raise InputError(
            f"weight is [V={vocab}, H={w_hidden}] but the hidden states have H={hidden_size}; pass the output "
            "embedding (lm_head.weight, shape [vocab, hidden]), not its transpose"
        )
    if vocab < 1 or hidden_size < 1:
        raise InputError(f"weight must be non-empty, got shape {tuple(weight.shape)}")
    if targets.shape[0] != num_pos:
        raise InputError(f"targets has {targets.shape[0]} entries but there are {num_pos} positions")
    if bias is not None:
        _checks.tensor("bias", bias, ndim=1, dtypes=_checks.FLOAT_DTYPES, what="(output bias [V])")
        if bias.shape[0] != vocab:
            raise InputError(f"bias has {bias.shape[0]} entries but the vocabulary has {vocab}")
    _checks.same_device(**hiddens, weight=weight, targets=targets, bias=bias)
    if num_pos:
        ok = (targets == IGNORE_INDEX) | ((targets >= 0) & (targets < vocab))
        if not bool(ok.all()):
            bad = targets[~ok][:5].tolist()
            raise InputError(
                f"targets must be token ids in [0, {vocab}) or {IGNORE_INDEX} (ignore); got e.g. {bad}"
            )
    return num_pos, vocab, hidden_size


def naive_nll(hidden: Any, weight: Any, targets: Any, *, bias: Any = None) -> Any:
    """Full-logits reference: ``cross_entropy(hidden @ weight.T + bias, targets, reduction='none')`` in float32.

    Materialises the whole ``[T, V]`` logits (and torch's log-softmax of them): only for tests and benchmarks.
    """
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return torch.nn.functional.cross_entropy(
        logits, targets.long(), reduction="none", ignore_index=IGNORE_INDEX
    )


def fused_nll_reference(
    hidden: Any,
    weight: Any,
    targets: Any,
    *,
    bias: Any = None,
    return_entropy: bool = False,
    chunk_size: int | None = None,
) -> Any:
    """PyTorch reference of :func:`fused_nll`: float32 logits over chunks of positions (no input checks)."""
    num_pos = hidden.shape[0]
    vocab = weight.shape[0]
    chunk = chunk_size if chunk_size is not None else default_chunk_size(num_pos, vocab)
    w32 = weight.float()
    b32 = bias.float() if bias is not None else None
    tgt = targets.long()
    nll = torch.empty(num_pos, dtype=torch.float32, device=hidden.device)
    ent = torch.empty(num_pos, dtype=torch.float32, device=hidden.device) if return_entropy else None
    for start in range(0, num_pos, chunk):
        stop = min(num_pos, start + chunk)
        logits = hidden[start:stop].float() @ w32.T
        if b32 is not None:
            logits += b32
        lse = torch.logsumexp(logits, dim=-1)
        t = tgt[start:stop]
        valid = t != IGNORE_INDEX
        picked = logits.gather(1, torch.where(valid, t, 0).unsqueeze(1)).squeeze(1)
        nll[start:stop] = torch.where(valid, lse - picked, torch.zeros_like(lse))
        if ent is not None:
            probs = torch.softmax(logits, dim=-1)
            ent[start:stop] = lse - (probs * logits).sum(dim=-1)
            del probs
        del logits
    return (nll, ent) if ent is not None else nll


def _blocks(num_pos: int, vocab: int, hidden_size: int, n_streams: int) -> dict[str, int]:
    """Tile sizes and the vocabulary split; bigger tiles in the interpreter, where each step costs overhead."""
    if interpreting():
        block_t = max(16, min(128, 1 << max(0, num_pos - 1).bit_length()))
        return {"BLOCK_T": block_t, "BLOCK_V": 512, "BLOCK_H": 256, "num_warps": 4, "target_programs": 1}
    return {
        "BLOCK_T": 64,
        "BLOCK_V": 64 if n_streams == 2 else 128,
        "BLOCK_H": 64,
        "num_warps": 8 if n_streams == 2 else 4,
        "target_programs": 4 * _sm_count(),
    }


def _sm_count() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(props.multi_processor_count)


def lse_partials(
    hiddens: list[Any],
    weight: Any,
    targets: Any,
    bias: Any,
    *,
    with_entropy: bool,
    n_split: int | None = None,
) -> list[tuple[Any, Any | None]]:
    """Run the Triton kernel over one or two hidden streams; return ``(nll, entropy|None)`` per stream.

    Shared by :func:`fused_nll` and ``contrastive_nll`` (the two-stream launch reads each weight tile once).
    Inputs must already be validated. ``n_split`` forces the number of vocabulary slices (tests use it to
    exercise the merge of partials; by default it follows the number of streaming multiprocessors).
    """
    from . import _tl_nll

    num_pos, hidden_size = hiddens[0].shape
    vocab = weight.shape[0]
    n_streams = len(hiddens)
    device = hiddens[0].device
    if num_pos == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=device)
        return [(empty, empty.clone() if with_entropy else None) for _ in hiddens]
    cfg = _blocks(num_pos, vocab, hidden_size, n_streams)
    block_t, block_v = cfg["BLOCK_T"], cfg["BLOCK_V"]
    t_blocks = math.ceil(num_pos / block_t)
    v_blocks = math.ceil(vocab / block_v)
    wanted = n_split if n_split is not None else math.ceil(cfg["target_programs"] / t_blocks)
    n_split = max(1, min(v_blocks, wanted))
    v_per_split = math.ceil(v_blocks / n_split) * block_v
    n_split = math.ceil(vocab / v_per_split)

    h1 = _checks.row_major(hiddens[0])
    h2 = _checks.row_major(hiddens[1]) if n_streams == 2 else h1
    w = _checks.row_major(weight)
    tgt = targets.contiguous()
    part = torch.empty((4, n_streams, n_split, num_pos), dtype=torch.float32, device=device)
    # Mixed input dtypes (and bf16/fp16 in the interpreter, whose tl.dot mishandles them) use float32 operands.
    upcast = h1.dtype != w.dtype or h2.dtype != w.dtype or (interpreting() and w.dtype != torch.float32)
    # float32 operands: exact products unless torch allows TF32 matmuls; bf16/fp16 operands: tensor cores
    # with float32 accumulation (Triton's default precision setting, which only affects float32 operands).
    fp32_operands = upcast or w.dtype == torch.float32
    precision = "ieee" if fp32_operands and not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    grid = (t_blocks, n_split)
    _tl_nll.lse_partial_kernel[grid](
        h1, h2, w, bias.contiguous() if bias is not None else w, tgt, part,
        num_pos, vocab, hidden_size, v_per_split,
        h1.stride(0), h2.stride(0), w.stride(0), part.stride(0), part.stride(1), part.stride(2),
        TWO_STREAMS=n_streams == 2,
        HAS_BIAS=bias is not None,
        WITH_ENTROPY=with_entropy,
        UPCAST=upcast,
        PRECISION=precision,
        BLOCK_T=block_t,
        BLOCK_V=block_v,
        BLOCK_H=cfg["BLOCK_H"],
        num_warps=cfg["num_warps"],
    )
    ignored = targets == IGNORE_INDEX
    out = []
    for s in range(n_streams):
        m, ssum, enum, picked = part[0, s], part[1, s], part[2, s], part[3, s]
        top = m.max(dim=0).values
        scale = torch.exp(m - top)
        total = (ssum * scale).sum(dim=0)
        lse = top + torch.log(total)
        nll = torch.where(ignored, torch.zeros_like(lse), lse - picked.sum(dim=0))
        ent = lse - (enum * scale).sum(dim=0) / total if with_entropy else None
        out.append((nll, ent))
    return out


def fused_nll(
    hidden: Any,
    weight: Any,
    targets: Any,
    *,
    bias: Any = None,
    return_entropy: bool = False,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> Any:
    """NLL of ``targets[t]`` under ``softmax(hidden[t] @ weight.T + bias)`` for every position, float32 ``[T]``.

    Args:
        hidden: final hidden states ``[T, H]`` (float32, bfloat16 or float16).
        weight: output embedding ``[V, H]`` (same dtypes; may differ from ``hidden``'s).
        targets: next-token ids ``[T]`` (integer); ``-100`` marks an ignored position, whose NLL is ``0.0``.
        bias: optional output bias ``[V]``.
        return_entropy: also return the entropy (nats) of each position's next-token distribution.
        chunk_size: positions per chunk of the PyTorch path (default: what fits in 2**24 float32 logits);
            the Triton kernel never holds more than one register tile of logits and has no chunks.
        backend: ``"triton"``, ``"torch"`` or ``"auto"``; default from ``$CTXZIP_KERNELS`` (see ``_dispatch``).

    Returns:
        ``nll`` or ``(nll, entropy)``, float32 tensors of shape ``[T]`` on ``hidden``'s device.
    """
    check_lm_inputs({"hidden": hidden}, weight, targets, bias)
    _checks.positive_int("chunk_size", chunk_size, allow_none=True)
    if not isinstance(return_entropy, bool):
        raise InputError(f"return_entropy must be a bool, got {return_entropy!r}")
    if choose_backend(hidden, weight, targets, bias, backend=backend) == "torch":
        return fused_nll_reference(
            hidden, weight, targets, bias=bias, return_entropy=return_entropy, chunk_size=chunk_size
        )
    ((nll, ent),) = lse_partials([hidden], weight, targets, bias, with_entropy=return_entropy)
    return (nll, ent) if return_entropy else nll
