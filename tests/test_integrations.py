"""End-to-end: LangChain and LlamaIndex RAG over NQ passages with FAISS + the shipped MiniLM, no network."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
pytest.importorskip("faiss")

from ctxzip.tokens import get_counter  # noqa: E402

NQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq" / "nq-open-oracle.dev.jsonl.gz"
N_PASSAGES = 120
N_QUESTIONS = 12
RATE = 0.5
COMP = dict(method="embed-rank", rate=RATE, config={"granularity": "sentence"})

pytestmark = pytest.mark.slow


def _rows():
    if not NQ.exists():
        pytest.skip(f"NQ data not found at {NQ}")
    rows = []
    with gzip.open(NQ, "rt", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) >= N_PASSAGES:
                break
    return rows


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


@pytest.fixture(scope="module")
def rows():
    return _rows()


@pytest.fixture(scope="module")
def lc_store(rows):
    from langchain_community.vectorstores import FAISS

    from ctxzip.integrations.langchain import OfflineEmbeddings

    texts = [r["ctxs"][0]["text"] for r in rows]
    metas = [{"title": r["ctxs"][0]["title"], "row": i} for i, r in enumerate(rows)]
    return FAISS.from_texts(texts, OfflineEmbeddings(), metadatas=metas)


def test_langchain_contextual_compression_retriever(rows, lc_store):
    from langchain_classic.retrievers import ContextualCompressionRetriever

    from ctxzip.integrations.langchain import CtxzipCompressor

    retriever = ContextualCompressionRetriever(
        base_compressor=CtxzipCompressor(**COMP), base_retriever=lc_store.as_retriever(search_kwargs={"k": 4})
    )
    counter = get_counter("gpt-4o")
    survived = 0
    for i, row in enumerate(rows[:N_QUESTIONS]):
        q = row["question"]
        raw = lc_store.as_retriever(search_kwargs={"k": 4}).invoke(q)
        docs = retriever.invoke(q)
        assert docs, q
        before = counter.count("\n\n".join(d.page_content for d in raw))
        after = counter.count("\n\n".join(d.page_content for d in docs))
        assert after <= before * RATE * 1.05 + 2
        for d in docs:
            assert {"title", "row", "ctxzip"} <= set(d.metadata)
            assert 0 < d.metadata["ctxzip"]["kept_fraction"] <= 1
        gold = [d for d in docs if d.metadata["row"] == i]
        if gold and any(_norm(a) in _norm(gold[0].page_content) for a in row["answers"]):
            survived += 1
    assert survived >= N_QUESTIONS // 2


def test_langchain_pipeline_and_async(rows, lc_store):
    from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline

    from ctxzip.integrations.langchain import CtxzipCompressor

    comp = CtxzipCompressor(**COMP)
    pipe = DocumentCompressorPipeline(transformers=[comp])
    docs = lc_store.similarity_search(rows[0]["question"], k=3)
    out = pipe.compress_documents(docs, rows[0]["question"])
    assert out and all("ctxzip" in d.metadata for d in out)
    out2 = asyncio.run(comp.acompress_documents(docs, rows[0]["question"]))
    assert [d.page_content for d in out2] == [d.page_content for d in comp.compress_documents(docs, rows[0]["question"])]


def test_langchain_drops_documents_compressed_away():
    from langchain_core.documents import Document

    from ctxzip.integrations.langchain import CtxzipCompressor

    docs = [Document(page_content="Paris is the capital of France. " * 20, metadata={"i": 0})] + [
        Document(page_content=f"Unrelated filler text about bananas number {k}. " * 20, metadata={"i": k})
        for k in range(1, 6)
    ]
    out = CtxzipCompressor(method="embed-rank", rate=0.15).compress_documents(docs, "What is the capital of France?")
    assert 0 < len(out) < len(docs)
    assert out[0].metadata["i"] == 0


def test_integrations_pass_empty_retrievals_through():
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from ctxzip.integrations.langchain import CtxzipCompressor
    from ctxzip.integrations.llamaindex import CtxzipNodePostprocessor

    comp = CtxzipCompressor(method="truncate", rate=0.5)
    assert comp.compress_documents([], "q") == []
    assert comp.compress_documents([Document(page_content=" "), Document(page_content="")], "q") == []
    post = CtxzipNodePostprocessor(method="truncate", rate=0.5)
    assert post.postprocess_nodes([NodeWithScore(node=TextNode(text=""), score=1.0)], query_str="q") == []


def test_langchain_runnable_on_strings():
    from ctxzip.integrations.langchain import CtxzipRunnable

    r = CtxzipRunnable(method="truncate", rate=0.5)
    text = "one two three four five six seven eight nine ten " * 10
    out = r.invoke(text)
    assert isinstance(out, str) and len(out) < len(text)
    with pytest.raises(Exception, match="rate"):
        CtxzipRunnable(method="truncate", rate=None)


def _chat():
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    turns = []
    for i in range(6):
        turns += [
            HumanMessage(f"Turn {i}: we discussed the budget, the hiring plan and the Lisbon office. " * 8),
            AIMessage(f"Noted turn {i}: budget, hiring and the Lisbon office are on the list. " * 8),
        ]
    return [SystemMessage("You are terse.")] + turns + [HumanMessage("Which city was the office in?")]


@pytest.mark.parametrize("as_prompt", [False, True])
def test_langchain_runnable_compresses_chat_messages(as_prompt):
    from langchain_core.prompt_values import ChatPromptValue

    from ctxzip.integrations.langchain import CtxzipRunnable

    msgs = _chat()
    runnable = CtxzipRunnable(method="truncate", rate=0.4)
    out = runnable.invoke(ChatPromptValue(messages=msgs) if as_prompt else msgs)
    out_msgs = out.to_messages() if as_prompt else out
    assert out_msgs[0].content == msgs[0].content and out_msgs[-1].content == msgs[-1].content
    counter = get_counter("gpt-4o")
    before = sum(counter.count(m.content) for m in msgs)
    after = sum(counter.count(m.content) for m in out_msgs)
    assert after <= 0.4 * before * 1.05


def test_langchain_agent_middleware_compresses_before_the_model_call():
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage

    from ctxzip.integrations.langchain import ctxzip_middleware

    seen = []

    class Recording(FakeMessagesListChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            seen.append(list(messages))
            return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    model = Recording(responses=[AIMessage("Lisbon")])
    agent = create_agent(model, tools=[], middleware=[ctxzip_middleware(rate=0.4, method="truncate")])
    msgs = _chat()
    agent.invoke({"messages": msgs[1:]}, {"recursion_limit": 5})
    counter = get_counter("gpt-4o")
    sent = sum(counter.count(m.content) for m in seen[0] if isinstance(m.content, str))
    original = sum(counter.count(m.content) for m in msgs[1:])
    assert sent < original * 0.6


def test_llamaindex_query_engine_with_postprocessor(rows):
    from llama_index.core import Document as LIDocument
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.llms import MockLLM

    from ctxzip.integrations.llamaindex import CtxzipNodePostprocessor, OfflineEmbedding

    Settings.llm = MockLLM(max_tokens=8)  # generation is not under test: a stub LLM
    Settings.embed_model = OfflineEmbedding()
    docs = [
        LIDocument(text=r["ctxs"][0]["text"], metadata={"title": r["ctxs"][0]["title"], "row": i})
        for i, r in enumerate(rows)
    ]
    index = VectorStoreIndex.from_documents(docs)
    post = CtxzipNodePostprocessor(**COMP)
    retriever = index.as_retriever(similarity_top_k=4)
    counter = get_counter("gpt-4o")
    survived = 0
    for i, row in enumerate(rows[:N_QUESTIONS]):
        nodes = retriever.retrieve(row["question"])
        out = post.postprocess_nodes(nodes, query_str=row["question"])
        assert out
        by_id = {n.node.node_id: n for n in nodes}
        for n in out:
            src = by_id[n.node.node_id]
            assert n.score == src.score
            assert n.node.metadata["row"] == src.node.metadata["row"]
            assert "ctxzip" in n.node.metadata
        before = counter.count("\n\n".join(n.node.get_content() for n in nodes))
        after = counter.count("\n\n".join(n.node.get_content() for n in out))
        assert after <= before * RATE * 1.05 + 2
        gold = [n for n in out if n.node.metadata["row"] == i]
        if gold and any(_norm(a) in _norm(gold[0].node.get_content()) for a in row["answers"]):
            survived += 1
    assert survived >= N_QUESTIONS // 2
    engine = index.as_query_engine(similarity_top_k=4, node_postprocessors=[post])
    response = engine.query(rows[0]["question"])
    assert response.source_nodes and all("ctxzip" in n.node.metadata for n in response.source_nodes)
    out_async = asyncio.run(post.apostprocess_nodes(retriever.retrieve(rows[1]["question"]), query_str=rows[1]["question"]))
    assert out_async
    assert CtxzipNodePostprocessor.class_name() == "CtxzipNodePostprocessor"
