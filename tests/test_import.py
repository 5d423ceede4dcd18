"""Importing the core: standard library only, cheap, no side effects; every
public name exported and tested."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import inference

TESTS = Path(__file__).resolve().parent

#: Engines and heavy libraries that listing backends must never import.
ENGINES = ("llama_cpp", "mlx", "numpy", "jinja2", "torch")

#: Core modules whose ``__all__`` is public.
PUBLIC_MODULES = (
    "inference",
    "inference.base",
    "inference.capabilities",
    "inference.chat_families",
    "inference.chat_template",
    "inference.cli",
    "inference.constraints",
    "inference.detok",
    "inference.discovery",
    "inference.disk_cache",
    "inference.engine_thread",
    "inference.env",
    "inference.errors",
    "inference.gguf",
    "inference.hf_config",
    "inference.metrics",
    "inference.model_state",
    "inference.options",
    "inference.producers",
    "inference.protocols",
    "inference.redact",
    "inference.registry",
    "inference.reply",
    "inference.scoring",
    "inference.stream",
    "inference.testing",
    "inference.testing.conformance",
    "inference.testing.fake",
    "inference.testing.gguf_writer",
    "inference.testing.models",
    "inference.tool_calls",
    "inference.types",
    "inference.values",
)

#: Optional modules of the core: each imports a third-party package by design
#: (``inference.harness``: lm-eval; ``inference.guidance``: llguidance and
#: NumPy), and only code that needs them imports them, when it does.
OPTIONAL_MODULES = ("inference.guidance", "inference.harness")

#: Prints the top-level modules, outside the standard library, that ``code`` loaded.
NON_STDLIB = """
import json, sys
before = set(sys.modules)
{code}
new = sorted({{m.split(".")[0] for m in set(sys.modules) - before}})
print(json.dumps([m for m in new if m not in sys.stdlib_module_names]))
"""


def test_import_loads_nothing_outside_the_standard_library(child: Any) -> None:
    proc = child.run(NON_STDLIB.format(code="import inference"))
    assert child.json(proc) == ["inference"]


def test_using_the_core_loads_nothing_outside_the_standard_library(child: Any) -> None:
    code = """
import importlib, pkgutil
import inference
for name in inference.__all__:
    getattr(inference, name)
# Every module of the core, the built-in backends included.
for info in pkgutil.walk_packages(inference.__path__, "inference."):
    if info.name != "inference.__main__" and info.name not in {optional!r}:
        importlib.import_module(info.name)
from inference.testing import FakeBackend
model = FakeBackend().load_model("m")
model.generate("Hi", max_tokens=4).text()
model.classify(["Hi"], return_logits=True)
inference.backend_status()
"""
    # Isolated from site-packages: only the standard library can be found, so
    # anything else imported would fail loudly as well as be listed.
    code = code.replace("{optional!r}", repr(set(OPTIONAL_MODULES)))
    proc = child.run(NON_STDLIB.format(code=code), isolated=True)
    assert child.json(proc) == ["inference"]


def test_import_has_no_side_effects(child: Any) -> None:
    code = """
import json, logging, os, sys
env = dict(os.environ)
import inference
inference.load_model, inference.TokenStream, inference.BaseTextModel
print(json.dumps({
    "env_same": dict(os.environ) == env,
    "root_handlers": len(logging.getLogger().handlers),
    "inference_handlers": len(logging.getLogger("inference").handlers),
    "inference_level": logging.getLogger("inference").level,
    "metadata_read": "importlib.metadata" in sys.modules,
    "threads": __import__("threading").active_count(),
}))
"""
    out = child.json(child.run(code))
    assert out == {
        "env_same": True,
        "root_handlers": 0,
        "inference_handlers": 0,
        "inference_level": 0,
        "metadata_read": False,  # entry points are read when backends are asked for
        "threads": 1,
    }


def test_listing_backends_imports_no_engine(child: Any) -> None:
    """``inference backends``, in this environment with its installed backends."""
    code = f"""
import json, sys
from inference.cli import main
main(["backends"])
print(json.dumps([m for m in {ENGINES!r} if m in sys.modules]))
"""
    proc = child.run(code)
    engines = child.json(proc)
    assert engines == [], f"`inference backends` imported {engines}:\n{proc.stdout}"


def test_listing_backends_imports_only_the_backend_objects(child: Any) -> None:
    """``inference backends`` imports the registry and each backend's small
    plugin module, counted: not the remote model, its HTTP client, the
    streams or the base model (30 core modules before they were kept lazy)."""
    code = """
import json, sys
from inference.cli import main
before = set(sys.modules)
main(["backends"])
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith("inference."))))
"""
    proc = child.run(code)
    loaded = child.json(proc)
    assert loaded == [
        "inference.backends",
        "inference.backends.openai",
        "inference.backends.openai.backend",
        "inference.backends.openai.dialects",
        "inference.backends.openai.urls",
        "inference.redact",
    ]


def test_import_loads_two_modules(child: Any) -> None:
    """What keeps ``import inference`` cheap, counted rather than timed (the
    time itself is bench/bench_import.py's): the package and ``__future__``,
    nothing else, not even ``typing``."""
    code = """
import json, sys
before = set(sys.modules)
import inference
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    assert child.json(child.run(code)) == ["__future__", "inference"]


# -- the public names ---------------------------------------------------------------


def test_all_is_sorted_unique_and_complete() -> None:
    names = inference.__all__
    assert len(names) == len(set(names))
    assert names == sorted(names)
    for name in names:
        assert getattr(inference, name) is not None
    assert set(names) <= set(dir(inference))
    namespace: dict[str, Any] = {}
    exec("from inference import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(names)


def test_lazy_names_are_the_submodules_objects() -> None:
    from inference import errors, options, registry, stream, types

    assert inference.load_model is registry.load_model
    assert inference.with_max_tokens is options.with_max_tokens
    assert inference.TokenStream is stream.TokenStream
    assert inference.Token is types.Token
    assert inference.InferenceError is errors.InferenceError
    with pytest.raises(AttributeError, match="module 'inference' has no attribute 'nope'"):
        inference.nope  # noqa: B018


def test_version_matches_the_installed_metadata() -> None:
    assert inference.__version__ == "0.1.0"
    assert importlib.metadata.version("inference") == inference.__version__


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_exists(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists {name!r}, which is missing"


def _test_sources() -> str:
    this = Path(__file__).name
    return "\n".join(
        p.read_text(encoding="utf-8") for p in sorted(TESTS.glob("test_*.py")) if p.name != this
    )


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_is_used_by_a_test(module: str) -> None:
    sources = _test_sources()
    mod = importlib.import_module(module)
    missing = [
        name
        for name in mod.__all__
        if name != "__version__" and not re.search(rf"\b{re.escape(name)}\b", sources)
    ]
    assert not missing, f"no test mentions {module}: {', '.join(missing)}"


def test_python_dash_m_inference_runs_the_cli(child: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "inference", "--help"],
        env=child.env(),
        capture_output=True,
        text=True,
        cwd=os.fspath(TESTS),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: inference")


def test_the_console_script_is_declared() -> None:
    dist = importlib.metadata.distribution("inference")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"inference": "inference.cli:main"}
