"""The ``mlx`` backend object: cheap to import, imports MLX only to detect and load.

The registry reads ``available()``, ``reason``, ``priority``, ``formats`` and
``aliases`` from here. Neither importing this module nor ``available()``
imports mlx or mlx-lm: ``available()`` asks
:func:`inference_mlx.detect.detect` with ``probe=False``, which judges the
device from the platform and the installed MLX build (a few milliseconds).
Loading a model imports MLX and asks it for the device itself.
"""

from __future__ import annotations

import os
from typing import Any

from inference.gguf import GGUFHeader
from inference.options import LoadConfig, Option, load_config
from inference.protocols import TextModel

from .detect import INSTALL_HINT, MlxDevice, detect

__all__ = ["INSTALL_HINT", "MlxBackend"]


class MlxBackend:
    """Runs models through Apple's MLX and mlx-lm.

    On a Mac with Apple silicon it uses the GPU through Metal and is the
    first choice (priority 100); on MLX's CUDA build it uses the NVIDIA GPU
    (priority 90); where only MLX's CPU device exists it is available but
    ranked below llama.cpp (priority 10), so ``backend="mlx"`` still works.
    It loads MLX or Hugging Face model folders (``config.json`` and
    ``*.safetensors``) and GGUF files of the architectures its loader maps.
    """

    name = "mlx"
    aliases = ("metal",)
    formats = ("gguf", "safetensors")

    def __init__(self) -> None:
        self._device: MlxDevice | None = None

    def _detect(self) -> MlxDevice:
        device = self._device
        if device is None:
            # Cheap and importing nothing: threads that race here agree.
            device = self._device = detect(probe=False)
        return device

    def available(self) -> bool:
        """Whether mlx and mlx-lm are installed and MLX has a device here."""
        try:
            return self._detect().available
        except Exception as exc:  # detect() should not raise; never let it escape
            self._device = MlxDevice(False, "", 0, f"MLX detection failed: {exc}")
            return False

    @property
    def priority(self) -> int:
        """100 on Metal, 90 on CUDA, 10 on the CPU device, 0 when unavailable."""
        return self._detect().priority

    @property
    def reason(self) -> str:
        """One line: which device MLX would use, or why it cannot run."""
        return self._detect().reason

    @property
    def device(self) -> str:
        """``"metal"``, ``"cuda"``, ``"cpu"``, or ``""`` when unavailable."""
        return self._detect().device

    def check_model(self, path: str, header: GGUFHeader | None) -> str | None:
        """None when the GGUF loader maps this file (folders are always
        tried), else why not: its architecture, a tensor type or a
        hyperparameter (:func:`.tensor_types.refusal`). Reads no weights and
        imports neither mlx nor numpy."""
        if header is None:
            return None
        from .tensor_types import refusal

        return refusal(header)

    def load_model(
        self, path: str | os.PathLike[str], *opts: Option | LoadConfig, **kwargs: Any
    ) -> TextModel:
        """Load an MLX/Hugging Face model folder or a GGUF file.

        Raises :class:`~inference.ModelLoadError` for a missing, corrupt or
        unsupported model.
        """
        cfg = load_config(*opts, **kwargs)
        where = os.fspath(path)
        from .encoder import MlxEncoder, encoder_config

        if os.path.isdir(where) and encoder_config(where) is not None:
            return MlxEncoder.load(where, cfg)
        from .engine import MlxModel

        return MlxModel.load(where, cfg)
