"""Benchmark ``word_topk`` (kernel 4, LLMLingua-2): Triton kernel vs a per-chunk Python/NumPy loop (how
LLMLingua-2 aggregates words) vs the batched PyTorch reference vs ``torch.compile`` of the reference.

    python kernels/benchmarks/bench_word_topk.py
    python kernels/benchmarks/bench_word_topk.py --B 64,512 --L 512                          # on a GPU

Implementations:
  naive      per chunk: NumPy bincount means + argsort (the loop an eager implementation writes)
  reference  ctxzip.kernels.word_topk with backend="torch" (batched scatter_add + stable sort)
  compile    torch.compile of the reference's aggregation and selection
  kernel     the Triton kernel (CUDA, or TRITON_INTERPRET=1 on CPU, which is only a correctness path)
Chunks have L subwords with about 1.3 subwords per word, a leading special token and 10% trailing padding.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import Row, common_args, int_list, measure, pick_impls, print_table, setup  # noqa: E402

from ctxzip.kernels import word_budget, word_topk, word_topk_reference  # noqa: E402

IMPLS = ("naive", "reference", "compile", "kernel")


def naive_word_topk(probs, word_ids, keep):
    p_all = probs.float().cpu().numpy()
    ids_all = word_ids.cpu().numpy()
    num_words = int(ids_all.max()) + 1
    means = np.full(ids_all.shape[:1] + (num_words,), -np.inf, dtype=np.float32)
    mask = np.zeros_like(means, dtype=bool)
    for row in range(ids_all.shape[0]):
        valid = ids_all[row] >= 0
        ids, p = ids_all[row][valid], p_all[row][valid]
        counts = np.bincount(ids, minlength=num_words)
        sums = np.bincount(ids, weights=p, minlength=num_words)
        present = counts > 0
        means[row, present] = (sums[present] / counts[present]).astype(np.float32)
        k = int(np.ceil(present.sum() * keep - 1e-9))
        order = np.argsort(-means[row], kind="stable")[:k]
        mask[row, order] = True
    return means, mask


def make_batch(rows: int, length: int, gen):
    lengths = (torch.rand(rows, length, generator=gen) < 0.77).long()  # 1 starts a new word
    ids = torch.cumsum(lengths, dim=1) - 1
    ids[:, 0] = -1
    ids[:, int(length * 0.9):] = -1
    ids = ids.clamp_min(-1)
    probs = torch.rand(rows, length, generator=gen)
    return probs, ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int_list, default=[16, 128], help="chunks per batch")
    parser.add_argument("--L", type=int, default=512, help="subwords per chunk")
    parser.add_argument("--keep", type=float, default=0.33, help="ratio of words to keep")
    common_args(parser)
    args = parser.parse_args(argv)
    device, dtype = setup(args)
    impls = pick_impls(IMPLS, args.impls, device)
    compiled = torch.compile(word_topk_reference, dynamic=False) if "compile" in impls else None
    rows: list[Row] = []
    for batch in args.B:
        gen = torch.Generator(device="cpu").manual_seed(batch)
        probs, ids = make_batch(batch, args.L, gen)
        probs, ids = probs.to(device=device, dtype=dtype), ids.to(device)
        num_words = int(ids.max()) + 1
        present = torch.zeros(batch, num_words + 1, dtype=torch.bool, device=device)
        present.scatter_(1, torch.where(ids >= 0, ids, num_words), True)
        k = word_budget(args.keep, present[:, :num_words].sum(1))
        shape = f"B={batch} L={args.L}"
        calls = {
            "naive": partial(naive_word_topk, probs, ids, args.keep),
            "reference": partial(word_topk, probs, ids, keep=args.keep, backend="torch"),
            "compile": partial(compiled, probs, ids, k, num_words) if compiled is not None else None,
            "kernel": partial(word_topk, probs, ids, keep=args.keep, backend="triton"),
        }
        for impl in impls:
            rows.append(measure(impl, shape, calls[impl], device, args))
            print(f"  {shape:<16} {impl:<10} done", file=sys.stderr)
    print_table(rows, baseline="naive", title="word_topk (LLMLingua-2)", device=device, dtype=dtype)


if __name__ == "__main__":
    main()
