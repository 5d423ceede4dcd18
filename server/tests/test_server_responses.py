"""OpenAI's Responses API on inference serve, judged by the official
``openai`` SDK (``responses.create`` and ``responses.stream``) and LangChain's
``ChatOpenAI(use_responses_api=True)``: SmolLM2 on llama.cpp for text, tools,
JSON schemas and ``previous_response_id``; the fake backend for reasoning
items and the options reaching the model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from serving import THINKING_TEMPLATE, Recording, Running, running

from inference.testing import FakeBackend

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def client(r: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{r.url}/v1", api_key="x", max_retries=0)


def test_text_whole_and_streamed(served: Running) -> None:
    c = client(served)
    whole = c.responses.create(
        model="smollm2", input="What is the capital of France?", max_output_tokens=12
    )
    assert whole.status in ("completed", "incomplete") and whole.model == "smollm2"
    assert whole.output_text and whole.usage is not None and whole.usage.input_tokens > 0
    with c.responses.stream(
        model="smollm2", input="What is the capital of France?", max_output_tokens=12
    ) as s:
        events = list(s)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type == f"response.{whole.status}"  # completed, or incomplete at the limit
    assert "".join(deltas) == last.response.output_text == whole.output_text  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    short = c.responses.create(model="smollm2", input="Count to fifty.", max_output_tokens=3)
    assert short.status == "incomplete"
    assert short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens"


def test_a_function_call_and_its_output_round_trip(served: Running) -> None:
    c = client(served)
    first = c.responses.create(
        model="smollm2",
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    with c.responses.stream(
        model="smollm2",
        input="What is the weather in Rome?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=64,
    ) as s:
        kinds = [e.type for e in s]
        streamed = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert [o.type for o in streamed.output] == ["function_call"]
    answer = c.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C."}
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=24,
    )
    assert answer.output and answer.previous_response_id == first.id


def test_a_json_schema_format_is_followed(served: Running) -> None:
    c = client(served)
    got = c.responses.create(
        model="smollm2",
        input="Invent a person.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
        },
        max_output_tokens=64,
    )
    person = json.loads(got.output_text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    fmt = {"format": {"type": "json_schema", "name": "p", "schema": PERSON, "strict": True}}
    with c.responses.stream(
        model="smollm2",
        input="Invent a person.",
        text=fmt,
        max_output_tokens=64,  # type: ignore[arg-type]
    ) as s:
        streamed = s.get_final_response()
    assert json.loads(streamed.output_text) == person  # greedy: the same person
    loose = {"type": "object", "properties": {"name": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError, match="every property required"):
        c.responses.create(
            model="smollm2",
            input="x",
            text={"format": {"type": "json_schema", "name": "p", "schema": loose, "strict": True}},
        )
    # The chat endpoint's strict flag means the same (extra keys cannot pass).
    reply = c.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "p",
                "strict": True,
                "schema": {k: v for k, v in PERSON.items() if k != "additionalProperties"},
            },
        },
        max_tokens=64,
    )
    assert set(json.loads(reply.choices[0].message.content or "{}")) == {"name", "age"}
    with pytest.raises(openai.BadRequestError, match="additionalProperties false"):
        c.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "p",
                    "strict": True,
                    "schema": {**PERSON, "additionalProperties": True},
                },
            },
        )


def test_previous_response_id_continues_and_the_store_is_bounded(served: Running) -> None:
    c = client(served)
    first = c.responses.create(
        model="smollm2", input="My name is Ada. Say hi.", max_output_tokens=16
    )
    follow = c.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=16,
    )
    with c.responses.stream(
        model="smollm2",
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=16,
    ) as s:
        events = list(s)
    assert events[-1].response.output_text == follow.output_text  # type: ignore[union-attr]
    assert follow.usage is not None and first.usage is not None
    assert follow.usage.input_tokens > first.usage.input_tokens  # the history came along
    assert follow.usage.input_tokens_details.cached_tokens > 0  # and its KV was reused
    assert c.responses.retrieve(first.id).id == first.id
    c.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="smollm2", previous_response_id=first.id, input="x")
    unkept = c.responses.create(model="smollm2", input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unkept.id)


def test_the_store_evicts_the_least_recently_used_past_its_bytes() -> None:
    from inference_server.responses import NotStored, ResponseStore

    from inference import Message

    store = ResponseStore(budget=3000)
    for i in range(10):
        store.put({"id": f"r{i}", "pad": "x" * 500}, [Message("user", "y" * 100)])
    assert len(store) < 10
    with pytest.raises(NotStored):
        store.get("r0")
    assert store.get("r9").response["id"] == "r9"
    store.put({"id": "huge", "pad": "x" * 5000}, [])  # larger than the store: not kept
    with pytest.raises(NotStored):
        store.get("huge")


def test_langchain_s_responses_client(served: Running) -> None:
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(
        model="smollm2",
        base_url=f"{served.url}/v1",
        api_key="x",
        use_responses_api=True,
        max_tokens=8,
        temperature=0,
    )
    reply = llm.invoke("Say hello.")
    whole = client(served).responses.create(
        model="smollm2", input="Say hello.", max_output_tokens=8
    )
    assert reply.text == whole.output_text


@pytest.fixture
def thinker() -> Iterator[Running]:
    model = FakeBackend(
        reply="<think>Two and two.</think>It is 4.", chat_template=THINKING_TEMPLATE, repeat=False
    ).load_model("thinker")
    with running(model, name="thinker") as r:
        yield r


def test_reasoning_comes_as_a_reasoning_item(thinker: Running) -> None:
    c = client(thinker)
    whole = c.responses.create(model="thinker", input="2+2?", reasoning={"effort": "medium"})
    assert [o.type for o in whole.output] == ["reasoning", "message"]
    assert whole.output[0].content[0].text == "Two and two."  # type: ignore[union-attr,index]
    assert whole.output_text == "It is 4."
    with c.responses.stream(model="thinker", input="2+2?") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert "response.reasoning_text.delta" in kinds and final.output_text == "It is 4."


def test_every_option_reaches_the_model() -> None:
    model = FakeBackend(reply="ok", chat_template=THINKING_TEMPLATE, repeat=False).load_model("t")
    rec = Recording(model)
    with running({"t": rec}) as r, pytest.raises(openai.BadRequestError, match="fake cannot"):  # type: ignore[dict-item]
        # The fake cannot hold a reply to JSON: it refuses, having been asked.
        client(r).responses.create(
            model="t",
            instructions="Be brief.",
            input=[
                {"role": "developer", "content": "Use metric units."},
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            ],
            max_output_tokens=7,
            temperature=0.5,
            top_p=0.9,
            text={"format": {"type": "json_object"}},
            reasoning={"effort": "none"},
        )
    messages, options = rec.seen[0]
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Be brief."),
        ("system", "Use metric units."),
        ("user", "hi"),
    ]
    assert options["max_tokens"] == 7 and options["temperature"] == 0.5
    assert options["top_p"] == 0.9 and options["json_object"] is True
    assert options["enable_thinking"] is False


def test_bad_requests_are_400s(served: Running) -> None:
    c = client(served)
    with pytest.raises(openai.BadRequestError, match="input_image is not supported"):
        c.responses.create(
            model="smollm2",
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
        )
    with pytest.raises(openai.BadRequestError, match="only function tools"):
        c.responses.create(model="smollm2", input="x", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="does not reason"):
        c.responses.create(model="smollm2", input="x", reasoning={"effort": "high"})
    with pytest.raises(openai.NotFoundError, match="smollm2"):
        c.responses.create(model="gpt-5", input="x")
