"""A Hugging Face ``config.json``: read once, checked, and what it says.

One reader for every place that looks at a model folder (``inference
discover`` and the MLX backend's ``info``), so they cannot disagree about a
folder's context length or quantisation. The file is untrusted: its size is
bounded and a value of the wrong type counts as not said.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from .errors import ModelLoadError
from .types import ModelInfo
from .values import whole_number

__all__ = ["MAX_CONFIG_BYTES", "config_facts", "read_config"]

#: The largest ``config.json`` read (real ones are a few KiB).
MAX_CONFIG_BYTES = 4 << 20

#: Where configs keep the trained context length, most common first.
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_ctx")


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``directory``'s ``config.json``; ModelLoadError
    (naming the file and why) if it is missing, too large or not an object."""
    config_path = os.path.join(os.fspath(directory), "config.json")
    try:
        with open(config_path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ModelLoadError(f"{config_path}: cannot read ({reason})", path=config_path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"{config_path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a model config",
            path=config_path,
        )
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelLoadError(f"{config_path}: not valid JSON ({exc})", path=config_path) from None
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{config_path}: expected a JSON object, found {type(config).__name__}",
            path=config_path,
        )
    return config


def config_facts(config: Mapping[str, Any]) -> ModelInfo:
    """What ``config`` says about its model, as a :class:`~inference.ModelInfo`
    (zero or ``""`` where it does not say; no backend or path). Multimodal
    configs keep the language model's facts under ``text_config``, which is
    read where the top level does not say."""
    text = config.get("text_config")
    inner: Mapping[str, Any] = text if isinstance(text, Mapping) else {}

    def number(*keys: str) -> int:
        for source in (config, inner):
            for key in keys:
                value = whole_number(source.get(key)) or 0
                if value > 0:
                    return value
        return 0

    architecture = ""
    for candidate in (config.get("model_type"), inner.get("model_type")):
        if isinstance(candidate, str) and candidate:
            architecture = candidate
            break
    else:
        names = config.get("architectures")
        if isinstance(names, list) and names and isinstance(names[0], str):
            architecture = names[0]
    bits = group = 0
    for key in ("quantization", "quantization_config"):
        section = config.get(key)
        if isinstance(section, Mapping):
            bits = max(whole_number(section.get("bits")) or 0, 0)
            if bits:
                group = max(whole_number(section.get("group_size")) or 0, 0)
                break
    return ModelInfo(
        architecture=architecture,
        context_length=number(*_CONTEXT_KEYS),
        vocab_size=number("vocab_size"),
        layers=number("num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=number("hidden_size", "n_embd", "d_model"),
        quant_bits=bits,
        quant_group_size=group,
    )
