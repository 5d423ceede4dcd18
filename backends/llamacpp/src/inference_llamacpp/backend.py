"""The ``llama_cpp`` backend object: cheap to import, imports llama.cpp only to load.

The registry reads ``available()``, ``reason``, ``priority`` and ``formats``
from here without importing llama-cpp-python (``available()`` runs the engine
self-test in a child process, once per build and machine); the engine module
is imported by :meth:`LlamaCppBackend.load_model` alone.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from inference.gguf import read_header
from inference.options import LoadConfig, Option, load_config
from inference.protocols import TextModel
from inference.registry import install_command

__all__ = ["INSTALL_HINT", "LlamaCppBackend"]

INSTALL_HINT = f"{install_command('llama_cpp')} (from the inference checkout)"


class LlamaCppBackend:
    """Runs GGUF models in-process with llama-cpp-python, on whatever that build uses."""

    name = "llama_cpp"
    aliases = ("llamacpp", "llama.cpp")
    priority = 50
    formats = ("gguf",)

    def __init__(self) -> None:
        self.reason = ""

    def available(self) -> bool:
        """Whether llama-cpp-python is installed and its build passes the
        engine self-test here (:mod:`inference_llamacpp.selftest`: once per
        build and machine, in a child process, cached)."""
        if importlib.util.find_spec("llama_cpp") is None:
            self.reason = f"llama-cpp-python is not installed: {INSTALL_HINT}"
            return False
        from .selftest import rebuild_command, verdict

        tested = verdict()
        if not tested.ok:
            fix = "" if tested.retry else f"; rebuild: {rebuild_command()}"
            self.reason = tested.reason + fix
            return False
        self.reason = "llama.cpp in-process (CPU, or the GPU its build supports); self-test passed"
        return True

    def load_model(
        self, path: str | os.PathLike[str], *opts: Option | LoadConfig, **kwargs: Any
    ) -> TextModel:
        cfg = load_config(*opts, **kwargs)
        header = read_header(path)  # validates before llama.cpp sees the file
        from .engine import LlamaCppModel

        return LlamaCppModel.load(path, cfg, header=header)
