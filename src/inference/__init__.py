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

# The public names are imported on first use (PEP 562), so that
# ``import inference`` costs next to nothing: a program that only lists
# backends, or imports the package without using it, pays for no more.
# (``typing`` itself is not imported: it would cost more than the rest.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .base import BaseTextModel
    from .capabilities import Capabilities
    from .discovery import detect_format, discover
    from .embeddings import Embeddings, Ranked, Ranking
    from .errors import (
        BackendNotFoundError,
        BackendUnavailableError,
        Cancelled,
        ConstraintError,
        DeadlineExceeded,
        GenerationError,
        InferenceError,
        ModelClosedError,
        ModelLoadError,
        NoBackendError,
        UnsupportedOptionError,
    )
    from .options import (
        GenerateConfig,
        LoadConfig,
        Option,
        with_adapter_path,
        with_api_key,
        with_backend,
        with_cache_dir,
        with_cache_disk_mib,
        with_cache_host_mib,
        with_cancel,
        with_choice,
        with_constraint_memory_mib,
        with_constraint_timeout,
        with_context_len,
        with_draft_max,
        with_draft_model,
        with_flash_attention,
        with_gpu_layers,
        with_grammar,
        with_json_object,
        with_json_schema,
        with_logits,
        with_logprobs,
        with_max_tokens,
        with_min_p,
        with_parallel_slots,
        with_pooling,
        with_regex,
        with_repeat_penalty,
        with_seed,
        with_speculative,
        with_stop,
        with_stop_tokens,
        with_temperature,
        with_template_vars,
        with_thinking,
        with_threads,
        with_timeout,
        with_tool_choice,
        with_tools,
        with_top_k,
        with_top_p,
    )
    from .protocols import Backend, Embedder, Reranker, Scorer, TextModel, Tokenizer
    from .registry import (
        BackendStatus,
        Candidate,
        backend_status,
        candidates,
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
        RollingScore,
        ScoreResult,
        Token,
        TokenLogprob,
        ToolCall,
    )

#: Public name -> the submodule that defines it.
_LAZY: dict[str, str] = {
    "BaseTextModel": "base",
    "Capabilities": "capabilities",
    "detect_format": "discovery",
    "discover": "discovery",
    "BackendNotFoundError": "errors",
    "BackendUnavailableError": "errors",
    "Cancelled": "errors",
    "DeadlineExceeded": "errors",
    "GenerationError": "errors",
    "InferenceError": "errors",
    "ModelClosedError": "errors",
    "ModelLoadError": "errors",
    "NoBackendError": "errors",
    "GenerateConfig": "options",
    "LoadConfig": "options",
    "Option": "options",
    "with_adapter_path": "options",
    "with_api_key": "options",
    "with_backend": "options",
    "with_cancel": "options",
    "with_context_len": "options",
    "with_constraint_memory_mib": "options",
    "with_constraint_timeout": "options",
    "with_threads": "options",
    "with_draft_max": "options",
    "with_draft_model": "options",
    "with_flash_attention": "options",
    "with_speculative": "options",
    "with_gpu_layers": "options",
    "with_logits": "options",
    "with_logprobs": "options",
    "with_max_tokens": "options",
    "with_min_p": "options",
    "with_parallel_slots": "options",
    "with_pooling": "options",
    "with_cache_host_mib": "options",
    "with_cache_dir": "options",
    "with_cache_disk_mib": "options",
    "with_repeat_penalty": "options",
    "with_seed": "options",
    "with_stop": "options",
    "with_stop_tokens": "options",
    "with_temperature": "options",
    "with_timeout": "options",
    "with_top_k": "options",
    "with_top_p": "options",
    "Backend": "protocols",
    "Embedder": "protocols",
    "Reranker": "protocols",
    "Scorer": "protocols",
    "Embeddings": "embeddings",
    "Ranked": "embeddings",
    "Ranking": "embeddings",
    "TextModel": "protocols",
    "Tokenizer": "protocols",
    "BackendStatus": "registry",
    "Candidate": "registry",
    "backend_status": "registry",
    "candidates": "registry",
    "default_backend": "registry",
    "get_backend": "registry",
    "list_backends": "registry",
    "load_model": "registry",
    "register_backend": "registry",
    "TokenStream": "stream",
    "BatchResult": "types",
    "ClassifyResult": "types",
    "DiscoveredModel": "types",
    "GenerateMetrics": "types",
    "Message": "types",
    "ModelInfo": "types",
    "RollingScore": "types",
    "ScoreResult": "types",
    "Token": "types",
    "TokenLogprob": "types",
    "ToolCall": "types",
    "ConstraintError": "errors",
    "UnsupportedOptionError": "errors",
    "with_choice": "options",
    "with_grammar": "options",
    "with_json_object": "options",
    "with_json_schema": "options",
    "with_regex": "options",
    "with_template_vars": "options",
    "with_thinking": "options",
    "with_tool_choice": "options",
    "with_tools": "options",
}

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendNotFoundError",
    "BackendStatus",
    "BackendUnavailableError",
    "BaseTextModel",
    "BatchResult",
    "Cancelled",
    "Candidate",
    "Capabilities",
    "ClassifyResult",
    "ConstraintError",
    "DeadlineExceeded",
    "DiscoveredModel",
    "Embedder",
    "Embeddings",
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
    "Ranked",
    "Ranking",
    "Reranker",
    "RollingScore",
    "ScoreResult",
    "Scorer",
    "TextModel",
    "Token",
    "TokenLogprob",
    "TokenStream",
    "Tokenizer",
    "ToolCall",
    "UnsupportedOptionError",
    "__version__",
    "backend_status",
    "candidates",
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
    "with_cache_dir",
    "with_cache_disk_mib",
    "with_cache_host_mib",
    "with_cancel",
    "with_choice",
    "with_constraint_memory_mib",
    "with_constraint_timeout",
    "with_context_len",
    "with_draft_max",
    "with_draft_model",
    "with_flash_attention",
    "with_gpu_layers",
    "with_grammar",
    "with_json_object",
    "with_json_schema",
    "with_logits",
    "with_logprobs",
    "with_max_tokens",
    "with_min_p",
    "with_parallel_slots",
    "with_pooling",
    "with_regex",
    "with_repeat_penalty",
    "with_seed",
    "with_speculative",
    "with_stop",
    "with_stop_tokens",
    "with_temperature",
    "with_template_vars",
    "with_thinking",
    "with_threads",
    "with_timeout",
    "with_tool_choice",
    "with_tools",
    "with_top_k",
    "with_top_p",
]


if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
