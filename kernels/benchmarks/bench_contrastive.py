"""Benchmark ``contrastive_nll`` (kernel 2): one two-stream Triton kernel vs two eager full-logits
cross-entropies vs the chunked PyTorch reference vs ``torch.compile`` of the reference, across T and V.

    python kernels/benchmarks/bench_contrastive.py
    python kernels/benchmarks/bench_contrastive.py --T 8192 --V 49152 --dtype bfloat16      # on a GPU

Implementations:
  naive      naive_nll(plain) - naive_nll(cond): two [T, V] logits tensors
  reference  ctxzip.kernels.contrastive_nll_reference (two chunked float32 passes)
  compile    torch.compile(contrastive_nll_reference)
  kernel     the Triton kernel (CUDA, or TRITON_INTERPRET=1 on CPU, which is only a correctness path)
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _common import Row, common_args, int_list, measure, pick_impls, print_table, setup  # noqa: E402

from ctxzip.kernels import contrastive_nll, contrastive_nll_reference, naive_nll  # noqa: E402

IMPLS = ("naive", "reference", "compile", "kernel")


def naive_contrastive(plain, cond, weight, targets):
    return naive_nll(plain, weight, targets) - naive_nll(cond, weight, targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int_list, default=[512, 2048], help="numbers of positions")
    parser.add_argument("--V", type=int_list, default=[8192, 49152], help="vocabulary sizes")
    parser.add_argument("--H", type=int, default=576, help="hidden size")
    common_args(parser)
    args = parser.parse_args(argv)
    device, dtype = setup(args)
    impls = pick_impls(IMPLS, args.impls, device)
    compiled = torch.compile(contrastive_nll_reference, dynamic=False) if "compile" in impls else None
    rows: list[Row] = []
    for vocab in args.V:
        gen = torch.Generator(device="cpu").manual_seed(vocab)
        weight = (torch.randn(vocab, args.H, generator=gen) / args.H**0.5).to(device=device, dtype=dtype)
        for num_pos in args.T:
            plain = torch.randn(num_pos, args.H, generator=gen).to(device=device, dtype=dtype)
            cond = torch.randn(num_pos, args.H, generator=gen).to(device=device, dtype=dtype)
            targets = torch.randint(0, vocab, (num_pos,), generator=gen).to(device)
            inputs = (plain, cond, weight, targets)
            shape = f"T={num_pos} V={vocab} H={args.H}"
            calls = {
                "naive": partial(naive_contrastive, *inputs),
                "reference": partial(contrastive_nll_reference, *inputs),
                "compile": partial(compiled, *inputs) if compiled is not None else None,
                "kernel": partial(contrastive_nll, *inputs, backend="triton"),
            }
            for impl in impls:
                rows.append(measure(impl, shape, calls[impl], device, args))
                print(f"  {shape:<28} {impl:<10} done", file=sys.stderr)
    print_table(rows, baseline="naive", title="contrastive_nll: NLL(plain) - NLL(cond)", device=device, dtype=dtype)


if __name__ == "__main__":
    main()
