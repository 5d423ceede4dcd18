"""Read one GGUF tensor into MLX arrays, as :data:`~.tensor_types.TENSOR_TYPES` says.

Every tensor is read on its own with ``os.pread`` at the offset the core's
header reader found, turned into MLX arrays and evaluated before the next is
read, so that loading never holds more than one tensor's source data.

- Float types become MLX arrays of the same type (BF16 stays bfloat16).
- Types whose 32-weight blocks are affine (``scale * q + min``) are repacked
  into MLX's affine quantisation without loss: Q4_0, Q4_1 and Q4_K as 4-bit,
  Q5_0, Q5_1 and Q5_K as 5-bit, Q8_0 as 8-bit, all with group size 32. The
  integers are copied and each block's scale and minimum become MLX's
  ``scales`` and ``biases`` (float16, as MLX keeps them).
- The other types are decoded by gguf-py's reference dequantisers
  (``gguf.quants``) and quantised again by ``mx.quantize`` to the bits the
  table gives.

MLX packs its quantised integers as one little-endian bit stream per row
(eight 5-bit values fill five bytes), which :func:`pack_bits` writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inference.gguf import GGML_TYPES, TensorInfo

from .tensor_types import GROUP_SIZE, TENSOR_TYPES

if TYPE_CHECKING:
    import mlx.core as mx
    import numpy as np
    import numpy.typing as npt

__all__ = ["MlxTensor", "pack_bits", "read_tensor", "repack_affine"]


@dataclass(frozen=True, slots=True)
class MlxTensor:
    """One GGUF tensor in MLX: ``weight`` (packed when ``bits``), and for a
    quantised one its ``scales`` and ``biases``; ``bits`` 0 when it is not
    quantised; ``how`` is the table's word for what was done."""

    weight: mx.array
    scales: mx.array | None
    biases: mx.array | None
    bits: int
    how: str


def read_raw(fd: int, data_offset: int, info: TensorInfo) -> npt.NDArray[np.uint8]:
    """The tensor's bytes as a ``(rows, bytes per row)`` array (GGML order reversed)."""
    import numpy as np

    size = info.n_bytes
    data = os.pread(fd, size, data_offset + info.offset)
    if len(data) != size:
        raise ValueError(f"tensor {info.name!r} ends past the end of the file")
    rows = info.n_elements // info.shape[0] if info.shape else 1
    return np.frombuffer(data, dtype=np.uint8).reshape(rows, -1)


def read_tensor(fd: int, data_offset: int, info: TensorInfo, *, quantise: bool) -> MlxTensor:
    """Read ``info``'s tensor from the open file ``fd`` into MLX.

    ``quantise`` is false for tensors the model keeps as plain arrays (norms,
    biases, a matrix whose rows are not a whole number of groups): those are
    dequantised to float16 whatever their type.
    """
    import mlx.core as mx
    import numpy as np

    raw = read_raw(fd, data_offset, info)
    shape = tuple(reversed(info.shape))
    handling = TENSOR_TYPES[info.ggml_type]
    if handling.how == "plain":
        return MlxTensor(_plain_array(raw, info.ggml_type, shape), None, None, 0, "plain")
    rows = raw.shape[0]
    cols = info.shape[0]
    if quantise and handling.how == "repacked":
        packed, scales, biases = repack_affine(raw, info.ggml_type)
        weight = mx.array(packed.reshape(rows, -1).view(np.uint32))
        out = MlxTensor(
            weight,
            mx.array(scales.reshape(rows, cols // GROUP_SIZE)),
            mx.array(biases.reshape(rows, cols // GROUP_SIZE)),
            handling.bits,
            "repacked",
        )
        mx.eval(out.weight, out.scales, out.biases)
        return out
    values = _dequantise(raw, info.ggml_type).reshape(shape)
    if not quantise:
        return MlxTensor(mx.array(values.astype(np.float16)), None, None, 0, "dequantised")
    q_weight, q_scales, q_biases = mx.quantize(
        mx.array(values.astype(np.float16)), group_size=GROUP_SIZE, bits=handling.bits
    )
    mx.eval(q_weight, q_scales, q_biases)
    return MlxTensor(q_weight, q_scales, q_biases, handling.bits, "requantised")


def _plain_array(raw: npt.NDArray[np.uint8], ggml_type: int, shape: tuple[int, ...]) -> mx.array:
    import mlx.core as mx
    import numpy as np

    name = GGML_TYPES[ggml_type].name
    if name == "BF16":
        return mx.array(raw.view(np.uint16).reshape(shape)).view(mx.bfloat16)
    dtype = {
        "F32": np.float32,
        "F16": np.float16,
        "F64": np.float64,
        "I8": np.int8,
        "I16": np.int16,
        "I32": np.int32,
        "I64": np.int64,
    }[name]
    values = raw.view(dtype).reshape(shape)
    return mx.array(values.astype(np.float32) if name == "F64" else values)


def _dequantise(raw: npt.NDArray[np.uint8], ggml_type: int) -> npt.NDArray[np.float32]:
    """gguf-py's reference dequantisation (its ``dequantize`` takes any type it knows)."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    return np.asarray(quants.dequantize(raw, GGMLQuantizationType(ggml_type)), dtype=np.float32)


# --------------------------------------------------------------------------
# exact repacking of the affine types


def _f16(blocks: npt.NDArray[np.uint8], start: int) -> npt.NDArray[np.float32]:
    import numpy as np

    return np.ascontiguousarray(blocks[:, start : start + 2]).view(np.float16).astype(np.float32)


def _nibble_pairs(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """ggml's 32-weight nibble layout in MLX's 4-bit layout, byte for byte.

    ggml keeps weights j and j + 16 of a group in the low and high nibbles of
    byte j; MLX keeps weights 2k and 2k + 1 in byte k. Each ``(…, 16)`` row of
    ``qs`` is one group of 32 weights.
    """
    import numpy as np

    even, odd = qs[..., 0::2], qs[..., 1::2]
    low = (even & 0x0F) | ((odd & 0x0F) << 4)  # weights 0-15
    high = (even >> 4) | (odd & 0xF0)  # weights 16-31
    return np.concatenate([low, high], axis=-1)


def _nibbles(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """ggml's 32-weight nibble layout as one integer per weight."""
    import numpy as np

    n = qs.shape[0]
    qs = qs.reshape(n, -1, 16)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, -1)


def _high_bits(qh: npt.NDArray[np.uint8], count: int) -> npt.NDArray[np.uint8]:
    """Bit ``i`` of the little-endian bit field ``qh``, for i < count, as 0 or 1."""
    import numpy as np

    return np.unpackbits(qh, axis=-1, count=count, bitorder="little")


def repack_affine(
    raw: npt.NDArray[np.uint8], ggml_type: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float16], npt.NDArray[np.float16]]:
    """An affine type's integers, scales and minimums in MLX's layout.

    Returns ``(packed, scales, biases)`` for one group of 32 weights per row:
    ``packed`` of shape ``(groups, 4 * bits)`` (the group's integers as MLX
    packs them) and the others ``(groups,)``, such that weight = scale * q +
    bias exactly (up to float16 rounding of the products that K types store
    as two factors).
    """
    import numpy as np
    from gguf.quants import Q4_K

    known = GGML_TYPES[ggml_type]
    blocks = raw.reshape(-1, known.type_size)
    name = known.name
    if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        d = _f16(blocks, 0)
        if name == "Q8_0":
            packed = blocks[:, 2:] ^ np.uint8(0x80)  # int8 q + 128, as unsigned bytes
            bias = -128.0 * d
        elif name == "Q4_0":
            packed = _nibble_pairs(blocks[:, 2:])
            bias = -8.0 * d
        elif name == "Q4_1":
            packed = _nibble_pairs(blocks[:, 4:])
            bias = _f16(blocks, 2)
        elif name == "Q5_0":
            packed = pack_bits(_nibbles(blocks[:, 6:]) | (_high_bits(blocks[:, 2:6], 32) << 4), 5)
            bias = -16.0 * d
        else:  # Q5_1
            packed = pack_bits(_nibbles(blocks[:, 8:]) | (_high_bits(blocks[:, 4:8], 32) << 4), 5)
            bias = _f16(blocks, 2)
        return (
            packed.view(np.uint8).reshape(blocks.shape[0], -1),
            d.reshape(-1).astype(np.float16),
            bias.reshape(-1).astype(np.float16),
        )
    if name in ("Q4_K", "Q5_K"):
        n = blocks.shape[0]
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mins = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
        scales = (d * sc.astype(np.float32)).reshape(-1).astype(np.float16)
        biases = (-dmin * mins.astype(np.float32)).reshape(-1).astype(np.float16)
        # 32 bytes per pair of sub-blocks: the low nibbles are sub-block 2p,
        # the high ones 2p + 1, each weight l in byte l.
        qs = blocks[:, -128:].reshape(n, 4, 32)
        if name == "Q4_K":
            even, odd = qs[..., 0::2], qs[..., 1::2]
            low = (even & 0x0F) | ((odd & 0x0F) << 4)
            high = (even >> 4) | (odd & 0xF0)
            return np.stack([low, high], axis=2).reshape(n * 8, 16), scales, biases
        q = (qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
        # Bit j of qh[l] is the fifth bit of weight l of sub-block j.
        qh = blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
        q = q.reshape(n, 8, 32) | ((qh & 1) << 4)
        packed = pack_bits(q.reshape(-1, 32), 5)
        return packed.view(np.uint8).reshape(n * 8, -1), scales, biases
    raise ValueError(f"{name} is not an affine type")


def pack_bits(q: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint32]:
    """Rows of unsigned ``bits``-bit integers in MLX's layout: a little-endian
    bit stream per row, in 32-bit words. Row lengths must be multiples of 32."""
    import numpy as np

    rows, cols = q.shape
    if bits == 8:
        return np.ascontiguousarray(q, dtype=np.uint8).view(np.uint32)
    if bits == 4:
        q = q.astype(np.uint8)
        return np.ascontiguousarray(q[:, 0::2] | (q[:, 1::2] << 4)).view(np.uint32)
    # Eight values of b bits fill exactly b bytes.
    eight = q.reshape(rows, cols // 8, 8).astype(np.uint64)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    words = np.bitwise_or.reduce(eight << shifts, axis=-1)
    stream = words.view(np.uint8).reshape(rows, cols // 8, 8)[:, :, :bits]
    return np.ascontiguousarray(stream).reshape(rows, -1).view(np.uint32)
