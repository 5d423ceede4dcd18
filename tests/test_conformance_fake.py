"""The conformance suite, run against the fake backend."""

from __future__ import annotations

from inference.testing import FakeBackend, TextModelConformance, run_conformance


class TestFakeConformance(TextModelConformance):
    @classmethod
    def make_model(cls):  # type: ignore[no-untyped-def]
        return FakeBackend(delay=0.001).load_model("fake-model")


class TestFakeOnEngineThread(TextModelConformance):
    """The same suite with the engine on its own thread, as MLX runs."""

    @classmethod
    def make_model(cls):  # type: ignore[no-untyped-def]
        model = FakeBackend(delay=0.001).load_model("fake-model")
        from inference.engine_thread import EngineThread

        model._engine = EngineThread("test-engine")
        return model


def test_run_conformance_in_one_call() -> None:
    names = run_conformance(lambda: FakeBackend().load_model("m"), max_tokens=5)
    assert "test_cancel_mid_stream_then_reuse" in names
    assert len(names) >= 20
