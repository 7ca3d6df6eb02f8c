"""Benchmark ``fused_nll`` (kernel 1): Triton kernel vs the eager full-logits cross-entropy vs the chunked
PyTorch reference vs ``torch.compile`` of the reference, across T and V.

    python kernels/benchmarks/bench_fused_nll.py                      # CPU: naive, reference, compile
    python kernels/benchmarks/bench_fused_nll.py --T 8192 --V 49152,262144 --dtype bfloat16   # GPU acceptance

Implementations:
  naive      hidden @ weight.T then F.cross_entropy (materialises [T, V] logits): the eager baseline
  reference  ctxzip.kernels.fused_nll_reference (float32 chunks of positions)
  compile    torch.compile(fused_nll_reference)
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

from ctxzip.kernels import fused_nll, fused_nll_reference, naive_nll  # noqa: E402

IMPLS = ("naive", "reference", "compile", "kernel")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int_list, default=[512, 2048], help="numbers of positions, e.g. 512,2048")
    parser.add_argument("--V", type=int_list, default=[8192, 49152], help="vocabulary sizes, e.g. 49152,262144")
    parser.add_argument("--H", type=int, default=576, help="hidden size (SmolLM2-135M: 576, Gemma-3-270M: 640)")
    common_args(parser)
    args = parser.parse_args(argv)
    device, dtype = setup(args)
    impls = pick_impls(IMPLS, args.impls, device)
    compiled = torch.compile(fused_nll_reference, dynamic=False) if "compile" in impls else None
    rows: list[Row] = []
    for vocab in args.V:
        gen = torch.Generator(device="cpu").manual_seed(vocab)
        weight = (torch.randn(vocab, args.H, generator=gen) / args.H**0.5).to(device=device, dtype=dtype)
        for num_pos in args.T:
            hidden = torch.randn(num_pos, args.H, generator=gen).to(device=device, dtype=dtype)
            targets = torch.randint(0, vocab, (num_pos,), generator=gen).to(device)
            shape = f"T={num_pos} V={vocab} H={args.H}"
            inputs = (hidden, weight, targets)
            calls = {
                "naive": partial(naive_nll, *inputs),
                "reference": partial(fused_nll_reference, *inputs),
                "compile": partial(compiled, *inputs) if compiled is not None else None,
                "kernel": partial(fused_nll, *inputs, backend="triton"),
            }
            for impl in impls:
                row = measure(impl, shape, calls[impl], device, args)
                rows.append(row)
                print(f"  {shape:<28} {impl:<10} {row.ms if row.ms is None else round(row.ms, 2)} ms", file=sys.stderr)
    print_table(rows, baseline="naive", title="fused_nll: per-token NLL", device=device, dtype=dtype)


if __name__ == "__main__":
    main()
