"""A small standard-library GGUF writer: test files, and the engine self-tests' tiny models.

It writes little-endian GGUF v2/v3 files with any metadata and tensor table,
and exposes its building blocks (``pack_string``, ``pack_value``, ``pack_kv``,
``pack_tensor_info``) so that tests can assemble deliberately broken headers.

Metadata values are typed from their Python type (``bool`` -> BOOL, ``int`` ->
UINT32/INT32/INT64/UINT64 by range, ``float`` -> FLOAT32, ``str``/``bytes`` ->
STRING, ``list``/``tuple`` -> ARRAY typed by its first item) unless given
explicitly as a ``(GGUFValueType, value)`` pair. An explicitly typed array is
``(GGUFValueType.ARRAY, (item_type, items))``; ``bytes`` are written as a
string's raw bytes, so invalid UTF-8 can be produced on purpose.

Tensor shapes are in GGML order (innermost dimension first), as
:class:`inference.gguf.TensorInfo` reports them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from inference.gguf import GGML_TYPES, GGUF_MAGIC, GGUFValueType

__all__ = [
    "TensorSpec",
    "build_gguf",
    "infer_type",
    "pack_kv",
    "pack_string",
    "pack_tensor_info",
    "pack_value",
    "tensor_nbytes",
    "write_gguf",
]

#: (name, shape in GGML order, ggml type id, data bytes or None for zeros)
TensorSpec = tuple[str, Sequence[int], int, bytes | None]

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


def pack_string(value: str | bytes) -> bytes:
    """A GGUF string: its byte length as uint64, then the bytes."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("<Q", len(data)) + data


def infer_type(value: Any) -> GGUFValueType:
    """The value type :func:`pack_value` picks for an untyped ``value``."""
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return GGUFValueType.UINT32
        if -(1 << 31) <= value < 0:
            return GGUFValueType.INT32
        if -(1 << 63) <= value < 1 << 63:
            return GGUFValueType.INT64
        return GGUFValueType.UINT64
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, str | bytes):
        return GGUFValueType.STRING
    if isinstance(value, list | tuple):
        return GGUFValueType.ARRAY
    raise TypeError(f"cannot infer a GGUF type for {value!r}")


def _split(value: Any) -> tuple[GGUFValueType, Any]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], GGUFValueType):
        return value[0], value[1]
    return infer_type(value), value


def pack_value(value: Any) -> tuple[int, bytes]:
    """``(type tag, payload)`` of a metadata value (typed or untyped)."""
    vtype, raw = _split(value)
    return int(vtype), _payload(vtype, raw)


def _payload(vtype: GGUFValueType, raw: Any) -> bytes:
    if vtype in _SCALAR_FORMATS:
        return struct.pack("<" + _SCALAR_FORMATS[vtype], raw)
    if vtype == GGUFValueType.STRING:
        return pack_string(raw)
    if vtype == GGUFValueType.ARRAY:
        if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], GGUFValueType):
            item_type, items = raw[0], list(raw[1])
        else:
            items = list(raw)
            item_type = _split(items[0])[0] if items else GGUFValueType.UINT32
        parts = [struct.pack("<IQ", int(item_type), len(items))]
        for item in items:
            given_type, item_raw = _split(item)
            if (
                given_type != item_type
                and isinstance(item, tuple)
                and isinstance(item[0], GGUFValueType)
            ):
                raise TypeError(f"array of {item_type.name} holds a {given_type.name}")
            parts.append(_payload(item_type, item_raw))
        return b"".join(parts)
    raise TypeError(f"unknown value type {vtype!r}")


def pack_kv(key: str | bytes, value: Any) -> bytes:
    """One metadata entry: key, value type, value."""
    tag, payload = pack_value(value)
    return pack_string(key) + struct.pack("<I", tag) + payload


def pack_tensor_info(name: str | bytes, shape: Sequence[int], ggml_type: int, offset: int) -> bytes:
    """One tensor info: name, dimension count, dimensions, type, offset."""
    return (
        pack_string(name)
        + struct.pack("<I", len(shape))
        + struct.pack(f"<{len(shape)}Q", *shape)
        + struct.pack("<IQ", ggml_type, offset)
    )


def tensor_nbytes(shape: Sequence[int], ggml_type: int) -> int:
    """The data size of a tensor of a known GGML type."""
    known = GGML_TYPES[ggml_type]
    count = 1
    for dim in shape:
        count *= dim
    return count // known.block_size * known.type_size


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def build_gguf(
    metadata: Mapping[str, Any],
    tensors: Sequence[TensorSpec] = (),
    version: int = 3,
    alignment: int = 32,
    *,
    offsets: Sequence[int] | None = None,
) -> bytes:
    """The bytes of a GGUF file.

    ``general.alignment`` is added when ``alignment`` is not the default 32
    and the metadata does not set it. Tensor data are laid out in order,
    each at an aligned offset, with no padding after the last one, unless
    ``offsets`` gives each tensor's offset explicitly.
    """
    items = dict(metadata)
    if alignment != 32 and "general.alignment" not in items:
        items["general.alignment"] = (GGUFValueType.UINT32, alignment)
    datas: list[bytes] = []
    for _name, shape, ggml_type, data in tensors:
        datas.append(data if data is not None else bytes(tensor_nbytes(shape, ggml_type)))
    if offsets is None:
        placed: list[int] = []
        cursor = 0
        for data in datas:
            cursor = _align(cursor, alignment)
            placed.append(cursor)
            cursor += len(data)
        offsets = placed
    parts = [
        GGUF_MAGIC,
        struct.pack("<IQQ", version, len(tensors), len(items)),
        *(pack_kv(key, value) for key, value in items.items()),
        *(
            pack_tensor_info(name, shape, ggml_type, offset)
            for (name, shape, ggml_type, _), offset in zip(tensors, offsets, strict=True)
        ),
    ]
    header = b"".join(parts)
    if not tensors:
        return header
    region = bytearray(max(offset + len(data) for offset, data in zip(offsets, datas, strict=True)))
    for offset, data in zip(offsets, datas, strict=True):
        region[offset : offset + len(data)] = data
    return header + bytes(_align(len(header), alignment) - len(header)) + bytes(region)


def write_gguf(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    tensors: Sequence[TensorSpec] = (),
    version: int = 3,
    alignment: int = 32,
) -> str:
    """Write a GGUF file (see :func:`build_gguf`) and return its path."""
    data = build_gguf(metadata, tensors, version, alignment)
    with open(path, "wb") as file:
        file.write(data)
    return os.fspath(path)
