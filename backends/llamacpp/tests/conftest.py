"""Fixtures for the llama.cpp backend's tests: the real SmolLM2 model."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from inference.testing import backend_fixtures

model_path, model = backend_fixtures("llama_cpp", needs=("llama_cpp",))
