"""RAG with LlamaIndex + ctxzip, fully offline: a VectorStoreIndex over NQ passages embedded with the shipped
MiniLM and a CtxzipNodePostprocessor that compresses each retrieved node (keeping its metadata and score).
Prints the tokens saved.

    pip install 'ctxzip[llamaindex,models]'
    python examples/rag_llamaindex.py [path/to/nq-open-oracle.jsonl.gz]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.llms import MockLLM

from ctxzip.integrations.llamaindex import CtxzipNodePostprocessor, OfflineEmbedding
from ctxzip.tokens import get_counter

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq" / "nq-open-oracle.dev.jsonl.gz"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    Settings.embed_model = OfflineEmbedding()
    Settings.llm = MockLLM(max_tokens=16)  # replace with a real LLM; retrieval + compression is what runs here
    index = VectorStoreIndex.from_documents(
        [Document(text=r["ctxs"][0]["text"], metadata={"title": r["ctxs"][0]["title"]}) for r in rows]
    )
    retriever = index.as_retriever(similarity_top_k=5)
    post = CtxzipNodePostprocessor(method="embed-rank", rate=0.4, config={"granularity": "sentence"})
    counter = get_counter("gpt-4o")
    before = after = 0
    for row in rows[:10]:
        nodes = retriever.retrieve(row["question"])
        kept = post.postprocess_nodes(nodes, query_str=row["question"])
        b = counter.count("\n\n".join(n.node.get_content() for n in nodes))
        a = counter.count("\n\n".join(n.node.get_content() for n in kept))
        before, after = before + b, after + a
        print(f"{row['question'][:60]:60s} {b:5d} -> {a:5d} tokens, scores kept: {[round(n.score, 3) for n in kept]}")
    print(f"\ntokens sent: {before} -> {after} ({before - after} saved, {1 - after / before:.0%})")
    engine = index.as_query_engine(similarity_top_k=5, node_postprocessors=[post])
    print("query engine sources:", [n.node.metadata["title"] for n in engine.query(rows[0]["question"]).source_nodes])


if __name__ == "__main__":
    main()
