"""Structured output and tool calls on llama.cpp, with SmolLM2 and llguidance.

The validity figures of the issue: 50 sampled generations over five schemas,
20 regular expressions, 20 choices and 20 required tool calls, all valid;
and the mask itself, on the model's real vocabulary.
"""

from __future__ import annotations

import json
import re
import threading

import pytest

import inference
from inference import ConstraintError, Message, TextModel
from inference.constraints import Constraint
from inference.testing import together
from inference.testing.structured import (
    TOOLS,
    choice_validity,
    regex_validity,
    schema_validity,
    tool_validity,
)

ASK = [Message("user", "Tell me about Paris.")]


def test_fifty_sampled_generations_all_validate(model: TextModel) -> None:
    result = schema_validity(model, 50)
    assert result.valid == 50, result.failures


def test_regex_and_choice_always_match(model: TextModel) -> None:
    for result in (regex_validity(model, 20), choice_validity(model, 20)):
        assert result.valid == 20, (str(result), result.failures)


def test_required_tool_calls_validate(model: TextModel) -> None:
    result = tool_validity(model, 20)
    assert result.valid == 20, result.failures


def test_bad_constraints_fail_at_the_call_with_the_engines_message(model: TextModel) -> None:
    cases = [
        ({"json_schema": {"type": "objec"}}, "objec"),
        ({"regex": "(("}, "unclosed group"),
        ({"grammar": "start: missing_rule"}, "missing_rule"),
    ]
    for options, words in cases:
        with pytest.raises(ConstraintError, match=re.escape(words)):
            model.chat(ASK, **options)
        assert isinstance(model.err, ConstraintError)
    assert model.generate("Hi", max_tokens=2).text()  # still usable


def test_special_tokens_are_never_allowed_inside_json(model: TextModel) -> None:
    guide = model._guide(Constraint("json_schema", {"type": "object"}))
    eog = sorted(model._eog_ids)  # type: ignore[attr-defined]
    vocab = model.info.vocab_size
    special = [
        t for t in range(vocab) if model._piece(t, special=True) and not model._token_bytes(t)
    ]  # type: ignore[attr-defined]
    assert set(eog) <= set(special) and len(special) >= 3
    allowed = guide.allowed()
    assert allowed.shape == (vocab,) and allowed.any()
    assert not allowed[special].any(), "a special token is allowed where JSON must begin"
    for tok in model.encode('{"name": "Zo'):  # type: ignore[attr-defined]
        guide.consume(tok)
    allowed = guide.allowed()
    assert not allowed[special].any(), "a special token is allowed inside a JSON string"
    for tok in model.encode('ë"}'):  # type: ignore[attr-defined]
        guide.consume(tok)
    assert guide.accepting and guide.allowed()[eog].any()  # complete: the end may follow


def test_multibyte_characters_split_across_tokens(model: TextModel) -> None:
    # In SmolLM2 each of these characters is several tokens, each a part of
    # its UTF-8 bytes: the mask must allow a part exactly where it can complete.
    for text in ("🙂", "Ω", "日本"):
        pieces = [model._token_bytes(p) for p in model.encode(text)]  # type: ignore[attr-defined]
        assert len(pieces) > 1 and b"".join(pieces) == text.encode()
        stream = model.chat(ASK, regex=f"({text}){{2}}", max_tokens=16)
        tokens = list(stream)
        assert "".join(t.text for t in tokens) == text * 2 and stream.finish_reason == "stop"
    result = model.chat(ASK, choice=["naïve 🙂", "naïve Ω"], temperature=1.0, seed=3).text()
    assert result in ("naïve 🙂", "naïve Ω")


def test_sampling_applies_within_the_mask(model: TextModel) -> None:
    options = {"choice": ["red", "green", "blue", "yellow", "purple"], "temperature": 1.5}
    ask = [Message("user", "Pick a colour.")]
    picks = [model.chat(ask, seed=s, **options).text() for s in range(12)]
    assert set(picks) <= set(options["choice"]) and len(set(picks)) >= 2
    assert picks == [model.chat(ask, seed=s, **options).text() for s in range(12)]


def test_logprobs_stay_the_models_own_under_a_mask(model: TextModel) -> None:
    stream = model.generate("The capital of France is", regex="[0-9]{2}", max_tokens=4, logprobs=3)
    tokens = list(stream)
    assert re.fullmatch("[0-9]{2}", "".join(t.text for t in tokens))
    first = tokens[0]
    assert first.logprob is not None and first.top_logprobs
    # The raw distribution's favourite is not a digit: the mask did not reshape it.
    assert not first.top_logprobs[0].text.strip().isdigit()
    assert first.logprob < first.top_logprobs[0].logprob


def test_a_cancelled_constrained_call_leaves_the_model_ready(model: TextModel) -> None:
    note = {"type": "string", "minLength": 80, "maxLength": 200}
    schema = {
        "type": "object",
        "properties": {"note": note},
        "required": ["note"],
        "additionalProperties": False,
    }
    stream = model.chat(ASK, json_schema=schema, max_tokens=200)
    next(stream)
    next(stream)
    stream.cancel()
    stream.text()
    assert stream.finish_reason == "cancelled" and isinstance(stream.err, inference.Cancelled)
    again = model.chat(ASK, json_schema=schema, max_tokens=400)
    assert isinstance(json.loads(again.text()), dict)
    cancel = threading.Event()
    cancel.set()
    assert model.chat(ASK, regex="[a-z]+", cancel=cancel).text() == ""


def test_batch_generate_gives_each_prompt_its_own_constraint(model: TextModel) -> None:
    results = model.batch_generate(
        ["Yes or no?", "Say a number:", "Colour?"], regex="[0-9]{3}", max_tokens=8
    )
    assert [re.fullmatch("[0-9]{3}", r.text) is not None for r in results] == [True] * 3


def test_tools_auto_and_named(model: TextModel) -> None:
    tools = list(TOOLS)
    plain = model.chat([Message("user", "Say hello to Anna.")], tools=tools, max_tokens=24)
    text = plain.text()
    assert text and plain.tool_calls == () and "tool_call" not in text
    named = model.chat(
        [Message("user", "What's up?")],
        tools=tools,
        tool_choice={"name": "set_alarm"},
        max_tokens=64,
    )
    assert named.text() == ""
    assert [c.name for c in named.tool_calls] == ["set_alarm"]
    assert set(named.tool_calls[0].arguments) == {"hour", "minute"}
    # The reply to a tool result, with the call in the history.
    call = named.tool_calls[0]
    history = [
        Message("user", "Wake me at 7."),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "alarm set", tool_call_id=call.id),
    ]
    reply = model.chat(history, tools=tools, max_tokens=24)
    assert reply.text() and reply.tool_calls == ()


def test_capability_is_visible_before_a_call(model: TextModel) -> None:
    assert model.capabilities.constraints == frozenset(inference.constraints.KINDS)


class _Watched:
    """A matcher that records which threads call into it (llguidance's
    matcher allows one borrower at a time)."""

    def __init__(self, matcher: object, threads: set[str]) -> None:
        self._matcher = matcher
        self._threads = threads

    def __getattr__(self, name: str) -> object:
        self._threads.add(threading.current_thread().name)
        return getattr(self._matcher, name)


def test_only_the_engine_thread_touches_a_constraint(
    model: TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader learns the constraint is complete from the sequence's end,
    never by asking the matcher while the engine thread masks with it (seen
    once as 'Already mutably borrowed')."""
    from inference import guidance

    threads: set[str] = set()
    made = guidance.guide

    def watched(*args: object) -> guidance.Guide:
        g = made(*args)  # type: ignore[arg-type]
        g._matcher = _Watched(g._matcher, threads)
        return g

    monkeypatch.setattr(guidance, "guide", watched)
    calls = [
        lambda: model.generate("Pick:", max_tokens=8, choice=["yes", "no"]).text(),
        lambda: model.generate("Digits:", max_tokens=8, regex="[0-9]{3}").text(),
    ]
    texts = [t for t in together(calls) if isinstance(t, str)]
    assert texts and texts[0] in ("yes", "no") and re.fullmatch("[0-9]{3}", texts[1])
    assert threads == {"inference-llama_cpp"}, threads
