"""Triton kernel behind ``last_query_scores`` (imported only when the Triton path runs).

Program ``i`` produces outputs ``[i*OUT, (i+1)*OUT)`` with ``OUT = BLOCK_T - 2*HALF``. It computes the raw
scores of the ``BLOCK_T`` positions starting ``HALF`` before its first output (positions outside ``[0, T)`` load
as zero keys, which is the zero padding of the mean filter), then applies the window as a banded sum in
registers. Per kv head it sums the ``group`` query heads first, so each key row is read once.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def last_query_kernel(
    q_ptr, k_ptr, out_ptr,
    T, D, group, scale, num_kv,
    stride_q, stride_kh, stride_kt,
    HALF: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    out_block = BLOCK_T - 2 * HALF
    local = tl.arange(0, BLOCK_T)
    pos = pid * out_block - HALF + local
    p_mask = (pos >= 0) & (pos < T)
    raw = tl.zeros((BLOCK_T,), tl.float32)
    pos64 = pos.to(tl.int64)
    for kv in range(0, num_kv):
        rows = k_ptr + ((pos64 * 0 + kv) * stride_kh + pos64 * stride_kt)[:, None]
        for d0 in range(0, D, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            d_mask = rd < D
            qsum = tl.zeros((BLOCK_D,), tl.float32)
            for g in range(0, group):
                head = kv * group + g
                qsum += tl.load(q_ptr + head * stride_q + rd, mask=d_mask, other=0.0).to(tl.float32)
            k = tl.load(rows + rd[None, :], mask=p_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
            raw += tl.sum(k * qsum[None, :], axis=1)
    raw = raw * scale
    if HALF == 0:
        pooled = raw
    else:
        band = (local[None, :] >= local[:, None]) & (local[None, :] <= local[:, None] + 2 * HALF)
        pooled = tl.sum(tl.where(band, raw[None, :], 0.0), axis=1) / (2 * HALF + 1)
    out_pos = pid * out_block + local
    tl.store(out_ptr + out_pos, pooled, mask=(local < out_block) & (out_pos < T))
