"""Sidecar configuration: defaults, then a YAML/JSON file, then environment variables."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxzip.errors import ConfigError

__all__ = ["ServiceConfig"]


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    #: OpenAI-compatible upstream for the proxy, e.g. ``https://api.openai.com/v1`` (env CTXZIP_UPSTREAM_URL)
    upstream_url: str | None = None
    #: keys accepted by the sidecar itself (env CTXZIP_API_KEYS, comma-separated); empty = no auth
    api_keys: tuple[str, ...] = ()
    #: compression policy of the proxy and of gateway-shaped /v1/compress requests
    method: str = "auto"
    rate: float | None = 0.5
    target_tokens: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    reversible: bool = False
    #: load these compressors' models before /readyz turns 200
    preload: tuple[str, ...] = ()
    #: compression worker processes (env CTXZIP_COMPRESS_WORKERS, ``--compress-workers``). Each loads the models
    #: once and compresses one request at a time, off the server's event loop and its GIL. 0 = compress in
    #: ``workers`` threads of the server process instead (tests, tiny setups without models)
    compress_workers: int = 1
    #: torch threads of each compression worker process (env CTXZIP_COMPRESS_THREADS). 1 by default: requests are
    #: small and many, so parallelism comes from processes; several threads per process on a busy machine spend
    #: their time waiting for each other (lingua2 on the 2-core dev box: 1.3 s a request with 2, 0.15 s with 1)
    compress_threads: int = 1
    #: niceness added to the compression worker processes (0-19), so that the server's event loop (health checks,
    #: proxy I/O) gets the CPU first when the machine is busy; 0 = the server's own priority
    compress_nice: int = 5
    #: threads compressing at once when ``compress_workers`` is 0
    workers: int = 2
    #: requests allowed to wait beyond the compressions running at once; more get 429 with Retry-After
    max_queue: int = 256
    request_timeout_s: float = 60.0
    max_body_bytes: int = 8 * 1024 * 1024
    #: on compressor failure the proxy forwards the original request ("open") or answers 502 ("closed")
    fail_mode: str = "open"
    #: SQLite file of reversible compression's originals, shared by the worker processes and /v1/retrieve;
    #: None = a temporary file for the server's lifetime (with compress_workers 0: the process's default store)
    originals_path: str | None = None
    #: savings ledger (SQLite path); None = the default ledger under the user cache dir
    ledger_path: str | None = None
    ledger: bool = True
    upstream_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.fail_mode not in ("open", "closed"):
            raise ConfigError(f"fail_mode must be 'open' or 'closed', got {self.fail_mode!r}")
        for name in ("workers", "compress_workers", "compress_threads", "compress_nice", "max_queue", "max_body_bytes",
                     "port"):
            v = getattr(self, name)
            low = 0 if name in ("max_queue", "compress_workers", "compress_nice") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise ConfigError(f"service {name} must be {kind} integer, got {v!r}")
        if self.compress_nice > 19:
            raise ConfigError(f"service compress_nice must be between 0 and 19, got {self.compress_nice!r}")
        if not (isinstance(self.request_timeout_s, (int, float)) and self.request_timeout_s > 0):
            raise ConfigError(f"request_timeout_s must be a positive number, got {self.request_timeout_s!r}")
        if self.rate is not None and self.target_tokens is not None:
            raise ConfigError("give the service either rate or target_tokens, not both")
        if self.rate is not None and not (0 < float(self.rate) <= 1):
            raise ConfigError(f"service rate must be in (0, 1], got {self.rate!r}")
        if self.upstream_url is not None and not self.upstream_url.startswith(("http://", "https://")):
            raise ConfigError(f"upstream_url must start with http:// or https://, got {self.upstream_url!r}")
        object.__setattr__(self, "api_keys", tuple(k for k in self.api_keys if k))
        object.__setattr__(self, "preload", tuple(self.preload))

    @classmethod
    def load(cls, path: str | None = None, **overrides: Any) -> ServiceConfig:
        """Defaults < file (YAML or JSON) < environment < explicit overrides."""
        data: dict[str, Any] = {}
        path = path or os.environ.get("CTXZIP_SERVICE_CONFIG")
        if path:
            text = Path(path).read_text(encoding="utf-8")
            if path.endswith(".json"):
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: the service config must be a mapping")
        env = os.environ
        if env.get("CTXZIP_UPSTREAM_URL"):
            data["upstream_url"] = env["CTXZIP_UPSTREAM_URL"]
        if env.get("CTXZIP_API_KEYS"):
            data["api_keys"] = [k.strip() for k in env["CTXZIP_API_KEYS"].split(",")]
        if env.get("CTXZIP_FAIL_MODE"):
            data["fail_mode"] = env["CTXZIP_FAIL_MODE"]
        for var, key in (("CTXZIP_COMPRESS_WORKERS", "compress_workers"), ("CTXZIP_COMPRESS_THREADS", "compress_threads")):
            if env.get(var):
                try:
                    data[key] = int(env[var])
                except ValueError:
                    raise ConfigError(f"{var} must be an integer, got {env[var]!r}") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown service setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
        for k in ("api_keys", "preload"):
            if k in data and isinstance(data[k], str):
                data[k] = [data[k]]
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)

    def to_env(self) -> str:
        """JSON of this config, for worker processes (CTXZIP_SERVICE_CONFIG_JSON)."""
        d = dataclasses.asdict(self)
        return json.dumps(d)

    @classmethod
    def from_env_json(cls, text: str) -> ServiceConfig:
        d = json.loads(text)
        d["api_keys"] = tuple(d.get("api_keys", ()))
        d["preload"] = tuple(d.get("preload", ()))
        return cls(**d)
