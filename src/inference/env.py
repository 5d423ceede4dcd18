"""Every environment variable the library reads, in one place.

==========================  =================================================
``INFERENCE_BACKEND``       backend name to use when none is given in code
``INFERENCE_LOG``           ``debug``, ``info``, ``warning``...: log level of
                            the ``inference`` logger; ``debug`` also lets the
                            engines' own logs through
``INFERENCE_API_KEY``       API key for the ``openai`` remote backend
``OPENAI_API_KEY``          read when ``INFERENCE_API_KEY`` is unset
``INFERENCE_SERVE_API_KEY`` the key ``inference serve`` requires of its
                            clients, unless ``--api-key`` or
                            ``--api-key-file`` gives one
``INFERENCE_KV_CACHE_DIR``  the prefix cache's folder (prompts' KV kept
                            across restarts) when ``cache_dir`` is not given
``INFERENCE_CACHE_DIR``     where backends keep converted models and engine
                            self-test verdicts (default:
                            ``$XDG_CACHE_HOME/inference`` or
                            ``~/.cache/inference``)
``LLAMA_CPP_LIB_PATH``      llama-cpp-python's own: the directory of the
                            llama.cpp libraries it loads; the ``llama_cpp``
                            backend's self-test tests that build, and the
                            ``rocm`` backend looks there for a HIP build
``ROCR_VISIBLE_DEVICES``    ROCm's own, read (never set) by the ``rocm``
``HIP_VISIBLE_DEVICES``     backend: which AMD GPUs HIP shows; with none
``CUDA_VISIBLE_DEVICES``    set, it picks the discrete GPU with the most VRAM
                            (HIP reads ``CUDA_VISIBLE_DEVICES`` when
                            ``HIP_VISIBLE_DEVICES`` is empty)
==========================  =================================================
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "INFERENCE_API_KEY",
    "INFERENCE_BACKEND",
    "INFERENCE_CACHE_DIR",
    "INFERENCE_KV_CACHE_DIR",
    "INFERENCE_LOG",
    "INFERENCE_SERVE_API_KEY",
    "LLAMA_CPP_LIB_PATH",
    "OPENAI_API_KEY",
    "ROCR_VISIBLE_DEVICES",
    "cache_dir",
    "configure_logging",
    "engine_logs_enabled",
    "kv_cache_dir",
]

INFERENCE_BACKEND = "INFERENCE_BACKEND"
INFERENCE_LOG = "INFERENCE_LOG"
INFERENCE_API_KEY = "INFERENCE_API_KEY"
OPENAI_API_KEY = "OPENAI_API_KEY"
INFERENCE_SERVE_API_KEY = "INFERENCE_SERVE_API_KEY"
INFERENCE_CACHE_DIR = "INFERENCE_CACHE_DIR"
INFERENCE_KV_CACHE_DIR = "INFERENCE_KV_CACHE_DIR"
LLAMA_CPP_LIB_PATH = "LLAMA_CPP_LIB_PATH"
ROCR_VISIBLE_DEVICES = "ROCR_VISIBLE_DEVICES"
HIP_VISIBLE_DEVICES = "HIP_VISIBLE_DEVICES"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"

_logger = logging.getLogger("inference")


def configure_logging() -> None:
    """Apply ``INFERENCE_LOG`` to the ``inference`` logger.

    Called by the CLI and by backends when they load a model, never at
    import. Without the variable, logging is left to the application.
    """
    level = os.environ.get(INFERENCE_LOG, "").strip().upper()
    if not level:
        return
    value = getattr(logging, level, None) if level.isalpha() else None
    # Only a real level name counts; anything else (a typo, or a logging
    # attribute such as BASIC_FORMAT) falls back to INFO instead of raising.
    _logger.setLevel(value if isinstance(value, int) else logging.INFO)
    if not _logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        _logger.addHandler(handler)


def engine_logs_enabled() -> bool:
    """Whether engines may print their own logs: ``INFERENCE_LOG=debug``,
    or the ``inference`` logger set to DEBUG by the application."""
    if os.environ.get(INFERENCE_LOG, "").strip().lower() == "debug":
        return True
    return _logger.isEnabledFor(logging.DEBUG) and _logger.level != logging.NOTSET


def cache_dir(*parts: str) -> Path:
    """The cache folder for ``parts`` (not created)."""
    from pathlib import Path  # imported here: it costs start-up time

    root = os.environ.get(INFERENCE_CACHE_DIR)
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "inference"
    return base.joinpath(*parts)


def kv_cache_dir(given: str = "") -> str:
    """The prefix cache's folder: ``given`` (the ``cache_dir`` load option),
    else ``INFERENCE_KV_CACHE_DIR``, else "" (no disk tier)."""
    return given or os.environ.get(INFERENCE_KV_CACHE_DIR, "").strip()
