"""Bounded load test of the sidecar on loopback.

Starts `ctxzip serve` as its own process on a free loopback port (compression in COMPRESS_WORKERS worker
processes, or in threads with --compress-workers 0), runs CLIENTS concurrent clients against /v1/compress for
DURATION seconds from this process (bounded: every loop checks the deadline), samples /livez every 100 ms from a
third process (so neither the load generator nor the server's workers delay the probe on the client side), and
prints one JSON object: throughput, p50/p99 latency, errors, 429s (counted apart: a client that gets one waits the
server's Retry-After, plus up to as much again at random, and tries again), the /livez latencies and the load
average sampled during the run.

    python benchmarks/loadtest_service.py --clients 200 --duration 60 --method lingua2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
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


async def _client(url: str, body: dict, deadline: float, lat: list[float], errors: list[str], rejected: list[float],
                  timeout: float) -> None:
    """One client: post, wait for the answer, post again until the deadline. A 429 (the server's queue bound) is
    not an error: the client waits the Retry-After the server sent, plus a random share of it (so that rejected
    clients do not all come back in the same instant), and tries again; it is counted in ``rejected``."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/compress", json=body)
                if r.status_code == 429:
                    rejected.append(t0)
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")) * (1 + random.random()))
                elif r.status_code != 200:
                    errors.append(str(r.status_code))
                else:
                    lat.append(time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)


def _livez_probe(url: str, commands: multiprocessing.Queue, out: multiprocessing.Queue) -> None:
    """The /livez prober, a process of its own started before the load generator lowers its priority. For each
    number of seconds it receives, it probes /livez every 100 ms and samples the 1-minute load average every
    second, then answers ``(latencies, load averages, [(seconds into the run, latency) over 50 ms])``; ``None`` ends it."""
    with httpx.Client(timeout=10) as client:
        while (seconds := commands.get()) is not None:
            samples, slow, loads = [], [], []
            start = time.perf_counter()
            deadline = start + seconds
            next_load = 0.0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = client.get(url + "/livez")
                if r.status_code == 200:
                    samples.append(time.perf_counter() - t0)
                    if samples[-1] > 0.05:  # when, into the run, the slow answers came, and how slow (s)
                        slow.append((round(t0 - start, 1), round(samples[-1], 3)))
                if t0 >= next_load:
                    loads.append(os.getloadavg()[0])
                    next_load = t0 + 1.0
                time.sleep(0.1)
            out.put((samples, loads, slow))


def _livez_buckets(url: str) -> dict[str, float]:
    """The server's own /livez latency histogram (cumulative counts by bucket bound), from /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    rx = re.compile(r'^ctxzip_request_seconds_bucket\{endpoint="/livez",le="([^"]+)"\} (\S+)$', re.M)
    return {le: float(v) for le, v in rx.findall(text)}


class _Prober:
    def __init__(self, url: str) -> None:
        self.commands: multiprocessing.Queue = multiprocessing.Queue()
        self.out: multiprocessing.Queue = multiprocessing.Queue()
        self.proc = multiprocessing.Process(target=_livez_probe, args=(url, self.commands, self.out), daemon=True)
        self.proc.start()

    def start(self, seconds: float) -> None:
        self.commands.put(seconds)

    def result(self, timeout: float) -> tuple[list[float], list[float], list[tuple[float, float]]]:
        return self.out.get(timeout=timeout)

    def close(self) -> None:
        self.commands.put(None)
        self.proc.join(timeout=10)


def _ms(values: list[float], q: float) -> float | None:
    return round(_pct(values, q) * 1000, 1) if values else None


async def _main(args: argparse.Namespace, url: str, prober: _Prober) -> dict:
    body = {"documents": [DOC, DOC.replace("Eiffel", "Tower")], "question": "How tall is the tower?",
            "rate": args.rate, "method": args.method}
    # warm up (model load) before timing
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(url + "/v1/compress", json=body)
        r.raise_for_status()
    # the machine's own baseline: /livez with the sidecar idle (what the OS scheduler alone costs the probe)
    idle: list[float] = []
    idle_load: list[float] = []
    if args.baseline > 0:
        prober.start(args.baseline)
        idle, idle_load, _ = await asyncio.to_thread(prober.result, args.baseline + 60)
    before = _livez_buckets(url)
    lat: list[float] = []
    errors: list[str] = []
    rejected: list[float] = []
    started = time.time()
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    prober.start(args.duration)
    await asyncio.gather(*[_client(url, body, deadline, lat, errors, rejected, args.timeout)
                           for _ in range(args.clients)])
    elapsed = time.perf_counter() - t0
    live, loads, slow = await asyncio.to_thread(prober.result, 60)
    after = _livez_buckets(url)
    served = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = served.get("+Inf", 0) or float("nan")
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "started_unix": round(started, 1),
        # until the last in-flight request answered (clients stop sending at the deadline, then drain)
        "elapsed_s": round(elapsed, 1),
        "method": args.method,
        "requests_ok": len(lat),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        # 429s from the server's queue bound: the client waited Retry-After and tried again (not errors)
        "rejected_429": len(rejected),
        "throughput_rps": round(len(lat) / elapsed, 2),
        "p50_s": round(_pct(lat, 0.5), 3),
        "p99_s": round(_pct(lat, 0.99), 3),
        "mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "livez_samples": len(live),
        "livez_p50_ms": _ms(live, 0.5),
        "livez_p99_ms": _ms(live, 0.99),
        "livez_max_ms": round(max(live) * 1000, 1) if live else None,
        "livez_over_50ms": slow,
        # the same probe with the sidecar idle, before the load: the machine's scheduling baseline
        "livez_idle_p50_ms": _ms(idle, 0.5),
        "livez_idle_p99_ms": _ms(idle, 0.99),
        "livez_idle_max_ms": round(max(idle) * 1000, 1) if idle else None,
        # inside the server (from its /metrics histogram), during the load: share answered within 5 ms / 50 ms
        "livez_server_le_5ms": round(served.get("0.005", 0) / total, 4),
        "livez_server_le_50ms": round(served.get("0.05", 0) / total, 4),
        # 1-minute load average sampled every second by the prober during the load (2 cores on the dev box)
        "loadavg_during_min": round(min(loads), 2) if loads else None,
        "loadavg_during_mean": round(statistics.fmean(loads), 2) if loads else None,
        "loadavg_during_max": round(max(loads), 2) if loads else None,
        "loadavg_idle_mean": round(statistics.fmean(idle_load), 2) if idle_load else None,
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
    p.add_argument("--compress-threads", type=int, default=1, help="torch threads per compression worker process")
    p.add_argument("--workers", type=int, default=2, help="compression threads with --compress-workers 0")
    p.add_argument("--max-queue", type=int, default=None,
                   help="the server's queue bound (default clients + 16: no 429 expected; lower it to see 429s)")
    p.add_argument("--client-nice", type=int, default=0,
                   help="niceness of the load generator (the server and the /livez prober keep normal priority)")
    args = p.parse_args()
    port = _port()
    max_queue = args.clients + 16 if args.max_queue is None else args.max_queue
    cfg = {"port": port, "compress_workers": args.compress_workers, "compress_threads": args.compress_threads,
           "workers": args.workers, "max_queue": max_queue, "request_timeout_s": args.timeout, "ledger": False}
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
        prober = _Prober(url)  # before the generator lowers its own priority: the prober keeps the normal one
        if args.client_nice:
            os.nice(args.client_nice)
        try:
            result = asyncio.run(_main(args, url, prober))
        finally:
            prober.close()
        result.update(compress_workers=args.compress_workers, compress_threads=args.compress_threads,
                      max_queue=max_queue, client_nice=args.client_nice, cpus=os.cpu_count())
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.unlink(f.name)


if __name__ == "__main__":
    main()
