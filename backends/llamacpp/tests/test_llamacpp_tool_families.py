"""Tool calls and reasoning through a family's own template, on llama.cpp.

A tiny random-weight llama with SmolLM2's tokenizer, whose last tokens are
replaced by the control tokens ``<tool_call>``, ``</tool_call>``, ``<think>``
and ``</think>`` (so that the engine shows no text for them, as with real
families' control tokens), and a Qwen2.5-style template that takes
``tools``. Its output is noise, so what it shows is what the constraint and
the reply splitter guarantee whatever the model says.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from gguf_files import write_tiny_llama

import inference
from inference import Message, ToolCall
from inference.testing.structured import TOOLS

HERMES = """{%- if tools %}<|im_start|>system
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each function call, return a json object within <tool_call></tool_call> tags.<|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}
{%- for c in m.tool_calls or [] %}<tool_call>
{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}
</tool_call>{% endfor %}<|im_end|>
{% endfor %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% else %}<think>
{% endif %}"""

MARKERS = ("<tool_call>", "</tool_call>", "<think>", "</think>")


@pytest.fixture(scope="module")
def family(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> inference.TextModel:
    path = tmp_path_factory.mktemp("hermes") / "tiny-hermes.gguf"
    write_tiny_llama(path, model_path, chat_template=HERMES, control_tokens=MARKERS)
    return inference.load_model(str(path), backend="llama_cpp", context_len=1024)


def test_the_template_renders_the_tools_and_the_calls(family: inference.TextModel) -> None:
    call = ToolCall("abc123def", "get_weather", {"city": "Paris", "unit": "celsius"})
    history = [Message("user", "Weather?"), Message("assistant", "", tool_calls=(call,))]
    text = family._render_chat(history, {"tools": [TOOLS[0]]})  # type: ignore[attr-defined]
    assert json.dumps(TOOLS[0], sort_keys=True) in text  # (Jinja's tojson sorts the keys)
    assert '<tool_call>\n{"arguments": {"city": "Paris", "unit": "celsius"}' in text
    assert all(len(family.encode(m)) == 1 for m in MARKERS)  # type: ignore[attr-defined]


def test_required_gives_a_valid_call_through_the_familys_markers(
    family: inference.TextModel,
) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(8):
        stream = family.chat(
            [Message("user", "Weather in Paris?")],
            tools=list(TOOLS),
            tool_choice="required",
            # The template opens a reasoning block unless thinking is off:
            # the constraint holds the reply to the call either way.
            enable_thinking=False if seed % 2 else None,
            temperature=0.8,
            seed=seed,
            max_tokens=200,
        )
        tokens = list(stream)
        assert stream.finish_reason == "stop", stream.err
        assert [t.text for t in tokens if t.text] == []  # the call's text is never shown
        (call,) = stream.tool_calls
        jsonschema.validate(call.arguments, schemas[call.name])


def test_a_named_tool_is_the_one_called(family: inference.TextModel) -> None:
    stream = family.chat(
        [Message("user", "x")],
        tools=list(TOOLS),
        tool_choice={"name": "set_alarm"},
        enable_thinking=False,
        max_tokens=200,
    )
    stream.text()
    assert [c.name for c in stream.tool_calls] == ["set_alarm"]


def test_reasoning_opened_by_the_template_streams_apart(family: inference.TextModel) -> None:
    stream = family.chat([Message("user", "Think.")], max_tokens=12, temperature=0.7, seed=1)
    tokens = list(stream)
    assert tokens and all(t.reasoning for t in tokens)
    assert stream.text() == "" and stream.reasoning == "".join(t.text for t in tokens)
    assert stream.reasoning
