"""A write step returns why it stopped (``stop``) and, when that ends the phase, its ``halt``.

Ordinary outcomes are values, not exceptions: trigger, EOS, length, stop string, answer marker,
the budgets and the deadline. The loop's tests check what it does with them; these check the
step itself, on scripted models whose output is known.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.engine.answer import reasoning_close_text
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.events import TextEvent
from langchain_spthink.engine.loop import Request, _Run
from langchain_spthink.engine.steps import REQUEST_ENDS, _Step, ends_request

T = TypeVar("T")


def drive(gen: Generator[Any, None, T]) -> tuple[list[Any], T]:
    """Run a generator to its end: (what it yielded, what it returned)."""
    events: list[Any] = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def make_run(
    small_script: list[str],
    large_script: list[str] | None = None,
    *,
    mode: str = "speculative",
    clock: Any = None,
    request: dict[str, Any] | None = None,
    **cfg: Any,
) -> _Run:
    small = ScriptedBackend(small_script, name="s", on_token=getattr(clock, "tick", None))
    large = ScriptedBackend(large_script or ["L"], name="l")
    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    engine = SpeculativeEngine(small, large, SpeculativeThinkingConfig(**cfg), **kw)
    prompt = small.encode("q:")
    return _Run(engine, Request(prompt, prompt, mode=mode, **(request or {})))  # type: ignore[arg-type]


def write(run: _Run, role: str = "small", max_new: int = 100, **kw: Any) -> tuple[str, _Step]:
    events, step = drive(run._write(run.tracks[role], max_new, **kw))  # type: ignore[index]
    return "".join(e.text for e in events if isinstance(e, TextEvent)), step


def test_a_live_small_step_stops_at_a_trigger() -> None:
    run = make_run(["a b.\n\n", "c d."])
    _, step = write(run, live=True)
    assert (step.stop, step.halt, step.text) == ("trigger", None, "a b.\n\n")
    assert run.out.text == "a b.\n\n"


def test_eos_ends_a_live_step_but_not_a_draft() -> None:
    run = make_run(["a b"], mode="small")
    _, draft = write(run, live=False)
    assert (draft.stop, draft.halt, draft.eos, draft.text) == ("eos", None, True, "a b")
    assert run.out.text == ""  # a draft is not in the output
    _, step = write(run, live=True)
    assert (step.stop, step.halt) == ("eos", "eos") and run.out.text == "a b"


def test_the_token_budget_halts_with_length() -> None:
    run = make_run(["a b c d e"], mode="small", request={"max_tokens": 2})
    _, step = write(run, live=True)
    assert (step.stop, step.halt, step.ids != []) == ("length", "length", True)
    _, again = write(run, live=True)  # nothing may be written any more
    assert (again.stop, again.halt, again.ids) == ("length", "length", [])


def test_a_stop_string_halts_with_stop() -> None:
    run = make_run(["a b c d"], mode="small", request={"stop": (" c",)})
    _, step = write(run, live=True)
    assert (step.stop, step.halt) == ("stop", "stop") and run.out.text == "a b"


def test_the_answer_marker_stops_the_step_for_the_answer_writer() -> None:
    def factory(backend: Any) -> Any:
        return None

    request = {"answer_marker": "</think>", "constraint": factory}
    run = make_run(["a </think> b c"], mode="small", request=request)
    _, step = write(run, live=True)
    assert (step.stop, step.halt, run.out.text) == ("marker", None, "a </think>")
    assert not run.in_reasoning and run.answer_switch


def test_the_deadline_halts_with_timeout() -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

        def tick(self) -> None:
            self.now += 1.0

    run = make_run(["a b c d e f"], mode="small", clock=Clock(), time_out=2.5)
    _, step = write(run, live=True)
    assert (step.stop, step.halt, run.out.text) == ("timeout", "timeout", "a b c")


def test_the_budgets_halt_a_phase_without_ending_the_request() -> None:
    run = make_run(["a b c d e"], mode="small", max_reasoning_tokens=2)
    _, step = write(run, live=True)
    assert (step.stop, step.halt, run.out.text) == ("reasoning_budget", "reasoning_budget", "a b")
    run = make_run(["a.\n\n"], ["b.\n\n"], max_large_tokens=0)
    _, step = write(run, "large", live=False)
    assert (step.stop, step.halt, step.ids) == ("large_budget", "large_budget", [])
    assert not ends_request(step.halt) and not ends_request("reasoning_budget")


@pytest.mark.parametrize("halt", sorted(REQUEST_ENDS))
def test_request_ends_are_the_finish_events_stop_reasons(halt: str) -> None:
    assert ends_request(halt)  # type: ignore[arg-type]


def test_reasoning_close_text() -> None:
    assert reasoning_close_text("Answer:", "</think>") == "Answer:"
    assert reasoning_close_text(None, "</think>") == "\n</think>\n\n"
    assert reasoning_close_text(None, None) == "\n\nFinal answer: "
