"""One request from chat dicts to the engine: each model's prompt, the answer marker, sampling.

:func:`build_request` is the single request builder behind every surface that answers messages:
:class:`~langchain_spthink.chat.model.ChatSpeculativeThinking` (through
:func:`~langchain_spthink.chat.streaming.reply_items`), ``spthink run`` and ``spthink eval``. It
renders the prompt of each model the mode uses with that model's chat template
(:func:`render_prompt_ids`), tells whether the prompt opened a ``<think>`` block (the answer
then starts after ``</think>``), takes the sampling from the config and builds the engine and its
:class:`~langchain_spthink.engine.state.Request`.

LangChain-free (chat dicts in, token ids out), so the command line and the evaluation import it
without loading LangChain; :mod:`langchain_spthink.chat.messages` turns LangChain messages into
chat dicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from langchain_spthink.backends.base import Backend, ConstraintFactory
from langchain_spthink.chat.reasoning import opens_reasoning
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.loop import Mode, Request, Role
from langchain_spthink.engine.policies import DelegationPolicy
from langchain_spthink.errors import ConfigError, InvalidRequestError, SpThinkError

__all__ = [
    "REASONING_CLOSE",
    "PreparedRequest",
    "PromptPreparer",
    "build_request",
    "render_prompt_ids",
    "roles_of",
    "strict_alternation",
    "wants_continuation",
]

REASONING_CLOSE = "</think>"
"""The marker after which the answer starts, when the prompt opened the reasoning."""

PromptPreparer = Callable[
    [Sequence[dict[str, Any]], Backend, str | None],
    tuple[list[dict[str, Any]], list[dict[str, Any]] | None],
]
"""``(chat dicts, backend, chat template or None) -> (chat dicts, tools for the template)``: how
one model's conversation is prepared before rendering (the chat model's tools go through it)."""


def roles_of(mode: Mode) -> tuple[Role, ...]:
    """The models a mode uses: both when speculative, else the one model."""
    if mode == "speculative":
        return ("small", "large")
    return (mode,)


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to run.

    Attributes:
        engine: The engine over the models the mode uses.
        request: The request (prompt ids, budget, sampling, answer marker, ...).
        backends: The models, by role.
        prompts: Each model's prompt ids, by role.
        primary: The model that writes the answer's text outside delegations (the small one,
            or the large one alone).
        in_reasoning: The prompt opened a ``<think>`` block (``request.answer_marker`` is
            :data:`REASONING_CLOSE`).
    """

    engine: SpeculativeEngine
    request: Request
    backends: dict[Role, Backend]
    prompts: dict[Role, list[int]]
    primary: Role
    in_reasoning: bool

    @property
    def writer(self) -> Backend:
        """The primary model's backend."""
        return self.backends[self.primary]


def build_request(
    messages: Sequence[dict[str, Any]],
    backends: Mapping[Role, Backend],
    config: SpeculativeThinkingConfig,
    *,
    mode: Mode = "speculative",
    max_tokens: int,
    seed: int | None = None,
    stop: Sequence[str] = (),
    fit_context: bool = False,
    templates: Mapping[Role, str | None] | None = None,
    prepare: PromptPreparer | None = None,
    constraint: ConstraintFactory | None = None,
    policy: DelegationPolicy | None = None,
    handoff: Literal["auto", "ids", "text"] = "auto",
    executor: Executor | None = None,
) -> PreparedRequest:
    """Build the engine and the request that answer ``messages``.

    Args:
        messages: The conversation as chat dicts (``{"role", "content", ...}``).
        backends: The models :func:`roles_of` ``mode`` names, by role.
        config: The knobs; the request's sampling is ``config.sampling(seed=seed)``.
        mode: ``speculative``, ``small`` or ``large``.
        max_tokens: The output budget.
        seed: The request's seed (the large model uses ``seed + 1``).
        stop: Stop strings.
        fit_context: Cap ``max_tokens`` at the smallest context window of the models (for a
            budget nobody asked for explicitly).
        templates: Chat templates that replace a model's own, by role (``None``: its own).
        prepare: Prepares each model's conversation (tools); default: the messages as they are.
        constraint: The constraint the answer is decoded under.
        policy: A delegation policy object (``None``: the one the config names).
        handoff: The token hand-off between the two models.
        executor: Runs remote large-model steps during small drafts (concurrent drafts).

    Returns:
        The engine, the request and what the caller reports (prompts, primary model).

    Raises:
        ConfigError: A model has no chat template and none was given.
        InvalidRequestError: A template cannot render the conversation.
    """
    continue_final = wants_continuation(messages)
    prompts: dict[Role, list[int]] = {}
    for role, backend in backends.items():
        template = (templates or {}).get(role)
        chat, tools = (
            prepare(messages, backend, template) if prepare is not None else (messages, None)
        )
        prompts[role] = render_prompt_ids(
            backend,
            chat,
            tools=tools,
            continue_final=continue_final,
            chat_template=template,
            template_field=f"{role}_chat_template",
        )
    if len(backends) == 1:
        # One model: nothing is handed off. The large model alone keeps the output's ids and
        # the small model alone re-encodes text, as both did before the engine took small=None.
        handoff = "auto" if "small" in backends else "ids"
    engine = SpeculativeEngine(
        backends.get("small"), backends.get("large"), config, handoff=handoff, executor=executor
    )
    primary: Role = "small" if "small" in backends else "large"
    in_reasoning = opens_reasoning(backends[primary], prompts[primary]) or (
        continue_final and _unclosed_think(messages[-1]["content"])
    )
    budget = (
        min(max_tokens, *(b.context_length for b in backends.values()))
        if fit_context
        else max_tokens  # asked for explicitly: above a context window it is refused
    )
    request = Request(
        small_prompt=prompts.get("small", ()),
        large_prompt=prompts.get("large", ()),
        max_tokens=budget,
        sampling=config.sampling(seed=seed),
        stop=tuple(stop),
        mode=mode,
        constraint=constraint,
        answer_marker=REASONING_CLOSE if in_reasoning else None,
        policy=policy,
    )
    return PreparedRequest(engine, request, dict(backends), prompts, primary, in_reasoning)


def _unclosed_think(text: str) -> bool:
    return text.rfind("<think>") > text.rfind("</think>")


def wants_continuation(messages: Sequence[dict[str, Any]]) -> bool:
    """Whether the conversation ends in an assistant message whose text the model continues."""
    last = messages[-1]
    return (
        last["role"] == "assistant" and bool(last["content"].strip()) and not last.get("tool_calls")
    )


def strict_alternation(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite a conversation for templates that demand user/assistant alternation.

    System messages are joined into one leading system message, tool results become user
    messages, tool calls become assistant text, and consecutive messages of one role are merged.
    Used only when a template refuses the conversation as it is (e.g. Gemma's).
    """
    system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    out: list[dict[str, Any]] = (
        [{"role": "system", "content": "\n\n".join(system)}] if system else []
    )
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        text = m["content"]
        if role == "tool":
            role = "user"
            name = m.get("name")
            text = f"Tool result{f' ({name})' if name else ''}: {text}"
        elif role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                f"Tool call: {c['function']['name']}({json.dumps(c['function']['arguments'])})"
                for c in m["tool_calls"]
            )
            text = f"{text}\n{calls}" if text else calls
        elif role not in ("user", "assistant"):
            role = "user"
        if out and out[-1]["role"] == role and role != "system":
            out[-1] = {"role": role, "content": f"{out[-1]['content']}\n\n{text}"}
        else:
            out.append({"role": role, "content": text})
    return out


def _no_template(backend: Backend, template_field: str) -> ConfigError:
    return ConfigError(
        f"model {getattr(backend, 'name', backend)!r} has no chat template; "
        f"pass one with {template_field}=..."
    )


def _render_once(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    continue_final: bool,
    chat_template: str | None,
    template_field: str,
) -> list[int]:
    if chat_template is None:
        render = getattr(backend, "chat_prompt_ids", None)
        if not callable(render):  # a backend that cannot render chat needs a template
            raise _no_template(backend, template_field)
        ids = render(
            list(messages),
            tools=tools,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return [int(i) for i in ids]
    if not chat_template:
        raise _no_template(backend, template_field)
    return _render_template(backend, messages, tools, continue_final, chat_template)


def _render_template(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    continue_final: bool,
    template: str,
) -> list[int]:
    """Render with a user's template: the model's tokenizer when it has one, else plain Jinja."""
    options: dict[str, Any] = {
        "tools": list(tools) if tools else None,
        "chat_template": template,
        "add_generation_prompt": not continue_final,
        "continue_final_message": continue_final,
    }
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "apply_chat_template"):
        ids = tokenizer.apply_chat_template(
            list(messages), **options, tokenize=True, return_dict=False
        )
        return [int(i) for i in ids]
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(
        conversations=[list(messages)], **options, bos_token="", eos_token=""
    )
    text = result[0][0] if isinstance(result, tuple) else result
    return backend.encode(text if isinstance(text, str) else text[0])


def render_prompt_ids(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    continue_final: bool = False,
    chat_template: str | None = None,
    template_field: str = "chat_template",
) -> list[int]:
    """Render chat dicts into prompt ids with one backend's chat template.

    The backend's own rendering (``chat_prompt_ids``) is used unless ``chat_template`` overrides
    it (then the backend's tokenizer renders with that template, or plain Jinja without one).
    When the template refuses the conversation (e.g. roles must alternate), it is rendered again
    after :func:`strict_alternation`.

    Args:
        backend: The model's backend.
        messages: Chat dicts from :func:`to_chat_dicts`.
        tools: OpenAI-style tool schemas for the template.
        continue_final: Continue the final assistant message instead of opening a new turn.
        chat_template: A Jinja chat template to use instead of the model's own.
        template_field: Name of the setting to mention when the model has no template.

    Returns:
        The prompt's token ids.

    Raises:
        ConfigError: The backend cannot render chat (no ``chat_prompt_ids``) and no template was
            given, or the given template is empty.
        InvalidRequestError: The template cannot render the conversation.
    """
    try:
        return _render_once(backend, messages, tools, continue_final, chat_template, template_field)
    except SpThinkError:
        raise
    except Exception as first:  # noqa: BLE001 - templates raise anything (jinja, ValueError, ...)
        retry = strict_alternation(messages)
        try:
            return _render_once(
                backend, retry, tools, continue_final, chat_template, template_field
            )
        except SpThinkError:
            raise
        except Exception:  # noqa: BLE001
            name = getattr(backend, "name", backend)
            raise InvalidRequestError(
                f"the chat template of {name!r} cannot render this conversation: {first}"
            ) from first
