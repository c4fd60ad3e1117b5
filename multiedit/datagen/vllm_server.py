"""Starting vLLM's OpenAI-compatible server for datagen stage 1, and waiting until it is healthy.

vLLM lives in its own virtualenv (``scripts/setup_vllm_env.sh`` builds ``.venv-vllm``): its pinned
torch/transformers must not constrain multiedit's. The server runs as the module
``vllm.entrypoints.openai.api_server`` with the strict-JSON structured-output backend ``guidance``
(llguidance), so ``response_format`` json_schema requests always yield schema-valid JSON.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from ..errors import MultiEditError

logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per /health poll

#: ``--structured-outputs-config`` of vLLM ≥ 0.11 (older versions: ``--guided-decoding-backend``).
#: ``disable_any_whitespace`` keeps the JSON compact, so no tokens are spent on indentation.
STRUCTURED_OUTPUTS = '{"backend": "guidance", "disable_any_whitespace": true}'
SETUP_HINT = (
    "build it with `bash scripts/setup_vllm_env.sh` (or `make vllm-env`), "
    "or point --venv / MULTIEDIT_VLLM_PYTHON at a Python with vllm"
)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_vllm_python() -> str:
    """``$MULTIEDIT_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python`` (whether or not it exists yet)."""
    return os.environ.get("MULTIEDIT_VLLM_PYTHON") or str(repo_root() / ".venv-vllm" / "bin" / "python")


def python_of_venv(venv: str | Path) -> str:
    return str(Path(venv) / "bin" / "python")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def vllm_command(
    model: str,
    *,
    python: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "float32",
    enforce_eager: bool = True,
    chunked_prefill: bool = False,
    max_model_len: int | None = None,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that starts the server (float32 + eager: what vLLM's CPU backend runs reliably).

    Chunked prefill is off by default: vLLM 0.32's CPU worker crashes its engine ("CPU Generator
    does not use offset") when a request with its own sampling ``seed`` (we send one per request,
    so retries differ and runs repeat) is prefilled in chunks. GPU users may turn it back on.
    """
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--structured-outputs-config",
        STRUCTURED_OUTPUTS,
    ]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if not chunked_prefill:
        cmd.append("--no-enable-chunked-prefill")
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    return cmd + list(extra_args)


class VLLMServer:
    """A vLLM OpenAI server in a child process (its own process group, so :meth:`stop` ends its workers).

    Args:
        model: a local model folder (or a hub name, for users with network access).
        python: the Python with vllm (default :func:`default_vllm_python`).
        log_path: file for the server's stdout/stderr; ``None`` inherits this process's.
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache on CPU) unless already set.
        other arguments: see :func:`vllm_command`.

    Use ``with VLLMServer(...) as server: server.wait_healthy()``; ``server.url`` is the API root.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        python: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        dtype: str = "float32",
        enforce_eager: bool = True,
        chunked_prefill: bool = False,
        max_model_len: int | None = None,
        served_model_name: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        kv_cache_gib: int = 1,
    ):
        self.python = python or default_vllm_python()
        self.host, self.port = host, port
        self.model = str(model)
        self.log_path = Path(log_path) if log_path else None
        self.kv_cache_gib = kv_cache_gib
        self.command = vllm_command(
            self.model,
            python=self.python,
            host=host,
            port=port,
            dtype=dtype,
            enforce_eager=enforce_eager,
            chunked_prefill=chunked_prefill,
            max_model_len=max_model_len,
            served_model_name=served_model_name,
            extra_args=extra_args,
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> VLLMServer:
        if not Path(self.python).exists():
            raise MultiEditError(f"No vLLM Python at {self.python}; {SETUP_HINT}.")
        if Path(self.model).exists() and not (Path(self.model) / "config.json").exists():
            raise MultiEditError(f"Model folder {self.model} has no config.json; pass a Hugging Face model folder.")
        if port_in_use(self.host, self.port):
            raise MultiEditError(f"Port {self.port} on {self.host} is already in use; pass another --port.")
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        if Path(self.model).exists():  # a local folder needs no hub; don't let vLLM try one
            env.setdefault("HF_HUB_OFFLINE", "1")
        out = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        return self

    def wait_healthy(self, timeout: float = 600.0, poll: float = 1.0) -> str:
        """Block until ``GET /health`` answers 200; return :attr:`url`. Raises if the server dies or times out."""
        if self.process is None:
            raise RuntimeError("VLLMServer.wait_healthy() called before start().")
        health = f"http://{self.host}:{self.port}/health"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise MultiEditError(
                        f"The vLLM server exited with code {code} before it was ready{self._log_hint()}"
                    )
                try:
                    if http.get(health).status_code == 200:
                        return self.url
                except httpx.HTTPError:
                    pass
                time.sleep(poll)
        self.stop()
        raise MultiEditError(f"The vLLM server was not healthy after {timeout:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "; see its output above."
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it has not exited within ``timeout``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)  # the group we created with start_new_session
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
