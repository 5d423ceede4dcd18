"""What the MLX GGUF loader does with each GGUF tensor type, and why a file is refused.

:data:`TENSOR_TYPES` is the one table: for every ggml type the loader reads,
whether it is kept as a plain array, repacked into MLX's affine quantisation
without loss, or decoded by gguf-py and quantised again for MLX, and to how
many bits. :func:`refusal` decides from a file's header alone (architecture,
tensor types and the hyperparameters mlx-lm's models cannot express), so that
``load_model`` can hand a file MLX cannot take to another backend before any
weights are read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from inference.gguf import GGML_TYPES, GGUFHeader

__all__ = [
    "GROUP_SIZE",
    "SUPPORTED_ARCHITECTURES",
    "TENSOR_TYPES",
    "Handling",
    "refusal",
    "type_name",
]

#: The architectures the GGUF loader maps onto mlx-lm's models. (Mistral's
#: models are written by llama.cpp's converter as ``llama``.)
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")

#: MLX's group size for every quantised tensor the loader makes: the block
#: size of the 32-weight ggml types and of the sub-blocks of Q4_K and Q5_K.
GROUP_SIZE: Final = 32


@dataclass(frozen=True, slots=True)
class Handling:
    """What the loader does with one ggml type.

    ``how`` is ``"plain"`` (an MLX array of the same type), ``"repacked"``
    (the integers and each block's scale and minimum copied into MLX's affine
    quantisation: no loss) or ``"requantised"`` (decoded by gguf-py, then
    ``mx.quantize``); ``bits`` is the MLX width, 0 for plain.
    """

    how: Literal["plain", "repacked", "requantised"]
    bits: int


def _table() -> dict[int, Handling]:
    plain = Handling("plain", 0)
    names: dict[str, Handling] = {
        **dict.fromkeys(("F32", "F16", "BF16", "F64", "I8", "I16", "I32"), plain),
        # 32-weight affine blocks (Q4_K, Q5_K: 32-weight sub-blocks): exact.
        "Q4_0": Handling("repacked", 4),
        "Q4_1": Handling("repacked", 4),
        "Q4_K": Handling("repacked", 4),
        "Q5_0": Handling("repacked", 5),
        "Q5_1": Handling("repacked", 5),
        "Q5_K": Handling("repacked", 5),
        "Q8_0": Handling("repacked", 8),
        # 16-weight sub-blocks, non-uniform grids or shared exponents: MLX's
        # affine groups of 32 cannot hold them exactly. Each width is the
        # smallest at which quantising the decoded weights again adds at most
        # 0.32 of the error the file's own quantisation made (so the total is
        # within 5 % of the file's own), measured on SmolLM2-135M by
        # bench/bench_mlx_types.py (docs/mlx.md).
        "Q2_K": Handling("requantised", 4),
        "Q3_K": Handling("requantised", 5),
        "Q6_K": Handling("requantised", 8),
        "IQ3_S": Handling("requantised", 5),
        "IQ4_NL": Handling("requantised", 6),
        "IQ4_XS": Handling("requantised", 6),
        "TQ1_0": Handling("requantised", 3),
        "TQ2_0": Handling("requantised", 3),
        "MXFP4": Handling("requantised", 6),
        # Not measured: llama.cpp makes these only with an importance matrix
        # (IQ1_*, IQ2_*, IQ3_XXS), or not at all (NVFP4). Each takes the width
        # of its measured neighbour: Q2_K's, IQ3_S's, MXFP4's.
        "IQ1_S": Handling("requantised", 4),
        "IQ1_M": Handling("requantised", 4),
        "IQ2_XXS": Handling("requantised", 4),
        "IQ2_XS": Handling("requantised", 4),
        "IQ2_S": Handling("requantised", 4),
        "IQ3_XXS": Handling("requantised", 5),
        "NVFP4": Handling("requantised", 6),
    }
    ids = {t.name: i for i, t in GGML_TYPES.items()}
    return {ids[name]: handling for name, handling in names.items()}


#: ggml type id -> what the loader does with it. A type not here (Q8_1 and
#: Q8_K, which llama.cpp uses only in its kernels; types newer than gguf-py's
#: dequantisers) makes the file refused.
TENSOR_TYPES: Final[Mapping[int, Handling]] = MappingProxyType(_table())


def type_name(ggml_type: int) -> str:
    known = GGML_TYPES.get(ggml_type)
    return known.name if known is not None else f"type {ggml_type}"


def refusal(header: GGUFHeader) -> str | None:
    """Why the MLX backend cannot load this GGUF file, in one line; None when
    it can. Reads only the header (metadata arrays may be skipped)."""
    arch = header.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        return (
            f"architecture {arch or '(none)'!r} has no MLX loader "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    unreadable = Counter(
        type_name(t.ggml_type) for t in header.tensors if t.ggml_type not in TENSOR_TYPES
    )
    if unreadable:
        listed = ", ".join(f"{n} ({c} tensors)" for n, c in sorted(unreadable.items()))
        return f"tensor types the MLX GGUF loader cannot decode: {listed}"
    return _hyperparameter_refusal(header)


#: The rope scaling types the loader maps onto mlx-lm's.
_ROPE_SCALING = frozenset({"none", "linear", "yarn"})


def _hyperparameter_refusal(header: GGUFHeader) -> str | None:
    arch = header.architecture
    heads, hidden = header.head_count, header.embedding_length
    if not heads or not hidden:
        return None  # the loader names the missing key
    head_dim = header.arch_int("attention.key_length") or hidden // heads
    rope_dims = header.arch_int("rope.dimension_count") or head_dim
    value_dim = header.arch_int("attention.value_length") or head_dim
    if rope_dims != head_dim and arch != "phi3":
        return (
            f"it rotates {rope_dims} of {head_dim} head dimensions, and mlx-lm's "
            f"{arch} model has no partial RoPE"
        )
    if value_dim != head_dim:
        return f"it has value heads of {value_dim} and key heads of {head_dim}"
    if arch in ("qwen2", "phi3") and head_dim != hidden // heads:
        return f"mlx-lm's {arch} model needs a head size of {hidden}/{heads}, not {head_dim}"
    kind = header.arch_get("rope.scaling.type", "none")
    if isinstance(kind, str) and kind not in _ROPE_SCALING:
        return f"rope scaling {kind!r} has no MLX mapping"
    if arch == "phi3" and not any(t.name.startswith("blk.0.attn_qkv") for t in header.tensors):
        return "its Q, K and V are separate matrices, and mlx-lm's phi3 model fuses them"
    return None
