"""The transformers backend: a local ``PreTrainedModel`` with one ``DynamicCache`` per request.

Invariants of :class:`TransformersSession` (see :mod:`langchain_spthink.backends.base`):

* ``_ids[:_cached]`` are in the KV cache, ``_ids[_cached:]`` are pending (not yet forwarded).
* Rolling back crops the cache (``DynamicCache.crop``); nothing is copied.
* The cache is created *without* the model config, so every layer keeps its full history (no
  sliding-window layers that could not be cropped); sliding-window attention is still applied by
  the model's attention mask, so results equal a full re-prefill.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from langchain_spthink.backends._common import (
    BackendBase,
    ChatRequest,
    LocalSession,
    check_prompt,
    hf_vocab_fingerprint,
    render_hf_chat,
    resolve_stop_texts,
)
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import BackendError, InvalidRequestError
from langchain_spthink.threads import resolve_threads, use_torch_threads

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TransformersBackend", "TransformersSession"]


class TransformersBackend(BackendBase):
    """A transformers causal LM and its tokenizer, shared by every request.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        name: Name shown in events and metadata.
        chat_template: Jinja chat template to use instead of the tokenizer's own.
        eos_ids: Token ids that end generation; defaults to the tokenizer's and generation
            config's EOS ids.
        context_length: Maximum sequence length; defaults to the model config's
            ``max_position_embeddings``.
        threads: torch CPU threads for this model's forwards, applied in whichever thread runs
            them (default: :func:`~langchain_spthink.threads.default_threads`, which holds up
            when other processes share the CPU).
        stop_texts: Texts that end this model's turn, like an EOS token (the output ends before
            them); default: the chat template's (``models.template_stop_texts``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        chat_template: str | None = None,
        eos_ids: frozenset[int] | None = None,
        context_length: int | None = None,
        threads: int | None = None,
        stop_texts: Sequence[str] | None = None,
    ) -> None:
        self.threads = resolve_threads(threads)
        self.model = model
        self.tokenizer = tokenizer
        self._name = name
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.stop_texts = resolve_stop_texts(stop_texts, self.chat_template)
        self._eos_ids = eos_ids if eos_ids is not None else _default_eos_ids(model, tokenizer)
        cfg = model.config.get_text_config(decoder=True)
        self._context_length = int(
            context_length or getattr(cfg, "max_position_embeddings", None) or 2048
        )
        self._fingerprint: str | None = None
        self._fingerprint_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        threads: int | None = None,
    ) -> TransformersBackend:
        """Load an alias, hub id, local directory or ``.gguf`` file (see :mod:`..models`)."""
        from langchain_spthink.models import eos_token_ids, load_model

        loaded = load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(
            loaded.model,
            loaded.tokenizer,
            name=loaded.name,
            chat_template=loaded.chat_template,
            eos_ids=eos_token_ids(loaded),
            threads=threads,
        )

    def first_layers(self, layers: int, *, name: str | None = None) -> TransformersBackend:
        """This model cut to its first ``layers`` decoder layers: a self-speculative small model.

        The cut shares every weight with this model (no copy, no extra memory) and keeps its
        tokenizer, so it pairs with this model for draft-verified large steps. Works for
        decoder-only models whose layers are ``model.model.layers`` (Llama, Qwen, Gemma, ...).

        Args:
            layers: Decoder layers to keep, ``1 <= layers <`` the model's count.
            name: Its name (default: ``"<name>[:layers]"``).

        Raises:
            InvalidRequestError: ``layers`` is out of range or the model has no layer list.
        """
        import copy

        inner = getattr(self.model, "model", None)
        stack = getattr(inner, "layers", None)
        if not isinstance(stack, torch.nn.ModuleList):
            raise InvalidRequestError(f"{self.name} has no model.layers list to cut")
        if not 1 <= layers < len(stack):
            raise InvalidRequestError(
                f"layers must be between 1 and {len(stack) - 1} for {self.name}, got {layers}"
            )
        config = copy.deepcopy(self.model.config)
        text = config.get_text_config(decoder=True)
        text.num_hidden_layers = layers
        if isinstance(getattr(text, "layer_types", None), list):
            text.layer_types = text.layer_types[:layers]
        model = copy.copy(self.model)  # shallow: the parameters stay shared
        model._modules = dict(model._modules)
        cut = copy.copy(inner)
        assert cut is not None
        cut._modules = dict(cut._modules)
        cut.layers = torch.nn.ModuleList(list(stack)[:layers])
        cut.config = text
        model.model = cut
        model.config = config
        return TransformersBackend(
            model,
            self.tokenizer,
            name=name or f"{self.name}[:{layers}]",
            chat_template=self.chat_template,
            eos_ids=self._eos_ids,
            context_length=self._context_length,
            threads=self.threads,
            stop_texts=self.stop_texts,
        )

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return next(self.model.parameters()).device

    @property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the id -> token-string table (computed once).

        Two tokenizers built from the same vocabulary (e.g. a hub checkpoint and its GGUF) get
        the same fingerprint, so they hand off ids.
        """
        with self._fingerprint_lock:
            if self._fingerprint is None:
                self._fingerprint = hf_vocab_fingerprint(self.tokenizer)
            return self._fingerprint

    def encode(self, text: str) -> list[int]:
        """Tokenize without special tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize, dropping special tokens."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _chat_prompt_ids(self, request: ChatRequest) -> list[int]:
        """Render OpenAI-style messages with the model's chat template and tokenize them."""
        return self.encode(render_hf_chat(self.tokenizer, self.chat_template, self.name, request))

    def new_session(
        self, prompt_ids: Sequence[int], sampling: SamplingParams
    ) -> TransformersSession:
        """Open a request session on this model."""
        return TransformersSession(self, prompt_ids, sampling)


class TransformersSession(LocalSession):
    """One request's sequence and ``DynamicCache`` on a :class:`TransformersBackend`."""

    def __init__(
        self, backend: TransformersBackend, prompt_ids: Sequence[int], sampling: SamplingParams
    ) -> None:
        check_prompt(prompt_ids, backend.name, backend.context_length)
        super().__init__(prompt_ids, sampling, backend.device)
        self._backend = backend
        self._cache: DynamicCache | None = DynamicCache()
        self._cached = 0

    @property
    def cached(self) -> int:
        """Number of leading ids already in the KV cache."""
        return self._cached

    def _crop(self, length: int) -> None:
        """Crop the ``DynamicCache`` to at most ``length`` positions."""
        if self._cache is not None and self._cached > length:
            self._cache.crop(-(self._cached - length))
            self._cached = length

    def next_logits(self) -> torch.Tensor:
        """Logits ``[vocab]`` for the position after :attr:`ids`, forwarding pending ids only."""
        return self._forward(1)[0]

    def score(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append ``tokens``; logits ``[len(tokens) + 1, vocab]`` of their positions and the next.

        One forward of the pending ids and ``tokens`` over the cache.
        """
        self._ids.extend(int(t) for t in tokens)
        return self._forward(len(tokens) + 1)

    def _forward(self, keep: int) -> torch.Tensor:
        """Forward the pending ids; the logits ``[keep, vocab]`` of the last ``keep`` positions.

        At least ``keep`` ids are forwarded: cached ids whose logits are needed again (they are
        gone once forwarded) are cropped and re-forwarded.
        """
        if self._cache is None:
            raise BackendError("the session is closed")
        if self._cached > len(self._ids) - keep:
            self._crop(len(self._ids) - keep)
        pending = self._ids[self._cached :]
        input_ids = torch.tensor([pending], dtype=torch.long, device=self._backend.device)
        use_torch_threads(self._backend.threads)
        with torch.inference_mode():
            out: Any = self._backend.model(
                input_ids=input_ids, cache=self._cache, use_cache=True, logits_to_keep=keep
            )
        self._cached = len(self._ids)
        self._forwarded += len(pending)
        logits: torch.Tensor = out.logits[0, -keep:]
        return logits

    def close(self) -> None:
        """Drop the cache."""
        self._cache = None
        self._cached = 0


def _default_eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)
