"""The value types (inference.types) and the error hierarchy (inference.errors)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inference
from inference import errors, types
from inference.types import (
    ROLES,
)

VALUE_TYPES = [
    inference.Token(1, "a"),
    inference.Message("user", "hi"),
    inference.ModelInfo(architecture="llama"),
    inference.GenerateMetrics(prompt_tokens=3),
    inference.ClassifyResult(token=inference.Token(1, "a")),
    inference.BatchResult(text="x"),
    inference.DiscoveredModel(path="/m.gguf", format="gguf"),
    inference.ScoreResult(logprobs=(-1.0,), total=-1.0, is_greedy=False),
    inference.RollingScore(total=-3.0, tokens=2, perplexity=4.48),
    inference.ToolCall("abc123def", "f", {"a": 1}),
]


# -- frozen, slotted dataclasses ---------------------------------------------


@pytest.mark.parametrize("value", VALUE_TYPES, ids=lambda v: type(v).__name__)
def test_value_types_are_frozen_and_slotted(value: Any) -> None:
    assert dataclasses.is_dataclass(value)
    cls = type(value)
    assert "__slots__" in cls.__dict__
    assert not hasattr(value, "__dict__"), "a slotted instance has no __dict__"
    first = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, first, getattr(value, first))
    with pytest.raises((AttributeError, TypeError)):
        value.not_a_field = 1  # no new attributes either


def test_every_type_in_all_is_tested() -> None:
    tested = {type(v).__name__ for v in VALUE_TYPES}
    classes = {
        n
        for n in types.__all__
        if isinstance(getattr(types, n), type) and not issubclass(getattr(types, n), tuple)
    }
    assert classes == tested


def test_token_logprob_is_an_immutable_triple() -> None:
    alt = inference.TokenLogprob(7, "x", -0.25)
    assert tuple(alt) == (7, "x", -0.25) and alt.logprob == -0.25
    with pytest.raises(AttributeError):
        alt.logprob = 0.0  # type: ignore[misc]
    assert hash(inference.Token(7, "x", -0.25, (alt,))) == hash(
        inference.Token(7, "x", -0.25, (alt,))
    )


def test_token_value_semantics() -> None:
    tok = inference.Token(42, "é")
    assert (tok.id, tok.text) == (42, "é")
    assert tok == inference.Token(42, "é") and tok != inference.Token(42, "e")
    assert hash(tok) == hash(inference.Token(42, "é"))
    assert {inference.Token(1, "a"), inference.Token(1, "a"), inference.Token(2, "b")} == {
        inference.Token(1, "a"),
        inference.Token(2, "b"),
    }
    assert pickle.loads(pickle.dumps(tok)) == tok


def test_defaults_mean_not_known() -> None:
    info = inference.ModelInfo()
    assert (info.architecture, info.vocab_size, info.context_length, info.notes) == ("", 0, 0, ())
    metrics = inference.GenerateMetrics()
    assert metrics.generated_tokens == 0 and metrics.total_seconds == 0.0
    assert metrics.peak_memory_bytes is None and metrics.active_memory_bytes is None
    result = inference.BatchResult()
    assert (result.tokens, result.text, result.finish_reason, result.err) == ((), "", "stop", None)
    assert inference.ClassifyResult(token=inference.Token(0, "")).logits is None
    found = inference.DiscoveredModel(path="p", format="gguf")
    assert found.extra == () and found.file_count == 0


def test_results_do_not_share_mutable_defaults() -> None:
    # Every default is immutable, so two results can never alias each other's state.
    for cls in (
        inference.ModelInfo,
        inference.GenerateMetrics,
        inference.BatchResult,
        inference.DiscoveredModel,
    ):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                assert isinstance(f.default, (str, int, float, bool, tuple, type(None))), (
                    f"{cls.__name__}.{f.name}"
                )


# -- inference.Message -------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_message_accepts_every_role(role: str) -> None:
    assert inference.Message(role, "text").role == role


def test_roles_are_the_documented_four() -> None:
    assert ROLES == ("system", "user", "assistant", "tool")


@pytest.mark.parametrize("role", ["wizard", "User", "", None, 1])
def test_message_rejects_unknown_roles(role: Any) -> None:
    with pytest.raises(ValueError, match="role must be one of system, user, assistant, tool"):
        inference.Message(role, "text")


@pytest.mark.parametrize("content", [None, 1, b"bytes", ["a"]])
def test_message_rejects_non_str_content(content: Any) -> None:
    with pytest.raises(ValueError, match=f"content must be str; got {type(content).__name__}"):
        inference.Message("user", content)


def test_message_to_dict() -> None:
    assert inference.Message("assistant", "Hello!").to_dict() == {
        "role": "assistant",
        "content": "Hello!",
    }


@settings(deadline=None)  # no flaky deadlines on a busy machine
@given(role=st.sampled_from(ROLES), content=st.text())
def test_message_dict_round_trip(role: str, content: str) -> None:
    message = inference.Message(role, content)
    data = message.to_dict()
    assert data == {"role": role, "content": content}
    assert inference.Message.from_dict(data) == message
    assert inference.Message.coerce(data) == message


def test_from_dict_ignores_other_keys_and_names_missing_ones() -> None:
    data = {"role": "tool", "content": "42", "name": "calc", "tool_call_id": "x"}
    assert inference.Message.from_dict(data) == inference.Message("tool", "42", tool_call_id="x")
    with pytest.raises(ValueError, match="'content'"):
        inference.Message.from_dict({"role": "user"})
    with pytest.raises(ValueError, match="'role'"):
        inference.Message.from_dict({"content": "hi"})
    with pytest.raises(ValueError, match="role must be one of"):
        inference.Message.from_dict({"role": "robot", "content": "hi"})


def test_coerce() -> None:
    message = inference.Message("system", "Be brief.")
    assert inference.Message.coerce(message) is message
    assert inference.Message.coerce({"role": "system", "content": "Be brief."}) == message
    for bad in ("user: hi", ("user", "hi"), 3):
        with pytest.raises(ValueError, match="must be a Message or a dict"):
            inference.Message.coerce(bad)  # type: ignore[arg-type]


# -- errors ---------------------------------------------------------------------

HIERARCHY = [
    (errors.BackendNotFoundError, LookupError),
    (errors.BackendUnavailableError, RuntimeError),
    (errors.NoBackendError, RuntimeError),
    (errors.ModelLoadError, OSError),
    (errors.GenerationError, RuntimeError),
    (errors.ModelClosedError, errors.GenerationError),
    (errors.Cancelled, errors.InferenceError),
    (errors.DeadlineExceeded, TimeoutError),
    (errors.UnsupportedOptionError, ValueError),
    (errors.ConstraintError, ValueError),
]


@pytest.mark.parametrize(("cls", "builtin"), HIERARCHY, ids=lambda c: c.__name__)
def test_each_error_is_an_inference_error_and_its_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, errors.InferenceError)
    assert issubclass(cls, builtin)
    assert getattr(inference, cls.__name__) is cls


def test_hierarchy_covers_every_error() -> None:
    assert {c.__name__ for c, _ in HIERARCHY} | {"InferenceError"} == set(errors.__all__)


def test_deadline_exceeded_is_a_cancellation_and_a_timeout() -> None:
    exc = errors.DeadlineExceeded("too slow")
    assert isinstance(exc, errors.Cancelled)
    assert isinstance(exc, TimeoutError)
    with pytest.raises(TimeoutError):
        raise exc


def test_error_messages_are_not_mangled_by_their_builtins() -> None:
    # LookupError quotes its message like a key, OSError formats errno tuples.
    assert str(errors.BackendNotFoundError("backend 'x' not found")) == "backend 'x' not found"
    assert str(errors.BackendNotFoundError()) == ""
    load = errors.ModelLoadError("m.gguf: truncated", path="m.gguf")
    assert str(load) == "m.gguf: truncated"
    assert load.path == "m.gguf"


def test_backend_unavailable_keeps_backend_and_reason() -> None:
    exc = errors.BackendUnavailableError("no GPU", backend="rocm", reason="no AMD GPU found")
    assert (str(exc), exc.backend, exc.reason) == ("no GPU", "rocm", "no AMD GPU found")
    copy = pickle.loads(pickle.dumps(exc))
    assert (str(copy), copy.backend, copy.reason) == ("no GPU", "rocm", "no AMD GPU found")
    plain = errors.BackendUnavailableError("x")
    assert (plain.backend, plain.reason) == ("", "")
