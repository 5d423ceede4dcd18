"""Structured output and tools in the core: the options, the plan of a chat
call, the capability check, and the stream's view of reasoning and calls.

The constraint engine itself runs in the backends' tests (on real models).
"""

from __future__ import annotations

import json

import pytest

import inference
from inference import (
    ConstraintError,
    GenerateConfig,
    Message,
    Token,
    TokenStream,
    ToolCall,
    UnsupportedOptionError,
    with_choice,
    with_grammar,
    with_json_object,
    with_json_schema,
    with_regex,
    with_template_vars,
    with_thinking,
    with_tool_choice,
    with_tools,
)
from inference.capabilities import Capabilities, refuse_unsupported
from inference.chat_template import render_chat, template_message, template_takes
from inference.constraints import JSON_LAYOUT, KINDS, Constraint, constraint_of
from inference.options import CONSTRAINT_OPTIONS, generate_config
from inference.reply import ChatPlan, plan_chat
from inference.stream import StreamControl
from inference.testing import FakeBackend

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_builders_and_keywords_agree() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    pairs = [
        (with_json_schema(schema), {"json_schema": schema}),
        (with_json_object(), {"json_object": True}),
        (with_regex("[0-9]+"), {"regex": "[0-9]+"}),
        (with_choice(["yes", "no"]), {"choice": ["yes", "no"]}),
        (with_grammar('start: "a"'), {"grammar": 'start: "a"'}),
        (with_tools([WEATHER]), {"tools": [WEATHER]}),
        (with_thinking(False), {"enable_thinking": False}),
        (with_template_vars(custom=1), {"template_vars": {"custom": 1}}),
    ]
    for option, keywords in pairs:
        assert generate_config(option) == generate_config(**keywords)
    cfg = generate_config(with_tools([WEATHER]), with_tool_choice({"name": "get_weather"}))
    assert cfg.tool_choice == "function:get_weather" and cfg.tools[0].name == "get_weather"
    assert (
        set(KINDS)
        == set(CONSTRAINT_OPTIONS)
        == {
            "json_schema",
            "json_object",
            "regex",
            "choice",
            "grammar",
        }
    )


def test_the_schema_is_copied_and_read_only() -> None:
    schema = {"type": "object", "properties": {}}
    cfg = GenerateConfig(json_schema=schema)
    schema["type"] = "array"
    assert cfg.json_schema is not None and cfg.json_schema["type"] == "object"
    with pytest.raises(TypeError):
        cfg.json_schema["type"] = "x"  # type: ignore[index]
    assert GenerateConfig(json_schema='{"type": "string"}').json_schema == {"type": "string"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json_schema": "not json"}, "json_schema must be JSON"),
        ({"tools": [{"name": "two words"}]}, "tools must be a list of tools"),
        ({"json_schema": [1]}, "a JSON schema"),
        ({"regex": ""}, "non-empty"),
        ({"choice": "yes"}, "a list of strings"),
        ({"choice": ["", "x"]}, "non-empty"),
        ({"regex": "a", "choice": ["a"]}, "at most one"),
        ({"json_object": True, "tools": [WEATHER]}, "cannot be combined with tools"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [WEATHER], "tool_choice": {"name": "other"}}, "not among the tools"),
        ({"tools": [WEATHER, WEATHER]}, "different names"),
        ({"tools": WEATHER}, "a list of tools"),
        ({"tool_choice": "maybe"}, "tool_choice must be"),
        ({"enable_thinking": "yes"}, "a bool"),
        ({"template_vars": {1: 2}}, "a dict of names"),
    ],
)
def test_bad_options_are_refused_when_built(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_config(**kwargs)


def test_a_constraint_with_tool_choice_none_is_allowed() -> None:
    cfg = generate_config(json_object=True, tools=[WEATHER], tool_choice="none")
    assert constraint_of(cfg) == Constraint("json_object", True)
    assert constraint_of(GenerateConfig()) is None


def test_refuse_unsupported_names_the_option_and_backend() -> None:
    cfg = generate_config(regex="[a-z]+")
    refuse_unsupported(cfg, Capabilities(constraints=frozenset({"regex"})), "x")
    with pytest.raises(UnsupportedOptionError) as info:
        refuse_unsupported(cfg, Capabilities(constraints=frozenset({"json_schema"})), "Ollama")
    assert info.value.option == "regex" and info.value.backend == "Ollama"
    assert "regex=" in str(info.value) and "json_schema" in str(info.value)
    assert isinstance(info.value, inference.GenerationError) and isinstance(info.value, ValueError)
    assert issubclass(ConstraintError, inference.InferenceError)
    assert JSON_LAYOUT["whitespace_flexible"] is False


def test_fake_backend_refuses_constraints_before_the_first_token() -> None:
    model = FakeBackend().load_model("m")
    assert model.capabilities.constraints == frozenset()
    for kind in KINDS:
        value = {"json_schema": {"type": "object"}, "choice": ["a"]}.get(kind, "x")
        with pytest.raises(UnsupportedOptionError):
            model.chat([Message("user", "hi")], **{kind: True if kind == "json_object" else value})
    assert isinstance(model.err, UnsupportedOptionError)  # kept as the last call's error
    assert model.generate("hi", max_tokens=2).text()  # still usable
    with pytest.raises(ValueError, match="chat"):
        model.generate("hi", tools=[WEATHER])
    with pytest.raises(ValueError, match="classify takes no"):
        model.classify(["hi"], regex="x")


def test_generic_plan_describes_the_tools_and_constrains_the_reply() -> None:
    messages = [Message("system", "Be brief."), Message("user", "Weather in Paris?")]
    cfg = generate_config(tools=[WEATHER], tool_choice="required")
    plan = plan_chat(messages, cfg, template="{{ messages }}", takes_tools=False)
    assert isinstance(plan, ChatPlan) and plan.tool_format is not None
    assert plan.tool_format.name == "generic" and "tools" not in plan.variables
    assert plan.messages[0].content.startswith("Be brief.\n\nYou can call these tools")
    assert plan.constraint is not None and plan.constraint.kind == "grammar"
    assert '"const": "get_weather"' in plan.constraint.value
    auto = plan_chat(messages, generate_config(tools=[WEATHER]), template="", takes_tools=False)
    assert auto.constraint is not None and "text" in auto.constraint.value
    unconstrained = plan_chat(
        messages, generate_config(tools=[WEATHER]), template="", takes_tools=False, constrains=False
    )
    assert unconstrained.constraint is None and unconstrained.tool_format is not None
    none = plan_chat(
        messages,
        generate_config(tools=[WEATHER], tool_choice="none"),
        template="",
        takes_tools=False,
    )
    assert none.tool_format is None and none.messages == messages


def test_a_template_with_tools_renders_them() -> None:
    template = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}"
        "<tool_call>{{ c.function.arguments | tojson }}</tool_call>{% endfor %}"
        "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %};{% endfor %}"
        "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}"
    )
    assert {"tools", "messages", "enable_thinking"} <= template_takes(template)
    call = ToolCall("abc123def", "get_weather", {"city": "Paris"})
    messages = [
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "sunny", tool_call_id="abc123def"),
    ]
    cfg = generate_config(tools=[WEATHER], tool_choice="required", enable_thinking=False)
    plan = plan_chat(
        messages, cfg, template=template, takes_tools=True, special=lambda t: t == "<tool_call>"
    )
    assert plan.tool_format is not None and plan.tool_format.name == "hermes"
    assert plan.constraint is not None and plan.constraint.value.startswith("start: <tool_call>")
    text = render_chat(template, plan.messages, variables=plan.variables)
    assert text == (
        '[get_weather]user:Weather?;assistant:<tool_call>{"city": "Paris"}</tool_call>;'
        "tool:sunny#abc123def;/no_think"
    )
    assert template_message(messages[1])["tool_calls"][0]["function"]["arguments"] == {
        "city": "Paris"
    }
    assert template_takes("{% broken") == frozenset()


def test_stream_reasoning_answer_and_calls() -> None:
    def produce(control: StreamControl):  # type: ignore[no-untyped-def]
        yield Token(1, "thinking", reasoning=True)
        yield Token(2, "Yes")
        control.tool_calls = (ToolCall("id", "f", {}),)
        return "stop"

    stream = TokenStream(produce)
    assert stream.tool_calls == () and stream.reasoning == ""
    assert stream.text() == "Yes"
    assert stream.reasoning == "thinking"
    assert stream.tool_calls == (ToolCall("id", "f", {}),)
    answer = [t.text for t in TokenStream(produce).answer()]
    assert answer == ["Yes"]
    assert json.dumps(stream.tool_calls[0].to_dict())
