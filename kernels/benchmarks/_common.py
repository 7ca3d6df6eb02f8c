"""Timing, peak-memory and table helpers shared by the ``bench_*.py`` scripts (run them as scripts).

Peak memory is the largest amount of tensor memory allocated *during* one call, above what was allocated before
it (the inputs are not counted): ``torch.cuda.max_memory_allocated`` on CUDA, and on CPU the running sum of
the allocation/free events recorded by ``torch.profiler`` with ``profile_memory=True`` (exact for tensors
allocated through torch's CPU allocator). Time is the median wall-clock of ``repeat`` calls after ``warmup``
calls, with ``torch.cuda.synchronize`` around each call on CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MIB = float(1 << 20)


@dataclass(frozen=True)
class Row:
    impl: str
    shape: str
    ms: float | None
    peak_mib: float | None
    note: str = ""


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (compiles, caches)")
    parser.add_argument("--impls", default=None, help="comma-separated subset of implementations to run")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: on a shared, oversubscribed CPU more threads make timings erratic)",
    )


def setup(args: argparse.Namespace) -> tuple[Any, Any]:
    torch.set_num_threads(max(1, args.threads))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.repeat < 1 or args.warmup < 0:
        raise SystemExit("--repeat must be >= 1 and --warmup >= 0")
    return device, getattr(torch, args.dtype)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def pick_impls(available: Sequence[str], requested: str | None, device: Any) -> list[str]:
    """The implementations to run: all by default, minus the Triton kernel off CUDA (unless interpreting)."""
    names = list(available) if requested is None else [n.strip() for n in requested.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown implementation(s) {unknown}; choose from {list(available)}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1" and "kernel" in names:
        if requested is not None:
            print("note: 'kernel' needs CUDA (or TRITON_INTERPRET=1); skipped", file=sys.stderr)
        names.remove("kernel")
    return names


def _sync(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: Any, *, repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def peak_mib(fn: Callable[[], Any], device: Any) -> float:
    """Peak tensor memory allocated during one call of ``fn`` above the memory in use before it, in MiB."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return peak / MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / MIB


def measure(impl: str, shape: str, fn: Callable[[], Any], device: Any, args: argparse.Namespace) -> Row:
    try:
        ms = time_ms(fn, device, repeat=args.repeat, warmup=args.warmup)
        mem = peak_mib(fn, device)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return Row(impl, shape, None, None, "out of memory")
    return Row(impl, shape, ms, mem)


def print_table(rows: Sequence[Row], *, baseline: str, title: str, device: Any, dtype: Any) -> None:
    """Markdown table; speed-up and memory ratio are relative to ``baseline`` for the same shape."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads={torch.get_num_threads()}"
    print(f"\n{title} — {name}, {str(dtype).replace('torch.', '')}, torch {torch.__version__}\n")
    print("| shape | impl | time (ms) | peak mem (MiB) | speed-up vs " + baseline + " | mem vs " + baseline + " |")
    print("|---|---|---:|---:|---:|---:|")
    base = {r.shape: r for r in rows if r.impl == baseline}
    for r in rows:
        b = base.get(r.shape)
        if r.ms is None:
            print(f"| {r.shape} | {r.impl} | {r.note} | | | |")
            continue
        speed = f"{b.ms / r.ms:.2f}x" if b is not None and b.ms else ""
        mem = f"{100.0 * r.peak_mib / b.peak_mib:.1f}%" if b is not None and b.peak_mib else ""
        print(f"| {r.shape} | {r.impl} | {r.ms:.2f} | {r.peak_mib:.1f} | {speed} | {mem} |")
