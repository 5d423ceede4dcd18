"""No request can hurt another (the core's part): what a hostile or careless
call can make the library spend is bounded, and refused with a clear error."""

from __future__ import annotations

from typing import Any

import pytest

import inference
from inference import GenerationError, Message
from inference.testing import FakeBackend


def test_a_prompt_that_cannot_fit_is_refused_before_tokenising() -> None:
    model = FakeBackend(context_length=256).load_model("m")  # a byte a token
    encoded: list[int] = []
    rendered: list[int] = []
    encode, render = model._encode, model._render_chat

    def counting_encode(text: str, add_bos: bool) -> list[int]:
        encoded.append(len(text))
        return encode(text, add_bos)

    def counting_render(messages: Any, variables: Any = None) -> str:
        rendered.append(len(messages))
        return render(messages, variables)

    model._encode = counting_encode  # type: ignore[method-assign]
    model._render_chat = counting_render  # type: ignore[method-assign]
    stream = model.generate("<|im_start|>" * 64_000, max_tokens=1)
    with pytest.raises(GenerationError, match="768000 bytes, more than its context of 256"):
        stream.text()
    # 100,000 one-character messages: refused before the template renders them.
    many = [Message("user", "x")] * 100_000
    with pytest.raises(GenerationError, match="100000 bytes"):
        model.chat(many, max_tokens=1)
    assert encoded == [] and rendered == []
    assert model.generate("hi", max_tokens=2).text()  # the model is ready


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [("temperature", 1e-40, 0.0), ("temperature", 1e-7, 0.0), ("temperature", 0.5, 0.5)],
)
def test_a_temperature_too_small_for_float32_is_greedy(
    option: str, value: float, stored: float
) -> None:
    assert getattr(inference.GenerateConfig(**{option: value}), option) == stored


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("temperature", float("inf")),
        ("repeat_penalty", 1e-40),
        ("repeat_penalty", float("inf")),
        ("top_p", float("nan")),
        ("min_p", float("-inf")),
    ],
)
def test_values_that_break_sampling_are_refused(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        inference.GenerateConfig(**{option: value})
