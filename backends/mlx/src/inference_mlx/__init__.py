"""inference-mlx: the ``mlx`` backend of ``inference``.

Importing this package imports neither mlx nor mlx-lm; loading a model does.
"""

from __future__ import annotations

from .backend import MlxBackend

__all__ = ["MlxBackend"]
