"""What the backends share: prompt checks, chat rendering and the session's id bookkeeping.

Nothing here loads a runtime (no torch at import), so the remote backend can use it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from langchain_spthink.backends.base import vocab_fingerprint
from langchain_spthink.engine.sampling import (
    SamplingParams,
    request_generator,
    sample_constrained,
    verify_proposal,
)
from langchain_spthink.errors import InvalidRequestError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from langchain_spthink.engine.sampling import TokenConstraint

__all__ = [
    "BackendBase",
    "ChatRequest",
    "LocalSession",
    "SequenceSession",
    "check_prompt",
    "check_prompt_fits",
    "hf_vocab_fingerprint",
    "render_hf_chat",
    "require_chat_template",
    "resolve_stop_texts",
]


def check_prompt_fits(length: int, name: str, context_length: int) -> None:
    """Refuse a prompt of ``length`` ids that leaves no room for output in ``context_length``."""
    if length >= context_length:
        raise InvalidRequestError(
            f"the prompt has {length} tokens but {name} accepts at most "
            f"{context_length} (prompt + output)"
        )


def check_prompt(prompt_ids: Sequence[int], name: str, context_length: int) -> None:
    """Refuse an empty prompt or one that leaves no room for output (as every backend does)."""
    if len(prompt_ids) == 0:
        raise InvalidRequestError("the prompt is empty: a session needs at least one token")
    check_prompt_fits(len(prompt_ids), name, context_length)


def resolve_stop_texts(
    stop_texts: Sequence[str] | None, chat_template: str | None
) -> tuple[str, ...]:
    """The given stop texts, else the chat template's (``models.template_stop_texts``)."""
    from langchain_spthink.models import template_stop_texts

    return tuple(stop_texts if stop_texts is not None else template_stop_texts(chat_template))


def require_chat_template(chat_template: str | None, name: str) -> str:
    """The chat template; :class:`InvalidRequestError` when the model has none."""
    if not chat_template:
        raise InvalidRequestError(
            f"{name} has no chat template; pass chat_template=... for this model"
        )
    return chat_template


def hf_vocab_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """:func:`~langchain_spthink.backends.base.vocab_fingerprint` of a transformers tokenizer."""
    ids = list(range(len(tokenizer)))
    return vocab_fingerprint(tokenizer.convert_ids_to_tokens(ids))


@dataclass(frozen=True)
class ChatRequest:
    """The arguments of :meth:`~langchain_spthink.backends.base.Backend.chat_prompt_ids`."""

    messages: Sequence[dict[str, Any]]
    tools: Sequence[dict[str, Any]] | None
    add_generation_prompt: bool
    continue_final_message: bool

    @property
    def generation_prompt(self) -> bool:
        """Whether to open the assistant's turn (never while continuing the final message)."""
        return self.add_generation_prompt and not self.continue_final_message

    @property
    def tool_list(self) -> list[Any] | None:
        """The tools as a list (typed as transformers' renderers take it), ``None`` if none."""
        return list(self.tools) if self.tools else None


def render_hf_chat(
    tokenizer: PreTrainedTokenizerBase, chat_template: str | None, name: str, request: ChatRequest
) -> str:
    """Render a chat request with a transformers tokenizer's ``apply_chat_template``.

    Raises:
        InvalidRequestError: There is no chat template.
    """
    template = require_chat_template(chat_template, name)
    text = tokenizer.apply_chat_template(
        list(request.messages),
        tools=request.tool_list,
        chat_template=template,
        add_generation_prompt=request.generation_prompt,
        continue_final_message=request.continue_final_message,
        tokenize=False,
    )
    return str(text)


class BackendBase:
    """The :class:`~langchain_spthink.backends.base.Backend` protocol's chat entry point and facts.

    A subclass sets ``_name``, ``_eos_ids`` and ``_context_length`` and renders prompts in
    :meth:`_chat_prompt_ids`.
    """

    _name: str
    _eos_ids: frozenset[int]
    _context_length: int

    @property
    def name(self) -> str:
        """Model name."""
        return self._name

    @property
    def eos_ids(self) -> frozenset[int]:
        """Ids that end generation."""
        return self._eos_ids

    @property
    def context_length(self) -> int:
        """Maximum sequence length (prompt + output)."""
        return self._context_length

    def chat_prompt_ids(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Render OpenAI-style ``{"role", "content", ...}`` messages into prompt ids.

        Raises:
            InvalidRequestError: The model has no chat template (backends that need one).
        """
        request = ChatRequest(messages, tools, add_generation_prompt, continue_final_message)
        return self._chat_prompt_ids(request)

    def _chat_prompt_ids(self, request: ChatRequest) -> list[int]:
        raise NotImplementedError


class SequenceSession:
    """A session's logical sequence: the ids and the count of forwarded positions.

    :meth:`truncate` checks the length, drops the ids and calls :meth:`_crop` for the cache.
    """

    def __init__(self, prompt_ids: Sequence[int]) -> None:
        self._ids: list[int] = [int(i) for i in prompt_ids]
        self._forwarded = 0

    @property
    def ids(self) -> Sequence[int]:
        """Prompt + output ids."""
        return self._ids

    @property
    def forwarded(self) -> int:
        """Token positions pushed through the model so far."""
        return self._forwarded

    def extend(self, ids: Sequence[int]) -> None:
        """Append ids; forwarded lazily by the next :meth:`stream`."""
        self._ids.extend(int(i) for i in ids)

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` ids and crop the cache to at most that."""
        if length < 0 or length > len(self._ids):
            raise ValueError(f"cannot truncate a sequence of {len(self._ids)} ids to {length}")
        del self._ids[length:]
        self._crop(length)

    def _crop(self, length: int) -> None:
        """Drop the cache past ``length`` ids (a session without a cache has nothing to drop)."""


class LocalSession(SequenceSession):
    """A session that samples in-process from the logits of :meth:`next_logits`."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(prompt_ids)
        self.sampling = sampling
        self._device = device
        self._generator = request_generator(sampling, device)

    def reseed(self, seed: int | None) -> None:
        """Sample from now on with a generator seeded by ``seed`` (``None``: a fresh one)."""
        self.sampling = replace(self.sampling, seed=seed)
        self._generator = request_generator(self.sampling, self._device)

    def next_logits(self) -> torch.Tensor:
        """Logits ``[vocab]`` for the position after :attr:`ids`, forwarding pending ids only."""
        raise NotImplementedError

    def score(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append ``tokens`` and return the logits of their positions and the one after.

        One forward over the pending ids and ``tokens`` (the cache then holds them; a rejected
        tail is dropped with :meth:`truncate`, which crops).

        Returns:
            ``[len(tokens) + 1, vocab]``: row ``i`` predicts ``tokens[i]``, the last row the id
            after them.
        """
        raise NotImplementedError

    def verify(self, proposal: Sequence[int]) -> list[int]:
        """Let this model check proposed ids in one forward; its next ids (at least one).

        The accepted prefix of ``proposal`` plus this model's own next id (a correction, or the
        id after a fully accepted proposal) are appended to :attr:`ids`; the rejected tail is
        cropped away and the last id is pending (forwarded by the next call). Greedy: exactly
        the ids greedy decoding writes (up to the numerics of a k-token forward); sampling:
        distributed as plain sampling (:func:`~langchain_spthink.engine.sampling.verify_proposal`).
        """
        start = len(self._ids)
        logits = self.score(proposal)
        new = verify_proposal(logits, proposal, self.sampling, self._generator)
        accepted = len(new) - 1
        if accepted < len(proposal):
            self.truncate(start + accepted)
        self._ids.append(new[-1])
        return new

    def stream(self, max_new: int, *, constraint: TokenConstraint | None = None) -> Iterator[int]:
        """Sample up to ``max_new`` ids, one forward per id (masked by ``constraint`` if given)."""
        for _ in range(max_new):
            token = sample_constrained(
                self.next_logits(), self.sampling, self._generator, constraint
            )
            self._ids.append(token)
            yield token
