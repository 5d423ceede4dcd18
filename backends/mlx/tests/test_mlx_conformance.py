"""The core conformance suite against the MLX backend and SmolLM2 (a GGUF
file in float32, :mod:`fast_cpu`), and again on SmolLM2 decoding
speculatively.

MLX's CPU build decodes it at about 16 tokens/s on a 2-core machine, so the
checks ask for few tokens and the concurrency check runs four threads
instead of eight.
"""

from __future__ import annotations

from fast_cpu import smollm2_f32

import inference
from inference.testing import TextModelConformance, requires

pytestmark = requires("mlx", "mlx_lm")


class TestMlxConformance(TextModelConformance):
    max_tokens = 6
    threads = 4

    @classmethod
    def make_model(cls) -> inference.TextModel:
        return inference.load_model(smollm2_f32(), backend="mlx")


class TestMlxSpeculativeConformance(TestMlxConformance):
    """The same suite on a model that decodes speculatively (prompt lookup,
    and the same file as its draft model where lookup has no guess),
    checking every guess it has whether or not guesses pay on this machine:
    nothing a caller sees changes."""

    #: Lookup guesses on the first, the draft model on the second (no n-gram
    #: in it comes twice).
    guessing_prompts = ("Count: 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,", "Water boils at")

    @classmethod
    def make_model(cls) -> inference.TextModel:
        path = smollm2_f32()
        model = inference.load_model(path, backend="mlx", speculative="ngram", draft_model=path)
        model._scheduler._pacer.fixed = True  # type: ignore[attr-defined]
        return model
