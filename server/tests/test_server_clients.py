"""``inference serve`` judged by clients no one here wrote: the official
``openai`` and ``ollama`` Python packages, against SmolLM2 on llama.cpp
behind a real server on a loopback port; and this project's own ``openai``
backend running the whole conformance suite through it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import ClassVar

import ollama
import openai
import pytest
from serving import Running, running

import inference
from inference.testing import TextModelConformance

ASK = [{"role": "user", "content": "Name a large animal."}]


@pytest.fixture(scope="module")
def client(served: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)


def test_openai_chat(client: openai.OpenAI, smol: inference.TextModel) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=16)  # type: ignore[arg-type]
    text = reply.choices[0].message.content
    direct = smol.chat(ASK, max_tokens=16).text()
    assert text == direct and text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.prompt_tokens > 0


def test_openai_chat_streamed(client: openai.OpenAI, smol: inference.TextModel) -> None:
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == smol.chat(ASK, max_tokens=16).text()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_completions(client: openai.OpenAI, smol: inference.TextModel) -> None:
    prompt = "Count: one, two, three,"
    whole = client.completions.create(model="smollm2", prompt=prompt, max_tokens=8)
    assert whole.choices[0].text == smol.generate(prompt, max_tokens=8).text()
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    streamed = client.completions.create(model="smollm2", prompt=prompt, max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_openai_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm2"]


def test_openai_structured_output_and_tools(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "string", "maxLength": 20}},
        "required": ["animal"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="smollm2",
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert set(json.loads(reply.choices[0].message.content or "")) == {"animal"}
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    called = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=40,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
    assert isinstance(json.loads(calls[0].function.arguments), dict)  # type: ignore[union-attr]


def test_a_schema_whose_compilation_explodes_is_a_400_and_hurts_no_one(
    client: openai.OpenAI, smol: inference.TextModel
) -> None:
    """The fault-finding pass's 4 KB schema (its compilation doubles in memory
    with each pattern: 18 took 2.4 GB, 100 grew the server to 17.5 GB until
    the kernel killed it) is refused by the compile limit, while a stream
    beside it goes on and equals itself alone."""
    alone = smol.chat([inference.Message(**ASK[0])], max_tokens=24).text()
    bomb = {"allOf": [{"type": "string", "pattern": f".*{i}.*"} for i in range(100)]}
    beside = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=24,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    first = next(iter(beside))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="smollm2",
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": bomb}},
        )
    assert "the limit on compiling a constraint" in str(err.value)
    rest = "".join(c.choices[0].delta.content or "" for c in beside if c.choices)
    assert (first.choices[0].delta.content or "") + rest == alone


def test_ollama_chat_and_generate(served: Running, smol: inference.TextModel) -> None:
    c = ollama.Client(host=served.url)
    reply = c.chat(model="smollm2", messages=ASK, options={"num_predict": 16, "temperature": 0})
    assert reply.message.content == smol.chat(ASK, max_tokens=16).text()
    assert reply.done and (reply.eval_count or 0) > 0
    parts = list(c.chat(model="smollm2", messages=ASK, stream=True, options={"num_predict": 16}))
    assert "".join(p.message.content or "" for p in parts) == reply.message.content
    assert parts[-1].done
    made = c.generate(model="smollm2", prompt="Name a large animal.", options={"num_predict": 16})
    assert made.response == reply.message.content  # rendered through the chat template too
    raw = c.generate(
        model="smollm2", prompt="Count: one, two,", raw=True, options={"num_predict": 4}
    )
    assert raw.response == smol.generate("Count: one, two,", max_tokens=4).text()
    assert [m.model for m in c.list().models] == ["smollm2"]


def test_ollama_logprobs_think_and_num_ctx(served: Running, smol: inference.TextModel) -> None:
    """Ollama's logprobs as it returns them; think and an oversized num_ctx
    refused (SmolLM2 does not reason; it is loaded with 2048 tokens)."""
    c = ollama.Client(host=served.url)
    reply = c.chat(
        model="smollm2", messages=ASK, logprobs=True, top_logprobs=3, options={"num_predict": 6}
    )
    assert reply.logprobs is not None and len(reply.logprobs) >= 1
    mine = smol.chat(ASK, max_tokens=6, logprobs=3)
    expected = [t for t in mine if t.text]
    assert [p.token for p in reply.logprobs] == [t.text for t in expected]
    assert all(
        abs(p.logprob - (t.logprob or 0.0)) < 1e-3
        for p, t in zip(reply.logprobs, expected, strict=True)
    )
    assert all(len(p.top_logprobs or []) == 3 for p in reply.logprobs)
    parts = list(
        c.generate(
            model="smollm2", prompt="Hi", logprobs=True, stream=True, options={"num_predict": 4}
        )
    )
    assert sum(len(p.logprobs or []) for p in parts) >= 1
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        c.chat(model="smollm2", messages=ASK, think=True)
    assert c.chat(model="smollm2", messages=ASK, think=False, options={"num_predict": 2}).done
    with pytest.raises(ollama.ResponseError, match="loaded context of 2048"):
        c.chat(model="smollm2", messages=ASK, options={"num_ctx": 8192})
    assert c.chat(model="smollm2", messages=ASK, options={"num_ctx": 1024, "num_predict": 2}).done


class TestConformanceThroughInferenceServe(TextModelConformance):
    """The whole contract, over HTTP: the openai backend against inference serve."""

    url: ClassVar[str] = ""

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, smol: inference.TextModel) -> Iterator[None]:
        with running(smol, name="smollm2", parallel=1) as r:
            cls.url = r.url
            yield

    @classmethod
    def make_model(cls) -> inference.TextModel:
        return inference.load_model(f"{cls.url}/v1", context_len=2048)
