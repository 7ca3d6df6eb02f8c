"""Triton kernel behind ``word_topk`` (imported only when the Triton path runs).

One program per row. Pass 1 compares a block of word indices with blocks of subwords and averages the matching
probabilities (``-inf`` for words without subwords); pass 2, after a block barrier so the row's means written in
pass 1 are visible, counts for each word the present words ranking before it (higher mean, or equal mean and
lower index) and keeps the word when that count is below the row's budget ``k``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def word_topk_kernel(
    p_ptr, ids_ptr, k_ptr, wp_ptr, keep_ptr,
    L, W,
    stride_p, stride_ids, stride_wp, stride_keep,
    BLOCK_W: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    p_row = p_ptr + row.to(tl.int64) * stride_p
    ids_row = ids_ptr + row.to(tl.int64) * stride_ids
    wp_row = wp_ptr + row.to(tl.int64) * stride_wp
    keep_row = keep_ptr + row.to(tl.int64) * stride_keep
    budget = tl.load(k_ptr + row)

    for w0 in range(0, W, BLOCK_W):
        rw = w0 + tl.arange(0, BLOCK_W)
        sums = tl.zeros((BLOCK_W,), tl.float32)
        cnt = tl.zeros((BLOCK_W,), tl.float32)
        for l0 in range(0, L, BLOCK_L):
            rl = l0 + tl.arange(0, BLOCK_L)
            l_mask = rl < L
            ids = tl.load(ids_row + rl, mask=l_mask, other=-1).to(tl.int32)
            p = tl.load(p_row + rl, mask=l_mask, other=0.0).to(tl.float32)
            eq = ids[None, :] == rw[:, None]
            sums += tl.sum(tl.where(eq, p[None, :], 0.0), axis=1)
            cnt += tl.sum(tl.where(eq, 1.0, 0.0), axis=1)
        mean = tl.where(cnt > 0, sums / tl.maximum(cnt, 1.0), float("-inf"))
        tl.store(wp_row + rw, mean, mask=rw < W)

    tl.debug_barrier()

    for w0 in range(0, W, BLOCK_W):
        rw = w0 + tl.arange(0, BLOCK_W)
        mine = tl.load(wp_row + rw, mask=rw < W, other=float("-inf"))
        rank = tl.zeros((BLOCK_W,), tl.int32)
        for u0 in range(0, W, BLOCK_W):
            ru = u0 + tl.arange(0, BLOCK_W)
            other = tl.load(wp_row + ru, mask=ru < W, other=float("-inf"))
            higher = other[None, :] > mine[:, None]
            tie_first = (other[None, :] == mine[:, None]) & (ru[None, :] < rw[:, None])
            before = (higher | tie_first) & (other[None, :] > float("-inf"))
            rank += tl.sum(before.to(tl.int32), axis=1)
        keep = (mine > float("-inf")) & (rank < budget)
        tl.store(keep_row + rw, keep.to(tl.int8), mask=rw < W)
