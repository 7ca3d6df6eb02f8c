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
        description="Train gist (reconstruction 20% + continuation 80%) on developer-visible text; "
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
    from .gist.config import SCHEDULES

    p.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning rate: constant, or cosine from --lr down to --lr/10 at --max-steps")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--recon-weight", type=float, default=0.2, help="share of reconstruction steps (default 0.2)")
    p.add_argument("--max-minutes", type=float, default=20.0, help="wall-clock cap of this run")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-only", metavar="WEIGHTS",
                   help="evaluate these weights on the held-out split instead ('init': an untrained encoder, "
                   "i.e. mean-pooled token embeddings, as a baseline)")
    p.add_argument("--ttft-tokens", type=int, default=0,
                   help="with --eval-only: also time the first token for a context of this many held-out tokens")
    p.add_argument("--nq20", metavar="FILE", help="with --eval-only: reader NLL of the gold answer on these QA rows "
                   "(full context, gist, --hard-methods at the gist's rate)")
    p.add_argument("--limit", type=int, default=3, help="rows of --nq20 (default 3)")
    p.add_argument("--hard-methods", default="", help="comma-separated hard compressors for --nq20, e.g. lingua2")
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
    gist = GistConfig(decoder=args.decoder, factor=factors[0] if factors else 4, factors=factors,
                      max_segment_tokens=args.max_segment_tokens, frozen_layers=args.frozen_layers,
                      trainable_layers=args.trainable_layers, projector_hidden=args.projector_hidden,
                      causal=not args.non_causal)
    if args.eval_only:
        return _evaluate(args, gist)
    cfg = TrainConfig(out_dir=args.out, data_dir=args.data_dir, segment_tokens=args.segment_tokens,
                      continuation_tokens=args.continuation_tokens, batch_size=args.batch_size, lr=args.lr,
                      recon_weight=args.recon_weight, max_minutes=args.max_minutes, max_steps=args.max_steps,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, threads=args.threads,
                      schedule=args.schedule, warmup_steps=args.warmup_steps)
    from .gist.train import train

    summary = train(cfg, gist, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary.__dict__, indent=2))
    else:
        print(f"steps {summary.steps} (from {summary.start_step}) in {summary.minutes:.1f} min; "
              f"continuation loss {summary.mean_cont_loss:.3f}, reconstruction loss {summary.mean_recon_loss:.3f}; "
              f"weights {summary.weights}; log {summary.log}")
    return 0


def _evaluate(args: argparse.Namespace, gist: Any) -> int:
    import tempfile
    from dataclasses import asdict

    from .gist.evaluate import evaluate_weights, ttft_on_held_out

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.eval_only
        if weights == "init":
            from .gist.model import GistEncoder
            from .models import load_causal_lm

            weights = GistEncoder(gist, load_causal_lm(gist.decoder).model).save(f"{tmp}/init.safetensors")
        report = evaluate_weights(weights, data_dir=args.data_dir, windows=args.eval_windows,
                                  segment_tokens=args.segment_tokens,
                                  continuation_tokens=args.continuation_tokens, seed=args.seed,
                                  threads=args.threads)
        out: dict[str, Any] = {"eval": report.to_dict()}
        if not args.json:
            print(report.table(), flush=True)
        if args.ttft_tokens > 0:
            ttft = ttft_on_held_out(weights, args.ttft_tokens, data_dir=args.data_dir, factor=gist.factor)
            out["ttft"] = dict(asdict(ttft), speedup=ttft.speedup)
            if not args.json:
                print(f"TTFT {ttft.context_tokens}-token context ({ttft.segments} segments, factor {ttft.factor}): "
                      f"full prompt {ttft.full_positions} positions {ttft.full_seconds:.2f}s; gist cached "
                      f"{ttft.gist_positions} positions {ttft.gist_cached_seconds:.2f}s; speed-up "
                      f"{ttft.speedup:.2f}x (encoding the segments once: {ttft.gist_encode_seconds:.2f}s)")
        if args.nq20:
            from dataclasses import asdict as _asdict

            from .gist.evaluate import nq20_reader_nll

            methods = [m.strip() for m in args.hard_methods.split(",") if m.strip()]
            rows = nq20_reader_nll(weights, args.nq20, limit=args.limit, factors=gist.factors,
                                   hard_methods=methods, log=lambda s: print(s, file=sys.stderr, flush=True))
            out["nq20"] = [_asdict(r) for r in rows]
            if rows and not args.json:
                kinds = list(rows[0].nll)
                print(f"{args.nq20}: {len(rows)} rows, mean reader NLL of the gold answer (mean rate)")
                for k in kinds:
                    nll = sum(r.nll[k] for r in rows) / len(rows)
                    rate = sum(r.rate[k] for r in rows) / len(rows)
                    print(f"  {k:>12}: {nll:.3f} ({rate:.3f})")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0
