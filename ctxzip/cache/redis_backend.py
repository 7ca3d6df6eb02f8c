"""Redis backend: one cache shared by every sidecar replica (``redis://`` / ``rediss://`` / ``unix://`` URLs).

Reads are one ``MGET``; writes are one pipelined batch of ``SET key value EX ttl`` (no transaction). Entries expire
by TTL; the size bound is Redis's own (set ``maxmemory`` and ``maxmemory-policy allkeys-lru`` on the server; its
``evicted_keys`` shows in :meth:`RedisBackend.info`). Short socket timeouts keep a dead server from stalling
requests: the :class:`~ctxzip.cache.Cache` in front counts the failure and retries later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._lazy import require
from .backends import Backend, check_bound

__all__ = ["RedisBackend"]

_BATCH = 500


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, url: str, *, ttl: float | None = 7 * 86400.0, prefix: str = "ctxzip:cache:",
                 connect_timeout: float = 0.25, timeout: float = 0.5) -> None:
        super().__init__()
        redis = require("redis", feature="the Redis cache backend")
        self.url = url
        self.ttl = check_bound("ttl", ttl)
        self.prefix = str(prefix)
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=check_bound("connect_timeout", connect_timeout, allow_none=False),
            socket_timeout=check_bound("timeout", timeout, allow_none=False),
            retry_on_timeout=False,
        )

    @property
    def description(self) -> str:
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.split('@', 1)[-1]}"  # never show a password

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), _BATCH):
            part = list(keys[i : i + _BATCH])
            values = self._client.mget([self.prefix + k for k in part])
            out.update({k: bytes(v) for k, v in zip(part, values, strict=True) if v is not None})
        return out

    def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        ex = None if self.ttl is None else max(1, int(round(self.ttl)))
        pipe = self._client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(self.prefix + key, value, ex=ex)
        pipe.execute()

    def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            self._client.delete(*[self.prefix + k for k in keys])

    def _scan(self) -> list[bytes]:
        return list(self._client.scan_iter(match=self.prefix + "*", count=1000))

    def clear(self) -> int:
        keys = self._scan()
        for i in range(0, len(keys), _BATCH):
            self._client.unlink(*keys[i : i + _BATCH])
        return len(keys)

    def info(self) -> dict[str, Any]:
        keys = self._scan()
        size = 0
        pipe = self._client.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(k)
        if keys:
            size = int(sum(pipe.execute()))
        server = self._client.info()
        return {
            "entries": len(keys),
            "bytes": size,
            "url": self.description,
            "ttl": self.ttl,
            "server_used_memory": int(server.get("used_memory", 0)),
            "server_maxmemory": int(server.get("maxmemory", 0)),
            "server_evicted_keys": int(server.get("evicted_keys", 0)),
            "server_expired_keys": int(server.get("expired_keys", 0)),
        }

    def close(self) -> None:
        self._client.close()
