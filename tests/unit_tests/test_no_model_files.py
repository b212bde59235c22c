"""The rules of the unit tests themselves: the tiny local tokenizer, and the guard that keeps unit
tests off the embedded model files."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_spthink import models
from langchain_spthink.backends.loading import load_backend
from langchain_spthink.backends.remote import RemoteBackend, load_tokenizer
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.errors import ModelLoadError
from tests import tiny_models
from tests.unit_tests._no_model_files import (
    EMBEDDED_PACKAGES,
    MESSAGE,
    EmbeddedGuard,
    no_embedded_models,
)

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------- the tiny tokenizer
def test_tiny_tokenizer_special_tokens_and_size(tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.convert_tokens_to_ids(list(tiny_models.SPECIAL_TOKENS))
    assert ids == [0, 1, 2]  # as SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.eos_token_id == 2
    assert 512 <= len(tiny_tokenizer) <= 2048  # trained merges on top of the 256 bytes
    assert tiny_tokenizer.encode("hi", add_special_tokens=True) == tiny_tokenizer.encode(
        "hi", add_special_tokens=False
    )  # no BOS added
    assert tiny_tokenizer.encode("<|im_end|>", add_special_tokens=False) == [2]
    assert tiny_tokenizer.decode([5, 2, 6], skip_special_tokens=True) == tiny_tokenizer.decode(
        [5, 6]
    )


def test_tiny_tokenizer_newlines_and_words(tiny_tokenizer: Any) -> None:
    enc = tiny_tokenizer.encode
    assert len(enc("\n")) == 1 and len(enc("\n\n")) == 1  # a paragraph break is one token
    # GPT-2's pre-tokenizer (as SmolLM2's): inside text the break is "\n" then "\n"
    assert enc("step.\n\nNext") == enc("step.") + enc("\n") + enc("\n") + enc("Next")
    for word in (" the", " answer", " check", " total"):
        assert len(enc(word)) == 1, word  # trained merges: common words are single tokens
    assert enc("2024") == [enc(d)[0] for d in "2024"]  # digits one by one
    pieces = [tiny_tokenizer.decode([i]) for i in enc("日本 🙂")]
    assert any("\ufffd" in p for p in pieces)  # unseen characters stay split over byte tokens


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=60))
def test_tiny_tokenizer_round_trips_any_text(tiny_tokenizer: Any, text: str) -> None:
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tiny_tokenizer.decode(ids) == text


def test_tiny_tokenizer_chat_template(tiny_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "2+2?"}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tiny_tokenizer_is_deterministic(tiny_tokenizer: Any) -> None:
    """Trained again in a fresh process (its own thread pool), the same vocabulary and merges."""
    code = "from tests import tiny_models; print(tiny_models._tokenizer_json())"
    fresh = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    again, here = json.loads(fresh)["model"], json.loads(tiny_models._tokenizer_json())["model"]
    assert again["vocab"] == here["vocab"] and again["merges"] == here["merges"]
    assert len(here["vocab"]) == len(tiny_tokenizer)


def test_tiny_tokenizer_directory_is_a_tokenizer_spec(
    tiny_tokenizer: Any, tiny_tokenizer_dir: Path
) -> None:
    loaded, template, extra_eos = load_tokenizer(str(tiny_tokenizer_dir))
    text = "Wait, 12 × 7 = 84.\n\n日本"
    assert loaded.encode(text, add_special_tokens=False) == tiny_tokenizer.encode(
        text, add_special_tokens=False
    )
    assert template == tiny_models.CHAT_TEMPLATE and extra_eos == ()
    remote = RemoteBackend("http://127.0.0.1:9/v1", "m", tokenizer=str(tiny_tokenizer_dir))
    assert remote.eos_ids == {2} and remote.context_length == 8192


def test_tiny_pair_shares_the_tiny_tokenizer(tiny_pair: tuple[Any, Any]) -> None:
    small, large = tiny_pair
    assert small.tokenizer_fingerprint == large.tokenizer_fingerprint
    assert small.eos_ids == large.eos_ids == {2}
    assert small.model.config.vocab_size == len(small.tokenizer)


# --------------------------------------------------------------------------------- the guard
@pytest.mark.parametrize("alias", sorted(models.EMBEDDED_MODELS))
def test_guard_refuses_every_way_to_the_embedded_models(
    embedded_guard: EmbeddedGuard, alias: str
) -> None:
    attempts = [
        lambda: models.load_model(alias),
        lambda: TransformersBackend.load(alias),
        lambda: load_tokenizer(alias),  # a remote backend's local tokenizer
        lambda: RemoteBackend("http://127.0.0.1:9/v1", "m", tokenizer=alias),
        lambda: load_backend(f"openai+http://127.0.0.1:9/v1?model=m&tokenizer={alias}"),
        lambda: load_backend(f"llamacpp:{alias}"),
        lambda: models.EMBEDDED_MODELS[alias].gguf_path(),
        lambda: ChatSpeculativeThinking(small_model=alias, mode="small").invoke("hi"),
        lambda: ChatSpeculativeThinking(
            small_model=ScriptedBackend(["a"]), large_model=alias, mode="large"
        ).invoke("hi"),
    ]
    for number, attempt in enumerate(attempts):
        with pytest.raises(pytest.fail.Exception, match=MESSAGE):
            attempt()
        assert len(embedded_guard.attempts) == number + 1, number
    embedded_guard.attempts.clear()  # refused as they should be: this test passes


@pytest.mark.parametrize("package", sorted(EMBEDDED_PACKAGES))
def test_guard_refuses_importing_the_packages(embedded_guard: EmbeddedGuard, package: str) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"import of {package}"):
        importlib.import_module(package)
    with pytest.raises(pytest.fail.Exception, match=f"import of {package}"):
        importlib.util.find_spec(package)
    assert len(embedded_guard.attempts) == 2
    embedded_guard.attempts.clear()


def test_guard_fails_the_test_even_when_the_failure_is_swallowed(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=MESSAGE):
        with no_embedded_models(tmp_path) as inner:
            try:
                models.load_model("gemma3-270m")
            except BaseException:  # noqa: B036 - what careless code under test could do
                pass
            assert inner.attempts  # recorded ...
    # ... and failed on leaving the guard (the autouse guard of this test saw nothing)


def test_guard_leaves_other_packages_alone(tmp_path: Path) -> None:
    missing = models.EmbeddedModel("x", "d", None, "no_such_pkg_spthink", "pip install x", "f")
    with pytest.raises(ModelLoadError, match="no_such_pkg_spthink is not installed"):
        missing.gguf_path()
    assert importlib.util.find_spec("json") is not None
