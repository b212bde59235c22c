"""Faults of the large model: raising at any step, stalling, a remote server dying.

Under ``fallback="small"`` every fault must give a *complete* answer, exactly one fallback event,
and every session (KV cache) released. The expected answer is computed independently: scripted
models write their next token from the output so far alone, so after a fault at output position
``p`` the answer must be the fault-free answer's first ``p`` characters followed by what the small
model writes on its own from there (:func:`small_alone_from`).

Also checked elsewhere: ``test_engine.py`` (one fault, one timeout with a fake clock),
``test_chat_model.py::test_fallback_*`` (fault at step 0 and 3), ``test_remote.py`` (HTTP 500,
cut stream, hang, refused connection as ``BackendError``; fallback on 500 and on a cut stream).

Wall time: stalls are checked with a fake clock, or with a large model blocked on an event (never
a sleep that must be "long enough"); the only wall-time bounds are far above what the code needs
(seconds on a CPU loaded 10x) and far below what a wrong implementation would take (a 60 s hang).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as stat
from hypothesis import strategies as st

from langchain_spthink.backends.remote import RemoteBackend
from langchain_spthink.backends.scripted import EOS_TEXT, ScriptedBackend
from langchain_spthink.chat import model as chat_model
from langchain_spthink.chat.callbacks import SpeculativeThinkingCallbackHandler
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.events import DelegationEvent, FallbackEvent, FinishEvent, TextEvent
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import LargeModelError
from tests.unit_tests._reliability_fakes import Recording
from tests.unit_tests.backends.test_remote import HANG_SECONDS, NO_TIMEOUT, FakeServer

GREEDY = SamplingParams(temperature=0.0)
WORDS = ["Wait,", "check", "yes", "so", "we", "add", "x", "4.", "final answer", "hmm"]
paragraphs = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(lambda w: " ".join(w) + "\n\n"),
    min_size=1,
    max_size=5,
)
CONFIGS = {
    "reasoning": {"draft_tokens": 3, "verify_tokens": 2, "recap_after_negatives": 2},
    "instruct": {"begin": True, "not_reasoning": True, "begin_tokens": 3, "draft_tokens": 3},
}


def small_alone_from(script: list[str], text: str, budget: int = 10_000) -> str:
    """What a scripted small model writes after ``text``, alone, until EOS (the reference)."""
    model = ScriptedBackend(script)
    for _ in range(budget):
        piece = model.next_piece(text)
        if piece == EOS_TEXT:
            break
        text += piece
    return text


def run(
    small: ScriptedBackend,
    large: Any,
    config: dict[str, Any],
    *,
    executor: ThreadPoolExecutor | None = None,
    clock: Any = None,
    prompt: str = "Q: go",
) -> tuple[str, list[Any]]:
    extra = {"clock": clock} if clock is not None else {}
    engine = SpeculativeEngine(
        small, large, SpeculativeThinkingConfig(**config), executor=executor, **extra
    )
    request = Request(small.encode(prompt), large.encode(prompt), 500, GREEDY)
    events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == finish.text
    return finish.text, events


def check_fallback(
    events: list[Any], text: str, clean: str, small_script: list[str], error_type: str
) -> FallbackEvent:
    """One fallback; the answer is the clean answer up to it, then the small model alone."""
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert len(fallbacks) == 1
    (fb,) = fallbacks
    assert fb.error_type == error_type and fb.new_mode == "small"
    before = text[: fb.position]
    assert clean.startswith(before)  # nothing of the failed step leaked into the output
    assert text == small_alone_from(small_script, before)  # complete: the small model finished
    finish = events[-1]
    assert finish.mode == "small" and finish.stop_reason == "eos"
    return fb


# ------------------------------------------------------------------ raising at any step
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    small_script=paragraphs,
    large_script=paragraphs,
    preset=st.sampled_from(sorted(CONFIGS)),
    data=st.data(),
)
def test_large_model_raising_at_any_step_falls_back_once(
    small_script: list[str], large_script: list[str], preset: str, data: st.DataObject
) -> None:
    config = CONFIGS[preset]
    clean_large = ScriptedBackend(large_script, name="l")
    clean, clean_events = run(ScriptedBackend(small_script, name="s"), clean_large, config)
    needed = clean_large.tokens_sampled  # tokens the large model samples in a fault-free run
    fail_after = data.draw(st.integers(0, needed + 2), label="fail_after")

    small = ScriptedBackend(small_script, name="s")
    large = ScriptedBackend(large_script, name="l", fail_after=fail_after)
    text, events = run(small, large, config)
    stat("fault met" if fail_after < needed else "fault not met")
    if fail_after >= needed:  # never reached: the fault-free answer
        assert text == clean and not any(isinstance(e, FallbackEvent) for e in events)
    else:
        check_fallback(events, text, clean, small_script, "RuntimeError")
    assert all(s.closed for s in small.sessions + large.sessions)

    # the same fault under fallback="raise": a typed error, sessions released, output a prefix
    small = ScriptedBackend(small_script, name="s")
    large = ScriptedBackend(large_script, name="l", fail_after=fail_after)
    engine = SpeculativeEngine(small, large, SpeculativeThinkingConfig(**config, fallback="raise"))
    streamed = ""
    request = Request(small.encode("Q: go"), large.encode("Q: go"), 500, GREEDY)
    try:
        for event in engine.generate(request):
            streamed += event.text if isinstance(event, TextEvent) else ""
    except LargeModelError as exc:
        assert fail_after < needed and "injected" in str(exc)
    else:
        assert fail_after >= needed and streamed == clean
    assert clean.startswith(streamed)
    assert all(s.closed for s in small.sessions + large.sessions)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_script=paragraphs, large_script=paragraphs, fail_after=st.integers(0, 12))
def test_raising_during_concurrent_drafts_falls_back_once(
    small_script: list[str], large_script: list[str], fail_after: int
) -> None:
    """Large steps run in a worker while the small model drafts; a fault there falls back too."""
    config = {"draft_tokens": 3, "verify_tokens": 2}
    clean, _ = run(ScriptedBackend(small_script), ScriptedBackend(large_script), config)
    small = ScriptedBackend(small_script, name="s")
    large = ScriptedBackend(large_script, name="l", fail_after=fail_after)
    with ThreadPoolExecutor(2) as pool:
        engine = SpeculativeEngine(
            small, large, SpeculativeThinkingConfig(**config), executor=pool, concurrent_drafts=True
        )
        request = Request(small.encode("Q: go"), large.encode("Q: go"), 500, GREEDY)
        events = list(engine.generate(request))
    text = events[-1].text
    # Discarded steps also count against fail_after, so where it fails depends on timing: either
    # no fault was met (the clean answer) or exactly one fallback with a complete answer.
    stat("fallback" if any(isinstance(e, FallbackEvent) for e in events) else "no fallback")
    if any(isinstance(e, FallbackEvent) for e in events):
        check_fallback(events, text, clean, small_script, "RuntimeError")
    else:
        assert text == clean
    assert all(s.closed for s in small.sessions + large.sessions)  # forks included


class _Handler(SpeculativeThinkingCallbackHandler):
    def __init__(self) -> None:
        self.fallbacks: list[FallbackEvent] = []

    def on_fallback(self, event: FallbackEvent, **kw: Any) -> None:
        self.fallbacks.append(event)


@pytest.mark.parametrize("how", ["invoke", "stream", "astream"])
@pytest.mark.parametrize("fail_after", [0, 2, 5, 8])
async def test_chat_model_fault_one_fallback_event_and_sessions_released(
    fail_after: int, how: str
) -> None:
    # paragraphs of equal token counts, so both models write in every round
    small_script = ["One two three.\n\n", "Wait, two more.\n\n", "Check three now.\n\n", "Four."]
    large_script = ["L one two.\n\n", "Hmm two extra.\n\n", "Yes three okay.\n\n", "End."]
    kw = {"preset": "instruct", "config": {"begin_tokens": 3, "draft_tokens": 4}}
    clean_large = ScriptedBackend(large_script)
    clean_model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(small_script), large_model=clean_large, temperature=0, **kw
    )
    clean = str(clean_model.invoke("hi").content)
    assert clean_large.tokens_sampled > fail_after  # the fault is met
    small = ScriptedBackend(small_script, name="s")
    large = ScriptedBackend(large_script, name="l", fail_after=fail_after)
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0, **kw)
    handler = _Handler()
    config: Any = {"callbacks": [handler]}
    if how == "invoke":
        text = str(model.invoke("hi", config=config).content)
    elif how == "stream":
        text = "".join(str(c.content) for c in model.stream("hi", config=config))
    else:
        text = "".join([str(c.content) async for c in model.astream("hi", config=config)])
    assert len(handler.fallbacks) == 1
    before = text[: handler.fallbacks[0].position]
    assert clean.startswith(before) and text == small_alone_from(small_script, before)
    assert all(s.closed for s in small.sessions + large.sessions)


# ------------------------------------------------------------------------------- stalls
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    small_script=paragraphs,
    large_script=paragraphs,
    preset=st.sampled_from(sorted(CONFIGS)),
    data=st.data(),
)
def test_large_model_stalling_at_any_step_times_out_once(
    small_script: list[str], large_script: list[str], preset: str, data: st.DataObject
) -> None:
    """The large model stalls (the clock jumps past large_step_timeout) at its k-th token."""
    # Plain decoding (verifies=False): time passes between the tokens the engine reads, so a
    # stall at an EOS is seen after the EOS. A verified step returns its ids together: a stall
    # anywhere in it is seen at its first id (faults of verified steps:
    # engine/test_verified_steps.py).
    config = {**CONFIGS[preset], "large_step_timeout": 5.0}
    clean_large = ScriptedBackend(large_script, verifies=False)
    clean, _ = run(ScriptedBackend(small_script), clean_large, config, clock=FakeClock())
    needed = clean_large.tokens_sampled
    stall_at = data.draw(st.integers(1, needed + 2), label="stall_at")
    clock = FakeClock()
    large = ScriptedBackend(large_script, name="l", verifies=False)

    stalled_on_eos = []

    def tick() -> None:
        if large.tokens_sampled == stall_at:
            clock.now += 60.0
            (open_session,) = [s for s in large.sessions if not s.closed]
            stalled_on_eos.append(open_session.ids[-1] == 0)

    large.on_token = tick
    small = ScriptedBackend(small_script, name="s")
    text, events = run(small, large, config, clock=clock)
    stat("stalled mid-step" if stalled_on_eos == [False] else "no timeout")
    if stall_at > needed or stalled_on_eos == [True]:
        # never stalled, or the stalled step had just ended (EOS): it is kept, no timeout
        assert text == clean and not any(isinstance(e, FallbackEvent) for e in events)
    else:
        check_fallback(events, text, clean, small_script, "timeout")
    assert all(s.closed for s in small.sessions + large.sessions)


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    """Poll ``predicate``; the timeout only caps a failure (success returns at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


class StuckRemote(ScriptedBackend):
    """A scripted large model that behaves like a remote one (concurrent drafts) and is stuck.

    Every sampled token blocks until :attr:`gate` is set (at most ``HANG_SECONDS``), so its
    first step is stuck in its first token until the test releases it. :attr:`open_streams`
    counts its ``stream()`` generators still running.
    """

    is_remote = True

    def __init__(self, script: list[str], **kw: Any) -> None:
        self.gate = threading.Event()
        super().__init__(script, on_token=lambda: self.gate.wait(HANG_SECONDS), **kw)
        self.open_streams = 0
        self._lock = threading.Lock()

    def new_session(self, prompt_ids: Any, sampling: SamplingParams) -> Any:
        session = super().new_session(prompt_ids, sampling)
        inner = session.stream

        def stream(max_new: int, **kw: Any) -> Iterator[int]:
            with self._lock:
                self.open_streams += 1
            try:
                yield from inner(max_new, **kw)
            finally:
                with self._lock:
                    self.open_streams -= 1

        session.stream = stream  # type: ignore[method-assign]
        return session


def test_slow_large_step_in_a_worker_times_out_and_its_fork_is_closed() -> None:
    """Concurrent drafts (the chat model's default for remote models): the wait times out."""
    small_script = ["One.\n\n", "Wait, two.\n\n", "Three."]
    large_script = ["One.\n\n", "Let me check two.\n\n", "Three."]
    small = ScriptedBackend(small_script, name="s")
    large = StuckRemote(large_script, name="l")
    handler = _Handler()
    model = ChatSpeculativeThinking(
        small_model=small, large_model=large, temperature=0, config={"large_step_timeout": 0.1}
    )
    started = time.monotonic()
    try:
        result = model.invoke("hi", config={"callbacks": [handler]})
        # Nobody waited for the stuck step: it is still blocked in its first token. (Waiting
        # would take the whole 60 s hang; the 0.1 s timeout plus a loaded CPU stays far below
        # 30 s.)
        assert large.open_streams == 1 and not large.gate.is_set()
        assert time.monotonic() - started < 30
    finally:
        large.gate.set()
    assert result.content == "".join(small_script)
    assert len(handler.fallbacks) == 1 and handler.fallbacks[0].error_type == "timeout"
    assert wait_until(lambda: all(s.closed for s in small.sessions + large.sessions))
    sampled = large.tokens_sampled
    # Released, the abandoned step ends (its fork is closed) instead of writing the rest of its
    # paragraph (several more tokens, none of them blocking now).
    assert wait_until(lambda: large.open_streams == 0)
    assert large.tokens_sampled <= sampled + 1  # the abandoned step stopped (at most one more)


# ----------------------------------------------------------------- the remote server dies
@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def kill(server: FakeServer) -> None:
    """The server process dies: new connections are refused, kept-alive ones are cut."""
    server.default = ("cut", [])
    server.actions.clear()
    server.close()


SCRIPT = ["First step.\n\n", "Wait, second step.\n\n", "Final answer 4."]


@pytest.mark.parametrize("concurrent", [False, True])
def test_remote_server_dying_mid_request(
    server: FakeServer, tiny_tokenizer: Any, concurrent: bool
) -> None:
    """The server answers the opening, then dies; the small model completes the answer."""
    large = Recording(
        RemoteBackend(
            server.url, "fake", tokenizer=tiny_tokenizer, timeout=NO_TIMEOUT, max_retries=1
        )
    )
    server.actions = [("stream", [" Indeed"], "length", None)]
    died = threading.Event()

    def after_token() -> None:
        if len(server.requests) >= 1 and not died.is_set():
            died.set()
            kill(server)

    small = ScriptedBackend(SCRIPT, name="s", on_token=after_token)
    config = {"begin": True, "begin_tokens": 4, "draft_tokens": 4, "verify_tokens": 0}
    with ThreadPoolExecutor(2) as pool:
        engine = SpeculativeEngine(
            small,
            large,
            SpeculativeThinkingConfig(**config),
            executor=pool if concurrent else None,
            concurrent_drafts=concurrent,
        )
        request = Request(small.encode("Q: go"), large.encode("Q: go"), 200, GREEDY)
        events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert died.is_set() and len(fallbacks) == 1
    assert [e.kind for e in events if isinstance(e, DelegationEvent)] == ["begin"]
    before = finish.text[: fallbacks[0].position]
    assert before.startswith(" Indeed")  # the opening the server wrote before dying is kept
    assert finish.text == small_alone_from(SCRIPT, before)
    assert finish.mode == "small" and finish.stop_reason == "eos"
    assert all(s.closed for s in small.sessions) and large.all_closed()


def test_remote_server_hanging_falls_back_after_the_read_timeout(
    server: FakeServer, tiny_tokenizer: Any
) -> None:
    server.default = ("hang",)
    large = RemoteBackend(server.url, "fake", tokenizer=tiny_tokenizer, timeout=0.3, max_retries=0)
    small = ScriptedBackend(SCRIPT, name="s")
    started = time.monotonic()
    text, events = run(small, large, {"begin": True, "begin_tokens": 4, "draft_tokens": 4})
    # The 0.3 s read timeout ended the wait, not the server (it hangs for 60 s): one request,
    # ~0.3 s; a CPU loaded 10x adds a few seconds at most, far below 30 s.
    assert time.monotonic() - started < 30
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert len(fallbacks) == 1 and fallbacks[0].position == 0
    assert text == "".join(SCRIPT)


def test_chat_model_with_dead_remote_server(tiny_tokenizer: Any) -> None:
    """Chat model + remote large model (concurrent drafts on): one event, complete answer."""
    chat_model.clear_backend_cache()
    srv = FakeServer()
    kill(srv)  # dead before the first request
    large = Recording(
        RemoteBackend(srv.url, "fake", tokenizer=tiny_tokenizer, timeout=NO_TIMEOUT, max_retries=0)
    )
    small = ScriptedBackend(SCRIPT, name="s")
    handler = _Handler()
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    result = model.invoke("hi", config={"callbacks": [handler]})
    assert result.content == "".join(SCRIPT)
    assert len(handler.fallbacks) == 1
    assert len(result.response_metadata["spthink"]["fallbacks"]) == 1
    assert wait_until(lambda: large.all_closed() and all(s.closed for s in small.sessions))
