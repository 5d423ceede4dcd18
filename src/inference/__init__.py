"""inference: one way to run a language model on whatever hardware is there.

    import inference
    with inference.load_model("model.gguf") as m:
        for tok in m.generate("Once upon a time", max_tokens=32):
            print(tok.text, end="", flush=True)

Backends (llama.cpp, ROCm, MLX, remote OpenAI-compatible servers) plug in
through the ``inference.backends`` entry-point group; the best available
one for the model's format is chosen unless you name one.
"""

from __future__ import annotations

from .base import BaseTextModel
from .discovery import detect_format, discover
from .errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    Cancelled,
    DeadlineExceeded,
    GenerationError,
    InferenceError,
    ModelClosedError,
    ModelLoadError,
    NoBackendError,
)
from .options import (
    GenerateConfig,
    LoadConfig,
    Option,
    with_adapter_path,
    with_api_key,
    with_backend,
    with_cancel,
    with_context_len,
    with_gpu_layers,
    with_logits,
    with_max_tokens,
    with_min_p,
    with_parallel_slots,
    with_repeat_penalty,
    with_seed,
    with_stop,
    with_stop_tokens,
    with_temperature,
    with_timeout,
    with_top_k,
    with_top_p,
)
from .protocols import Backend, TextModel, Tokenizer
from .registry import (
    BackendStatus,
    backend_status,
    default_backend,
    get_backend,
    list_backends,
    load_model,
    register_backend,
)
from .stream import TokenStream
from .types import (
    BatchResult,
    ClassifyResult,
    DiscoveredModel,
    GenerateMetrics,
    Message,
    ModelInfo,
    Token,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendNotFoundError",
    "BackendStatus",
    "BackendUnavailableError",
    "BaseTextModel",
    "BatchResult",
    "Cancelled",
    "ClassifyResult",
    "DeadlineExceeded",
    "DiscoveredModel",
    "GenerateConfig",
    "GenerateMetrics",
    "GenerationError",
    "InferenceError",
    "LoadConfig",
    "Message",
    "ModelClosedError",
    "ModelInfo",
    "ModelLoadError",
    "NoBackendError",
    "Option",
    "TextModel",
    "Token",
    "TokenStream",
    "Tokenizer",
    "__version__",
    "backend_status",
    "default_backend",
    "detect_format",
    "discover",
    "get_backend",
    "list_backends",
    "load_model",
    "register_backend",
    "with_adapter_path",
    "with_api_key",
    "with_backend",
    "with_cancel",
    "with_context_len",
    "with_gpu_layers",
    "with_logits",
    "with_max_tokens",
    "with_min_p",
    "with_parallel_slots",
    "with_repeat_penalty",
    "with_seed",
    "with_stop",
    "with_stop_tokens",
    "with_temperature",
    "with_timeout",
    "with_top_k",
    "with_top_p",
]
