"""Which GGUF tensor types MLX reads, what is done with the others, and why a file is refused.

``mx.load`` keeps Q4_0, Q4_1 and Q8_0 packed and dequantises Q2_K and Q6_K,
which are quantised again for MLX (:func:`requantise_bits`). Q4_K is read
only when :func:`mx_load_reads_q4_k` finds the installed mlx decodes it
right; the other types are refused (:func:`refusal`), from the header alone,
so that ``load_model`` can hand the file to another backend.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import struct
import tempfile
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from inference.gguf import GGML_TYPES

if TYPE_CHECKING:
    import mlx.core as mx

__all__ = [
    "MLX_READABLE_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "mx_load_reads_q4_k",
    "refusal",
    "requantise_bits",
    "type_name",
]

#: The architectures the GGUF loader maps onto mlx-lm's models.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_PLAIN_TYPES = frozenset({0, 1, 24, 25, 26, 27, 28, 30})


def requantise_bits(ggml_type: int) -> int:
    """The MLX bits a type that ``mx.load`` dequantises is quantised to again:
    4 for types of 4 bits or fewer, 8 for the 5- to 8-bit ones (rather than
    down to 4); 0 for float, integer and unknown types (kept unquantised)."""
    known = GGML_TYPES.get(ggml_type)
    if known is None or ggml_type in _PLAIN_TYPES:
        return 0
    return 4 if known.bits <= 4 else 8


#: The ggml types ``mx.load`` reads correctly (checked on mlx 0.32): F32, F16,
#: BF16 (as float16), Q4_0, Q4_1 and Q8_0 (kept packed), Q2_K and Q6_K
#: (dequantised to float16), and the integer types. It fails on most others,
#: silently drops the tensors of some newer ones, and dequantises Q4_K wrongly
#: (the odd 32-element sub-blocks get their neighbour's scale and minimum), so
#: files holding those are refused before it sees them. Q4_K is let through
#: when :func:`mx_load_reads_q4_k` finds the installed mlx gets it right.
#: (Q4_1 came back corrupted before mlx 0.32.0.)
MLX_READABLE_TYPES = frozenset({0, 1, 2, 3, 8, 10, 14, 24, 25, 26, 30})
_Q4_K = 12


def type_name(ggml_type: int) -> str:
    known = GGML_TYPES.get(ggml_type)
    return known.name if known is not None else f"type {ggml_type}"


def refusal(architecture: str, tensor_types: Iterable[int]) -> str | None:
    """Why the MLX backend cannot load a GGUF file of this architecture and
    these tensor types, in one line; None when it can. Reads no weights."""
    if architecture not in SUPPORTED_ARCHITECTURES:
        return (
            f"architecture {architecture or '(none)'!r} has no MLX loader "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    types = list(tensor_types)
    readable = MLX_READABLE_TYPES
    if _Q4_K in types and mx_load_reads_q4_k():
        readable = readable | {_Q4_K}
    unreadable = Counter(type_name(t) for t in types if t not in readable)
    if unreadable:
        listed = ", ".join(f"{n} ({c} tensors)" for n, c in sorted(unreadable.items()))
        return f"tensor types that mlx {_mlx_version()} cannot read correctly: {listed}"
    return None


def _mlx_version() -> str:
    try:
        return importlib.metadata.version("mlx")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _q4_k_block() -> bytes:
    """One Q4_K super-block whose eight sub-blocks all have different scales and mins."""
    header = struct.pack("<ee", 0.5, 0.25)
    scales = bytes([0x41, 0x83, 0xC5, 0x07, 0x49, 0x8B, 0xCD, 0x0F, 0x21, 0x43, 0x65, 0x87])
    quants = bytes((i * 7 + 3) % 256 for i in range(128))
    return header + scales + quants


def _decode_q4_k(block: bytes) -> list[float]:
    """ggml's reference dequantisation of one Q4_K super-block."""
    d, dmin = struct.unpack_from("<ee", block, 0)
    sc, qs = block[4:16], block[16:144]
    out: list[float] = []
    for pair in range(4):
        for half in range(2):
            j = 2 * pair + half
            if j < 4:
                scale, low = sc[j] & 63, sc[j + 4] & 63
            else:
                scale = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4)
                low = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
            for q in qs[32 * pair : 32 * pair + 32]:
                nibble = (q >> 4) if half else (q & 0xF)
                out.append(d * scale * nibble - dmin * low)
    return out


@functools.cache
def mx_load_reads_q4_k() -> bool:
    """Whether the installed ``mx.load`` dequantises Q4_K tensors correctly.

    Writes a one-block GGUF file to a temporary folder, loads it and compares
    it with ggml's reference decoding. (mlx 0.32 does not.)
    """
    import mlx.core as mx

    block = _q4_k_block()
    name = b"probe.weight"
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQQIQ", 2, 256, 1, _Q4_K, 0)
    blob = head + info
    blob += b"\0" * (-len(blob) % 32) + block
    expected = _decode_q4_k(block)
    try:
        with tempfile.TemporaryDirectory(prefix="inference-mlx-probe-") as folder:
            probe = os.path.join(folder, "q4_k.gguf")
            with open(probe, "wb") as fh:
                fh.write(blob)
            arrays = cast("dict[str, mx.array]", mx.load(probe))
            weight = arrays["probe.weight"]
            if "probe.scales" in arrays:
                weight = mx.dequantize(
                    weight, arrays["probe.scales"], arrays["probe.biases"], group_size=32, bits=4
                )
            got = [float(x) for x in cast("list[float]", weight.reshape(-1).tolist())]
    except Exception:
        return False
    return len(got) == len(expected) and all(
        abs(a - b) <= 1e-2 * max(1.0, abs(b)) for a, b in zip(got, expected, strict=True)
    )
