"""inference-rocm: the ``rocm`` backend of ``inference`` (AMD GPUs on Linux).

Importing this package reads no hardware and imports no engine.
"""

from __future__ import annotations

from .backend import RocmBackend

__all__ = ["RocmBackend"]
