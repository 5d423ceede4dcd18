"""The backend registry in one process: registration, status and selection.

Every test here runs on an emptied registry (the ``clean_registry`` fixture)
and registers what it needs; test_entry_points.py covers real entry points in
child processes.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from pathlib import Path
from typing import Any

import pytest

import inference
from inference import registry
from inference.errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    ModelLoadError,
    NoBackendError,
)
from inference.options import LoadConfig
from inference.protocols import Backend, TextModel
from inference.registry import (
    ENTRY_POINT_GROUP,
    FORMAT_EXTRAS,
    KNOWN_EXTRAS,
    BackendStatus,
    backend_status,
    default_backend,
    get_backend,
    list_backends,
    load_model,
    register_backend,
    unregister_backend,
)
from inference.testing import FakeBackend, FakeModel

pytestmark = pytest.mark.usefixtures("clean_registry")


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test plugin module (tests/plugins/inference_test_plugins.py)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    import inference_test_plugins

    return inference_test_plugins


def _entry_point(name: str, value: str) -> None:
    """Add a not-yet-imported entry point, as the group scan would."""
    point = importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP)
    with registry._lock:
        registry._entries[name] = registry._Entry(name, point=point)


def _safetensors_dir(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


# -- registration ------------------------------------------------------------------


def test_the_fixture_starts_empty() -> None:
    assert list_backends() == []
    assert backend_status() == []


def test_register_an_instance_a_class_or_a_factory(plugins: Any) -> None:
    instance = FakeBackend("inst")
    register_backend(instance)
    register_backend(plugins.GoodBackend)
    register_backend(plugins.make_factory_backend)
    assert list_backends() == ["factory", "good", "inst"]
    assert get_backend("inst") is instance
    assert isinstance(get_backend("good"), plugins.GoodBackend)
    assert type(get_backend("factory")).__name__ == "_FactoryBackend"
    for name in list_backends():
        assert isinstance(get_backend(name), Backend)


def test_register_under_another_name_and_replace() -> None:
    first, second = FakeBackend("fake"), FakeBackend("fake")
    register_backend(first, name="mine")
    assert list_backends() == ["mine"] and get_backend("mine") is first
    register_backend(second, name="mine")
    assert get_backend("mine") is second
    assert [s.name for s in backend_status()] == ["mine"]


def test_register_refuses_what_is_not_a_backend(plugins: Any) -> None:
    for bad in (plugins.NotABackend, object(), "llama_cpp", lambda: 42):
        with pytest.raises(TypeError, match="is not a backend: it needs name, available"):
            register_backend(bad)
    assert list_backends() == []


def test_get_backend_of_an_unknown_name_is_none() -> None:
    register_backend(FakeBackend())
    assert get_backend("nope") is None


def test_aliases(plugins: Any) -> None:
    register_backend(plugins.GoodBackend)
    good = get_backend("good")
    assert get_backend("goodie") is good
    assert backend_status()[0].aliases == ("goodie",)
    unregister_backend("good")
    assert get_backend("goodie") is None and get_backend("good") is None
    unregister_backend("good")  # a second time is harmless
    assert list_backends() == []


def test_the_public_register_is_the_registry_one() -> None:
    assert inference.register_backend is register_backend
    assert inference.get_backend is get_backend


# -- entry points, imported lazily and once ----------------------------------------


def test_entry_points_are_listed_without_import_and_imported_once(plugins: Any) -> None:
    _entry_point("counting", "inference_test_plugins:CountingBackend")
    made = plugins.CREATED.get("counting", 0)
    assert list_backends() == ["counting"]
    assert plugins.CREATED.get("counting", 0) == made, "listing must not import the plugin"

    got: list[Any] = []
    barrier = threading.Barrier(8)

    def look() -> None:
        barrier.wait()
        got.append(get_backend("counting"))

    threads = [threading.Thread(target=look) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(b is got[0] for b in got)
    assert plugins.CREATED["counting"] == made + 1, "the plugin was made more than once"


def test_an_alias_of_a_backend_not_yet_imported_is_found(plugins: Any) -> None:
    _entry_point("good", "inference_test_plugins:GoodBackend")
    assert isinstance(get_backend("goodie"), plugins.GoodBackend)


def test_a_broken_entry_point_is_kept_with_its_error(plugins: Any) -> None:
    register_backend(FakeBackend("fine", formats=("gguf",)))
    _entry_point("broken", "inference_test_broken:Backend")
    _entry_point("notabackend", "inference_test_plugins:NotABackend")
    assert list_backends() == ["broken", "fine", "notabackend"]

    status = {s.name: s for s in backend_status()}
    assert status["broken"].broken and not status["broken"].available
    assert status["broken"].reason == (
        "failed to load: ImportError: libfrobnicate.so.1: cannot open shared object file"
    )
    assert status["notabackend"].broken
    assert "is not a backend" in status["notabackend"].reason
    assert status["fine"].available and not status["fine"].broken

    with pytest.raises(BackendUnavailableError) as info:
        get_backend("broken")
    assert info.value.backend == "broken"
    assert "libfrobnicate.so.1" in info.value.reason
    assert isinstance(info.value.__cause__, ImportError)
    assert "installed but broken" in str(info.value)
    # The others still work.
    assert default_backend().name == "fine"


# -- status --------------------------------------------------------------------


def test_status_fields_and_order(plugins: Any) -> None:
    register_backend(FakeBackend("b", priority=5, formats=("gguf",), reason="bee"))
    register_backend(FakeBackend("a", priority=5, reason="ay"))
    register_backend(FakeBackend("off", priority=99, available=False, reason="no GPU"))
    register_backend(plugins.GoodBackend)
    statuses = backend_status()
    assert [s.name for s in statuses] == ["good", "off", "a", "b"]
    assert statuses[0] == BackendStatus(
        name="good",
        available=True,
        reason="good to go",
        priority=500,
        formats=("gguf",),
        broken=False,
        aliases=("goodie",),
        extra="good",
    )
    off = statuses[1]
    assert (off.available, off.reason, off.broken) == (False, "no GPU", False)
    assert statuses[2].formats == ("fake",)


def test_available_raising_marks_the_backend_broken(plugins: Any) -> None:
    register_backend(plugins.RaisingBackend)
    (status,) = backend_status()
    assert status.broken and not status.available
    assert status.reason == "available() raised RuntimeError: the driver crashed"
    with pytest.raises(BackendUnavailableError, match="the driver crashed"):
        load_model("http://localhost:1", backend="raising")


class _Awkward:
    """Optional attributes that raise or have odd types."""

    name = "awkward"

    @property
    def priority(self) -> int:
        raise RuntimeError("no priority")

    @property
    def formats(self) -> tuple[str, ...]:
        raise RuntimeError("no formats")

    def reason(self) -> str:
        return "computed reason"

    aliases = "single-alias"

    def extra(self) -> str:
        return "awkward-extra"

    def available(self) -> bool:
        return True

    def load_model(self, path: Any, *opts: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def test_odd_optional_attributes_never_break_status() -> None:
    register_backend(_Awkward())
    (status,) = backend_status()
    assert (status.priority, status.formats, status.reason) == (0, (), "computed reason")
    assert status.aliases == ("single-alias",)
    assert status.extra == "awkward-extra"
    assert get_backend("single-alias") is not None


# -- selection -----------------------------------------------------------------------


def test_highest_priority_that_loads_the_format_wins(tiny_gguf: Path, tmp_path: Path) -> None:
    register_backend(FakeBackend("low", priority=10, formats=("gguf",)))
    register_backend(FakeBackend("high", priority=50, formats=("gguf",)))
    register_backend(FakeBackend("top", priority=100, formats=("safetensors",)))
    register_backend(FakeBackend("off", priority=1000, formats=("gguf",), available=False))
    assert default_backend(tiny_gguf).name == "high"
    assert default_backend(_safetensors_dir(tmp_path / "st")).name == "top"
    assert default_backend().name == "top"  # any format: the best available one


def test_equal_priorities_break_ties_by_name(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("zed", priority=7, formats=("gguf",)))
    register_backend(FakeBackend("alf", priority=7, formats=("gguf",)))
    assert default_backend(tiny_gguf).name == "alf"


def test_a_backend_without_formats_takes_any(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("any", formats=()))
    assert default_backend(tiny_gguf).name == "any"


def test_urls_go_to_url_backends_only(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("local", priority=50, formats=("gguf",)))
    register_backend(FakeBackend("remote", priority=0, formats=("url",)))
    assert default_backend("https://example.org/v1").name == "remote"
    assert default_backend("http://localhost:8080").name == "remote"
    assert default_backend(tiny_gguf).name == "local"
    unregister_backend("local")
    # With no path, a backend that only takes URLs is no default.
    with pytest.raises(NoBackendError):
        default_backend()


# -- falling back when a backend declines the model ----------------------------------


def test_a_declining_backend_hands_the_model_to_the_next(tiny_gguf: Path) -> None:
    top = FakeBackend("top", priority=100, formats=("gguf",), declines="no Q4_K loader")
    mid = FakeBackend("mid", priority=50, formats=("gguf",))
    low = FakeBackend("low", priority=10, formats=("gguf",))
    for backend in (top, mid, low):
        register_backend(backend)
    assert default_backend(tiny_gguf) is mid
    model = load_model(tiny_gguf)
    model.close()
    assert mid.loads and not top.loads and not low.loads
    # The check saw the header, read once, before any weights.
    (path, header) = top.checks[-1]
    assert path == str(tiny_gguf)
    assert header is not None and header.architecture == "llama"
    assert mid.checks[-1][1] is header
    assert not low.checks  # never asked: a better one took it


def test_when_every_backend_declines_the_error_lists_each_reason(tiny_gguf: Path) -> None:
    register_backend(
        FakeBackend("a", priority=9, formats=("gguf",), declines="no loader for llama")
    )
    register_backend(FakeBackend("b", priority=5, formats=("gguf",), declines="tensor type Q4_K"))
    register_backend(FakeBackend("c", formats=("gguf",), available=False, reason="no GPU here"))
    register_backend(FakeBackend("d", formats=("safetensors",), reason="folders only"))
    with pytest.raises(NoBackendError) as caught:
        load_model(tiny_gguf)
    text = str(caught.value)
    assert text.startswith("no installed backend loads this model (a, b declined it)")
    assert "  a: declines: no loader for llama" in text
    assert "  b: declines: tensor type Q4_K" in text
    assert "  c: unavailable: no GPU here" in text
    assert "  d: available (does not load gguf): folders only" in text


def test_an_explicit_backend_is_never_overridden(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picky = FakeBackend("picky", priority=100, formats=("gguf",), declines="would rather not")
    other = FakeBackend("other", priority=1, formats=("gguf",))
    register_backend(picky)
    register_backend(other)
    load_model(tiny_gguf, backend="picky").close()
    assert len(picky.loads) == 1 and not picky.checks
    monkeypatch.setenv("INFERENCE_BACKEND", "picky")
    load_model(tiny_gguf).close()
    assert len(picky.loads) == 2 and not other.loads


def test_a_check_that_raises_declines_with_its_error(tiny_gguf: Path) -> None:
    class Broken(FakeBackend):
        def check_model(self, path: str, header: Any) -> str | None:
            raise KeyError("general.architecture")

    register_backend(Broken("broken", priority=9, formats=("gguf",)))
    fine = FakeBackend("fine", priority=1, formats=("gguf",))
    register_backend(fine)
    assert default_backend(tiny_gguf) is fine
    (first, *_) = inference.candidates(tiny_gguf)
    assert first.name == "broken" and not first.chosen
    assert first.reason == "its check_model raised KeyError: 'general.architecture'"


def test_a_corrupt_file_fails_once_before_any_backend_is_asked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 40)
    asked = FakeBackend("asked", priority=9, formats=("gguf",), declines="x")
    register_backend(asked)
    with pytest.raises(ModelLoadError):
        load_model(bad)
    assert not asked.loads


def test_candidates_say_who_loads_it_and_why_not_the_others(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("metal", priority=100, formats=("gguf",), declines="Q4_K"))
    register_backend(FakeBackend("cpu", priority=50, formats=("gguf",), reason="runs anywhere"))
    register_backend(FakeBackend("spare", priority=10, formats=("gguf",)))
    register_backend(
        FakeBackend("gpu", priority=80, formats=("gguf",), available=False, reason="no /dev/kfd")
    )
    register_backend(FakeBackend("remote", formats=("url",)))
    chain = inference.candidates(tiny_gguf)
    assert all(isinstance(c, inference.Candidate) for c in chain)
    got = [(c.name, c.chosen, c.reason) for c in chain]
    assert got == [
        ("metal", False, "Q4_K"),
        ("cpu", True, "runs anywhere"),
        ("spare", False, "cpu ranks higher and loads it"),
        ("gpu", False, "no /dev/kfd"),
        ("remote", False, "does not load gguf models"),
    ]


def test_cli_info_shows_the_selection(tiny_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inference import cli

    register_backend(FakeBackend("metal", priority=100, formats=("gguf",), declines="Q4_K"))
    register_backend(FakeBackend("cpu", priority=50, formats=("gguf",), reason="runs anywhere"))
    assert cli.main(["info", str(tiny_gguf)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("selection (best first):\n")
    assert "  metal           no       Q4_K\n" in out
    assert "  cpu             loads it runs anywhere\n" in out
    assert "backend           fake" in out  # then the loaded model's info
    assert cli.main(["info", str(tiny_gguf), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["chosen"]) for c in data["selection"]] == [
        ("metal", False),
        ("cpu", True),
    ]


def test_cli_info_shows_the_selection_when_nothing_loads_it(
    tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference import cli

    register_backend(FakeBackend("metal", priority=100, formats=("gguf",), declines="Q4_K"))
    assert cli.main(["info", str(tiny_gguf)]) == 1
    captured = capsys.readouterr()
    assert "  metal           no       Q4_K" in captured.out
    assert "metal: declines: Q4_K" in captured.err


def test_explicit_then_environment_then_best(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    low = FakeBackend("low", priority=1, formats=("gguf",))
    high = FakeBackend("high", priority=9, formats=("gguf",))
    register_backend(low)
    register_backend(high)
    assert default_backend(tiny_gguf) is high
    monkeypatch.setenv("INFERENCE_BACKEND", " low ")
    assert default_backend(tiny_gguf) is low
    load_model(tiny_gguf).close()
    assert len(low.loads) == 1 and not high.loads
    load_model(tiny_gguf, backend="high").close()  # the option beats the variable
    assert len(high.loads) == 1
    monkeypatch.setenv("INFERENCE_BACKEND", "")
    assert default_backend(tiny_gguf) is high


def test_environment_variable_naming_an_unknown_backend(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_backend(FakeBackend("fake", formats=("gguf",)))
    monkeypatch.setenv("INFERENCE_BACKEND", "nope")
    with pytest.raises(BackendNotFoundError) as info:
        default_backend(tiny_gguf)
    message = str(info.value)
    assert "backend 'nope' (INFERENCE_BACKEND=nope) not found" in message
    assert "misspelled or not installed" in message
    assert message.endswith("Registered: fake")


def test_unknown_backend_by_name_lists_registered_ones(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("one"))
    register_backend(FakeBackend("two"))
    with pytest.raises(BackendNotFoundError, match=r"Registered: one, two$") as info:
        load_model(tiny_gguf, backend="three")
    assert isinstance(info.value, LookupError)
    assert "backend 'three' (backend option) not found" in str(info.value)


def test_unknown_known_backend_names_its_extra(tiny_gguf: Path) -> None:
    with pytest.raises(BackendNotFoundError) as info:
        load_model(tiny_gguf, backend="llama_cpp")
    message = str(info.value)
    assert "pip install 'inference[llamacpp]'" in message
    assert message.endswith("Registered: none")
    assert KNOWN_EXTRAS["rocm"] == "rocm" and KNOWN_EXTRAS["mlx"] == "mlx"
    assert registry.install_command("llama_cpp") == "pip install 'inference[llamacpp]'"
    assert FORMAT_EXTRAS["gguf"] == ("llamacpp", "rocm", "mlx")


def test_unavailable_backend_by_name_says_why(plugins: Any, tiny_gguf: Path) -> None:
    register_backend(plugins.UnavailableBackend)
    with pytest.raises(BackendUnavailableError) as info:
        load_model(tiny_gguf, backend="unavailable")
    exc = info.value
    assert exc.backend == "unavailable"
    assert exc.reason == "needs a frobnicator, and none is plugged in"
    assert str(exc) == (
        "backend 'unavailable' is not available here: needs a frobnicator, and none is plugged in"
    )
    # Installed but unavailable: an install command would be the wrong fix.
    assert "pip install" not in str(exc)


def test_unavailable_backends_are_never_picked(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("off", priority=100, formats=("gguf",), available=False))
    register_backend(FakeBackend("on", priority=1, formats=("gguf",)))
    assert default_backend(tiny_gguf).name == "on"


def test_no_backend_lists_every_backend_reason_and_extra(plugins: Any, tiny_gguf: Path) -> None:
    register_backend(plugins.UnavailableBackend)
    register_backend(plugins.RaisingBackend)
    register_backend(plugins.TopSafetensorsBackend)
    _entry_point("broken", "inference_test_broken:Backend")
    with pytest.raises(NoBackendError) as info:
        load_model(tiny_gguf)
    message = str(info.value)
    first, *rest = message.splitlines()
    assert first == (
        "no available backend loads gguf models; install a backend with "
        "pip install 'inference[llamacpp]' or pip install 'inference[rocm]'"
        " or pip install 'inference[mlx]'"
    )
    assert rest[0] == "installed backends:"
    assert sorted(rest[1:]) == sorted(
        [
            "  top: available (does not load gguf): only safetensors",
            "  unavailable: unavailable: needs a frobnicator, and none is plugged in",
            "  raising: unavailable: available() raised RuntimeError: the driver crashed",
            "  broken: unavailable: failed to load: ImportError: libfrobnicate.so.1:"
            " cannot open shared object file",
        ]
    )
    assert isinstance(info.value, RuntimeError)


def test_no_backend_at_all() -> None:
    with pytest.raises(NoBackendError) as info:
        default_backend()
    message = str(info.value)
    assert "no available backend loads models" in message
    assert "pip install 'inference[llamacpp]'" in message
    assert message.endswith("installed backends:\n  (no backends installed)")
    assert FORMAT_EXTRAS["safetensors"] == ("mlx",)


def test_missing_and_unrecognised_paths(tmp_path: Path) -> None:
    register_backend(FakeBackend("fake", formats=("gguf",)))
    missing = tmp_path / "nope.gguf"
    for call in (
        lambda: load_model(missing),
        lambda: load_model(missing, backend="fake"),
        lambda: default_backend(missing),
    ):
        with pytest.raises(ModelLoadError) as info:
            call()
        assert str(info.value) == f"{missing}: no such file or directory"
        assert info.value.path == str(missing)
        assert isinstance(info.value, OSError)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model file in a known format"):
        load_model(text)
    with pytest.raises(ModelLoadError, match="not a model file in a known format"):
        load_model(text, backend="fake")
    with pytest.raises(ModelLoadError, match="a directory with no model weights"):
        load_model(tmp_path)


def test_a_backend_without_formats_may_be_asked_for_anything(tmp_path: Path) -> None:
    backend = FakeBackend("raw", formats=())
    register_backend(backend)
    text = tmp_path / "weights.bin"
    text.write_bytes(b"\0")
    with load_model(text, backend="raw") as model:
        assert model.info.path == str(text)


def test_load_model_passes_the_load_config(tiny_gguf: Path) -> None:
    backend = FakeBackend("fake", formats=("gguf",))
    register_backend(backend)
    with load_model(tiny_gguf, inference.with_context_len(64), gpu_layers=0) as model:
        assert isinstance(model, TextModel) and isinstance(model, FakeModel)
        assert model.info.context_length == 64
    assert backend.loads == [LoadConfig(context_len=64, gpu_layers=0)]
    load_model(str(tiny_gguf), backend="fake").close()
    assert backend.loads[-1] == LoadConfig(backend="fake")


class _FailsToLoad(FakeBackend):
    """Takes the file in its check, then fails to load it (as llama.cpp does
    for an architecture it does not know)."""

    def load_model(self, path: Any, *opts: Any, **kwargs: Any) -> FakeModel:
        self.loads.append(inference.options.load_config(*opts, **kwargs))
        raise ModelLoadError(f"{self.name} could not load the model", path=str(path))


def test_a_failed_load_falls_back_to_the_next_backend(tiny_gguf: Path) -> None:
    best = _FailsToLoad("best", formats=("gguf",), priority=20)
    next_best = FakeBackend("next", formats=("gguf",), priority=10)
    register_backend(best)
    register_backend(next_best)
    with load_model(tiny_gguf) as model:
        assert model.info.backend == "fake" and next_best.loads
    assert len(best.loads) == 1  # tried first


def test_when_every_backend_fails_to_load_the_error_names_each(tiny_gguf: Path) -> None:
    register_backend(_FailsToLoad("first", formats=("gguf",), priority=20))
    register_backend(_FailsToLoad("second", formats=("gguf",), priority=10))
    register_backend(FakeBackend("declines", formats=("gguf",), declines="not my kind"))
    with pytest.raises(ModelLoadError) as info:
        load_model(tiny_gguf)
    text = str(info.value)
    assert "no backend could load" in text
    assert "  first: first could not load the model" in text
    assert "  second: second could not load the model" in text
    assert "declines" not in text  # it never tried
    # One backend alone: its own error, unchanged; by name: no fallback.
    unregister_backend("second")
    with pytest.raises(ModelLoadError, match=r"^first could not load the model$"):
        load_model(tiny_gguf)
    register_backend(FakeBackend("spare", formats=("gguf",)))
    with pytest.raises(ModelLoadError, match=r"^first could not load"):
        load_model(tiny_gguf, backend="first")
    load_model(tiny_gguf).close()  # chosen without a name: falls back to spare


def test_load_model_validates_its_options(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("fake", formats=("gguf",)))
    with pytest.raises(TypeError, match="unknown load option 'max_tokens'"):
        load_model(tiny_gguf, max_tokens=3)
    with pytest.raises(TypeError, match="is a generate option"):
        load_model(tiny_gguf, inference.with_temperature(0.5))
    with pytest.raises(ValueError, match="context_len must be >= 0"):
        load_model(tiny_gguf, context_len=-1)


def test_known_backends_name_their_extra_without_saying_so(tiny_gguf: Path) -> None:
    register_backend(FakeBackend("rocm", formats=("gguf",), available=False, reason="no GPU"))
    register_backend(
        FakeBackend(
            "llama_cpp",
            formats=("gguf",),
            available=False,
            reason="not installed: pip install 'inference[llamacpp]'",
        )
    )
    assert {s.name: s.extra for s in backend_status()} == {"rocm": "rocm", "llama_cpp": "llamacpp"}
    with pytest.raises(NoBackendError) as info:
        default_backend(tiny_gguf)
    lines = str(info.value).splitlines()
    # A hardware reason gets no install command: the backend is installed.
    assert "  rocm: unavailable: no GPU" in lines
    # A reason that already gives the command keeps it, once.
    assert "  llama_cpp: unavailable: not installed: pip install 'inference[llamacpp]'" in lines


def test_url_credentials_never_reach_the_log() -> None:
    from inference.registry import _shown

    shown = _shown("https://user:s3cret@example.test:8443/v1?x=1#model=m&key=abc")
    assert shown == "https://example.test:8443/v1"
    assert "s3cret" not in shown
    assert _shown("/models/a.gguf") == "/models/a.gguf"


# -- how locations are shown -----------------------------------------------------------


def test_a_url_with_a_bad_port_is_a_model_load_error() -> None:
    register_backend(FakeBackend("remote", formats=("url",)))
    inference.get_backend("remote")
    unregister_backend("remote")
    from inference.backends.openai import OpenAIBackend

    register_backend(OpenAIBackend())
    with pytest.raises(ModelLoadError, match="not a valid server URL"):
        load_model("http://host:notaport/v1")


def test_urls_are_shown_without_credentials_and_with_ipv6_brackets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from inference.redact import shown_url

    assert shown_url("http://user:secret@[::1]:8080/v1?key=k#model=m") == "http://[::1]:8080/v1"
    assert shown_url("https://u@example.org/v1") == "https://example.org/v1"
    assert shown_url("http://host:notaport/v1") == "<invalid URL>"
    remote = FakeBackend("remote", formats=("url",))
    register_backend(remote)
    with caplog.at_level("DEBUG", logger="inference"):
        load_model("http://user:secret@[::1]:8080/v1#model=m").close()
    logged = caplog.text
    assert "http://[::1]:8080/v1" in logged and "secret" not in logged
