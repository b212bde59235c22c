"""The bad-input matrix: every malformed request is a typed error, and nothing is lost.

Each row is checked for four things:

1. the error is a typed exception from :mod:`langchain_spthink.errors` (``SpThinkError``);
2. its message names what is wrong;
3. nothing is half-written: no chunk was streamed and every session the request opened is closed;
4. the *same* instance answers a good request right after, with the expected output.

Rows already checked elsewhere and not repeated here (docs/guarantees.md lists them too):

* ``test_engine.py::test_bad_requests_are_typed_errors`` (engine: max_tokens <= 0, empty stop);
* ``test_engine.py::test_forced_id_handoff_with_different_tokenizers_is_refused``;
* ``test_models_unit.py`` (spec parsing: unknown / empty specs, missing GGUF, corrupt GGUF);
* ``test_helpers.py::test_config_errors_name_the_field`` (config fields);
* ``test_server.py::test_invalid_requests`` (server 4xx bodies, one by one).
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage

from langchain_spthink import models
from langchain_spthink.backends import loading
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat import model as chat_model
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.events import FinishEvent, TextEvent
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import (
    ConfigError,
    HandoffError,
    InvalidRequestError,
    ModelLoadError,
    SpThinkError,
)
from langchain_spthink_integrations.openai_server import create_app
from tests.tiny_models import write_tiny_gguf
from tests.unit_tests._reliability_fakes import ByteBackend, Recording
from tests.unit_tests.test_server import serving

SMALL = ["One step.\n\n", "Wait, two.\n\n", "Three."]
LARGE = ["One step.\n\n", "Check: two.\n\n", "Three."]
# The small model's second step starts with a cue ("Wait"), so the large model writes it; its
# step runs to EOS, so the answer is the small model's first paragraph and the large model's rest.
EXPECTED = SMALL[0] + LARGE[1] + LARGE[2]
GREEDY = SamplingParams(temperature=0.0)
CONTEXT = 64  # context window of the context-limited tiny models


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    chat_model.clear_backend_cache()
    yield
    chat_model.clear_backend_cache()


def scripted_model(**kw: Any) -> tuple[ChatSpeculativeThinking, list[Any]]:
    small = ScriptedBackend(SMALL, name="small-fake", context_length=CONTEXT)
    large = ScriptedBackend(LARGE, name="large-fake", context_length=CONTEXT)
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0, **kw)
    return model, [small, large]


def sessions_of(backends: list[Any]) -> list[Any]:
    return [s for b in backends for s in getattr(b, "sessions", [])]


# ----------------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class Row:
    """One bad request: what is sent, and the error it must raise."""

    id: str
    error: type[SpThinkError]
    match: str  # regex the message must contain (it names what is wrong)
    input: Any = "What is 2 + 2?"
    kwargs: dict[str, Any] = field(default_factory=dict)
    stop: Any = None
    xfail: str | None = None


IMAGE_URL = HumanMessage(
    content=[
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
)
IMAGE_V1 = HumanMessage(content=[{"type": "image", "base64": "AAAA", "mime_type": "image/png"}])
AUDIO = HumanMessage(content=[{"type": "input_audio", "input_audio": {"data": "AAAA"}}])

CALL_ROWS = [
    Row("empty-message-list", InvalidRequestError, "no messages", input=[]),
    Row("image-url-block", InvalidRequestError, "'image_url'.*text-only", input=[IMAGE_URL]),
    Row("image-block", InvalidRequestError, "'image'.*text-only", input=[IMAGE_V1]),
    Row("audio-block", InvalidRequestError, "'input_audio'.*text-only", input=[AUDIO]),
    Row("max-tokens-zero", InvalidRequestError, "max_tokens.*0", kwargs={"max_tokens": 0}),
    Row("max-tokens-negative", InvalidRequestError, "max_tokens.*-3", kwargs={"max_tokens": -3}),
    Row("max-tokens-str", InvalidRequestError, "max_tokens.*'8'", kwargs={"max_tokens": "8"}),
    Row(
        "max-tokens-above-context",
        InvalidRequestError,
        "max_tokens.*context",
        kwargs={"max_tokens": CONTEXT + 1},
    ),
    Row(
        "prompt-longer-than-context",
        InvalidRequestError,
        rf"prompt has \d+ tokens but small-fake accepts at most {CONTEXT}",
        input="w " * CONTEXT,
    ),
    Row(
        "max-tokens-word", InvalidRequestError, "max_tokens.*'many'", kwargs={"max_tokens": "many"}
    ),
    Row("temperature-negative", ConfigError, "temperature", kwargs={"temperature": -1.0}),
    Row("temperature-string", ConfigError, "temperature", kwargs={"temperature": "hot"}),
    Row("top-p-zero", ConfigError, "top_p", kwargs={"top_p": 0.0}),
    Row("top-k-negative", ConfigError, "top_k", kwargs={"top_k": -1}),
    Row("timeout-zero", ConfigError, "time_out", kwargs={"timeout": 0}),
    Row(
        "step-timeout-negative",
        ConfigError,
        "large_step_timeout",
        kwargs={"config_overrides": {"large_step_timeout": -1}},
    ),
    Row(
        "fallback-unknown",
        ConfigError,
        "fallback",
        kwargs={"config_overrides": {"fallback": "retry"}},
    ),
    Row("mode-unknown", InvalidRequestError, "mode.*'huge'", kwargs={"mode": "huge"}),
    Row("seed-not-int", InvalidRequestError, "seed.*'x'", kwargs={"seed": "x"}),
    Row(
        "unknown-argument",
        InvalidRequestError,
        "unknown argument.*max_new_tokens",
        kwargs={"max_new_tokens": 5},
    ),  # fmt: skip
    Row("per-call-model", InvalidRequestError, "per-call `model`", kwargs={"model": "gpt"}),
    Row("empty-stop-string", InvalidRequestError, "stop.*non-empty", stop=[""]),
    Row("empty-stop-among-others", InvalidRequestError, "stop.*non-empty", stop=["\n", ""]),
    Row("stop-not-a-string", InvalidRequestError, "stop.*non-empty", stop=[3]),
    Row("stop-not-a-list", InvalidRequestError, "stop.*non-empty", stop=3),
]


def call(model: ChatSpeculativeThinking, row: Row, how: str) -> list[Any]:
    """Send the row's request through one entry point; return the chunks seen before an error."""
    chunks: list[Any] = []
    if how == "invoke":
        chunks.append(model.invoke(row.input, stop=row.stop, **row.kwargs))
    elif how == "stream":
        for chunk in model.stream(row.input, stop=row.stop, **row.kwargs):
            chunks.append(chunk)
    elif how == "ainvoke":
        chunks.append(asyncio.run(model.ainvoke(row.input, stop=row.stop, **row.kwargs)))
    else:

        async def consume() -> None:
            async for chunk in model.astream(row.input, stop=row.stop, **row.kwargs):
                chunks.append(chunk)

        asyncio.run(consume())
    return chunks


def assert_good_answer(model: ChatSpeculativeThinking) -> None:
    result = model.invoke("What is 2 + 2?")
    assert result.content == EXPECTED
    assert len(result.response_metadata["spthink"]["delegations"]) == 1


def params(rows: list[Row]) -> list[Any]:
    return [
        pytest.param(
            r,
            id=r.id,
            marks=[pytest.mark.xfail(strict=True, reason=r.xfail)] if r.xfail else [],
        )
        for r in rows
    ]


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
@pytest.mark.parametrize("row", params(CALL_ROWS))
def test_bad_call_is_typed_and_leaves_the_instance_usable(row: Row, how: str) -> None:
    model, backends = scripted_model()
    seen: list[Any] = []
    with pytest.raises(row.error, match=row.match):
        seen = call(model, row, how)
    assert seen == []  # nothing streamed before the error
    assert all(s.closed for s in sessions_of(backends))
    assert_good_answer(model)


def test_max_tokens_above_context_in_the_engine_is_refused() -> None:
    """Engine level of the ``max-tokens-above-context`` row."""
    small = ScriptedBackend(SMALL, name="s", context_length=CONTEXT)
    large = ScriptedBackend(LARGE, name="l", context_length=CONTEXT)
    engine = SpeculativeEngine(small, large)
    request = Request(small.encode("Q"), large.encode("Q"), CONTEXT + 1, GREEDY)
    with pytest.raises(InvalidRequestError, match="max_tokens.*context"):
        list(engine.generate(request))
    assert all(s.closed for s in small.sessions + large.sessions)


def test_invalid_constructor_values_name_the_field() -> None:
    """Settings fail at construction, before any model is loaded or used."""
    for kwargs, name in [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 2}, "top_p"),
        ({"handoff": "bytes"}, "handoff"),
        ({"preset": "fast"}, "preset"),
        ({"config": {"draft_tokens": 0}}, "draft_tokens"),
        ({"config": {"triggers": [""]}}, "triggers"),
        ({"small_model": ""}, "small_model"),
        ({"large_model": 3}, "large_model"),
        ({"stop": "x", "max_tokens": "many"}, "max_tokens"),
    ]:
        with pytest.raises(ConfigError, match=name):
            ChatSpeculativeThinking(**kwargs)


# ------------------------------------------------------------ prompt longer than the context
def limited(backend: TransformersBackend, context: int, name: str) -> Recording:
    return Recording(
        TransformersBackend(
            backend.model,
            backend.tokenizer,
            name=name,
            eos_ids=backend.eos_ids,
            context_length=context,
        )
    )


@pytest.mark.parametrize("short", ["small", "large"])
def test_prompt_longer_than_the_context_window(tiny_pair: tuple[Any, Any], short: str) -> None:
    """The model with the short window refuses; the other model's session is closed again."""
    small = limited(tiny_pair[0], CONTEXT if short == "small" else 1024, "tiny-small")
    large = limited(tiny_pair[1], CONTEXT if short == "large" else 1024, "tiny-large")
    model = ChatSpeculativeThinking(
        small_model=small, large_model=large, preset="instruct", temperature=0, max_tokens=8
    )
    long_question = "count: " + " ".join(str(i) for i in range(CONTEXT))
    with pytest.raises(
        InvalidRequestError, match=rf"prompt has \d+ tokens.*tiny-{short}.*{CONTEXT}"
    ):
        model.invoke(long_question)
    if short == "large":  # the small model's session was opened first ...
        assert len(small.sessions) == 1 and large.sessions == []
    assert small.all_closed() and large.all_closed()  # ... and closed again
    assert all(s.inner._cache is None for s in small.sessions + large.sessions)
    # the same instance answers a short question as a fresh instance with the same windows does
    fresh = ChatSpeculativeThinking(
        small_model=limited(tiny_pair[0], small.context_length, "tiny-small"),
        large_model=limited(tiny_pair[1], large.context_length, "tiny-large"),
        preset="instruct",
        temperature=0,
        max_tokens=8,
    )
    answer = model.invoke("2+2?")
    assert answer.content == fresh.invoke("2+2?").content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 8


# -------------------------------------------------------------------------- model loading
@functools.lru_cache(maxsize=1)
def _tiny_gguf() -> tuple[bytes, int]:
    """A complete tiny GGUF (random Llama, tiny tokenizer) and where its tensor data starts."""
    import gguf

    with tempfile.TemporaryDirectory() as folder:
        path = write_tiny_gguf(Path(folder) / "tiny.gguf")
        data_offset = int(gguf.GGUFReader(path).data_offset)
        return path.read_bytes(), data_offset


def _truncated_gguf(tmp_path: Path, part: str) -> Path:
    """The tiny GGUF cut in the middle of its header (metadata) or of its tensor data."""
    data, data_offset = _tiny_gguf()
    cut = data_offset // 2 if part == "header" else (data_offset + len(data)) // 2
    path = tmp_path / f"truncated-{part}.gguf"
    path.write_bytes(data[:cut])
    return path


def test_the_complete_tiny_gguf_loads(tmp_path: Path, tiny_tokenizer: Any) -> None:
    """The control of the truncated rows below: uncut, the same file loads."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(_tiny_gguf()[0])
    loaded = models.load_model(str(path), device="cpu", cache_dir=tmp_path / "cache")
    text = "Wait, 12 × 7 = 84.\n\n"
    assert loaded.tokenizer.encode(text) == tiny_tokenizer.encode(text)
    assert loaded.tokenizer.decode(tiny_tokenizer.encode(text)) == text
    assert loaded.model.config.vocab_size == len(tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer.encode(text)])
    with torch.inference_mode():
        assert torch.isfinite(loaded.model(input_ids=ids).logits).all()


LOAD_ROWS: list[tuple[str, Callable[[Path], str], str]] = [
    ("unknown-alias", lambda _: "smollm9-1t-instruct", r"unknown model 'smollm9-1t-instruct'"),
    ("missing-file", lambda p: str(p / "nowhere" / "model.gguf"), r"does not exist"),
    ("not-a-gguf-file", lambda p: _write(p / "weights.bin", b"\0" * 64), r"not a \.gguf file"),
    ("garbage-gguf", lambda p: _write(p / "garbage.gguf", os.urandom(4096)), r"corrupt"),
    ("header-truncated-gguf", lambda p: str(_truncated_gguf(p, "header")), r"corrupt"),
    ("data-truncated-gguf", lambda p: str(_truncated_gguf(p, "data")), r"corrupt"),
]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("make_spec", "match"), [r[1:] for r in LOAD_ROWS], ids=[r[0] for r in LOAD_ROWS]
)
def test_unloadable_model_is_typed_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec: Callable[[Path], str], match: str
) -> None:
    monkeypatch.setenv("SPTHINK_CACHE", str(tmp_path / "cache"))
    spec = make_spec(tmp_path)
    large = ScriptedBackend(LARGE, name="large-fake")
    model = ChatSpeculativeThinking(small_model=spec, large_model=large, temperature=0)
    for _ in range(2):  # a failed load is not cached: the second call fails the same way
        with pytest.raises(ModelLoadError, match=match) as info:
            model.invoke("hi")
        assert spec in str(info.value)
    assert not any(key[0] == spec for key in loading._BACKENDS)
    assert large.sessions == []  # nothing ran
    cache = tmp_path / "cache"
    leftovers = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert set(leftovers) <= {"gguf-sha256.json"}  # no half-written conversion
    # the same instance still serves what does not need the broken model
    assert model.invoke("hi", mode="large").content == "".join(LARGE)


# ------------------------------------------------------------------------------ hand-off
def test_forced_id_handoff_with_mismatched_tokenizers() -> None:
    small = ScriptedBackend(SMALL, name="word-model", tokenizer="word")
    large = ScriptedBackend(LARGE, name="char-model", tokenizer="char")
    model = ChatSpeculativeThinking(
        small_model=small, large_model=large, handoff="ids", temperature=0
    )
    with pytest.raises(HandoffError, match="handoff='ids'.*word-model.*char-model"):
        model.invoke("hi")
    with pytest.raises(HandoffError):
        list(model.stream("hi"))
    assert small.sessions == [] and large.sessions == []  # refused before anything ran
    # one model alone needs no hand-off: the same instance works
    assert model.invoke("hi", mode="small").content == "".join(SMALL)
    assert model.invoke("hi", mode="large").content == "".join(LARGE)
    assert all(s.closed for s in small.sessions + large.sessions)


# ------------------------------------------------------------------ split multi-byte tokens
MULTIBYTE = "Ünïcödé: 日本語, emoji 🙂👍🏽, math ∑∫ — done."


def stream_bytes(output: bytes, how: str = "stream") -> tuple[list[str], Any]:
    backend = ByteBackend(output)
    model = ChatSpeculativeThinking(
        small_model=backend, large_model=backend, mode="small", temperature=0, max_tokens=4096
    )
    if how == "stream":
        chunks = [str(c.content) for c in model.stream("hi")]
    else:

        async def consume() -> list[str]:
            return [str(c.content) async for c in model.astream("hi")]

        chunks = asyncio.run(consume())
    return chunks, backend


@pytest.mark.parametrize("how", ["stream", "astream"])
def test_split_multibyte_characters_stream_whole(how: str) -> None:
    """One byte per token: every chunk holds whole characters, never U+FFFD."""
    chunks, backend = stream_bytes(MULTIBYTE.encode(), how)
    assert "".join(chunks) == MULTIBYTE
    assert not any("\ufffd" in c for c in chunks)
    assert all(s.closed for s in backend.sessions)


def test_invalid_utf8_is_replaced_not_raised() -> None:
    raw = b"ok \xff\xfe then \xe6\x97 cut, end: \xf0\x9f"  # stray bytes, a cut char, a cut tail
    chunks, backend = stream_bytes(raw)
    assert "".join(chunks) == raw.decode("utf-8", errors="replace")
    assert all(s.closed for s in backend.sessions)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40) | st.text(max_size=20).map(lambda t: t.encode()))
def test_any_byte_stream_decodes_like_utf8_replace(raw: bytes) -> None:
    """Engine level, any bytes: streamed text == finish text == bytes.decode(errors='replace')."""
    backend = ByteBackend(raw)
    engine = SpeculativeEngine(backend, None)  # type: ignore[arg-type]
    prompt = backend.encode("Q")
    events = list(engine.generate(Request(prompt, (), 4096, GREEDY, mode="small")))
    texts = [e.text for e in events if isinstance(e, TextEvent)]
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    expected = raw.decode("utf-8", errors="replace")
    assert "".join(texts) == finish.text == expected
    if "\ufffd" not in expected:  # valid UTF-8: no delta ever splits a character
        assert not any("\ufffd" in t for t in texts)


def test_real_byte_level_tokenizer_splits_are_held_back(tiny_tokenizer: Any) -> None:
    """A byte-level BPE (the tiny one, built like SmolLM2's) splits these characters over tokens;
    the stream never shows it."""
    ids = tiny_tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the text must exercise split characters"
    eos = int(tiny_tokenizer.eos_token_id)

    class Replay(ByteBackend):
        """Replays the tokenizer's ids of MULTIBYTE, then its EOS."""

        def encode(self, text: str) -> list[int]:
            return list(tiny_tokenizer.encode(text, add_special_tokens=False))

        def decode(self, token_ids: Any) -> str:
            return str(tiny_tokenizer.decode(list(token_ids), skip_special_tokens=True))

    backend = Replay(b"")
    backend.eos_ids = frozenset({eos})
    backend.output = [*ids, eos]  # type: ignore[assignment]
    model = ChatSpeculativeThinking(
        small_model=backend, large_model=backend, mode="small", temperature=0, max_tokens=4096
    )
    chunks = [str(c.content) for c in model.stream("hi")]
    assert "".join(chunks) == MULTIBYTE
    assert not any("\ufffd" in c for c in chunks)


# ------------------------------------------------------------------------------ the server
SERVER_ROWS: list[tuple[str, Any, int, str]] = [
    ("empty-messages", {"messages": []}, 400, "messages"),
    ("image", {"messages": [{"role": "user", "content": [{"type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "image"),
    ("max-tokens-zero", {"max_tokens": 0}, 400, "max_tokens"),
    ("max-tokens-over-limit", {"max_tokens": 10**6}, 400, "max_tokens"),
    ("temperature", {"temperature": -1}, 400, "temperature"),
    ("empty-stop", {"stop": [""]}, 400, "stop"),
    ("prompt-too-long", {"messages": [{"role": "user", "content": "w " * 400}]}, 400, "prompt"),
    ("unknown-model", {"model": "gpt-5"}, 404, "model"),
    ("not-json", b'{"model": "spthink", "messages": [', 400, ""),
]  # fmt: skip


def test_server_answers_4xx_and_stays_correct() -> None:
    """Each bad body in turn gets its 4xx; the very next good request gets the right answer."""
    small = Recording(ScriptedBackend(SMALL, name="small-fake", context_length=200))
    large = Recording(ScriptedBackend(LARGE, name="large-fake", context_length=200))
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    good = {"model": "spthink", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    with serving(create_app(model, max_tokens_limit=100)) as server:
        url = server.url + "/v1/chat/completions"
        for name, body, status, word in SERVER_ROWS:
            payload = body if isinstance(body, bytes) else {**good, **body}
            if isinstance(payload, bytes):
                response = httpx.post(url, content=payload, timeout=20)
            else:
                response = httpx.post(url, json=payload, timeout=20)
            assert response.status_code == status, (name, response.text)
            assert word.lower() in response.json()["error"]["message"].lower(), name
            assert small.all_closed() and large.all_closed(), name
            reply = httpx.post(url, json=good, timeout=20)
            assert reply.status_code == 200, name
            assert reply.json()["choices"][0]["message"]["content"] == EXPECTED, name
        health = httpx.get(server.url + "/health", timeout=20).json()
        assert health["running"] == 0 and health["waiting"] == 0
