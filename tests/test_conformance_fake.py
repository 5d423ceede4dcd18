"""The conformance suite, run against the fake backend."""

from __future__ import annotations

from inference import Message
from inference.testing import FakeBackend, TextModelConformance, run_conformance


class TestFakeConformance(TextModelConformance):
    eos_within = 0  # it repeats its reply until max_tokens

    @classmethod
    def make_model(cls):  # type: ignore[no-untyped-def]
        return FakeBackend(delay=0.001).load_model("fake-model")


class TestFakeOnEngineThread(TextModelConformance):
    """The same suite with the engine on its own thread, as MLX runs."""

    eos_within = 0

    @classmethod
    def make_model(cls):  # type: ignore[no-untyped-def]
        model = FakeBackend(delay=0.001).load_model("fake-model")
        from inference.engine_thread import EngineThread

        model._engine = EngineThread("test-engine")
        return model


def test_run_conformance_in_one_call() -> None:
    names = run_conformance(lambda: FakeBackend().load_model("m"), max_tokens=5, eos_within=0)
    assert "test_cancel_mid_stream_then_reuse" in names
    assert len(names) >= 20


def test_logprobs_at_a_natural_end_on_a_fake_that_ends() -> None:
    """A fake that ends its reply with its end-of-text token passes the
    checks of log-probabilities at a natural end (and really ends)."""

    class Ends(TextModelConformance):
        @classmethod
        def make_model(cls):  # type: ignore[no-untyped-def]
            return FakeBackend(reply="Hello there.", repeat=False).load_model("fake-model")

    Ends.setup_class()
    try:
        case = Ends()
        case.test_logprobs_when_the_model_ends_the_generation()
        case.test_logprobs_when_a_stop_string_ends_the_generation()
        stream = case.model.chat([Message("user", "Hi")], max_tokens=64, logprobs=1)
        assert stream.text() == "Hello there." and stream.finish_reason == "stop"
    finally:
        Ends.teardown_class()
