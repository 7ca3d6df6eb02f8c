"""The sidecar application: :func:`create_app` builds a FastAPI app from a :class:`ServiceConfig`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from ctxzip._lazy import require

require("fastapi", feature="the sidecar")
require("httpx", feature="the sidecar's proxy")

import httpx  # noqa: E402
from fastapi import Depends, FastAPI, Header, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator  # noqa: E402

import ctxzip  # noqa: E402
from ctxzip import errors as errors_mod  # noqa: E402
from ctxzip.errors import (  # noqa: E402
    CtxzipError,
    InputError,
    RetrievalError,
    UnknownNameError,
)

from . import worker  # noqa: E402
from .config import ServiceConfig  # noqa: E402
from .metrics import Metrics  # noqa: E402
from .pool import BrokenProcessPool, CompressPool  # noqa: E402

__all__ = ["create_app", "app_factory"]

log = logging.getLogger("ctxzip.service")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "x-ctxzip-key",
    "x-ctxzip-bypass",
}


# ------------------------------------------------------------------ schemas
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class GatewayCompressRequest(BaseModel):
    """The shape API gateways call for compression guardrails."""

    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1)
    token_budget: int | None = Field(default=None, gt=0)
    config: dict[str, Any] | None = None


class GatewayCompressResponse(BaseModel):
    messages: list[dict[str, Any]]
    tokens_before: int
    tokens_after: int
    tokens_saved: int
    compression_ratio: float
    transforms_applied: list[str]
    ccr_hashes: list[str]


class DocumentsCompressRequest(BaseModel):
    """The library's own call: documents or a context string, a question and a budget."""

    model_config = ConfigDict(extra="forbid")
    documents: list[str | dict[str, Any]] | None = None
    context: str | list[str | dict[str, Any]] | None = None
    question: str | None = None
    instruction: str | None = None
    rate: float | None = Field(default=None, gt=0, le=1)
    target_tokens: int | None = Field(default=None, gt=0)
    method: str = "auto"
    target_model: str = "gpt-4o"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_of(self) -> DocumentsCompressRequest:
        if (self.documents is None) == (self.context is None):
            raise ValueError("give exactly one of 'documents' or 'context'")
        if (self.rate is None) == (self.target_tokens is None):
            raise ValueError("give exactly one of 'rate' (0 < rate <= 1) or 'target_tokens'")
        return self


def _shape(body: Any) -> str:
    """Gateway requests carry ``messages``; everything else is a documents request."""
    if isinstance(body, dict):
        return "gateway" if "messages" in body else "documents"
    return "gateway" if isinstance(body, GatewayCompressRequest) else "documents"


CompressBody = Annotated[
    Annotated[GatewayCompressRequest, Tag("gateway")] | Annotated[DocumentsCompressRequest, Tag("documents")],
    Discriminator(_shape),
]


class DocumentOut(BaseModel):
    index: int
    title: str | None
    text: str
    metadata: dict[str, Any]
    origin_tokens: int
    compressed_tokens: int
    kept_fraction: float
    dropped: bool
    spans: list[list[int]]


class DocumentsCompressResponse(BaseModel):
    compressed: str
    method: str
    method_version: str
    origin_tokens: int
    compressed_tokens: int
    rate: float
    ratio: float | None
    seconds: float
    target_model: str
    tokenizer: str
    tokens_exact: bool
    cache_hits: int
    routes: list[str]
    warnings: list[str]
    documents: list[DocumentOut]


class RetrieveResponse(BaseModel):
    hash: str
    original: str


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    detail: str | None = None


class ErrorBody(BaseModel):
    error: dict[str, Any]


# ------------------------------------------------------------------ state
class CompressionFailed(CtxzipError):
    """A compressor raised an unexpected error (the server answers 500, or the proxy fails open/closed)."""


def _remote_error(err: dict[str, Any]) -> Exception:
    """The exception a worker's error envelope stands for (ctxzip's own classes keep their HTTP mapping)."""
    name, message = str(err.get("class", "")), str(err.get("message", ""))
    if name == "UnknownNameError":
        return UnknownNameError(str(err.get("kind", "name")), str(err.get("name", "")), err.get("valid") or ())
    cls = getattr(errors_mod, name, None) if name in errors_mod.__all__ else None
    if cls is not None and not err.get("internal"):
        return cls(message)
    return CompressionFailed(f"{name}: {message}")


class _State:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.pool = CompressPool(config)
        self.metrics.worker_cache = self.pool.worker_cache_counters
        self.inflight = 0
        self.client: httpx.AsyncClient | None = None
        self._store: Any = None

    @property
    def ready(self) -> Any:
        return self.pool.ready

    @property
    def ready_error(self) -> str | None:
        return self.pool.ready_error

    async def run(self, task: str, **kwargs: Any) -> dict[str, Any]:
        """Run a :mod:`~ctxzip.service.worker` task in the bounded pool with the per-request timeout.

        429 beyond the queue bound, 504 past ``request_timeout_s``, 503 when a worker process died. Records the
        compression metrics from the task's figures and returns its outcome (``body``, ``method``, ...).
        """
        cfg = self.config
        if self.inflight >= self.pool.concurrency + cfg.max_queue:
            self.metrics.rejected.inc()
            raise HTTPException(429, "compression queue is full; retry shortly", headers={"Retry-After": "1"})
        self.inflight += 1
        self.metrics.queue.set(self.inflight)
        try:
            fut = self.pool.submit(worker.call, task, kwargs)
            out = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=cfg.request_timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise HTTPException(504, f"compression took longer than {cfg.request_timeout_s:g}s") from None
        except BrokenProcessPool:
            raise HTTPException(503, "a compression worker stopped; retry shortly", headers={"Retry-After": "1"}) \
                from None
        finally:
            self.inflight -= 1
            self.metrics.queue.set(self.inflight)
        if "error" in out:
            err = out["error"]
            if err.get("traceback"):
                log.error("compression failed in worker:\n%s", err["traceback"])
            raise _remote_error(err)
        self.pool.note_worker_cache(int(out.get("pid", 0)), out.get("cache") or {})
        self.metrics.observe_compression(out["method"], out["before"], out["after"], out["seconds"],
                                         int(out.get("cache_hits", 0)))
        return out

    def retrieve(self, hash: str, namespace: str) -> str:
        """An original by hash, from the store the workers write (blocking: call it in a thread)."""
        from ctxzip import reversible

        if self.pool.processes and self.pool.originals_path:
            if self._store is None:
                self._store = reversible.SQLiteStore(self.pool.originals_path)
            return reversible.retrieve(hash, namespace=namespace, store=self._store)
        return reversible.retrieve(hash, namespace=namespace)


# ------------------------------------------------------------------ helpers
def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status_code=status)


class _LimitsAndMetrics:
    """Request body limit (413) and the request counters/latency histogram, as a plain ASGI middleware.

    Not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs every request through an extra task
    group and memory streams, about a hundred extra objects per in-flight request. Under the load test (200
    requests waiting for the compression worker) those made the server's gen-1 garbage collections 20-30 ms long,
    which is what delayed ``/livez`` answers (docs/benchmarks/service.md).
    """

    def __init__(self, app: Any, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        length = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                length = value
                break
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                await _error(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
                return
            if too_big:
                self.metrics.requests.labels(path, "413").inc()
                await self._too_big(scope, receive, send)
                return
        elif scope.get("method") in ("POST", "PUT", "PATCH"):
            # no Content-Length (chunked): read the body here, counting, and replay it to the app
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    self.metrics.requests.labels(path, "413").inc()
                    await self._too_big(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def receive_replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = receive_replay
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", path)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _too_big(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await _error(413, "payload_too_large", f"request body over {self.max_body_bytes} bytes")(scope, receive, send)


# ------------------------------------------------------------------ app
def create_app(config: ServiceConfig | None = None) -> FastAPI:
    config = config or ServiceConfig.load()
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.client = httpx.AsyncClient(timeout=httpx.Timeout(config.upstream_timeout_s, connect=10.0))
        state.pool.start()  # worker processes load their models; /readyz is 503 until they report
        # Everything imported and built so far lives as long as the server: move it out of the garbage collector's
        # reach, so that a full collection under load scans only the requests' objects (with the app's ~75k objects
        # one took ~90 ms on the loaded 2-core dev box, long enough to delay /livez past 50 ms)
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.client.aclose()
            await asyncio.to_thread(state.pool.shutdown)

    app = FastAPI(
        title="ctxzip sidecar",
        version=ctxzip.__version__,
        description="Prompt and context compression as a service, with an OpenAI-compatible compressing proxy.",
        lifespan=lifespan,
    )
    app.state.ctxzip = state

    # body size limit (also for chunked bodies without Content-Length) and request metrics, as plain ASGI
    app.add_middleware(_LimitsAndMetrics, max_body_bytes=config.max_body_bytes, metrics=state.metrics)

    @app.exception_handler(UnknownNameError)
    async def _unknown(_: Request, exc: UnknownNameError) -> JSONResponse:
        return _error(400, "unknown_name", str(exc), valid=list(exc.valid))

    @app.exception_handler(InputError)
    async def _bad_input(_: Request, exc: InputError) -> JSONResponse:
        return _error(422, "invalid_input", str(exc))

    @app.exception_handler(RetrievalError)
    async def _retrieval(_: Request, exc: RetrievalError) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @app.exception_handler(CtxzipError)
    async def _ctxzip(_: Request, exc: CtxzipError) -> JSONResponse:
        return _error(500, type(exc).__name__, str(exc))

    # async (they never block): a plain ``def`` dependency runs in the thread pool, one thread hop per request
    async def api_key(
        x_ctxzip_key: str | None = Header(default=None, description="the sidecar's own API key"),
        authorization: str | None = Header(default=None, include_in_schema=False),
    ) -> str:
        """The caller's key (namespace for reversible originals). Only enforced when keys are configured."""
        if not config.api_keys:
            return x_ctxzip_key or "default"
        key = x_ctxzip_key
        if key is None and authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if key not in config.api_keys:
            raise HTTPException(401, "missing or invalid sidecar key (send it in x-ctxzip-key)")
        return key

    async def proxy_key(x_ctxzip_key: str | None = Header(default=None, description="the sidecar's own API key")) -> str:
        """Proxy endpoints forward Authorization upstream, so the sidecar key travels in x-ctxzip-key."""
        if not config.api_keys:
            return x_ctxzip_key or "default"
        if x_ctxzip_key not in config.api_keys:
            raise HTTPException(401, "missing or invalid sidecar key (send it in x-ctxzip-key)")
        return x_ctxzip_key

    # -------------------------------------------------------------- health and metrics
    @app.get("/livez", response_model=Health, tags=["health"])
    async def livez() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    async def readyz() -> Any:
        if state.ready.is_set():
            return Health(status="ok")
        status = "error" if state.ready_error else "loading"
        return JSONResponse(Health(status=status, detail=state.ready_error).model_dump(), status_code=503)

    @app.get("/metrics", response_class=Response, tags=["health"])
    async def metrics() -> Response:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    # -------------------------------------------------------------- compression
    @app.post(
        "/v1/compress",
        response_model=GatewayCompressResponse | DocumentsCompressResponse,
        responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody},
                   429: {"model": ErrorBody}, 504: {"model": ErrorBody}},
        tags=["compression"],
    )
    async def compress_endpoint(
        body: CompressBody,
        key: str = Depends(api_key),
        x_ctxzip_app: str | None = Header(default=None),
    ) -> Any:
        if isinstance(body, GatewayCompressRequest):
            msgs = [m.model_dump(exclude_none=True) for m in body.messages]
            out = await state.run(
                "messages", messages=msgs, model=body.model, config=config, overrides=body.config or {},
                namespace=key, token_budget=body.token_budget, route="/v1/compress", app=x_ctxzip_app,
            )
            return out["body"]
        context = body.documents if body.documents is not None else body.context
        out = await state.run(
            "documents", context=context, question=body.question, instruction=body.instruction, rate=body.rate,
            target_tokens=body.target_tokens, method=body.method, target_model=body.target_model,
            options=body.options, namespace=key, ledger=(config.ledger, config.ledger_path), app=x_ctxzip_app,
        )
        return out["body"]

    @app.get(
        "/v1/retrieve/{hash}",
        response_model=RetrieveResponse,
        responses={404: {"model": ErrorBody}},
        tags=["compression"],
    )
    async def retrieve_endpoint(hash: str, key: str = Depends(api_key)) -> RetrieveResponse:
        return RetrieveResponse(hash=hash, original=await asyncio.to_thread(state.retrieve, hash, key))

    # -------------------------------------------------------------- proxy
    def _upstream(path: str) -> str:
        if not config.upstream_url:
            raise HTTPException(502, "no upstream configured: set CTXZIP_UPSTREAM_URL or upstream_url")
        return config.upstream_url.rstrip("/") + path

    def _forward_headers(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}

    def _response_headers(resp: httpx.Response, extra: dict[str, str]) -> dict[str, str]:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.update(extra)
        return headers

    async def _send(request: Request, path: str, payload: Any, extra: dict[str, str]) -> Response:
        if state.client is None:
            raise HTTPException(503, "the sidecar is starting")
        stream = isinstance(payload, dict) and bool(payload.get("stream"))
        req = state.client.build_request(
            request.method, _upstream(path), headers=_forward_headers(request),
            json=payload if payload is not None else None, params=dict(request.query_params),
        )
        try:
            resp = await state.client.send(req, stream=stream)
        except httpx.HTTPError as exc:
            return _error(502, "upstream_unreachable", f"upstream request failed: {type(exc).__name__}")
        if not stream:
            content = resp.content
            await resp.aclose()
            return Response(content, status_code=resp.status_code, headers=_response_headers(resp, extra))

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), status_code=resp.status_code, headers=_response_headers(resp, extra))

    @app.post("/v1/chat/completions", tags=["proxy"], responses={413: {"model": ErrorBody}, 502: {"model": ErrorBody}})
    async def chat_completions(
        request: Request,
        key: str = Depends(proxy_key),
        x_ctxzip_bypass: str | None = Header(default=None),
        x_ctxzip_app: str | None = Header(default=None),
    ) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            return _error(422, "invalid_json", "the request body is not valid JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error(422, "invalid_request", "body must be a chat completion request with a 'messages' list")
        model = str(payload.get("model") or "gpt-4o")
        extra: dict[str, str] = {}
        if (x_ctxzip_bypass or "").lower() in ("1", "true", "yes"):
            extra["x-ctxzip-bypassed"] = "true"
            return await _send(request, "/chat/completions", payload, extra)
        if not payload["messages"]:  # nothing to compress: the upstream answers with its own error
            return await _send(request, "/chat/completions", payload, extra)
        started = time.perf_counter()
        try:
            out = await state.run("messages", messages=payload["messages"], model=model, config=config, overrides={},
                                  namespace=key, token_budget=None, route="/v1/chat/completions", app=x_ctxzip_app)
        except HTTPException as exc:
            if exc.status_code == 429:
                raise
            out, failure = None, exc.detail
        except Exception as exc:  # noqa: BLE001 - fail open/closed below
            out, failure = None, f"{type(exc).__name__}: {exc}"
        if out is None:
            state.metrics.failures.labels(config.fail_mode).inc()
            log.warning("compression failed (%s); fail_%s", failure, config.fail_mode)
            if config.fail_mode == "closed":
                return _error(502, "compression_failed", str(failure))
            extra["x-ctxzip-error"] = "compression failed; forwarded uncompressed"
            return await _send(request, "/chat/completions", payload, extra)
        summary = out["body"]
        seconds = time.perf_counter() - started
        extra.update({
            "x-ctxzip-tokens-before": str(summary["tokens_before"]),
            "x-ctxzip-tokens-after": str(summary["tokens_after"]),
            "x-ctxzip-tokens-saved": str(summary["tokens_saved"]),
            "x-ctxzip-compression-ratio": f"{summary['compression_ratio']:.3f}",
            "x-ctxzip-seconds": f"{seconds:.4f}",
        })
        return await _send(request, "/chat/completions", {**payload, "messages": summary["messages"]}, extra)

    @app.post("/v1/embeddings", tags=["proxy"])
    async def embeddings(request: Request, key: str = Depends(proxy_key)) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            return _error(422, "invalid_json", "the request body is not valid JSON")
        return await _send(request, "/embeddings", payload, {})

    @app.get("/v1/models", tags=["proxy"])
    async def models(request: Request, key: str = Depends(proxy_key)) -> Response:
        return await _send(request, "/models", None, {})

    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory`` and worker processes: config from CTXZIP_SERVICE_CONFIG_JSON or the usual sources.

    With ``compress_workers: 0`` compression runs in threads of this process; a short GIL switch interval (1 ms
    instead of 5 ms) then lets the event loop answer /livez and proxy traffic sooner while they work. Worker
    processes (the default) need no such tuning: the event loop never waits for compression's GIL.
    """
    text = os.environ.get("CTXZIP_SERVICE_CONFIG_JSON")
    config = ServiceConfig.from_env_json(text) if text else ServiceConfig.load()
    if not config.compress_workers:
        import sys

        sys.setswitchinterval(0.001)
    return create_app(config)
