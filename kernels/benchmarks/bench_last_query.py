"""Benchmark ``last_query_scores`` (kernel 3, GemFilter): Triton kernel vs GemFilter's eager recipe vs the
PyTorch reference vs ``torch.compile`` of the reference, across T.

    python kernels/benchmarks/bench_last_query.py
    python kernels/benchmarks/bench_last_query.py --T 8192,131072 --dtype bfloat16           # on a GPU

Implementations:
  naive      repeat the kv heads to Hq (repeat_interleave), matmul, sum over heads, avg_pool1d (as GemFilter)
  reference  ctxzip.kernels.last_query_scores_reference (grouped einsum, no repeat)
  compile    torch.compile(last_query_scores_reference)
  kernel     the Triton kernel (CUDA, or TRITON_INTERPRET=1 on CPU, which is only a correctness path)
Default heads are SmolLM2-135M's (9 query heads, 3 kv heads, head dim 64).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _common import Row, common_args, int_list, measure, pick_impls, print_table, setup  # noqa: E402

from ctxzip.kernels import last_query_scores, last_query_scores_reference  # noqa: E402

IMPLS = ("naive", "reference", "compile", "kernel")


def naive_last_query(q_last, keys, smooth=5):
    num_q, dim = q_last.shape
    full = keys.repeat_interleave(num_q // keys.shape[0], dim=0).float()  # [Hq, T, D]
    logits = torch.matmul(q_last.float().unsqueeze(1), full.transpose(1, 2))[:, 0] / math.sqrt(dim)  # [Hq, T]
    summed = logits.sum(0, keepdim=True)
    return torch.nn.functional.avg_pool1d(summed, kernel_size=smooth, stride=1, padding=smooth // 2)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int_list, default=[8192, 65536], help="numbers of key positions")
    parser.add_argument("--heads", type=int_list, default=[9, 3], help="query heads,kv heads")
    parser.add_argument("--D", type=int, default=64, help="head dim")
    parser.add_argument("--smooth", type=int, default=5, help="smoothing window (odd)")
    common_args(parser)
    args = parser.parse_args(argv)
    if len(args.heads) != 2:
        raise SystemExit("--heads takes two numbers: query heads,kv heads")
    device, dtype = setup(args)
    impls = pick_impls(IMPLS, args.impls, device)
    compiled = torch.compile(last_query_scores_reference, dynamic=False) if "compile" in impls else None
    rows: list[Row] = []
    num_q, num_kv = args.heads
    for num_pos in args.T:
        gen = torch.Generator(device="cpu").manual_seed(num_pos)
        q = torch.randn(num_q, args.D, generator=gen).to(device=device, dtype=dtype)
        k = torch.randn(num_kv, num_pos, args.D, generator=gen).to(device=device, dtype=dtype)
        shape = f"T={num_pos} Hq={num_q} Hkv={num_kv} D={args.D}"
        calls = {
            "naive": partial(naive_last_query, q, k, args.smooth),
            "reference": partial(last_query_scores_reference, q, k, smooth=args.smooth),
            "compile": partial(compiled, q, k, smooth=args.smooth) if compiled is not None else None,
            "kernel": partial(last_query_scores, q, k, smooth=args.smooth, backend="triton"),
        }
        for impl in impls:
            rows.append(measure(impl, shape, calls[impl], device, args))
            print(f"  {shape:<32} {impl:<10} done", file=sys.stderr)
    print_table(rows, baseline="naive", title="last_query_scores (GemFilter)", device=device, dtype=dtype)


if __name__ == "__main__":
    main()
