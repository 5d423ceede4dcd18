"""Shared fixtures of the core's tests: an isolated registry, the fake backend,
a tiny GGUF file, and a way to run Python in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from inference import registry
from inference.testing import FakeBackend
from inference.testing.gguf_writer import write_gguf

# Property tests: no per-example deadline (the machine may be busy); in CI the
# same examples every run, so that a red CI is reproducible.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SRC = REPO / "src"
PLUGINS = TESTS / "plugins"

#: Environment variables that change what the library does; tests start without them.
LIBRARY_ENV = (
    "INFERENCE_BACKEND",
    "INFERENCE_LOG",
    "INFERENCE_CACHE_DIR",
    "INFERENCE_API_KEY",
    "OPENAI_API_KEY",
)


@pytest.fixture(autouse=True)
def _no_library_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LIBRARY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clean_registry() -> Iterator[Any]:
    """The registry emptied of every installed backend for one test, then restored.

    The entry-point group counts as read, so only what the test registers is
    there. Yields the ``inference.registry`` module.
    """
    with registry._lock:
        saved = (dict(registry._entries), dict(registry._aliases), registry._scanned)
        registry._entries.clear()
        registry._aliases.clear()
        registry._scanned = True
    try:
        yield registry
    finally:
        with registry._lock:
            registry._entries.clear()
            registry._entries.update(saved[0])
            registry._aliases.clear()
            registry._aliases.update(saved[1])
            registry._scanned = saved[2]


@pytest.fixture
def fake_backend(clean_registry: Any) -> FakeBackend:
    """A FakeBackend that loads "fake" and "gguf" models, registered alone."""
    backend = FakeBackend(formats=("fake", "gguf"), reply="Hello from the fake. ")
    registry.register_backend(backend)
    return backend


def make_tiny_gguf(path: Path, *, name: str = "Tiny", context_length: int = 128) -> Path:
    """A small but valid GGUF model file (a llama header and two tensors)."""
    write_gguf(
        path,
        {
            "general.architecture": "llama",
            "general.name": name,
            "llama.context_length": context_length,
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(16)],
        },
        [("blk.0.w.weight", (32, 2), 2, None), ("norm.weight", (8,), 0, None)],
    )
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return make_tiny_gguf(tmp_path / "tiny.gguf")


class Child:
    """Runs Python code in a fresh interpreter of this environment.

    With ``isolated=True`` the child runs with ``-S``: site-packages are left
    out, so it sees the core from this checkout and the given ``paths`` only,
    and no installed backend (nor the core's own ``openai`` entry point)
    takes part. The library's environment variables are never inherited.
    """

    repo = REPO
    src = SRC
    plugins = PLUGINS

    def env(self, *paths: os.PathLike[str] | str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in LIBRARY_ENV}
        env["PYTHONPATH"] = os.pathsep.join(os.fspath(p) for p in paths)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        return env

    def run(
        self,
        code: str,
        *,
        paths: tuple[os.PathLike[str] | str, ...] = (),
        isolated: bool = False,
        args: tuple[str, ...] = (),
        timeout: float = 120,
        **extra_env: str,
    ) -> subprocess.CompletedProcess[str]:
        search = (*paths, SRC) if isolated else paths
        cmd = [sys.executable, *(["-S"] if isolated else []), "-c", code, *args]
        return subprocess.run(
            cmd,
            env=self.env(*search, **extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=TESTS,
            check=False,
        )

    @staticmethod
    def json(proc: subprocess.CompletedProcess[str]) -> Any:
        """The JSON value the child printed on its last line of stdout."""
        assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def child() -> Child:
    return Child()


@pytest.fixture
def gguf_factory() -> Any:
    """``make(path, name=..., context_length=...)``: write a tiny GGUF model file."""
    return make_tiny_gguf
