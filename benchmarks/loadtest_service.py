"""Bounded load test of the sidecar on loopback.

Starts `ctxzip serve` as its own process on a free loopback port, runs CLIENTS concurrent clients against
/v1/compress for DURATION seconds from this process (bounded: every loop checks the deadline), samples /livez
every 100 ms from a third process (so neither the load generator nor the server's workers delay the probe on the
client side), and prints one JSON object: throughput, p50/p99 latency, errors, and the /livez latencies.

    python benchmarks/loadtest_service.py --clients 200 --duration 60 --method lingua2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

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


def _livez_probe(url: str, seconds: float, out: multiprocessing.Queue) -> None:
    samples = []
    deadline = time.perf_counter() + seconds
    with httpx.Client(timeout=10) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = client.get(url + "/livez")
            if r.status_code == 200:
                samples.append(time.perf_counter() - t0)
            time.sleep(0.1)
    out.put(samples)


async def _main(args: argparse.Namespace, url: str) -> dict:
    body = {"documents": [DOC, DOC.replace("Eiffel", "Tower")], "question": "How tall is the tower?",
            "rate": args.rate, "method": args.method}
    # warm up (model load) before timing
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(url + "/v1/compress", json=body)
        r.raise_for_status()
    lat: list[float] = []
    errors: list[str] = []
    queue: multiprocessing.Queue = multiprocessing.Queue()
    probe = multiprocessing.Process(target=_livez_probe, args=(url, args.duration, queue))
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    probe.start()
    await asyncio.gather(*[_client(url, body, deadline, lat, errors) for _ in range(args.clients)])
    elapsed = time.perf_counter() - t0
    live = queue.get(timeout=60)
    probe.join(timeout=10)
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
    port = _port()
    cfg = {"port": port, "workers": args.workers, "max_queue": args.clients + 16, "request_timeout_s": 120,
           "ledger": False}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    server = subprocess.Popen(
        [sys.executable, "-m", "ctxzip.cli", "serve", "--config", f.name, "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/livez", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the sidecar did not start")
            time.sleep(0.2)
        print(json.dumps(asyncio.run(_main(args, url))))
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.unlink(f.name)


if __name__ == "__main__":
    main()
