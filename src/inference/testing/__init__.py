"""Tools for testing with and for ``inference``: a fake backend and the
conformance suite that every backend runs, and where to find (or make) a small
real model."""

from __future__ import annotations

from .conformance import TextModelConformance, run_conformance
from .fake import EOS_ID, FakeBackend, FakeModel
from .models import (
    backend_fixtures,
    minilm_folder,
    minilm_gguf,
    minilm_reranker,
    requantise,
    requires,
    smollm2_path,
)
from .threads import cancel_after, together, wait_for

__all__ = [
    "EOS_ID",
    "FakeBackend",
    "FakeModel",
    "TextModelConformance",
    "backend_fixtures",
    "cancel_after",
    "minilm_folder",
    "minilm_gguf",
    "minilm_reranker",
    "requantise",
    "requires",
    "run_conformance",
    "smollm2_path",
    "together",
    "wait_for",
]
