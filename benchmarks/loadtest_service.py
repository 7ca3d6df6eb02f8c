"""Bounded load test of the sidecar on loopback.

Starts `ctxzip serve` in-process on a free loopback port, runs CLIENTS concurrent clients against
/v1/compress for DURATION seconds (bounded: every loop checks the deadline), samples /livez every 100 ms,
and prints one JSON object: throughput, p50/p99 latency, errors, and the worst /livez latency.

    python benchmarks/loadtest_service.py --clients 200 --duration 60 --method lingua2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time

import httpx
import uvicorn
from ctxzip.service.app import create_app
from ctxzip.service.config import ServiceConfig

DOC = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed by the "
    "company of Gustave Eiffel and built from 1887 to 1889 for the World's Fair. It is 330 metres tall and "
    "is repainted every seven years with 60 tonnes of paint. "
) * 3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _client(url: str, body: dict, deadline: float, lat: list[float], errors: list[str]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/compress", json=body)
                if r.status_code != 200:
                    errors.append(str(r.status_code))
                else:
                    lat.append(time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)


async def _livez(url: str, deadline: float, out: list[float]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await client.get(url + "/livez")
            if r.status_code == 200:
                out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)


async def _main(args: argparse.Namespace, url: str) -> dict:
    body = {"documents": [DOC, DOC.replace("Eiffel", "Tower")], "question": "How tall is the tower?",
            "rate": args.rate, "method": args.method}
    # warm up (model load) before timing
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(url + "/v1/compress", json=body)
        r.raise_for_status()
    lat: list[float] = []
    errors: list[str] = []
    live: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    await asyncio.gather(
        _livez(url, deadline, live), *[_client(url, body, deadline, lat, errors) for _ in range(args.clients)]
    )
    elapsed = time.perf_counter() - t0
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "method": args.method,
        "requests_ok": len(lat),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "throughput_rps": round(len(lat) / elapsed, 2),
        "p50_s": round(_pct(lat, 0.5), 3),
        "p99_s": round(_pct(lat, 0.99), 3),
        "mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "livez_samples": len(live),
        "livez_max_ms": round(max(live) * 1000, 1) if live else None,
        "livez_p99_ms": round(_pct(live, 0.99) * 1000, 1) if live else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--method", default="lingua2")
    p.add_argument("--rate", type=float, default=0.33)
    p.add_argument("--workers", type=int, default=2, help="compression threads in the sidecar")
    args = p.parse_args()
    cfg = ServiceConfig(port=_port(), workers=args.workers, max_queue=args.clients + 16, request_timeout_s=120,
                        ledger=False)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=cfg.port, log_level="warning",
                                           backlog=4096, limit_concurrency=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        print(json.dumps(asyncio.run(_main(args, f"http://127.0.0.1:{cfg.port}"))))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
