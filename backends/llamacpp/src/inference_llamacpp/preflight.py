"""What a GGUF header must say before llama.cpp is handed the file.

llama.cpp trusts some header values: a few trip a ``GGML_ASSERT`` (which
aborts the whole process, not just the load) and a few load a model that
silently generates nothing. :data:`CHECKS` lists each value, what it must
be, and the assert or the failure it keeps away; :func:`check` refuses a
file that breaks one with a :class:`~inference.ModelLoadError` naming the
key, before any weights are read.

Asserts covered (llama.cpp as vendored by llama-cpp-python 0.3.x):

- ``llama-model.cpp``: ``GGML_ASSERT(hparams.n_layer_all > 0 &&
  hparams.n_layer_all <= LLAMA_MAX_LAYERS)``: ``{arch}.block_count`` 0 or
  2**32-1;
- ``ggml-cpu/ops.cpp``: ``GGML_ASSERT(eps >= 0.0f)`` in the norms, at the
  first generation: a NaN or negative ``{arch}.attention.layer_norm_rms_epsilon``
  (or ``layer_norm_epsilon``).

Silent failures covered: a NaN, infinite, zero or negative
``{arch}.rope.freq_base`` (RoPE of NaN: every logit NaN, nothing
generated); a token list whose types are all 0 (undefined: no token can be
shown); ``tokenizer.ggml.model`` ``"none"`` (no vocabulary to tokenise
with). (A trained context of 1 to 3 tokens aborted a decode through a
batch smaller than the slots; the engine now sizes its batch by the slots.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from inference.errors import ModelLoadError
from inference.gguf import GGUFHeader

__all__ = ["CHECKS", "LLAMA_MAX_LAYERS", "check"]

#: llama.cpp's own bound on the number of layers (``llama-hparams.h``).
LLAMA_MAX_LAYERS = 512


def _layers(value: Any) -> bool:
    return isinstance(value, int) and 0 < value <= LLAMA_MAX_LAYERS


def _epsilon(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


#: (the key, where ``{arch}`` is the architecture; what it must be; the
#: test, given the value when the key is present).
CHECKS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("{arch}.block_count", f"from 1 to {LLAMA_MAX_LAYERS}", _layers),
    ("{arch}.attention.layer_norm_rms_epsilon", "a finite number >= 0", _epsilon),
    ("{arch}.attention.layer_norm_epsilon", "a finite number >= 0", _epsilon),
    ("{arch}.rope.freq_base", "a finite number > 0", _positive),
    ("tokenizer.ggml.model", "a tokenizer model, not 'none'", lambda v: v != "none"),
    (
        "tokenizer.ggml.token_type",
        "token types, not all 0 (undefined)",
        lambda v: not hasattr(v, "__len__") or not v or any(t != 0 for t in v),
    ),
)


def check(header: GGUFHeader, path: str) -> None:
    """ModelLoadError naming the key if ``header`` says what llama.cpp would
    assert on or run into nothing with (see :data:`CHECKS`)."""
    for template, must, ok in CHECKS:
        key = template.format(arch=header.architecture)
        if key in header.metadata and not ok(header.metadata[key]):
            shown = repr(header.metadata[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ModelLoadError(
                f"{path}: {key} is {shown}; it must be {must} (llama.cpp cannot run it)",
                path=path,
            )
