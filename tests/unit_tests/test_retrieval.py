"""Corpus loading, BM25, reciprocal rank fusion and the retriever factory (no model weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever

from langchain_spthink.errors import InvalidRequestError
from langchain_spthink_integrations.retrieval import (
    BM25Retriever,
    HybridRetriever,
    bm25_tokenize,
    build_math_retriever,
    load_corpus,
)

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "math_corpus.jsonl"


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_corpus_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            json.dumps({"id": "a", "title": "Circle", "text": "area = pi r^2", "kind": "formula"}),
            "",
            json.dumps({"text": "no title here"}),
        ],
    )
    docs = load_corpus(path)
    assert [d.page_content for d in docs] == ["Circle\n\narea = pi r^2", "no title here"]
    assert docs[0].id == "a" and docs[0].metadata == {
        "id": "a",
        "title": "Circle",
        "kind": "formula",
    }
    assert docs[1].id is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "c.jsonl:2: not JSON"),
        ('["text"]', "c.jsonl:2: needs"),
        ('{"text": " "}', "empty"),
    ],
)
def test_load_corpus_bad_line_named(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, [json.dumps({"text": "ok"}), line])
    with pytest.raises(InvalidRequestError, match=message):
        load_corpus(path)


def test_shipped_corpus_is_valid() -> None:
    docs = load_corpus(CORPUS)
    assert len(docs) >= 20
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids) and None not in ids
    assert {d.metadata["kind"] for d in docs} == {"formula", "worked_example"}


def test_bm25_tokenize() -> None:
    assert bm25_tokenize("A 15% Discount, on $60!") == ["a", "15", "discount", "on", "60"]


def test_bm25_matches_okapi_formula() -> None:
    """Scores recomputed from the Okapi BM25 formula (k1=1.5, b=0.75, rank_bm25's idf)."""
    texts = [
        "circle area radius area",
        "speed distance time",
        "area of a rectangle with a long name",
        "time units hour minute",
        "simple interest rate",
        "ratio and shares",
    ]
    docs = [Document(page_content=t, id=str(i)) for i, t in enumerate(texts)]
    query = ["area", "time"]
    n = len(texts)
    toks = [t.split() for t in texts]
    avgdl = sum(map(len, toks)) / n

    def idf(term: str) -> float:
        df = sum(term in t for t in toks)
        return math.log((n - df + 0.5) / (df + 0.5))

    # rank_bm25 replaces negative idf by eps * average idf; with these texts every idf is >= 0
    def score(t: list[str]) -> float:
        total = 0.0
        for q in query:
            f = t.count(q)
            total += idf(q) * f * 2.5 / (f + 1.5 * (1 - 0.75 + 0.75 * len(t) / avgdl))
        return total

    scores = [score(t) for t in toks]
    assert len(set(scores[:4])) == 4  # no ties among the matching texts: the order is defined
    expected = sorted(range(n), key=lambda i: -scores[i])
    got = BM25Retriever(documents=docs, k=n).invoke("Area, time?")
    assert [d.id for d in got] == [str(i) for i in expected]
    assert len(BM25Retriever(documents=docs, k=2).invoke("area")) == 2


class Fixed(BaseRetriever):
    ranking: list[str]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [Document(page_content=f"text {i}", id=i) for i in self.ranking]


def test_hybrid_reciprocal_rank_fusion() -> None:
    a, b = Fixed(ranking=["x", "y", "z"]), Fixed(ranking=["z", "w", "x"])
    fused = HybridRetriever(retrievers=[a, b], k=4, rrf_k=0).invoke("q")
    # scores with rrf_k=0: x = 1 + 1/3, z = 1/3 + 1, y = 1/2, w = 1/2; ties keep first-seen order
    assert [d.id for d in fused] == ["x", "z", "y", "w"]
    weighted = HybridRetriever(retrievers=[a, b], weights=[0.4, 3.0], k=2, rrf_k=0).invoke("q")
    assert [d.id for d in weighted] == ["z", "w"]  # z = 0.4/3 + 3, w = 3/2, x = 0.4 + 3/3
    with pytest.raises(InvalidRequestError, match="one weight per retriever"):
        HybridRetriever(retrievers=[a, b], weights=[1.0]).invoke("q")


class BagOfWords(Embeddings):
    """Counts of a few words: a transparent fake embedding."""

    WORDS = ("circle", "speed", "discount", "interest")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        words = bm25_tokenize(text)
        return [float(words.count(w)) + 1e-3 for w in self.WORDS]


@pytest.mark.parametrize("kind", ["dense", "bm25", "hybrid"])
def test_build_math_retriever_finds_the_topic(kind: str) -> None:
    docs = load_corpus(CORPUS)
    retriever = build_math_retriever(docs, kind=kind, k=2, embeddings=BagOfWords())  # type: ignore[arg-type]
    found = retriever.invoke("the circle has radius 3: what is its area? circle")
    assert len(found) == 2 and found[0].id == "circle"


def test_build_math_retriever_rejects() -> None:
    with pytest.raises(InvalidRequestError, match="at least one document"):
        build_math_retriever([])
    with pytest.raises(InvalidRequestError, match="kind must be"):
        build_math_retriever([Document(page_content="x")], kind="sparse")  # type: ignore[arg-type]
