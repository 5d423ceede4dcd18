"""Anthropic's Messages API on inference serve, judged by the official
``anthropic`` SDK (sync and async, whole and streamed) and LangChain's
``ChatAnthropic``: SmolLM2 on llama.cpp for real text and tools, the fake
backend for thinking, pings and the options reaching the model."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from serving import THINKING_TEMPLATE, Recording, Running, running

import inference
from inference.testing import FakeBackend

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client(r: Running, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=r.url, api_key=kw.pop("api_key", "x"), max_retries=0)


def post(url: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    conn.request(
        "POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
    )
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw) if raw.startswith(b"{") else raw


def test_whole_and_streamed_replies_agree(served: Running) -> None:
    c = client(served)
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    whole = c.messages.create(model="smollm2", max_tokens=12, messages=ask)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == "smollm2"
    assert whole.content[0].type == "text" and whole.content[0].text
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    with c.messages.stream(model="smollm2", max_tokens=12, messages=ask) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text

    def prompt(usage: anthropic.types.Usage) -> int:  # the cached part is counted apart
        return usage.input_tokens + (usage.cache_read_input_tokens or 0)

    assert prompt(final.usage) == prompt(whole.usage)
    assert final.usage.cache_read_input_tokens  # the same prompt again: its KV reused
    assert final.usage.output_tokens == whole.usage.output_tokens
    counted = c.messages.count_tokens(model="smollm2", messages=ask)
    assert counted.input_tokens == prompt(whole.usage)


def test_stop_reasons(served: Running) -> None:
    c = client(served)
    ask = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    full = c.messages.create(model="smollm2", max_tokens=30, messages=ask)
    text = full.content[0].text
    assert full.stop_reason == "max_tokens"
    stop = text.strip()[len(text.strip()) // 2 :][:3]
    cut = c.messages.create(
        model="smollm2", max_tokens=30, messages=ask, stop_sequences=["@@", stop]
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]
    with c.messages.stream(
        model="smollm2", max_tokens=30, messages=ask, stop_sequences=[stop]
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_a_tool_call_and_its_result_round_trip(served: Running) -> None:
    c = client(served)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.messages.create(
        model="smollm2",
        max_tokens=64,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    with c.messages.stream(
        model="smollm2",
        max_tokens=64,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "any"},
    ) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [b.type for b in streamed.content if b.type == "tool_use"] == ["tool_use"]
    follow = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C."}],
        },
    ]
    answer = c.messages.create(model="smollm2", max_tokens=24, messages=follow, tools=[WEATHER])
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_errors_come_in_anthropic_s_shape(served: Running) -> None:
    c = client(served)
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as missing:
        c.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=hi)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "smollm2" in str(missing.value)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    with pytest.raises(anthropic.BadRequestError, match="image blocks are not supported"):
        c.messages.create(
            model="smollm2", max_tokens=5, messages=[{"role": "user", "content": [image]}]
        )
    with pytest.raises(anthropic.BadRequestError, match="does not reason"):
        c.messages.create(
            model="smollm2",
            max_tokens=64,
            messages=hi,
            thinking={"type": "enabled", "budget_tokens": 32},
        )
    status, body = post(served.url, "/v1/messages", {"model": "smollm2", "messages": hi})
    assert status == 400 and body["type"] == "error"
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    status, body = post(
        served.url, "/v1/messages", {"model": "smollm2", "max_tokens": 1, "messages": hi, "x": 1}
    )
    assert status == 400 and "Extra inputs" in body["error"]["message"]
    conn = http.client.HTTPConnection(served.url.removeprefix("http://"), timeout=10)
    conn.request("GET", "/v1/messages")
    resp = conn.getresponse()
    assert resp.status == 405 and json.loads(resp.read())["type"] == "error"
    conn.close()


def test_the_async_client_and_langchain(served: Running) -> None:
    async def ask() -> tuple[str, str]:
        c = anthropic.AsyncAnthropic(base_url=served.url, api_key="x", max_retries=0)
        hi = [{"role": "user", "content": "Say hello."}]
        whole = await c.messages.create(model="smollm2", max_tokens=8, messages=hi)
        async with c.messages.stream(
            model="smollm2",
            max_tokens=8,
            messages=hi,
        ) as s:
            streamed = "".join([piece async for piece in s.text_stream])
        return whole.content[0].text, streamed  # type: ignore[union-attr]

    whole, streamed = asyncio.run(ask())
    assert whole and whole == streamed
    chat_anthropic = pytest.importorskip("langchain_anthropic").ChatAnthropic
    llm = chat_anthropic(
        model="smollm2",
        base_url=served.url,
        api_key="x",
        max_tokens=8,
    )
    assert llm.invoke("Say hello.").content == whole


# -- on the fake backend: thinking, pings, options, the prompt turn to turn ------


@pytest.fixture
def thinker() -> Iterator[Running]:
    model = FakeBackend(
        reply="<think>Two and two.</think>It is 4.", chat_template=THINKING_TEMPLATE, repeat=False
    ).load_model("thinker")
    assert model.capabilities.reasoning
    with running(model, name="thinker") as r:
        yield r


def test_thinking_comes_as_thinking_blocks(thinker: Running) -> None:
    c = client(thinker)
    hi = [{"role": "user", "content": "What is 2+2?"}]
    think = {"type": "enabled", "budget_tokens": 1024}
    whole = c.messages.create(model="thinker", max_tokens=64, messages=hi, thinking=think)
    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == "Two and two."  # type: ignore[union-attr]
    assert whole.content[1].text == "It is 4."  # type: ignore[union-attr]
    with c.messages.stream(model="thinker", max_tokens=64, messages=hi, thinking=think) as s:
        kinds = [e.delta.type for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert set(kinds) == {"thinking_delta", "text_delta"}
    assert final.content[0].thinking == "Two and two."  # type: ignore[union-attr]
    assert final.content[1].text == "It is 4."  # type: ignore[union-attr]


def test_pings_while_the_first_token_is_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    import inference_server.anthropic as api

    monkeypatch.setattr(api, "PING_EVERY", 0.05)

    def slow(prompt: str) -> str:
        time.sleep(0.5)  # a long prefill
        return "Done."

    model = FakeBackend(reply=slow, repeat=False).load_model("slow")
    body = {
        "model": "slow",
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with running(model, name="slow") as r:
        conn = http.client.HTTPConnection(r.url.removeprefix("http://"), timeout=30)
        conn.request("POST", "/v1/messages", json.dumps(body))
        raw = conn.getresponse().read().decode()
        conn.close()
        with client(r).messages.stream(
            model="slow", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            text = s.get_final_text()  # the SDK reads past the pings
    events = [
        line.removeprefix("event: ") for line in raw.splitlines() if line.startswith("event: ")
    ]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    pings = [i for i, e in enumerate(events) if e == "ping"]
    first_block = events.index("content_block_start")
    assert len(pings) >= 3 and all(i < first_block for i in pings)
    assert text == "Done."


def test_every_option_reaches_the_model(thinker: Running) -> None:
    model = FakeBackend(reply="ok", chat_template=THINKING_TEMPLATE, repeat=False).load_model("t")
    rec = Recording(model)
    with running({"t": rec}) as r, pytest.raises(anthropic.BadRequestError, match="fake cannot"):  # type: ignore[dict-item]
        # The fake cannot force a tool call: it refuses, having been asked.
        client(r).messages.create(
            model="t",
            system=[{"type": "text", "text": "Be brief."}],
            max_tokens=7,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20},
            stop_sequences=["END"],
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
            thinking={"type": "disabled"},
        )
    messages, options = rec.seen[0]
    assert messages == [inference.Message("system", "Be brief."), inference.Message("user", "hi")]
    assert options["max_tokens"] == 7 and options["temperature"] == 0.5
    assert options["top_p"] == 0.9 and options["top_k"] == 20 and options["stop"] == ["END"]
    assert options["tools"][0]["function"]["name"] == "get_weather"
    assert options["tool_choice"] == {"name": "get_weather"}
    assert options["enable_thinking"] is False


def test_a_conversation_renders_each_turn_as_a_prefix_of_the_next() -> None:
    """Turn N's prompt is a prefix of turn N+1's, byte for byte (so that the
    engine reuses its KV): tool calls, tool results and thinking included."""
    prompts: list[str] = []

    def reply(prompt: str) -> str:
        prompts.append(prompt)
        return "<think>Hmm.</think>Fine."

    model = FakeBackend(reply=reply, chat_template=None, repeat=False).load_model("p")
    with running(model, name="p") as r:
        c = client(r)
        history: list[dict[str, Any]] = []
        for turn in range(5):
            history.append({"role": "user", "content": f"Question {turn}?"})
            got = c.messages.create(
                model="p", system="You are terse.", max_tokens=32, messages=history
            )
            history.append({"role": "assistant", "content": [b.model_dump() for b in got.content]})
    assert len(prompts) == 5
    for before, after in itertools.pairwise(prompts):
        assert after.startswith(before), (before, after)


def test_the_key_goes_in_x_api_key() -> None:
    model = FakeBackend(reply="ok", repeat=False).load_model("k")
    with running(model, name="k", api_key="sk-ant-local") as r:
        hi = [{"role": "user", "content": "hi"}]
        got = client(r, api_key="sk-ant-local").messages.create(
            model="k", max_tokens=4, messages=hi
        )
        assert got.content[0].text == "ok"  # type: ignore[union-attr]
        with pytest.raises(anthropic.AuthenticationError) as refused:
            client(r, api_key="wrong").messages.create(model="k", max_tokens=4, messages=hi)
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
