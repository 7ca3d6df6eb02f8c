"""The ctxzip HTTP sidecar (extra ``[service]``): ``ctxzip serve``.

Endpoints: ``POST /v1/compress``, the OpenAI-compatible compressing proxy ``POST /v1/chat/completions`` (plus
``/v1/embeddings`` and ``/v1/models`` passed through), ``GET /v1/retrieve/{hash}``, ``/livez``, ``/readyz``,
``/metrics`` and ``/openapi.json``. Build the app with :func:`ctxzip.service.app.create_app`.

Compression runs in worker processes (``compress_workers``, default 1; see :mod:`ctxzip.service.pool`), so the
server's event loop stays responsive while models work. As with any ``spawn``-based pool, a script that starts
the server itself must do so under ``if __name__ == "__main__":``.
"""
