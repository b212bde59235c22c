"""Property tests (hypothesis) of the pure pieces bad input reaches first.

* the cue classifier (:mod:`langchain_spthink.engine.cues`) against an independent scanner, with
  random word lists (regex metacharacters, non-ASCII), in substring and whole-word mode;
* the hand-off re-synchronisation (:mod:`langchain_spthink.engine.handoff`): the session ends
  equal to the target with the fewest operations, and on a real model its KV cache equals a fresh
  prefill; text hand-off between different tokenizers on random scripts;
* the config validator (:mod:`langchain_spthink.engine.config`): any value of any field either
  builds a config or raises ``ConfigError`` naming the field, never another exception;
* tool-call parsing (:mod:`langchain_spthink.tools.parsing`): never raises, loses no text, the
  streaming parser agrees with the whole-text one, and generated valid calls round-trip.

``tests/unit_tests/engine/test_helpers.py`` holds the classifier's reference cases and two more
properties (agreement with counting for the default words; totality).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat import model as chat_model
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import SpeculativeThinkingConfig, preset
from langchain_spthink.engine.cues import classify, count_words
from langchain_spthink.engine.events import DelegationEvent, FinishEvent, TextEvent
from langchain_spthink.engine.handoff import common_prefix_length, resync
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import ConfigError, SpThinkError
from langchain_spthink.tools.parsing import ToolCallStream, parse_tool_calls
from langchain_spthink.tools.schema import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from tests.unit_tests._reliability_fakes import one_torch_thread

GREEDY = SamplingParams(temperature=0.0)


# ------------------------------------------------------------------------ cue classifier
def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def scan(text: str, word: str, whole: bool) -> int:
    """Non-overlapping case-insensitive occurrences, scanning left to right (the reference)."""
    hay, needle = text.lower(), word.lower()
    count, i = 0, hay.find(needle)
    while needle and i >= 0:
        end = i + len(needle)
        ok = not whole or (
            (i == 0 or not _is_word(hay[i - 1])) and (end == len(hay) or not _is_word(hay[end]))
        )
        if ok:
            count += 1
        i = hay.find(needle, end if ok else i + 1)
    return count


def reference_label(text: str, pos: list[str], neg: list[str], ver: list[str], whole: bool) -> int:
    p = sum(scan(text, w, whole) for w in pos)
    n = sum(scan(text, w, whole) for w in neg) + sum(scan(text, w, whole) for w in ver)
    return 1 if p > n else -1 if n > p or p > 0 else 0


cue_word = st.text(
    alphabet=st.sampled_from("abcxyz .*+?()[]|^$\\éßİ-_1"), min_size=1, max_size=6
).filter(lambda w: w.strip() != "")
word_lists = st.lists(cue_word, min_size=0, max_size=4)


@st.composite
def texts_with_cues(draw: st.DrawFn, words: list[str]) -> str:
    filler = st.text(alphabet=st.sampled_from("abc xyz.,!\n_É1"), max_size=5)
    parts = draw(st.lists(st.one_of(filler, st.sampled_from(words or ["-"])), max_size=12))
    return "".join(p.upper() if draw(st.booleans()) else p for p in parts)


@settings(max_examples=400, deadline=None)
@given(pos=word_lists, neg=word_lists, ver=word_lists, whole=st.booleans(), data=st.data())
def test_classify_matches_an_independent_scanner(
    pos: list[str], neg: list[str], ver: list[str], whole: bool, data: st.DataObject
) -> None:
    text = data.draw(texts_with_cues(pos + neg + ver), label="text")
    assume(all(w.lower().upper().lower() == w.lower() for w in pos + neg + ver))
    got = classify(text, positive=pos, negative=neg, verify=ver, word_boundary=whole)
    assert got == reference_label(text, pos, neg, ver, whole)
    for w in pos + neg + ver:
        assert count_words(text, [w], word_boundary=whole) == scan(text, w, whole)
        # whole words are a subset of the substring matches
        assert count_words(text, [w], word_boundary=True) <= count_words(text, [w])


@settings(max_examples=300, deadline=None)
@given(words=word_lists, a=st.text(max_size=30), b=st.text(max_size=30), whole=st.booleans())
def test_counts_add_up_over_a_separator(words: list[str], a: str, b: str, whole: bool) -> None:
    """Steps joined by a character no cue contains: cue counts add up (no match spans it)."""
    sep = "\x00"
    assume(all(sep not in w for w in words))
    joined = count_words(a + sep + b, words, word_boundary=whole)
    assert joined == count_words(a, words, word_boundary=whole) + count_words(
        b, words, word_boundary=whole
    )


# ---------------------------------------------------------------------- hand-off resync
class OpsSession:
    """A session that records the operations resync performs."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)
        self.ops: list[tuple[str, Any]] = []

    def truncate(self, length: int) -> None:
        assert 0 <= length <= len(self.ids)
        self.ops.append(("truncate", length))
        del self.ids[length:]

    def extend(self, ids: Any) -> None:
        self.ops.append(("extend", list(ids)))
        self.ids.extend(ids)


def naive_lcp(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


small_ids = st.lists(st.integers(0, 5), max_size=12)


@settings(max_examples=500, deadline=None)
@given(prompt=small_ids.filter(bool), current=small_ids, target=small_ids, data=st.data())
def test_resync_reaches_the_target_with_the_fewest_operations(
    prompt: list[int], current: list[int], target: list[int], data: st.DataObject
) -> None:
    lcp = naive_lcp(current, target)
    hint = data.draw(st.integers(0, lcp), label="hint")  # any count known to agree
    assert common_prefix_length(current, target, hint) == lcp
    session = OpsSession(prompt + current)
    appended = resync(session, len(prompt), target, hint)  # type: ignore[arg-type]
    assert session.ids == prompt + target
    assert appended == len(target) - lcp
    expected_ops: list[tuple[str, Any]] = []
    if lcp < len(current):
        expected_ops.append(("truncate", len(prompt) + lcp))  # one crop, never below the seam
    if lcp < len(target):
        expected_ops.append(("extend", target[lcp:]))
    assert session.ops == expected_ops


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_resync_on_a_real_kv_cache_equals_a_fresh_prefill(
    tiny_pair: tuple[Any, Any], data: st.DataObject
) -> None:
    """Crop-and-extend of a DynamicCache gives the logits of a fresh prefill of the target."""
    backend = tiny_pair[0]
    vocab = st.integers(0, len(backend.tokenizer) - 1)
    prompt = data.draw(st.lists(vocab, min_size=1, max_size=6), label="prompt")
    written = data.draw(st.integers(0, 6), label="written")
    session = backend.new_session(prompt, GREEDY)
    with one_torch_thread():
        list(session.stream(written))  # cache holds prompt + written ids
    output = list(session.ids[len(prompt) :])
    keep = data.draw(st.integers(0, len(output)), label="keep")
    target = output[:keep] + data.draw(st.lists(vocab, max_size=5), label="new")
    resync(session, len(prompt), target)
    fresh = backend.new_session(prompt + target, GREEDY)
    with one_torch_thread():
        got, want = session.next_logits(), fresh.next_logits()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert session.forwarded <= len(prompt) + written + len(target) + 1  # never a full re-prefill
    session.close()
    fresh.close()


paragraph = st.lists(
    st.sampled_from(["Wait,", "check", "yes", "so", "we", "ad", "d", "x", "4.", "ÿ", "日本"]),
    min_size=1,
    max_size=5,
).map(lambda w: " ".join(w) + "\n\n")


@settings(max_examples=150, deadline=None)
@example(  # found by CI: a replacing step with a verify word, then a verify continuation
    small_script=["Wait,\n\n", "Wait,\n\n", "yes\n\n"],
    large_script=["Wait,\n\n", "Wait,\n\n", "check\n\n"],
    kinds=("char", "word"),
    instruct=False,
)
@given(
    small_script=st.lists(paragraph, min_size=1, max_size=4),
    large_script=st.lists(paragraph, min_size=1, max_size=4),
    kinds=st.sampled_from([("word", "char"), ("char", "word")]),
    instruct=st.booleans(),
)
def test_text_handoff_between_different_tokenizers_never_breaks(
    small_script: list[str], large_script: list[str], kinds: tuple[str, str], instruct: bool
) -> None:
    """Random scripts, two tokenizers: the streamed text is the answer, counts add up."""
    small = ScriptedBackend(small_script, name="s", tokenizer=kinds[0])
    large = ScriptedBackend(large_script, name="l", tokenizer=kinds[1])
    knobs: dict[str, Any] = {"draft_tokens": 3, "verify_tokens": 2, "begin_tokens": 3}
    config = SpeculativeThinkingConfig(**knobs, begin=instruct, not_reasoning=instruct)
    engine = SpeculativeEngine(small, large, config)
    assert not engine.share_ids
    request = Request(small.encode("Q: go"), large.encode("Q: go"), 300, GREEDY)
    events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == finish.text
    assert finish.small.kept_tokens + finish.large.kept_tokens == finish.output_tokens
    assert all(s.closed for s in small.sessions + large.sessions)
    # Each model's session holds its own tokens of a version of the answer (output only grows
    # here: no stop strings), plus at most a step of its own that was never committed:
    # * the model that wrote last holds exactly the answer (the EOS id decodes to nothing);
    # * the large model holds a prefix of the answer: with choose_large its steps are always
    #   kept, so it never holds text outside the answer;
    # * the small model holds a prefix of the answer, unless its last write was a draft the
    #   large step replaced at a boundary: then it holds the output up to that boundary plus
    #   exactly that rejected draft, and only the large model wrote after it (the replacing step,
    #   then e.g. a verify continuation when that step holds a verify word).
    small_text, large_text = (
        backend.decode(backend.sessions[0].ids[backend.sessions[0].prompt_len :])
        for backend in (small, large)
    )
    answer = finish.text
    assert answer in (small_text, large_text)
    assert answer.startswith(large_text)
    if not answer.startswith(small_text):
        drafted = [e for e in events if isinstance(e, DelegationEvent) and e.small_draft]
        last = drafted[-1]  # the small model's last write
        assert last.kind == "reflection" and last.kept == "large"
        assert small_text == answer[: last.position] + last.small_draft
        assert large_text == answer  # the large model wrote everything after that boundary
        after = events[events.index(last) + 1 :]
        assert all(e.author != "small" for e in after if isinstance(e, TextEvent) and e.text)


# -------------------------------------------------------------------- config validator
FIELDS = sorted(SpeculativeThinkingConfig.model_fields)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.text(max_size=4), max_size=3),
    st.tuples(st.text(max_size=4)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["small", "raise", "cue", "\n\n", "0.5", "10"]),
)


def assert_builds_or_names(build: Any, names: list[str]) -> None:
    try:
        cfg = build()
    except ConfigError as exc:
        assert any(name in str(exc) for name in names), (names, str(exc))
        assert isinstance(exc, ValueError)
    except Exception as exc:  # noqa: BLE001 - the property: never another type
        pytest.fail(f"{type(exc).__name__} instead of ConfigError for {names}: {exc}")
    else:
        if isinstance(cfg, SpeculativeThinkingConfig):  # a valid config round-trips
            assert SpeculativeThinkingConfig(**cfg.model_dump()) == cfg


@settings(max_examples=600, deadline=None)
@given(name=st.sampled_from(FIELDS), value=values)
def test_any_value_of_any_field_builds_or_names_the_field(name: str, value: Any) -> None:
    assert_builds_or_names(lambda: SpeculativeThinkingConfig(**{name: value}), [name])
    assert_builds_or_names(lambda: preset("instruct", **{name: value}), [name])
    assert_builds_or_names(
        lambda: SpeculativeThinkingConfig().with_updates(**{name: value}), [name]
    )


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=6)), values, max_size=4
    )
)
def test_any_field_combination_builds_or_names_a_field(fields: dict[str, Any]) -> None:
    assert_builds_or_names(lambda: SpeculativeThinkingConfig(**fields), list(fields))


CHAT_KNOBS = ["temperature", "top_p", "top_k", "timeout", "large_step_timeout", "fallback"]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(CHAT_KNOBS), value=values)
@example(name="timeout", value=1e-300)  # valid, and over before the first token
@example(name="temperature", value="hot")
def test_chat_model_knobs_are_config_errors_at_construction_and_call(name: str, value: Any) -> None:
    """The chat model's knobs: a ConfigError at construction, a typed error at call time."""
    chat_model.clear_backend_cache()
    small = ScriptedBackend(["Hi."], name="s")
    try:
        ChatSpeculativeThinking(small_model=small, large_model=small, **{name: value})
    except ConfigError as exc:
        assert name in str(exc) or "time_out" in str(exc)
    model = ChatSpeculativeThinking(small_model=small, large_model=small, mode="small")
    try:
        reply = model.invoke("hi", **{name: value})
    except SpThinkError as exc:
        assert name in str(exc) or "time_out" in str(exc)
    else:  # a valid value: the scripted answer, unless a (tiny) request timeout cut it short
        outcome = (reply.content, reply.response_metadata["finish_reason"])
        if name == "timeout" and outcome[1] == "timeout":
            # "Hi." is one scripted token: the cap fell before it or right after it.
            assert outcome[0] in ("", "Hi.")
        else:
            assert outcome == ("Hi.", "stop")


# ------------------------------------------------------------------- tool-call parsing
TAG_BITS = ["<tool_call>", "</tool_call>", "<tool_", "{", "}", "[", "]", '"name"', ":", '"', "```"]
noisy_text = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(TAG_BITS)), max_size=14).map(
    "".join
)
tool_names = st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), max_size=3)


@settings(max_examples=500, deadline=None)
@given(text=noisy_text, names=tool_names, cuts=st.lists(st.integers(1, 9), max_size=30))
def test_tool_call_parser_never_raises_and_loses_no_text(
    text: str, names: list[str], cuts: list[int]
) -> None:
    parsed = parse_tool_calls(text, names)
    if not parsed.tool_calls and not parsed.invalid_tool_calls:
        assert parsed.content == text  # an answer without calls passes through unchanged
    for call in parsed.invalid_tool_calls:
        assert call["error"] and isinstance(call["args"], str)
    stream, pieces, at = ToolCallStream(names), [], 0
    for cut in cuts:  # the streaming parser, fed in arbitrary pieces, agrees with the whole
        pieces += stream.feed(text[at : at + cut])
        at += cut
    pieces += stream.feed(text[at:]) + stream.flush()
    assert "".join(p[1] for p in pieces if p[0] == "text") == parsed.content
    streamed = [p[1] for p in pieces if p[0] == "call"]
    whole = parsed.tool_calls + parsed.invalid_tool_calls
    assert sorted(repr((c["name"], c["args"])) for c in streamed) == sorted(
        repr((c["name"], c["args"])) for c in whole
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_characters="<", blacklist_categories=("Cs",))),
)
json_args = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4,
)
prose = st.text(alphabet=st.characters(blacklist_characters="<{[`", blacklist_categories=("Cs",)))


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), json_args),
        min_size=1,
        max_size=3,
    ),
    texts=st.lists(prose, min_size=4, max_size=4),
    key=st.sampled_from(["arguments", "parameters"]),
    string_args=st.booleans(),
)
def test_generated_tool_calls_round_trip(
    calls: list[tuple[str, dict[str, Any]]],
    texts: list[str],
    key: str,
    string_args: bool,
) -> None:
    """Tagged calls between arbitrary text parse back to the same names and arguments."""
    answer = texts[0]
    for i, (name, args) in enumerate(calls):
        payload = json.dumps(args) if string_args else args  # JSON-encoded arguments decode too
        answer += f"{TOOL_CALL_OPEN}{json.dumps({'name': name, key: payload})}{TOOL_CALL_CLOSE}"
        answer += texts[i + 1] if i + 1 < len(texts) else ""
    parsed = parse_tool_calls(answer, [name for name, _ in calls])
    assert parsed.invalid_tool_calls == []
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == calls
    used = texts[: len(calls) + 1]
    assert "".join(parsed.content.split()) == "".join("".join(used).split())
    # the plain-JSON form (the whole answer is the call) round-trips as well
    name, args = calls[0]
    plain = parse_tool_calls(json.dumps({"name": name, "arguments": args}), [name])
    assert [(c["name"], c["args"]) for c in plain.tool_calls] == [(name, args)]


def test_a_closing_tag_inside_an_argument_is_an_invalid_call_not_a_crash() -> None:
    """Known limit: the first ``</tool_call>`` ends the block, even inside a JSON string."""
    args = {"html": f"a {TOOL_CALL_CLOSE} b"}
    text = f"{TOOL_CALL_OPEN}{json.dumps({'name': 'f', 'arguments': args})}{TOOL_CALL_CLOSE}"
    parsed = parse_tool_calls(text, ["f"])
    assert parsed.tool_calls == [] and len(parsed.invalid_tool_calls) == 1
    assert parsed.invalid_tool_calls[0]["name"] == "f"
