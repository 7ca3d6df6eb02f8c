"""LlamaIndex node postprocessor (extra ``[llamaindex]``).

:class:`CtxzipNodePostprocessor` compresses each retrieved node question-aware. Unlike LlamaIndex's
LongLLMLingua postprocessor, which merges all nodes into one and loses their metadata and scores, every node keeps
its own metadata, relationships and score; nodes compressed away entirely are dropped.
"""

from __future__ import annotations

from typing import Any

from ctxzip._lazy import require

require("llama_index.core", feature="the LlamaIndex integration")

from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.bridge.pydantic import Field, PrivateAttr  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

import ctxzip  # noqa: E402

from ._common import Settings, stats  # noqa: E402

__all__ = ["CtxzipNodePostprocessor", "OfflineEmbedding"]


class CtxzipNodePostprocessor(BaseNodePostprocessor):
    method: str = Field(default="auto", description="ctxzip compressor name")
    rate: float | None = Field(default=0.5, description="compressed/original tokens in (0, 1]")
    target_tokens: int | None = Field(default=None, description="absolute token budget")
    target_model: str = Field(default="gpt-4o", description="LLM whose tokenizer counts the budget")
    config: dict[str, Any] = Field(default_factory=dict, description="compressor settings")
    options: dict[str, Any] = Field(default_factory=dict, description="per-call options")

    def model_post_init(self, __context: Any) -> None:
        self._settings()

    @classmethod
    def class_name(cls) -> str:
        return "CtxzipNodePostprocessor"

    def _settings(self) -> Settings:
        return Settings(
            method=self.method,
            rate=self.rate,
            target_tokens=self.target_tokens,
            target_model=self.target_model,
            config=dict(self.config),
            options=dict(self.options),
        )

    @staticmethod
    def _texts(nodes: list[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]

    def _apply(self, nodes: list[NodeWithScore], result: ctxzip.CompressionResult) -> list[NodeWithScore]:
        out = []
        for n, doc in zip(nodes, result.documents):
            if doc.dropped or not doc.text.strip():
                continue
            node = n.node.model_copy(deep=True)
            node.set_content(doc.text)
            node.metadata["ctxzip"] = stats(doc, result)
            node.excluded_embed_metadata_keys = list({*node.excluded_embed_metadata_keys, "ctxzip"})
            node.excluded_llm_metadata_keys = list({*node.excluded_llm_metadata_keys, "ctxzip"})
            out.append(NodeWithScore(node=node, score=n.score))
        return out

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        texts = self._texts(nodes)
        if not any(t.strip() for t in texts):
            return []  # nothing to compress (ctxzip.compress rejects an empty context)
        question = query_bundle.query_str if query_bundle is not None else None
        result = ctxzip.compress(texts, question=question, **self._settings().kwargs())
        return self._apply(nodes, result)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        texts = self._texts(nodes)
        if not any(t.strip() for t in texts):
            return []  # nothing to compress (ctxzip.compress rejects an empty context)
        question = query_bundle.query_str if query_bundle is not None else None
        result = await ctxzip.acompress(texts, question=question, **self._settings().kwargs())
        return self._apply(nodes, result)


class OfflineEmbedding(BaseEmbedding):
    """LlamaIndex embedding model over a sentence encoder of :mod:`ctxzip.models` (default: the shipped MiniLM)."""

    model: str = Field(default="minilm-l6", description="ctxzip.models encoder spec")
    _encoder: Any = PrivateAttr(default=None)

    def _enc(self) -> Any:
        if self._encoder is None:
            from ctxzip.models import load_encoder

            self._encoder = load_encoder(self.model)
        return self._encoder

    @classmethod
    def class_name(cls) -> str:
        return "CtxzipOfflineEmbedding"

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [v.tolist() for v in self._enc().encode(list(texts), normalize_embeddings=True)]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
