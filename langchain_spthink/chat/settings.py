"""Effective settings: the chat model's configuration, and a call's settings over it.

Algorithm knobs live in one place, the
:class:`~langchain_spthink.engine.config.SpeculativeThinkingConfig`: the chat model takes them as
``config`` (a config, or a dict of knobs over the ``preset``) and a call as ``config_overrides``.
LangChain's standard fields that are sampling or a time limit (``temperature``, ``top_p``,
``top_k``, ``timeout``) are mapped onto the config here, in :data:`STANDARD_KNOBS`, and nowhere
else.

* :func:`model_config` merges preset, ``config`` and the model's standard fields once, at
  construction.
* :func:`resolve_call` validates call-time arguments and merges them over the model's settings, so
  a bad one fails the call with :class:`~langchain_spthink.errors.InvalidRequestError` (or
  :class:`~langchain_spthink.errors.ConfigError` for a bad knob) before any model loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pydantic import ValidationError

from langchain_spthink.chat.runs import RUN_KEY
from langchain_spthink.engine.config import SpeculativeThinkingConfig, preset
from langchain_spthink.engine.loop import Mode
from langchain_spthink.engine.policies import DelegationPolicy, resolve_policy
from langchain_spthink.errors import ConfigError, InvalidRequestError
from langchain_spthink.tools.structured import AnswerFormat, answer_format

__all__ = [
    "STANDARD_KNOBS",
    "CallSettings",
    "ModelDefaults",
    "known_init_params",
    "model_config",
    "resolve_call",
    "settings_error",
]

_MODES = ("speculative", "small", "large")
STANDARD_KNOBS: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "timeout": "time_out",
}
"""LangChain's standard fields (and call arguments) that set a config knob: field -> knob."""

_CALL_KWARGS = frozenset(
    {
        "max_tokens",
        *STANDARD_KNOBS,
        "seed",
        "mode",
        "policy",
        "config_overrides",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    }
)
# Standard init parameters (langchain-tests passes them) that mean nothing for local models:
# accepted and ignored.
_IGNORED_INIT = frozenset({"max_retries", "streaming", "api_key"})
# Accepted and ignored: LangChain plumbing.
_IGNORED_KWARGS = frozenset({"stream"})


@dataclass(frozen=True)
class CallSettings:
    """The effective settings of one call (fields overridden by call-time arguments)."""

    mode: Mode
    config: SpeculativeThinkingConfig
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    answer: AnswerFormat
    policy: DelegationPolicy | None = None
    max_tokens_is_default: bool = False  # neither the call nor the model set max_tokens

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """The bound tools (OpenAI tool dicts)."""
        return self.answer.tools

    @property
    def policy_name(self) -> str:
        """The delegation policy, named: a built-in's config name or a custom policy's class."""
        return type(self.policy).__name__ if self.policy is not None else self.config.policy


def policy_object(value: Any) -> DelegationPolicy | None:
    """Check a ``policy`` setting: a :class:`DelegationPolicy` object, or ``None``.

    Raises:
        InvalidRequestError: Anything else; a built-in's name is a config knob (the error says
            how to set it).
    """
    if value is None or isinstance(value, DelegationPolicy):
        return value
    if isinstance(value, str):
        raise InvalidRequestError(
            f"policy takes a DelegationPolicy object; a built-in policy is a config knob: "
            f"config={{'policy': {value!r}}} (per call: config_overrides={{'policy': {value!r}}})"
        )
    raise InvalidRequestError(f"policy must be a DelegationPolicy, got {type(value).__name__}")


def _knob_hint(names: Iterable[str], where: str) -> str:
    """A hint for unknown names that are config knobs: where those go now."""
    knobs = sorted(n for n in names if n in SpeculativeThinkingConfig.model_fields)
    if not knobs:
        return ""
    shown = ", ".join(f"{k!r}: ..." for k in knobs)
    return f"; algorithm knobs are set in the config: {where}={{{shown}}}"


def _with_standard(
    base: SpeculativeThinkingConfig, values: Mapping[str, Any]
) -> SpeculativeThinkingConfig:
    """``base`` with the standard fields that ``values`` sets (not ``None``) applied.

    Args:
        base: The configuration to start from.
        values: Standard field names (see :data:`STANDARD_KNOBS`) to values.

    Returns:
        ``base`` itself when nothing is set, else a validated copy.
    """
    changes = {
        knob: values[name] for name, knob in STANDARD_KNOBS.items() if values.get(name) is not None
    }
    return base.with_updates(**changes) if changes else base


def known_init_params(data: Any, fields: Iterable[str]) -> Any:
    """Refuse unknown constructor parameters and drop the ignored standard ones.

    Args:
        data: The constructor's input (only a dict is checked).
        fields: The chat model's field names.

    Returns:
        ``data`` without the ignored parameters.

    Raises:
        ValueError: A parameter is unknown.
    """
    if isinstance(data, dict):
        known = set(fields) | _IGNORED_INIT
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}{_knob_hint(unknown, 'config')}")
        data = {k: v for k, v in data.items() if k not in _IGNORED_INIT}
    return data


def model_config(
    preset_name: str | None,
    config: SpeculativeThinkingConfig | None,
    standard: Mapping[str, Any],
) -> SpeculativeThinkingConfig:
    """The configuration a chat model's calls start from.

    Args:
        preset_name: The paper preset, if any.
        config: The model's ``config``; with a preset, only the fields set in it apply over it.
        standard: The model's standard fields (see :data:`STANDARD_KNOBS`) to values; ``None``
            unset. They apply last.

    Returns:
        The validated configuration.
    """
    base = preset(preset_name) if preset_name else SpeculativeThinkingConfig()
    if config is not None:
        if preset_name is None:
            base = config
        else:
            base = base.with_updates(**{k: getattr(config, k) for k in config.model_fields_set})
    return _with_standard(base, standard)


def _with_overrides(base: SpeculativeThinkingConfig, overrides: Any) -> SpeculativeThinkingConfig:
    """``base`` with a call's ``config_overrides`` (a mapping of knobs) applied."""
    if overrides is None:
        return base
    if not isinstance(overrides, Mapping):
        raise InvalidRequestError(
            f"config_overrides must be a dict of config knobs, got {type(overrides).__name__}"
        )
    return base.with_updates(**overrides) if overrides else base


class ModelDefaults(Protocol):
    """The chat model's settings that call-time arguments override."""

    @property
    def mode(self) -> Mode:
        """The default mode."""
        ...

    @property
    def effective_config(self) -> SpeculativeThinkingConfig:
        """The configuration with the model's knobs applied."""
        ...

    @property
    def max_tokens(self) -> int:
        """The default output budget."""
        ...

    @property
    def stop(self) -> list[str] | None:
        """The default stop strings."""
        ...

    @property
    def seed(self) -> int | None:
        """The default seed."""
        ...


def resolve_call(
    stop: list[str] | None, kwargs: Mapping[str, Any], model: ModelDefaults
) -> CallSettings:
    """Validate the call's arguments and merge them over the model's settings.

    Args:
        stop: The call's stop strings (``None``: the model's).
        kwargs: The call's keyword arguments.
        model: The chat model.

    Returns:
        The settings the request runs with.

    Raises:
        InvalidRequestError: An argument is unknown or invalid.
    """
    unknown = sorted(set(kwargs) - _CALL_KWARGS - _IGNORED_KWARGS - {RUN_KEY})
    if "model" in unknown:
        raise InvalidRequestError(
            "a per-call `model` is not supported; create another ChatSpeculativeThinking "
            "with small_model= / large_model="
        )
    if unknown:
        raise InvalidRequestError(
            f"unknown argument(s) {unknown}; accepted: {sorted(_CALL_KWARGS)}"
            + _knob_hint(unknown, "config_overrides")
        )
    call_mode = kwargs.get("mode") or model.mode
    if call_mode not in _MODES:
        raise InvalidRequestError(f"mode must be one of {list(_MODES)}, got {call_mode!r}")
    call_config = _with_standard(
        _with_overrides(model.effective_config, kwargs.get("config_overrides")), kwargs
    )
    call_policy = kwargs.get("policy")
    policy = policy_object(getattr(model, "policy", None) if call_policy is None else call_policy)
    resolve_policy(call_config, policy)  # a keyword policy must read the config's cue words
    budget = kwargs.get("max_tokens")
    budget = model.max_tokens if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidRequestError(f"max_tokens must be a positive integer, got {budget!r}")
    stops: Sequence[str] = stop if stop is not None else (model.stop or [])
    if isinstance(stops, str):
        stops = [stops]
    if not isinstance(stops, (list, tuple)) or any(not isinstance(s, str) or not s for s in stops):
        raise InvalidRequestError(f"stop must be a list of non-empty strings, got {stops!r}")
    call_seed = kwargs.get("seed")
    if call_seed is not None and (isinstance(call_seed, bool) or not isinstance(call_seed, int)):
        raise InvalidRequestError(f"seed must be an integer, got {call_seed!r}")
    answer = answer_format(
        kwargs.get("tools"),
        kwargs.get("tool_choice"),
        parallel_tool_calls=kwargs.get("parallel_tool_calls"),
        response_format=kwargs.get("response_format"),
    )
    return CallSettings(
        mode=cast(Mode, call_mode),
        config=call_config,
        max_tokens=budget,
        stop=tuple(stops),
        seed=model.seed if call_seed is None else call_seed,
        answer=answer,
        policy=policy,
        max_tokens_is_default=(
            kwargs.get("max_tokens") is None
            and "max_tokens" not in getattr(model, "model_fields_set", {"max_tokens"})
        ),
    )


def settings_error(exc: ValidationError, what: str, root: str) -> ConfigError:
    """A :class:`~langchain_spthink.errors.ConfigError` listing every problem of a validation.

    Args:
        exc: Pydantic's error.
        what: What was being validated (``invalid {what}: ...``).
        root: Location named for errors of the whole object.

    Returns:
        The error to raise (from ``exc``).
    """
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or root}: {err['msg']}" for err in exc.errors()
    )
    return ConfigError(f"invalid {what}: {problems}")
