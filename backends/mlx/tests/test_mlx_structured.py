"""Structured output and tool calls on MLX (its CPU device), with SmolLM2 in
float32 (:mod:`fast_cpu`).

MLX's CPU build decodes it at about 16 tokens/s here, so these checks run a
few generations of each kind; ``bench/bench_structured.py --backend mlx``
runs the issue's full 50 / 20 / 20 / 20.
"""

from __future__ import annotations

import pytest

from inference import ConstraintError, Message, TextModel
from inference.constraints import KINDS, Constraint
from inference.testing.structured import (
    choice_validity,
    regex_validity,
    schema_validity,
    tool_validity,
)


def test_sampled_generations_validate(model: TextModel) -> None:
    assert model.capabilities.constraints == frozenset(KINDS)
    for result in (
        schema_validity(model, 2),
        regex_validity(model, 3),
        choice_validity(model, 3),
        tool_validity(model, 2),  # the second reuses the first's prompt cache
    ):
        assert result.valid == result.runs, (str(result), result.failures)


def test_the_mask_covers_the_models_whole_vocabulary(model: TextModel) -> None:
    guide = model._guide(Constraint("choice", ("🙂 Ω",)))  # type: ignore[attr-defined]
    allowed = guide.allowed()
    assert allowed.shape == (model.info.vocab_size,) and allowed.sum() >= 1
    eog = sorted(model._eog_ids)  # type: ignore[attr-defined]
    assert not allowed[eog].any()
    # The multi-byte text arrives whole, and the stream ends at the choice.
    stream = model.chat([Message("user", "Smile.")], choice=["🙂 Ω"], max_tokens=8)
    assert stream.text() == "🙂 Ω" and stream.finish_reason == "stop"


def test_a_bad_schema_fails_at_the_call(model: TextModel) -> None:
    with pytest.raises(ConstraintError, match="objec"):
        model.chat([Message("user", "x")], json_schema={"type": "objec"})
    ready = model.generate("Hi", max_tokens=1)
    ready.text()
    assert ready.finish_reason in ("stop", "length") and ready.err is None
