"""The core conformance suite against the MLX backend and SmolLM2 (GGUF).

MLX's CPU build decodes SmolLM2-135M at about 8 tokens/s on a 2-core
machine, so the checks ask for few tokens and the concurrency check runs
four threads instead of eight.
"""

from __future__ import annotations

import inference
from inference.testing import TextModelConformance, requires, smollm2_path

pytestmark = requires("mlx", "mlx_lm")


class TestMlxConformance(TextModelConformance):
    max_tokens = 6
    threads = 4

    @classmethod
    def make_model(cls) -> inference.TextModel:
        path = smollm2_path()
        assert path is not None
        return inference.load_model(path, backend="mlx")
