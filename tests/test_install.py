"""``pip install .`` into a fresh virtual environment resolves the core from
this checkout, and the backend extras resolve from it too: the PyPI name
``inference`` belongs to an unrelated project, so no install may pull it."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("INFERENCE_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(*cmd: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [os.fspath(c) for c in cmd],
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        cwd=os.fspath(REPO.parent),
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _path_of(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", f"{url} is not a local file URL"
    return Path(unquote(parsed.path)).resolve()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with this checkout installed by ``pip install``."""
    root = tmp_path_factory.mktemp("install") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", REPO)
    return python


def test_the_core_installs_from_the_checkout(fresh: Path) -> None:
    code = """
import importlib.metadata as md, json, inference
dist = md.distribution("inference")
print(json.dumps({
    "version": dist.version,
    "requires": dist.requires,
    "entry_points": sorted((ep.group, ep.name, ep.value) for ep in dist.entry_points),
    "direct_url": json.loads(dist.read_text("direct_url.json") or "{}"),
    "file": inference.__file__,
    "load_model": callable(inference.load_model),
    "dunder_version": inference.__version__,
}))
"""
    out: dict[str, Any] = json.loads(_run(fresh, "-c", code).stdout)
    assert out["version"] == "0.1.0" == out["dunder_version"]
    assert ["inference.backends", "openai", "inference.backends.openai:OpenAIBackend"] in out[
        "entry_points"
    ]
    assert ["console_scripts", "inference", "inference.cli:main"] in out["entry_points"]
    # It came from this checkout, not from an index.
    assert _path_of(out["direct_url"]["url"]) == REPO
    assert out["load_model"] is True
    # Installed into the new environment (not run from the source tree).
    assert Path(out["file"]).resolve().is_relative_to(fresh.parent.parent.resolve())
    # The core depends on nothing; the extras only name backends from this checkout.
    assert all("extra ==" in r for r in out["requires"] or []), out["requires"]

    shown = _run(fresh, "-m", "pip", "show", "inference").stdout
    assert "Name: inference\n" in shown and "Version: 0.1.0\n" in shown
    listed = json.loads(_run(fresh, "-m", "pip", "list", "--format", "json").stdout)
    assert {p["name"].lower() for p in listed} <= {"inference", "pip", "setuptools"}


def test_the_installed_cli_runs(fresh: Path) -> None:
    script = fresh.parent / "inference"
    out = json.loads(_run(script, "backends", "--json").stdout)
    assert [s["name"] for s in out] == ["openai"]


def _report(python: Path, *requirements: str | os.PathLike[str]) -> list[dict[str, Any]]:
    proc = _run(
        python,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        "-",
        *requirements,
    )
    install: list[dict[str, Any]] = json.loads(proc.stdout)["install"]
    return install


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"].lower().replace("_", "-"): item for item in items}


def test_the_llamacpp_extra_resolves_from_the_checkout(fresh: Path) -> None:
    items = _by_name(_report(fresh, f"{REPO}[llamacpp]"))
    core, backend = items["inference"], items["inference-llamacpp"]
    assert _path_of(core["download_info"]["url"]) == REPO
    assert _path_of(backend["download_info"]["url"]) == REPO / "backends" / "llamacpp"
    assert core["metadata"]["version"] == backend["metadata"]["version"] == "0.1.0"
    assert "llama-cpp-python" in items


def test_a_backend_installed_alone_pulls_the_core_from_the_checkout(fresh: Path) -> None:
    items = _by_name(_report(fresh, REPO / "backends" / "llamacpp"))
    assert _path_of(items["inference"]["download_info"]["url"]) == REPO
    assert items["inference"]["metadata"]["version"] == "0.1.0"


def test_the_server_extra_resolves_from_the_checkout(fresh: Path) -> None:
    items = _by_name(_report(fresh, f"{REPO}[server]"))
    assert _path_of(items["inference"]["download_info"]["url"]) == REPO
    assert _path_of(items["inference-server"]["download_info"]["url"]) == REPO / "server"
    assert {"starlette", "uvicorn"} <= set(items)
