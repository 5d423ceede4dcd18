"""The ``rocm`` backend object: AMD GPUs through llama.cpp built with HIP.

Detection (:mod:`inference_rocm.detect`) reads ``/dev`` and ``/sys`` and
imports nothing heavy; the engine is the llama.cpp backend's, loaded only
when a model is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from inference.errors import BackendUnavailableError
from inference.gguf import read_header
from inference.options import LoadConfig, Option, load_config
from inference.protocols import TextModel

from .detect import Detection, detect
from .memory import check_fits, estimate

__all__ = ["RocmBackend"]


class RocmBackend:
    """Runs GGUF models on an AMD GPU with llama.cpp's HIP build.

    ``dev_root``, ``sys_root`` and ``detector`` exist for tests on machines
    without the hardware.
    """

    name = "rocm"
    aliases = ("hip", "amd")
    priority = 80
    formats = ("gguf",)

    def __init__(
        self,
        *,
        dev_root: str = "/dev",
        sys_root: str = "/sys",
        detector: Callable[[], Detection] | None = None,
    ) -> None:
        self._sys_root = sys_root
        self._detector = detector or (lambda: detect(dev_root=dev_root, sys_root=sys_root))
        self.reason = ""

    def detection(self) -> Detection:
        """Detect now; also sets :attr:`reason`."""
        found = self._detector()
        self.reason = found.reason
        return found

    def available(self) -> bool:
        """Whether an AMD GPU and a HIP build are here, and the build passes
        the llama.cpp engine's self-test (:mod:`inference_llamacpp.selftest`)."""
        if not self.detection().available:
            return False
        from inference_llamacpp.selftest import rebuild_command, verdict

        tested = verdict()
        if not tested.ok:
            # The fix keeps the HIP build: a CPU rebuild would drop the GPU.
            fix = "" if tested.retry else f"; rebuild: {rebuild_command('-DGGML_HIP=on')}"
            self.reason = tested.reason + fix
        return tested.ok

    def load_model(
        self, path: str | os.PathLike[str], *opts: Option | LoadConfig, **kwargs: Any
    ) -> TextModel:
        cfg = load_config(*opts, **kwargs)
        found = self.detection()
        if not found.available or found.chosen is None:
            raise BackendUnavailableError(
                f"backend 'rocm' is not available here: {found.reason}",
                backend=self.name,
                reason=found.reason,
            )
        text = os.fspath(path)
        header = read_header(text)
        from inference_llamacpp.engine import DEFAULT_CONTEXT_CAP, sequences

        context_len = cfg.context_len or min(
            header.context_length or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP
        )
        need = estimate(
            header,
            context_len=context_len,
            gpu_layers=cfg.gpu_layers,
            parallel_slots=sequences(cfg),  # each sequence has KV cells for the whole context
        )
        check_fits(need, found.chosen, path=text)
        from .engine import RocmModel

        return RocmModel(text, cfg, header=header, detection=found, sys_root=self._sys_root)
