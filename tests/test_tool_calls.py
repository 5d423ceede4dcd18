"""Tool calls and reasoning in text: each family's parser, and the splitter
that keeps a streamed reply's answer, reasoning and calls apart.

Every golden text is taken apart three ways that must agree: parsed whole
(``parse_calls``), streamed as one token, and streamed one byte at a time
through the same UTF-8 assembler the engines use.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference import Message, Token, ToolCall
from inference.detok import TextAssembler
from inference.reply import THINK, ReplySplitter, split_reply
from inference.stream import StreamControl
from inference.tool_calls import (
    ANY_FORMAT,
    FORMATS,
    TOOL_CHOICES,
    Tool,
    ToolFormat,
    call_schema,
    format_for,
    generic_response,
    generic_system_prompt,
    new_call_id,
    parse_calls,
    to_tool,
    tool_choice,
)

#: (family, reply text, the visible answer, the calls as (name, arguments)).
GOLDEN: list[tuple[str, str, str, list[tuple[str, dict[str, Any]]]]] = [
    (
        "hermes",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}'
        "\n</tool_call>",
        "Let me check.\n",
        [("get_weather", {"city": "Zürich"})],
    ),
    (
        "hermes",
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>',
        "\n",
        [("a", {"x": 1}), ("b", {})],
    ),
    ("hermes", "No tools needed: 2 < 3.", "No tools needed: 2 < 3.", []),
    (
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "東京"}}',
        "",
        [("get_weather", {"city": "東京"})],
    ),
    (
        "llama3",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "llama3",
        '<|python_tag|>brave_search.call(query="weather in Paris")',
        "",
        [("brave_search", {"query": "weather in Paris"})],
    ),
    ("llama3", "{not a call} but braces", "{not a call} but braces", []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}]',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "mistral",
        'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        "Sure.",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "pythonic",
        '[get_weather(city="Paris"), get_time(zone="CET", hours=[1, 2])]',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "hours": [1, 2]})],
    ),
    ("pythonic", "[1, 2] is a list.", "[1, 2] is a list.", []),
    (
        "generic",
        '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "generic",
        '{"tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"y": "é"}}]}',
        "",
        [("a", {}), ("b", {"y": "é"})],
    ),
    ("generic", '{"response": "Hello, Zoë!"}', "Hello, Zoë!", []),
    ("generic", "Plain words, no JSON.", "Plain words, no JSON.", []),
]


def _pairs(calls: tuple[ToolCall, ...] | list[ToolCall]) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, c.arguments) for c in calls]


def _split(fmt: ToolFormat | None, pieces: list[Token], **kw: Any) -> tuple[list[Token], Any]:
    splitter = ReplySplitter(fmt, **kw)
    out: list[Token] = []
    for tok in pieces:
        out.extend(splitter.push(tok))
    out.extend(splitter.finish())
    return out, splitter.tool_calls


def _bytewise(text: str) -> list[Token]:
    """``text`` as the engines stream it one byte per token: through a TextAssembler."""
    asm = TextAssembler()
    out: list[Token] = []
    for i, byte in enumerate(text.encode()):
        out.extend(asm.push(i, bytes([byte])))
    out.extend(asm.flush())
    return out


@pytest.mark.parametrize(("family", "text", "answer", "calls"), GOLDEN)
def test_each_family_parses_its_golden_text(
    family: str, text: str, answer: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    fmt = FORMATS[family]
    whole = "" if calls else text  # what the visible part of a call-less reply is
    if calls:
        assert _pairs(parse_calls(text, family)) == calls
    for pieces in ([Token(0, text)], _bytewise(text)):
        out, found = _split(fmt, pieces)
        shown = "".join(t.text for t in out)
        assert _pairs(found) == calls
        assert shown == answer
        assert not any(t.reasoning for t in out)
    assert whole == "" or parse_calls(whole, family) == []


def test_unknown_family_reads_every_marker() -> None:
    for family, text, _answer, calls in GOLDEN:
        if calls and family != "pythonic":
            assert _pairs(parse_calls(text, "any")) == calls, family
    out, found = _split(ANY_FORMAT, _bytewise(GOLDEN[0][1]))
    assert _pairs(found) == GOLDEN[0][3] and "".join(t.text for t in out) == GOLDEN[0][2]


def test_call_text_never_reaches_the_visible_tokens() -> None:
    text = GOLDEN[0][1]
    out, _ = _split(FORMATS["hermes"], _bytewise(text))
    assert all("<" not in t.text and "tool_call" not in t.text for t in out)
    # Text that only looks like the start of a marker is released, not lost.
    out, found = _split(FORMATS["hermes"], _bytewise("a <tool and <b> end"))
    assert "".join(t.text for t in out) == "a <tool and <b> end" and found == ()


def test_reasoning_is_kept_apart() -> None:
    text = "<think>\nThe user wants Zürich.\n</think>\n\nIt is sunny."
    for pieces in ([Token(0, text)], _bytewise(text)):
        out, found = _split(None, pieces, thinks=True)
        assert "".join(t.text for t in out if t.reasoning) == "\nThe user wants Zürich.\n"
        assert "".join(t.text for t in out if not t.reasoning) == "It is sunny."
        assert found == ()
    # A template that opens the block in the prompt (DeepSeek-R1): the reply starts inside it.
    out, _ = _split(None, _bytewise("hmm</think>Yes."), thinks=True, thinking=True)
    assert "".join(t.text for t in out if t.reasoning) == "hmm"
    assert "".join(t.text for t in out if not t.reasoning) == "Yes."
    assert [t.reasoning for t in out] == sorted((t.reasoning for t in out), reverse=True)
    # Thinking, then a call.
    text = '<think>ok</think>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    out, found = _split(FORMATS["hermes"], _bytewise(text), thinks=True)
    assert _pairs(found) == [("f", {})]
    assert "".join(t.text for t in out if t.reasoning) == "ok"
    assert "".join(t.text for t in out if not t.reasoning) == ""
    assert THINK == ("<think>", "</think>")


def test_unsplit_tokens_keep_their_logprobs() -> None:
    tok = Token(5, "plain", logprob=-0.5)
    splitter = ReplySplitter(FORMATS["hermes"])
    assert splitter.push(Token(4, "")) == []
    assert splitter.push(tok) == [tok]
    assert splitter.push(tok)[0] is tok


def test_split_reply_leaves_the_calls_in_the_control() -> None:
    control = StreamControl()
    text = '<tool_call>{"name": "f", "arguments": {"a": [1]}}</tool_call>'

    def gen():  # type: ignore[no-untyped-def]
        yield Token(1, text[:9])
        yield Token(2, text[9:])
        return "stop"

    wrapped = split_reply(gen(), ReplySplitter(FORMATS["hermes"]), control)
    assert [t.text for t in wrapped] == []
    assert _pairs(control.tool_calls) == [("f", {"a": [1]})]


def test_malformed_calls_are_text_not_crashes() -> None:
    for family in FORMATS:
        for text in (
            "<tool_call>{bad json</tool_call>",
            "[TOOL_CALLS][{",
            "[f(x=open('/'))]",
            "{" * 5000,
            "[" * 5000,
        ):
            assert parse_calls(text, family) == [] or family == "generic"
    assert parse_calls("[f(x=__import__('os'))]", "pythonic") == []
    assert parse_calls('{"tool_call": {"name": "", "arguments": {}}}', "generic") == []


def test_format_from_the_template() -> None:
    assert format_for("{{ '<tool_call>' }}", True).name == "hermes"
    assert format_for("[TOOL_CALLS]", True).name == "mistral"
    assert format_for("<|start_header_id|>{{ tools }}", True).name == "llama3"
    assert format_for("[func_name1(params_name1=params_value1)]", True).name == "pythonic"
    assert format_for("<tool_call>", False).name == "generic"


def test_tools_and_choices() -> None:
    inner = {"name": "f", "description": "d", "parameters": {"type": "object"}}
    tool = to_tool({"type": "function", "function": inner})
    assert tool == to_tool(inner) and isinstance(tool, Tool) and hash(tool) == hash(to_tool(inner))
    assert tool.to_dict() == {"type": "function", "function": inner}
    for bad in ({"name": "two words"}, {"type": "retrieval"}, "f", {"name": "f", "parameters": 3}):
        with pytest.raises(ValueError):
            to_tool(bad)  # type: ignore[arg-type]
    assert set(TOOL_CHOICES) == {"auto", "required", "none"}
    assert tool_choice({"type": "function", "function": {"name": "f"}}) == "function:f"
    with pytest.raises(ValueError, match="tool_choice"):
        tool_choice("sometimes")
    schema = call_schema([tool], generic=True)
    assert schema["properties"]["tool_call"]["properties"]["name"] == {"const": "f"}
    assert "f" in generic_system_prompt([tool], "auto") and "plain text" in generic_system_prompt(
        [tool], "auto"
    )
    assert generic_response('{"response": "hi"}') == "hi" and generic_response("{}") is None
    ids = {new_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 9 and i.isalnum() for i in ids)


def test_tool_call_values() -> None:
    call = ToolCall("abc123def", "f", {"a": [1, 2]})
    assert hash(call) == hash(ToolCall("abc123def", "f", {"a": [1, 2]}))
    wire = call.to_dict()
    assert json.loads(wire["function"]["arguments"]) == {"a": [1, 2]}
    assert ToolCall.from_dict(wire) == call
    assert ToolCall.from_dict({"id": "x", "name": "g", "arguments": {"b": 1}}).arguments == {"b": 1}
    with pytest.raises(ValueError):
        ToolCall.from_dict({"function": {"name": "f", "arguments": "{not json"}})
    msg = Message("assistant", "", tool_calls=(call,))
    assert hash(msg) == hash(Message("assistant", "", tool_calls=(call,)))
    assert Message.from_dict(msg.to_dict()) == msg
    result = Message.from_dict({"role": "tool", "content": "18", "tool_call_id": "abc123def"})
    assert result.tool_call_id == "abc123def" and result.to_dict()["tool_call_id"] == "abc123def"
    assert Message.from_dict({"role": "assistant", "content": None, "tool_calls": [wire]}) == msg
    assert Message.from_dict({"role": "assistant", "tool_calls": [wire]}) == msg
    with pytest.raises(ValueError):
        Message("user", "x", tool_calls=(call,))
    assert Message("user", "hi") == Message("user", "hi", (), "")
