#!/usr/bin/env bash
# Baseline tables of docs/benchmarks/baselines.md: truncate, random and embed-rank side by side on the same rows
# of every task file, at rates 0.5 / 0.25 / 0.1. Run from the repository root; resumable (records in $runs).
# Row limits keep it within a couple of hours on 2 shared cores; raise them on a quieter machine.
set -euo pipefail
data="${CTXZIP_DATA:-../shared/data/bench}"
runs="${CTXZIP_BENCH_RUNS:-$HOME/.cache/ctxzip/bench/runs}"
mkdir -p "$runs" docs/benchmarks/img
methods="truncate,random,embed-rank"
for spec in needle.dev:45 kv75.dev:30 nq20.dev:30 locomo.dev:30 qmsum.dev:20 code.dev:10; do
  task="${spec%%:*}"; limit="${spec##*:}"
  "${CTXZIP_BIN:-ctxzip}" bench "$data/$task.jsonl.gz" --method "$methods" --sweep 0.5,0.25,0.1 --limit "$limit" \
    --out "$runs/baselines-$task.jsonl" --plot "docs/benchmarks/img/baselines-$task.png" \
    --table "$runs/baselines-$task.md" --json > "$runs/baselines-$task.json"
done
