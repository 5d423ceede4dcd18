"""The ROCm model: the llama.cpp engine, placed on the chosen AMD GPU.

Everything about generation is :class:`inference_llamacpp.engine.LlamaCppModel`;
this adds the device choice and VRAM figures from sysfs for ``metrics``.
"""

from __future__ import annotations

from typing import ClassVar

from inference_llamacpp.engine import LlamaCppModel

from inference.gguf import GGUFHeader
from inference.options import LoadConfig

from .detect import AmdGpu, Detection, read_vram

__all__ = ["RocmModel"]


class RocmModel(LlamaCppModel):
    """A GGUF model on an AMD GPU; see :class:`LlamaCppModel` for the rest."""

    backend_name: ClassVar[str] = "rocm"

    def __init__(
        self,
        path: str,
        cfg: LoadConfig,
        *,
        header: GGUFHeader,
        detection: Detection,
        sys_root: str = "/sys",
    ) -> None:
        self._gpu: AmdGpu | None = detection.chosen
        self._sys_root = sys_root
        self._peak_vram = 0
        # No visibility variable set: the whole model on the chosen GPU (an
        # APU's iGPU may enumerate first). Set: the user's choice stands.
        super().__init__(path, header, cfg, main_gpu=detection.main_gpu)

    def _memory(self) -> tuple[int | None, int | None]:
        """Active and peak VRAM of the GPU, from sysfs."""
        if self._gpu is None:
            return None, None
        try:
            _total, used = read_vram(self._gpu, self._sys_root)
        except OSError:
            return None, None
        self._peak_vram = max(self._peak_vram, used)
        return used, self._peak_vram
