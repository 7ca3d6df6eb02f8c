"""Triton kernel behind ``fused_nll`` and ``contrastive_nll`` (imported only when the Triton path runs).

Program ``(i, j)`` takes positions ``[i*BLOCK_T, (i+1)*BLOCK_T)`` and the vocabulary slice
``[j*v_per_split, (j+1)*v_per_split)``. For each ``BLOCK_V`` tile of that slice it accumulates the logits
``hidden_tile @ weight_tile.T`` over ``BLOCK_H`` steps (float32 accumulator) and folds them into, per position:

* ``m`` the running maximum and ``s = sum exp(z - m)`` (online log-sum-exp),
* ``e = sum exp(z - m) * z`` (entropy numerator: ``H = lse - e / s``), only when ``WITH_ENTROPY``,
* ``z_target``, the target's logit when it falls in this slice (0 elsewhere, so the partials just add up).

The four partials go to ``part[quantity, stream, j, t]``; the launcher merges the ``n_split`` slices.
With ``TWO_STREAMS`` the same weight tile serves two hidden streams (contrastive NLL).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def lse_partial_kernel(
    h1_ptr, h2_ptr, w_ptr, b_ptr, tgt_ptr, part_ptr,
    T, V, H, v_per_split,
    stride_h1, stride_h2, stride_w, stride_pq, stride_ps, stride_pj,
    TWO_STREAMS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_v = tl.program_id(1)
    rt = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = rt < T
    tgt = tl.load(tgt_ptr + rt, mask=t_mask, other=-1).to(tl.int32)
    rows1 = h1_ptr + rt.to(tl.int64)[:, None] * stride_h1
    rows2 = h2_ptr + rt.to(tl.int64)[:, None] * stride_h2

    m1 = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    s1 = tl.zeros((BLOCK_T,), tl.float32)
    e1 = tl.zeros((BLOCK_T,), tl.float32)
    z1 = tl.zeros((BLOCK_T,), tl.float32)
    m2 = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    s2 = tl.zeros((BLOCK_T,), tl.float32)
    e2 = tl.zeros((BLOCK_T,), tl.float32)
    z2 = tl.zeros((BLOCK_T,), tl.float32)

    v_lo = pid_v * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        rv = v0 + tl.arange(0, BLOCK_V)
        v_mask = rv < v_hi
        cols = w_ptr + rv.to(tl.int64)[None, :] * stride_w
        acc1 = tl.zeros((BLOCK_T, BLOCK_V), tl.float32)
        acc2 = tl.zeros((BLOCK_T, BLOCK_V), tl.float32)
        for k0 in range(0, H, BLOCK_H):
            rk = k0 + tl.arange(0, BLOCK_H)
            k_mask = rk < H
            # weight tile loaded transposed: [BLOCK_H, BLOCK_V]
            w = tl.load(cols + rk[:, None], mask=k_mask[:, None] & v_mask[None, :], other=0.0)
            a1 = tl.load(rows1 + rk[None, :], mask=t_mask[:, None] & k_mask[None, :], other=0.0)
            if UPCAST:
                acc1 = tl.dot(a1.to(tl.float32), w.to(tl.float32), acc1, input_precision=PRECISION)
            else:
                acc1 = tl.dot(a1, w, acc1, input_precision=PRECISION)
            if TWO_STREAMS:
                a2 = tl.load(rows2 + rk[None, :], mask=t_mask[:, None] & k_mask[None, :], other=0.0)
                if UPCAST:
                    acc2 = tl.dot(a2.to(tl.float32), w.to(tl.float32), acc2, input_precision=PRECISION)
                else:
                    acc2 = tl.dot(a2, w, acc2, input_precision=PRECISION)
        if HAS_BIAS:
            bias = tl.load(b_ptr + rv, mask=v_mask, other=0.0).to(tl.float32)
            acc1 += bias[None, :]
            if TWO_STREAMS:
                acc2 += bias[None, :]
        hit = rv[None, :] == tgt[:, None]

        z = tl.where(v_mask[None, :], acc1, float("-inf"))
        m_new = tl.maximum(m1, tl.max(z, axis=1))
        alpha = tl.exp(m1 - m_new)
        p = tl.exp(z - m_new[:, None])
        s1 = s1 * alpha + tl.sum(p, axis=1)
        if WITH_ENTROPY:
            e1 = e1 * alpha + tl.sum(p * tl.where(v_mask[None, :], acc1, 0.0), axis=1)
        z1 += tl.sum(tl.where(hit, acc1, 0.0), axis=1)
        m1 = m_new
        if TWO_STREAMS:
            z = tl.where(v_mask[None, :], acc2, float("-inf"))
            m_new = tl.maximum(m2, tl.max(z, axis=1))
            alpha = tl.exp(m2 - m_new)
            p = tl.exp(z - m_new[:, None])
            s2 = s2 * alpha + tl.sum(p, axis=1)
            if WITH_ENTROPY:
                e2 = e2 * alpha + tl.sum(p * tl.where(v_mask[None, :], acc2, 0.0), axis=1)
            z2 += tl.sum(tl.where(hit, acc2, 0.0), axis=1)
            m2 = m_new

    out = part_ptr + pid_v * stride_pj + rt
    tl.store(out, m1, mask=t_mask)
    tl.store(out + stride_pq, s1, mask=t_mask)
    tl.store(out + 2 * stride_pq, e1, mask=t_mask)
    tl.store(out + 3 * stride_pq, z1, mask=t_mask)
    if TWO_STREAMS:
        out2 = out + stride_ps
        tl.store(out2, m2, mask=t_mask)
        tl.store(out2 + stride_pq, s2, mask=t_mask)
        tl.store(out2 + 2 * stride_pq, e2, mask=t_mask)
        tl.store(out2 + 3 * stride_pq, z2, mask=t_mask)
