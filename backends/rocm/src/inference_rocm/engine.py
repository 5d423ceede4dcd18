"""The ROCm model: the llama.cpp engine, placed on the chosen AMD GPU.

Everything about generation is :class:`inference_llamacpp.engine.LlamaCppModel`;
this adds the device choice and VRAM figures from sysfs for ``metrics``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import llama_cpp as lc
from inference_llamacpp.engine import LlamaCppModel

from inference.gguf import GGUFHeader
from inference.options import LoadConfig

from .detect import AmdGpu, Detection, read_vram

__all__ = ["RocmModel"]


class RocmModel(LlamaCppModel):
    """A GGUF model on an AMD GPU; see :class:`LlamaCppModel` for the rest."""

    backend_name: ClassVar[str] = "rocm"

    @classmethod
    def open(
        cls,
        path: str,
        cfg: LoadConfig,
        *,
        header: GGUFHeader,
        detection: Detection,
        sys_root: str = "/sys",
    ) -> RocmModel:
        model = cls.__new__(cls)
        model._gpu = detection.chosen
        model._main_gpu = detection.main_gpu
        model._sys_root = sys_root
        model._peak_vram = 0
        LlamaCppModel.__init__(model, path, header, cfg)
        return model

    _gpu: AmdGpu | None
    _main_gpu: int | None
    _sys_root: str
    _peak_vram: int

    def _model_params(self, params: Any, cfg: LoadConfig) -> None:
        # No visibility variable set: put the whole model on the chosen GPU
        # (an APU's iGPU may enumerate first). Set: leave the user's choice.
        if self._main_gpu is not None and lc.llama_supports_gpu_offload():
            params.split_mode = lc.LLAMA_SPLIT_MODE_NONE
            params.main_gpu = self._main_gpu

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
