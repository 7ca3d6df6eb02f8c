"""Bounded load test of the sidecar on loopback.

Starts `ctxzip serve` as its own process on a free loopback port (compression in COMPRESS_WORKERS worker
processes, or in threads with --compress-workers 0), runs CLIENTS concurrent clients against /v1/compress for
DURATION seconds from this process (bounded: every loop checks the deadline), samples /livez every 100 ms from a
third process (so neither the load generator nor the server's workers delay the probe on the client side), and
prints one JSON object: throughput, p50/p99 latency, errors, the /livez latencies and the load average.

    python benchmarks/loadtest_service.py --clients 200 --duration 60 --method lingua2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
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


async def _client(url: str, body: dict, deadline: float, lat: list[float], errors: list[str], timeout: float) -> None:
    async with httpx.AsyncClient(timeout=timeout) as client:
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


def _livez_buckets(url: str) -> dict[str, float]:
    """The server's own /livez latency histogram (cumulative counts by bucket bound), from /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    rx = re.compile(r'^ctxzip_request_seconds_bucket\{endpoint="/livez",le="([^"]+)"\} (\S+)$', re.M)
    return {le: float(v) for le, v in rx.findall(text)}


def _probe(url: str, seconds: float) -> list[float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    probe = multiprocessing.Process(target=_livez_probe, args=(url, seconds, queue))
    probe.start()
    samples = queue.get(timeout=seconds + 60)
    probe.join(timeout=10)
    return samples


def _ms(values: list[float], q: float) -> float | None:
    return round(_pct(values, q) * 1000, 1) if values else None


async def _main(args: argparse.Namespace, url: str) -> dict:
    body = {"documents": [DOC, DOC.replace("Eiffel", "Tower")], "question": "How tall is the tower?",
            "rate": args.rate, "method": args.method}
    # warm up (model load) before timing
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(url + "/v1/compress", json=body)
        r.raise_for_status()
    # the machine's own baseline: /livez with the sidecar idle (what the OS scheduler alone costs the probe)
    idle = await asyncio.to_thread(_probe, url, args.baseline) if args.baseline > 0 else []
    before = _livez_buckets(url)
    lat: list[float] = []
    errors: list[str] = []
    queue: multiprocessing.Queue = multiprocessing.Queue()
    probe = multiprocessing.Process(target=_livez_probe, args=(url, args.duration, queue))
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    probe.start()
    await asyncio.gather(*[_client(url, body, deadline, lat, errors, args.timeout) for _ in range(args.clients)])
    elapsed = time.perf_counter() - t0
    live = queue.get(timeout=60)
    probe.join(timeout=10)
    after = _livez_buckets(url)
    served = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = served.get("+Inf", 0) or float("nan")
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
        "livez_p50_ms": round(_pct(live, 0.5) * 1000, 1) if live else None,
        "livez_p99_ms": round(_pct(live, 0.99) * 1000, 1) if live else None,
        "livez_max_ms": round(max(live) * 1000, 1) if live else None,
        # the same probe with the sidecar idle, before the load: the machine's scheduling baseline
        "livez_idle_p50_ms": _ms(idle, 0.5),
        "livez_idle_p99_ms": _ms(idle, 0.99),
        "livez_idle_max_ms": round(max(idle) * 1000, 1) if idle else None,
        # inside the server (from its /metrics histogram), during the load: share answered within 5 ms / 50 ms
        "livez_server_le_5ms": round(served.get("0.005", 0) / total, 4),
        "livez_server_le_50ms": round(served.get("0.05", 0) / total, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--method", default="lingua2")
    p.add_argument("--rate", type=float, default=0.33)
    p.add_argument("--timeout", type=float, default=120.0, help="client and server request timeout (s)")
    p.add_argument("--baseline", type=float, default=10.0, help="seconds of idle /livez probing before the load")
    p.add_argument("--compress-workers", type=int, default=1,
                   help="compression worker processes in the sidecar (0: threads of the server process)")
    p.add_argument("--workers", type=int, default=2, help="compression threads with --compress-workers 0")
    args = p.parse_args()
    port = _port()
    cfg = {"port": port, "compress_workers": args.compress_workers, "workers": args.workers,
           "max_queue": args.clients + 16, "request_timeout_s": args.timeout, "ledger": False}
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
        load_before = os.getloadavg()
        result = asyncio.run(_main(args, url))
        result["compress_workers"] = args.compress_workers
        result["loadavg_before"] = [round(x, 2) for x in load_before]
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.unlink(f.name)


if __name__ == "__main__":
    main()
