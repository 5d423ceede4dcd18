"""Backends installed for real, through the ``inference.backends`` entry-point group.

Each test writes distributions' ``*.dist-info`` folders (METADATA and
entry_points.txt) into a temporary folder and runs a child interpreter with
that folder and tests/plugins on its path: importlib.metadata discovers them
as it would any installed distribution. The registry is process-wide state,
so every check runs in a child of its own. Most children are isolated from
site-packages (``-S``), so that only these plugins are installed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

PLUGINS = {
    "good": "inference_test_plugins:GoodBackend",  # a class
    "instance": "inference_test_plugins:INSTANCE",  # an instance
    "factory": "inference_test_plugins:make_factory_backend",  # a factory function
    "unavailable": "inference_test_plugins:UnavailableBackend",  # cannot run here
    "broken": "inference_test_broken:Backend",  # its module fails to import
    "raising": "inference_test_plugins:RaisingBackend",  # available() raises
}

#: Runs in the child before the test's own code: helpers and the paths.
PRELUDE = """
import json, os, sys
import inference
from inference import registry

GGUF, SAFETENSORS = sys.argv[1], sys.argv[2]

def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as exc:
        cause = exc.__cause__
        return {
            "error": type(exc).__name__,
            "message": str(exc),
            "backend": getattr(exc, "backend", None),
            "reason": getattr(exc, "reason", None),
            "cause": type(cause).__name__ if cause is not None else None,
        }

def done(**result):
    print(json.dumps(result))
"""


def write_dist(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """An installed distribution: ``site/<name>-1.0.dist-info``."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[inference.backends]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder with two test distributions holding every kind of plugin."""
    folder = tmp_path / "site"
    write_dist(folder, "inference-test-plugins", PLUGINS)
    top = {"top": "inference_test_plugins:TopSafetensorsBackend"}
    write_dist(folder, "inference-test-top", top)
    return folder


@pytest.fixture
def models(tmp_path: Path, gguf_factory: Any) -> tuple[str, str]:
    gguf = gguf_factory(tmp_path / "tiny.gguf")
    st = tmp_path / "st"
    st.mkdir()
    (st / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (st / "model.safetensors").write_bytes(b"\0" * 16)
    return str(gguf), str(st)


def run(child: Any, site: Path, models: tuple[str, str], code: str, **kwargs: Any) -> Any:
    proc = child.run(
        PRELUDE + textwrap.dedent(code),
        paths=(site, child.plugins),
        isolated=kwargs.pop("isolated", True),
        args=models,
        **kwargs,
    )
    return child.json(proc)


def test_every_kind_of_plugin_is_discovered(child: Any, site: Path, models: Any) -> None:
    out = run(
        child,
        site,
        models,
        """
        names = inference.list_backends()
        imported_by_listing = "inference_test_plugins" in sys.modules
        status = [dict(name=s.name, available=s.available, reason=s.reason,
                       priority=s.priority, formats=list(s.formats), broken=s.broken)
                  for s in inference.backend_status()]
        done(names=names, imported_by_listing=imported_by_listing, status=status)
        """,
    )
    assert out["names"] == sorted([*PLUGINS, "top"])
    assert out["imported_by_listing"] is False, "listing backends must not import plugins"
    status = {s["name"]: s for s in out["status"]}
    assert [s["name"] for s in out["status"]] == [
        "top",
        "unavailable",
        "raising",
        "good",
        "instance",
        "factory",
        "broken",
    ], "sorted by priority, highest first"
    expected = {
        "good": (True, "good to go", 500, ["gguf"], False),
        "instance": (True, "registered as an instance", 400, ["gguf", "safetensors"], False),
        "factory": (True, "made by a factory", 300, ["safetensors"], False),
        "top": (True, "only safetensors", 1000, ["safetensors"], False),
        "unavailable": (False, "needs a frobnicator, and none is plugged in", 900, ["gguf"], False),
        "raising": (
            False,
            "available() raised RuntimeError: the driver crashed",
            800,
            ["gguf"],
            True,
        ),
        "broken": (
            False,
            "failed to load: ImportError: libfrobnicate.so.1: cannot open shared object file",
            0,
            [],
            True,
        ),
    }
    for name, (available, reason, priority, formats, broken) in expected.items():
        s = status[name]
        assert (s["available"], s["reason"], s["priority"], s["formats"], s["broken"]) == (
            available,
            reason,
            priority,
            formats,
            broken,
        ), name


def test_selection_by_priority_and_format(child: Any, site: Path, models: Any) -> None:
    out = run(
        child,
        site,
        models,
        """
        gguf = inference.default_backend(GGUF).name
        st = inference.default_backend(SAFETENSORS).name
        anything = inference.default_backend().name
        with inference.load_model(GGUF) as m:
            text = m.generate("x", max_tokens=6).text()
        done(gguf=gguf, st=st, anything=anything, text=text)
        """,
    )
    # top (1000) loads no GGUF; unavailable (900) and raising (800) cannot run;
    # good (500) is the best that declares "gguf".
    assert out["gguf"] == "good"
    assert out["st"] == "top"
    assert out["anything"] == "top"
    assert out["text"] == "[good]"


def test_errors_name_the_backend_and_the_reason(child: Any, site: Path, models: Any) -> None:
    out = run(
        child,
        site,
        models,
        """
        done(
            broken=attempt(lambda: inference.get_backend("broken")),
            unavailable=attempt(lambda: inference.load_model(GGUF, backend="unavailable")),
            raising=attempt(lambda: inference.load_model(GGUF, backend="raising")),
            unknown=attempt(lambda: inference.load_model(GGUF, backend="nope")),
            alias=attempt(lambda: inference.get_backend("goodie").name),
            still_fine=attempt(lambda: inference.load_model(GGUF, backend="factory").info.path),
        )
        """,
    )
    broken = out["broken"]
    assert broken["error"] == "BackendUnavailableError"
    assert broken["backend"] == "broken"
    assert broken["cause"] == "ImportError"
    assert "libfrobnicate.so.1: cannot open shared object file" in broken["message"]

    unavailable = out["unavailable"]
    assert unavailable["error"] == "BackendUnavailableError"
    assert unavailable["reason"] == "needs a frobnicator, and none is plugged in"
    assert "pip install" not in unavailable["message"]

    assert out["raising"]["error"] == "BackendUnavailableError"
    assert "the driver crashed" in out["raising"]["reason"]

    unknown = out["unknown"]
    assert unknown["error"] == "BackendNotFoundError"
    assert unknown["message"].endswith(
        "Registered: broken, factory, good, instance, raising, top, unavailable"
    )
    assert out["alias"] == {"ok": "good"}
    # A backend asked for by name loads whatever it is given.
    assert out["still_fine"]["ok"].endswith("tiny.gguf")


CHOOSE = "inference.default_backend(GGUF).name"
LOAD = "inference.load_model(GGUF)"


@pytest.mark.parametrize(
    ("chosen", "call", "expected"),
    [
        ("instance", CHOOSE, {"ok": "instance"}),
        ("factory", CHOOSE, {"ok": "factory"}),
        ("", CHOOSE, {"ok": "good"}),
        ("unavailable", LOAD, {"error": "BackendUnavailableError"}),
        ("broken", LOAD, {"error": "BackendUnavailableError"}),
        ("missing", LOAD, {"error": "BackendNotFoundError"}),
    ],
)
def test_inference_backend_variable_is_honoured(
    child: Any, site: Path, models: Any, chosen: str, call: str, expected: dict[str, str]
) -> None:
    out = run(
        child, site, models, f"done(picked=attempt(lambda: {call}))", INFERENCE_BACKEND=chosen
    )
    assert expected.items() <= out["picked"].items()
    if expected.get("error") == "BackendNotFoundError":
        assert "(INFERENCE_BACKEND=missing) not found" in out["picked"]["message"]


def test_no_backend_lists_every_installed_backend(child: Any, tmp_path: Path, models: Any) -> None:
    folder = tmp_path / "site"
    write_dist(
        folder,
        "inference-test-sad",
        {k: PLUGINS[k] for k in ("unavailable", "broken", "raising")}
        | {"top": "inference_test_plugins:TopSafetensorsBackend"},
    )
    out = run(child, folder, models, "done(result=attempt(lambda: inference.load_model(GGUF)))")
    result = out["result"]
    assert result["error"] == "NoBackendError"
    lines = result["message"].splitlines()
    assert lines[0].startswith("no available backend loads gguf models; install a backend with")
    assert "pip install 'inference[llamacpp]'" in lines[0]
    listing = "\n".join(lines[2:])
    assert "top: available (does not load gguf): only safetensors" in listing
    assert "unavailable: unavailable: needs a frobnicator, and none is plugged in\n" in listing
    assert "raising: unavailable: available() raised RuntimeError: the driver crashed" in listing
    assert "broken: unavailable: failed to load: ImportError: libfrobnicate.so.1" in listing
    assert len(lines[2:]) == 4


def test_cli_backends_survives_broken_plugins(child: Any, site: Path) -> None:
    paths = (site, child.plugins)
    text = child.run(
        "from inference.cli import main; raise SystemExit(main(['backends']))",
        paths=paths,
        isolated=True,
    )
    assert text.returncode == 0, text.stderr
    assert "Traceback" not in text.stderr
    rows = {line.split()[0]: line for line in text.stdout.splitlines()[1:]}
    header = ["NAME", "AVAILABLE", "PRIORITY", "FORMATS", "REASON"]
    assert text.stdout.splitlines()[0].split() == header
    assert set(rows) == {*PLUGINS, "top"}
    assert rows["good"].split()[1:4] == ["yes", "500", "gguf"]
    assert rows["unavailable"].split()[1] == "no"
    assert rows["broken"].split()[1] == "broken"
    assert rows["raising"].split()[1] == "broken"
    assert "libfrobnicate.so.1" in rows["broken"]

    as_json = child.run(
        "from inference.cli import main; raise SystemExit(main(['backends', '--json']))",
        paths=paths,
        isolated=True,
    )
    assert as_json.returncode == 0, as_json.stderr
    data = {d["name"]: d for d in json.loads(as_json.stdout)}
    assert set(data) == {*PLUGINS, "top"}
    assert data["good"]["aliases"] == ["goodie"] and data["good"]["extra"] == "good"
    assert data["broken"]["broken"] is True
    assert data["instance"]["formats"] == ["gguf", "safetensors"]


def test_alongside_the_installed_backends(child: Any, site: Path, models: Any) -> None:
    """Not isolated: the plugins join the backends installed in this environment.

    (test_import.py checks that listing the installed ones imports no engine.)
    """
    out = run(
        child,
        site,
        models,
        """
        names = inference.list_backends()
        status = {s.name: s for s in inference.backend_status()}
        done(names=names, good=status["good"].available, gguf=inference.default_backend(GGUF).name)
        """,
        isolated=False,
    )
    assert {*PLUGINS, "top"} <= set(out["names"])
    assert "openai" in out["names"], "the core registers its own openai backend by entry point"
    assert out["good"] is True
    assert out["gguf"] == "good", "priority 500 beats every installed GGUF backend"
