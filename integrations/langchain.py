"""LangChain components (extra ``[langchain]``).

* :class:`CtxzipCompressor` — a ``BaseDocumentCompressor`` for ``ContextualCompressionRetriever`` and
  ``DocumentCompressorPipeline``: compresses each retrieved document question-aware, keeps its metadata (adding
  figures under ``metadata["ctxzip"]``) and removes documents compressed away entirely.
* :class:`CtxzipRunnable` — compresses a prompt value, a list of chat messages or a string, so it can be piped
  before any chat model: ``prompt | CtxzipRunnable(rate=0.3) | llm``.
* :func:`ctxzip_middleware` — for LangChain v1 agents: compresses the conversation before each model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxzip._lazy import require

require("langchain_core", feature="the LangChain integration")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.messages import BaseMessage, convert_to_messages, convert_to_openai_messages  # noqa: E402
from langchain_core.prompt_values import ChatPromptValue, PromptValue  # noqa: E402
from langchain_core.runnables import RunnableConfig, RunnableSerializable  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402

import ctxzip  # noqa: E402

from ._common import Settings, stats  # noqa: E402

__all__ = ["CtxzipCompressor", "CtxzipRunnable", "ctxzip_middleware", "OfflineEmbeddings"]


class _CtxzipFields(BaseModel):
    """The settings shared by the LangChain components (passed to :func:`ctxzip.compress`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    method: str = "auto"
    rate: float | None = 0.5
    target_tokens: int | None = None
    target_model: str = "gpt-4o"
    config: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_settings(self) -> _CtxzipFields:
        self._settings()
        return self

    def _settings(self) -> Settings:
        return Settings(
            method=self.method,
            rate=self.rate,
            target_tokens=self.target_tokens,
            target_model=self.target_model,
            config=dict(self.config),
            options=dict(self.options),
        )


class CtxzipCompressor(_CtxzipFields, BaseDocumentCompressor):
    """Compress retrieved documents with ctxzip, question-aware, one output document per kept input."""

    def _outputs(self, documents: Sequence[Document], result: ctxzip.CompressionResult) -> list[Document]:
        out = []
        for src, doc in zip(documents, result.documents):
            if doc.dropped or not doc.text.strip():
                continue
            meta = dict(src.metadata)
            meta["ctxzip"] = stats(doc, result)
            out.append(Document(page_content=doc.text, metadata=meta, id=src.id))
        return out

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = [d.page_content for d in documents]
        if not any(t.strip() for t in texts):
            return []  # nothing to compress (ctxzip.compress rejects an empty context)
        result = ctxzip.compress(
            texts, question=query or None, **self._settings().kwargs()
        )
        return self._outputs(documents, result)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = [d.page_content for d in documents]
        if not any(t.strip() for t in texts):
            return []  # nothing to compress (ctxzip.compress rejects an empty context)
        result = await ctxzip.acompress(
            texts, question=query or None, **self._settings().kwargs()
        )
        return self._outputs(documents, result)


def _compress_messages(messages: list[BaseMessage], settings: Settings, policy: Any) -> list[BaseMessage]:
    openai_msgs = convert_to_openai_messages(messages)
    budget = {"rate": settings.rate} if settings.rate is not None else {"target_tokens": settings.target_tokens}
    kwargs: dict[str, Any] = {
        "model": settings.target_model, "method": settings.method, "config": dict(settings.config) or None, **budget
    }
    if policy is not None:
        kwargs["policy"] = policy
    out = ctxzip.compress_messages(openai_msgs, **kwargs)
    return list(convert_to_messages(out.messages))


class CtxzipRunnable(_CtxzipFields, RunnableSerializable[Any, Any]):
    """Compress a prompt value, chat messages or a string (input and output have the same type)."""

    policy: Any = None

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        settings = self._settings()
        if isinstance(input, str):
            return ctxzip.compress(input, **settings.kwargs()).text
        if isinstance(input, PromptValue):
            return ChatPromptValue(messages=_compress_messages(input.to_messages(), settings, self.policy))
        if isinstance(input, list):
            return _compress_messages(list(convert_to_messages(input)), settings, self.policy)
        raise ctxzip.InputError(
            f"CtxzipRunnable takes a string, a prompt value or a list of messages, got {type(input).__name__}"
        )


def ctxzip_middleware(
    *,
    rate: float | None = 0.5,
    target_tokens: int | None = None,
    model: str = "gpt-4o",
    method: str = "auto",
    policy: Any = None,
) -> Any:
    """A LangChain v1 agent middleware compressing the conversation before each model call.

    ``create_agent(model, tools, middleware=[ctxzip_middleware(rate=0.4)])``. Needs ``langchain>=1``.
    """
    agents = require("langchain.agents.middleware", feature="the LangChain agent middleware (langchain>=1)")
    settings = Settings(method=method, rate=rate, target_tokens=target_tokens, target_model=model)

    class CtxzipMiddleware(agents.AgentMiddleware):  # type: ignore[misc,name-defined]
        def wrap_model_call(self, request: Any, handler: Any) -> Any:
            return handler(request.override(messages=_compress_messages(list(request.messages), settings, policy)))

        async def awrap_model_call(self, request: Any, handler: Any) -> Any:
            import asyncio

            msgs = await asyncio.to_thread(_compress_messages, list(request.messages), settings, policy)
            return await handler(request.override(messages=msgs))

    return CtxzipMiddleware()


class OfflineEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over a sentence encoder of :mod:`ctxzip.models` (default: the shipped MiniLM),
    so vector stores work with no model hub."""

    def __init__(self, model: str = "minilm-l6", batch_size: int = 64) -> None:
        from ctxzip.models import load_encoder

        self._encoder = load_encoder(model)
        self._batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vecs = self._encoder.encode(list(texts), batch_size=self._batch_size, normalize_embeddings=True)
        return [v.tolist() for v in vecs]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
