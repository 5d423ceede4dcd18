"""inference-llamacpp: the ``llama_cpp`` backend of ``inference``.

Importing this package does not import llama-cpp-python; loading a model does.
The engine (:mod:`inference_llamacpp.engine`) is shared with the ROCm backend.
"""

from __future__ import annotations

from .backend import LlamaCppBackend

__all__ = ["LlamaCppBackend"]
