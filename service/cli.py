"""``ctxzip serve``: run the sidecar with uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP sidecar (compression API + OpenAI-compatible proxy)",
        description="Run the ctxzip sidecar. Settings: defaults < --config FILE < environment "
        "(CTXZIP_UPSTREAM_URL, CTXZIP_API_KEYS, CTXZIP_FAIL_MODE, CTXZIP_COMPRESS_WORKERS, "
        "CTXZIP_COMPRESS_THREADS) < these flags.",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8787)")
    p.add_argument("--config", default=None, help="YAML or JSON service config file")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument(
        "--compress-workers", type=int, default=None, metavar="N",
        help="compression worker processes per server process, each loading the models once (default 1); "
        "0 compresses in threads of the server process",
    )
    p.add_argument(
        "--compress-threads", type=int, default=None, metavar="N",
        help="torch threads of each compression worker process (default 1: parallelism comes from processes)",
    )
    p.add_argument("--upstream", default=None, help="OpenAI-compatible upstream URL for the proxy")
    p.add_argument("--preload", action="append", default=None, metavar="METHOD", help="load a compressor's models at start")
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctxzip._lazy import require

    uvicorn = require("uvicorn", feature="ctxzip serve")
    from .config import ServiceConfig

    cfg = ServiceConfig.load(
        args.config, host=args.host, port=args.port, upstream_url=args.upstream,
        preload=tuple(args.preload) if args.preload else None, compress_workers=args.compress_workers,
        compress_threads=args.compress_threads,
    )
    if args.workers < 1:
        from ctxzip.errors import ConfigError

        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    tmpdir = None
    if args.workers > 1 and cfg.originals_path is None:
        # every uvicorn process has its own compression workers: they share one originals file for /v1/retrieve
        tmpdir = tempfile.mkdtemp(prefix="ctxzip-serve-")
        cfg = dataclasses.replace(cfg, originals_path=os.path.join(tmpdir, "originals.sqlite"))
    os.environ["CTXZIP_SERVICE_CONFIG_JSON"] = cfg.to_env()
    try:
        uvicorn.run(
            "ctxzip.service.app:app_factory",
            factory=True,
            host=cfg.host,
            port=cfg.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=False,  # access logs would not carry Authorization anyway; keep them off by default
        )
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0
