"""ModelState and check_prompts: the parts every TextModel shares."""

from __future__ import annotations

import pytest

from inference import GenerateMetrics, ModelClosedError, ModelInfo
from inference.base import BaseTextModel, ModelState, check_prompts
from inference.testing import FakeBackend


class Remote(ModelState):
    """A minimal non-token-id model, as a remote backend would be."""

    def __init__(self) -> None:
        self._init_state(ModelInfo(architecture="remote"))
        self.closed_calls = 0

    def close(self) -> None:
        self.closed_calls += 1
        self._closed = True


def test_model_state_facts_and_lifecycle() -> None:
    m = Remote()
    assert (m.model_type, m.info.architecture, m.err, m.metrics) == ("remote", "remote", None, None)
    m._check_open()
    metrics = GenerateMetrics(prompt_tokens=3)
    failure = RuntimeError("boom")
    m._record(failure, metrics)
    assert m.err is failure and m.metrics is metrics
    m._record(None, None)  # a call without metrics keeps the last ones
    assert m.err is None and m.metrics is metrics
    with m as same:
        assert same is m
    assert m.closed_calls == 1
    with pytest.raises(ModelClosedError):
        m._check_open()


def test_base_text_model_is_a_model_state() -> None:
    model = FakeBackend().load_model("m")
    assert isinstance(model, ModelState) and isinstance(model, BaseTextModel)
    with model as same:
        assert same is model
    with pytest.raises(ModelClosedError):
        model.generate("x")


def test_check_prompts() -> None:
    assert check_prompts(("a", "b")) == ["a", "b"]
    assert check_prompts([]) == []
    with pytest.raises(TypeError, match="not a single str"):
        check_prompts("abc")
    with pytest.raises(TypeError, match=r"prompts\[1\] must be str; got int"):
        check_prompts(["a", 1])  # type: ignore[list-item]


def test_cancelled_classify_raises_and_batch_marks_prompts() -> None:
    import threading

    from inference import Cancelled, DeadlineExceeded

    model = FakeBackend().load_model("m")
    with pytest.raises(DeadlineExceeded):
        model.classify(["a", "b"], timeout=1e-9)
    assert isinstance(model.err, DeadlineExceeded)
    event = threading.Event()
    event.set()
    results = model.batch_generate(["a", "b"], max_tokens=3, cancel=event)
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
    assert all(isinstance(r.err, Cancelled) for r in results)
    assert model.classify(["a"])[0].token.text == "T"  # usable afterwards


def test_check_messages_and_prompt_text() -> None:
    from inference import Message
    from inference.base import check_messages, check_prompt_text

    assert check_messages([{"role": "user", "content": "hi"}]) == [Message("user", "hi")]
    with pytest.raises(ValueError, match="at least one message"):
        check_messages([])
    with pytest.raises(ValueError, match="role"):
        check_messages([{"role": "wizard", "content": "x"}])
    assert check_prompt_text("x") == "x"
    with pytest.raises(TypeError, match="prompt must be str; got bytes"):
        check_prompt_text(b"x")
