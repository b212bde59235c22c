"""The engine's constrained answer phase on scripted models with hand-computed outputs.

A literal constraint (only the tokens of one fixed text, then EOS) makes the expected answer
known exactly; the scripted models write something else, so every answer token that appears was
forced by the mask.
"""

from __future__ import annotations

from typing import Any

import torch

from langchain_spthink import (
    BudgetEvent,
    DelegationEvent,
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
)
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.engine.events import Event

GREEDY = SamplingParams(temperature=0.0)


class LiteralConstraint:
    """Allows exactly the tokens of ``text`` in order, then only EOS."""

    instances: list[LiteralConstraint] = []

    def __init__(self, backend: Any, text: str) -> None:
        self.backend, self.ids, self.i = backend, backend.encode(text), 0
        LiteralConstraint.instances.append(self)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(logits, float("-inf"))
        allowed = [self.ids[self.i]] if not self.done else sorted(self.backend.eos_ids)
        out[allowed] = logits[allowed]
        return out

    def accept(self, token: int) -> None:
        assert not self.done and token == self.ids[self.i]
        self.i += 1

    @property
    def done(self) -> bool:
        return self.i >= len(self.ids)


def run(
    small: ScriptedBackend,
    large: ScriptedBackend,
    answer: str,
    *,
    marker: str | None = "</think>",
    mode: str = "speculative",
    max_tokens: int = 200,
    **cfg: object,
) -> list[Event]:
    config = SpeculativeThinkingConfig(**{"draft_tokens": 6, "verify_tokens": 0, **cfg})
    engine = SpeculativeEngine(small, large, config)
    request = Request(
        small.encode("Q: go"),
        large.encode("Q: go"),
        max_tokens,
        GREEDY,
        (),
        mode,  # type: ignore[arg-type]
        constraint=lambda backend: LiteralConstraint(backend, answer),
        answer_marker=marker,
    )
    LiteralConstraint.instances.clear()
    events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == finish.text
    return events


def finish_of(events: list[Event]) -> FinishEvent:
    last = events[-1]
    assert isinstance(last, FinishEvent)
    return last


def test_marker_inside_a_large_step_cuts_it_and_the_small_model_answers_constrained() -> None:
    small = ScriptedBackend(["Think a.\n\n", "Wait b </think> small answer.\n\n"])
    large = ScriptedBackend(["L.\n\n", "Hmm c </think> large junk.\n\n"])
    events = run(small, large, ' {"x": 1}')
    finish = finish_of(events)
    # The draft "Wait b </think> ..." is delegated; the large step is kept up to the token that
    # completes the marker; the rest of the output is the literal, written by the small model.
    assert finish.text == 'Think a.\n\nHmm c </think> {"x": 1}'
    assert finish.stop_reason == "eos"
    (delegation,) = [e for e in events if isinstance(e, DelegationEvent)]
    assert delegation.large_text.startswith("Hmm c </think>")
    (constraint,) = LiteralConstraint.instances
    assert constraint.backend is small and constraint.done
    authors = {e.author for e in events if isinstance(e, TextEvent) and "x" in e.text}
    assert authors == {"small"}
    # The large session was cropped right after the marker's token: the junk never reached it.
    kept = len(large.encode("Think a.\n\nHmm c </think>"))
    session = large.sessions[0]
    assert kept in [t - session.prompt_len for t in session.truncations]


def test_no_marker_means_the_whole_output_is_the_constrained_answer() -> None:
    small = ScriptedBackend(["Wait a b.\n\n", "c.\n\n"])
    large = ScriptedBackend(["Hmm.\n\n"])
    events = run(small, large, " [1, 2]", marker=None, begin=True)
    finish = finish_of(events)
    assert finish.text == " [1, 2]"
    assert finish.large.generated_tokens == 0 and finish.delegations == 0


def test_marker_written_token_by_token_in_small_mode() -> None:
    small = ScriptedBackend(["ab</think>zz\n\n"], tokenizer="char")
    events = run(small, ScriptedBackend(["x"], tokenizer="char"), "42", mode="small")
    assert finish_of(events).text == "ab</think>42"


def test_large_mode_answers_with_the_large_model() -> None:
    small = ScriptedBackend(["s </think> s.\n\n"])
    large = ScriptedBackend(["Big think </think> nope.\n\n"])
    events = run(small, large, " ok", mode="large")
    assert finish_of(events).text == "Big think </think> ok"
    (constraint,) = LiteralConstraint.instances
    assert constraint.backend is large


def test_thinking_budget_then_constrained_answer() -> None:
    small = ScriptedBackend(["R r r r r r r.\n\n", "never.\n\n"])
    events = run(
        small, ScriptedBackend(["X.\n\n"]), ' {"a": 0}', mode="small", max_reasoning_tokens=3
    )
    finish = finish_of(events)
    assert finish.text == 'R r r\n</think>\n\n {"a": 0}'
    assert [e.budget for e in events if isinstance(e, BudgetEvent)] == ["max_reasoning_tokens"]
    assert finish.budgets["reasoning_tokens"] == 3


def test_max_tokens_still_bounds_the_constrained_answer() -> None:
    small = ScriptedBackend(["a </think> b.\n\n"])
    events = run(small, ScriptedBackend(["X.\n\n"]), " 1 2 3 4 5 6", mode="small", max_tokens=4)
    finish = finish_of(events)
    assert finish.stop_reason == "length" and finish.text == "a </think> 1 2"
