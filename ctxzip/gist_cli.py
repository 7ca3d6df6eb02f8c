"""``ctxzip train-gist``: train (or resume) the gist encoder for a frozen decoder, and evaluate it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train-gist",
        help="train the gist soft-compression encoder for a frozen local decoder (resumable, time-bounded)",
        description="Train gist (reconstruction 20%% + continuation 80%%) on developer-visible text; "
        "re-running with the same --out resumes from its checkpoint. --eval-only evaluates weights instead.",
    )
    p.add_argument("--out", required=True, help="directory for checkpoint.safetensors, log.jsonl, gist.safetensors")
    p.add_argument("--data-dir", default="/work/shared/data", help="shared data folder (essays, qmsum, squad)")
    p.add_argument("--decoder", default="smollm2-135m", help="frozen decoder (default: smollm2-135m)")
    p.add_argument("--factors", default="4,8", help="pooling factors trained, comma-separated (default 4,8)")
    p.add_argument("--frozen-layers", type=int, default=2)
    p.add_argument("--trainable-layers", type=int, default=1)
    p.add_argument("--projector-hidden", type=int, default=1024)
    p.add_argument("--non-causal", action="store_true", help="bidirectional attention in the encoder")
    p.add_argument("--max-segment-tokens", type=int, default=128)
    p.add_argument("--segment-tokens", type=int, default=64, help="training segment length in tokens")
    p.add_argument("--continuation-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--recon-weight", type=float, default=0.2, help="share of reconstruction steps (default 0.2)")
    p.add_argument("--max-minutes", type=float, default=20.0, help="wall-clock cap of this run")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-only", metavar="WEIGHTS", help="evaluate these weights on the held-out split instead")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows per factor (evaluation)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .gist.config import GistConfig, TrainConfig

    try:
        factors = tuple(int(x) for x in str(args.factors).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--factors must be comma-separated integers such as 4,8, got {args.factors!r}") from None
    if args.eval_only:
        from .gist.evaluate import evaluate_weights

        report = evaluate_weights(args.eval_only, data_dir=args.data_dir, windows=args.eval_windows,
                                  segment_tokens=args.segment_tokens,
                                  continuation_tokens=args.continuation_tokens, seed=args.seed,
                                  threads=args.threads)
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
        return 0
    gist = GistConfig(decoder=args.decoder, factor=factors[0] if factors else 4, factors=factors,
                      max_segment_tokens=args.max_segment_tokens, frozen_layers=args.frozen_layers,
                      trainable_layers=args.trainable_layers, projector_hidden=args.projector_hidden,
                      causal=not args.non_causal)
    cfg = TrainConfig(out_dir=args.out, data_dir=args.data_dir, segment_tokens=args.segment_tokens,
                      continuation_tokens=args.continuation_tokens, batch_size=args.batch_size, lr=args.lr,
                      recon_weight=args.recon_weight, max_minutes=args.max_minutes, max_steps=args.max_steps,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, threads=args.threads)
    from .gist.train import train

    summary = train(cfg, gist, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary.__dict__, indent=2))
    else:
        print(f"steps {summary.steps} (from {summary.start_step}) in {summary.minutes:.1f} min; "
              f"continuation loss {summary.mean_cont_loss:.3f}, reconstruction loss {summary.mean_recon_loss:.3f}; "
              f"weights {summary.weights}; log {summary.log}")
    return 0
