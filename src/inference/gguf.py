"""Read the header of a GGUF file: its metadata and tensor table, never the weights.

This module's one job is to parse the GGUF v2/v3 header (magic, version,
metadata key/value pairs and tensor infos) with the standard library alone,
treating the file as untrusted input: every count and length is checked
against the bytes the file really holds before anything is allocated, and
every kind of bad content is reported as :class:`~inference.errors.ModelLoadError`.

Tensor shapes are given in GGML order, the order they are stored in the file:
``shape[0]`` is the innermost (fastest-varying) dimension, so a token
embedding of a 49 152-token vocabulary with 576-wide rows has shape
``(576, 49152)``.
"""

from __future__ import annotations

import enum
import os
import stat
import struct
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

from .errors import ModelLoadError
from .values import is_int

__all__ = [
    "FILE_TYPES",
    "GGML_TYPES",
    "GGUF_MAGIC",
    "GGMLType",
    "GGUFHeader",
    "GGUFValueType",
    "SkippedArray",
    "TensorInfo",
    "is_gguf",
    "read_header",
]

GGUF_MAGIC: Final = b"GGUF"
GGUF_DEFAULT_ALIGNMENT: Final = 32
GGML_MAX_DIMS: Final = 4
SUPPORTED_VERSIONS: Final = (2, 3)
#: How deeply arrays may nest: an array may hold arrays, which may not.
MAX_ARRAY_DEPTH: Final = 2

_INT64_MAX: Final = (1 << 63) - 1
_CHUNK: Final = 1 << 20  # bytes first read from the file at a time
_MAX_CHUNK: Final = 1 << 24  # the chunk doubles up to this


class GGUFValueType(enum.IntEnum):
    """The type tag of a metadata value, as stored in the file."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


@dataclass(frozen=True, slots=True)
class GGMLType:
    """One GGML tensor type: how many weights a block holds and its byte size.

    ``bits`` is the nominal number of bits per weight the type is named for
    (4 for ``Q4_K``, 16 for ``F16``), not the exact storage cost.
    """

    name: str
    block_size: int
    type_size: int
    bits: int


_QK_K: Final = 256


def _types() -> dict[int, GGMLType]:
    k = _QK_K
    table: list[tuple[int, str, int, int, int]] = [
        # id, name, block size, type size in bytes, nominal bits
        (0, "F32", 1, 4, 32),
        (1, "F16", 1, 2, 16),
        (2, "Q4_0", 32, 2 + 16, 4),
        (3, "Q4_1", 32, 2 + 2 + 16, 4),
        (6, "Q5_0", 32, 2 + 4 + 16, 5),
        (7, "Q5_1", 32, 2 + 2 + 4 + 16, 5),
        (8, "Q8_0", 32, 2 + 32, 8),
        (9, "Q8_1", 32, 4 + 4 + 32, 8),
        (10, "Q2_K", k, 2 + 2 + k // 16 + k // 4, 2),
        (11, "Q3_K", k, 2 + k // 4 + k // 8 + 12, 3),
        (12, "Q4_K", k, 2 + 2 + k // 2 + 12, 4),
        (13, "Q5_K", k, 2 + 2 + k // 2 + k // 8 + 12, 5),
        (14, "Q6_K", k, 2 + k // 2 + k // 4 + k // 16, 6),
        (15, "Q8_K", k, 4 + k + k // 8, 8),
        (16, "IQ2_XXS", k, 2 + k // 4, 2),
        (17, "IQ2_XS", k, 2 + k // 4 + k // 32, 2),
        (18, "IQ3_XXS", k, 2 + k // 4 + k // 8, 3),
        (19, "IQ1_S", k, 2 + k // 8 + k // 16, 1),
        (20, "IQ4_NL", 32, 2 + 16, 4),
        (21, "IQ3_S", k, 2 + k // 4 + k // 8 + k // 32 + 4, 3),
        (22, "IQ2_S", k, 2 + k // 4 + k // 16, 2),
        (23, "IQ4_XS", k, 2 + 2 + k // 2 + k // 64, 4),
        (24, "I8", 1, 1, 8),
        (25, "I16", 1, 2, 16),
        (26, "I32", 1, 4, 32),
        (27, "I64", 1, 8, 64),
        (28, "F64", 1, 8, 64),
        (29, "IQ1_M", k, k // 8 + k // 16 + k // 32, 1),
        (30, "BF16", 1, 2, 16),
        (34, "TQ1_0", k, 2 + 4 * 13, 1),
        (35, "TQ2_0", k, 2 + 64, 2),
        (39, "MXFP4", 32, 1 + 16, 4),
        (40, "NVFP4", 64, 4 + 32, 4),
        (41, "Q1_0", 128, 2 + 16, 1),
    ]
    return {i: GGMLType(name, bs, ts, bits) for i, name, bs, ts, bits in table}


#: GGML tensor type id -> its block layout (from ggml's type traits).
GGML_TYPES: Final[Mapping[int, GGMLType]] = types.MappingProxyType(_types())

#: ``general.file_type`` -> the file type as llama.cpp's quantiser names it,
#: and the nominal bits per weight it is named for (``llama_ftype`` in
#: llama.h; the gaps are types llama.cpp has removed).
FILE_TYPES: Final[Mapping[int, tuple[str, int]]] = types.MappingProxyType(
    {
        0: ("F32", 32),
        1: ("F16", 16),
        2: ("Q4_0", 4),
        3: ("Q4_1", 4),
        7: ("Q8_0", 8),
        8: ("Q5_0", 5),
        9: ("Q5_1", 5),
        10: ("Q2_K", 2),
        11: ("Q3_K_S", 3),
        12: ("Q3_K_M", 3),
        13: ("Q3_K_L", 3),
        14: ("Q4_K_S", 4),
        15: ("Q4_K_M", 4),
        16: ("Q5_K_S", 5),
        17: ("Q5_K_M", 5),
        18: ("Q6_K", 6),
        19: ("IQ2_XXS", 2),
        20: ("IQ2_XS", 2),
        21: ("Q2_K_S", 2),
        22: ("IQ3_XS", 3),
        23: ("IQ3_XXS", 3),
        24: ("IQ1_S", 1),
        25: ("IQ4_NL", 4),
        26: ("IQ3_S", 3),
        27: ("IQ3_M", 3),
        28: ("IQ2_S", 2),
        29: ("IQ2_M", 2),
        30: ("IQ4_XS", 4),
        31: ("IQ1_M", 1),
        32: ("BF16", 16),
        36: ("TQ1_0", 1),
        37: ("TQ2_0", 2),
        38: ("MXFP4_MOE", 4),
        39: ("NVFP4", 4),
        40: ("Q1_0", 1),
        41: ("Q2_0", 2),
    }
)


@dataclass(frozen=True, slots=True)
class SkippedArray:
    """Stands in for a metadata array too long to be worth materialising.

    Produced by :func:`read_header` with ``load_arrays=False``; it records the
    item type and length so that, for instance, a vocabulary size can still be
    read from ``len(header.get("tokenizer.ggml.tokens"))``.
    """

    item_type: GGUFValueType
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of the tensor table.

    ``shape`` is in GGML order (innermost dimension first) and ``offset`` is
    relative to the start of the data section (:attr:`GGUFHeader.data_offset`).
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def type_name(self) -> str:
        """The GGML type's name, such as ``"Q4_1"``, or ``"type<n>"`` if unknown."""
        known = GGML_TYPES.get(self.ggml_type)
        return known.name if known is not None else f"type{self.ggml_type}"

    @property
    def n_elements(self) -> int:
        """The number of weights: the product of the dimensions."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def n_bytes(self) -> int:
        """The size of the tensor's data, or 0 when its type is unknown."""
        known = GGML_TYPES.get(self.ggml_type)
        if known is None:
            return 0
        return self.n_elements // known.block_size * known.type_size


def _as_int(value: Any) -> int:
    """``value`` if it is a plain integer (not a bool), else 0."""
    return value if is_int(value) else 0


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    """Everything a GGUF file says about itself before its tensor data.

    ``metadata`` is read-only; arrays are tuples (or :class:`SkippedArray`).
    ``data_offset`` is the absolute file offset of the tensor data section.
    Accessors for common model facts return 0 (or ``""``/``None``) when the
    file does not say.
    """

    path: str
    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str:
        """``general.architecture``, or ``""`` if absent."""
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""

    def get(self, key: str, default: Any = None) -> Any:
        """The metadata value under ``key``, or ``default``."""
        return self.metadata.get(key, default)

    def arch_get(self, key: str, default: Any = None) -> Any:
        """The value of ``<architecture>.<key>``, such as ``llama.block_count``."""
        arch = self.architecture
        if not arch:
            return default
        return self.metadata.get(f"{arch}.{key}", default)

    def arch_int(self, key: str) -> int:
        """``<architecture>.<key>`` as an int: 0 when absent or not an integer,
        the largest when the file gives one value per layer."""
        value = self.arch_get(key)
        if isinstance(value, tuple):  # some models give one value per layer
            ints = [_as_int(item) for item in value]
            return max(ints, default=0)
        return _as_int(value)

    @property
    def context_length(self) -> int:
        """The trained context length in tokens."""
        return self.arch_int("context_length")

    @property
    def block_count(self) -> int:
        """The number of transformer blocks (layers)."""
        return self.arch_int("block_count")

    @property
    def embedding_length(self) -> int:
        """The width of the hidden state."""
        return self.arch_int("embedding_length")

    @property
    def head_count(self) -> int:
        """The number of attention heads (the largest, if given per layer)."""
        return self.arch_int("attention.head_count")

    @property
    def head_count_kv(self) -> int:
        """The number of key/value heads; the head count when not given."""
        value = self.arch_int("attention.head_count_kv")
        return value if value else self.head_count

    @property
    def vocab_size(self) -> int:
        """The vocabulary size.

        Taken from ``<arch>.vocab_size``, else the length of
        ``tokenizer.ggml.tokens``, else the rows of ``token_embd.weight``.
        """
        value = self.arch_int("vocab_size")
        if value:
            return value
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, tuple | SkippedArray):
            return len(tokens)
        for tensor in self.tensors:
            if tensor.name == "token_embd.weight" and len(tensor.shape) >= 2:
                return tensor.shape[1]
        return 0

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of ``tokenizer.chat_template``, if any."""
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str:
        """``general.name``, or ``""``."""
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else ""

    @property
    def tensor_bytes(self) -> int:
        """The total size of the tensors whose type is known."""
        return sum(tensor.n_bytes for tensor in self.tensors)

    @property
    def quantisation(self) -> tuple[str, int, int]:
        """``(file type, bits, group size)``: the file's quantisation.

        The file type is ``general.file_type`` as llama.cpp's quantiser names
        it (``Q4_K_M``), with the nominal bits it is named for (4); a file
        that does not say (or says what llama.cpp does not know) gets its
        dominant weight type's name and bits instead. The group size is the
        block size of the dominant weight type (32 for ``Q4_0``, 256 for
        K-quants; 0 for plain types). ``("", 0, 0)`` when nothing is known.
        How many bits a weight really costs, over every tensor, is
        :attr:`bits_per_weight`.
        """
        name, bits, group = self._dominant_type()
        file_type = self.metadata.get("general.file_type")
        if is_int(file_type):
            known = FILE_TYPES.get(file_type)
            if known is not None:
                name, bits = known
        return (name, bits, group)

    @property
    def bits_per_weight(self) -> float:
        """The bits the file spends per weight, over every tensor of a known
        type (0.0 when none)."""
        known = [t for t in self.tensors if t.ggml_type in GGML_TYPES]
        weights = sum(t.n_elements for t in known)
        return 8 * sum(t.n_bytes for t in known) / weights if weights else 0.0

    def _dominant_type(self) -> tuple[str, int, int]:
        """``(type name, bits, group size)`` of the dominant weight type: the
        one holding the most bytes among the weight matrices (tensors of two
        or more dimensions, so that the 3-D expert tensors of
        mixture-of-experts models count too); if there are none, among all
        tensors."""
        totals: dict[int, int] = {}
        for tensor in self.tensors:
            if len(tensor.shape) >= 2 and tensor.ggml_type in GGML_TYPES:
                totals[tensor.ggml_type] = totals.get(tensor.ggml_type, 0) + tensor.n_bytes
        if not totals:
            for tensor in self.tensors:
                if tensor.ggml_type in GGML_TYPES:
                    totals[tensor.ggml_type] = totals.get(tensor.ggml_type, 0) + tensor.n_bytes
        if not totals:
            return ("", 0, 0)
        # Most bytes wins; ties go to the lower type id for a stable answer.
        best = min(totals, key=lambda type_id: (-totals[type_id], type_id))
        known = GGML_TYPES[best]
        group = known.block_size if known.block_size > 1 else 0
        return (known.name, known.bits, group)


# --------------------------------------------------------------------------
# Reading


class _Bad(Exception):
    """Internal: the header is malformed; the message lacks the path."""


_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_U32_U64: Final = struct.Struct("<IQ")
_PREAMBLE: Final = struct.Struct("<4sIQQ")

# Scalar value types: (struct format character, size in bytes).
_SCALARS: Final[Mapping[int, tuple[str, int]]] = types.MappingProxyType(
    {
        GGUFValueType.UINT8: ("B", 1),
        GGUFValueType.INT8: ("b", 1),
        GGUFValueType.UINT16: ("H", 2),
        GGUFValueType.INT16: ("h", 2),
        GGUFValueType.UINT32: ("I", 4),
        GGUFValueType.INT32: ("i", 4),
        GGUFValueType.FLOAT32: ("f", 4),
        GGUFValueType.BOOL: ("?", 1),
        GGUFValueType.UINT64: ("Q", 8),
        GGUFValueType.INT64: ("q", 8),
        GGUFValueType.FLOAT64: ("d", 8),
    }
)
_SCALAR_STRUCTS: Final[Mapping[int, struct.Struct]] = types.MappingProxyType(
    {tag: struct.Struct("<" + fmt) for tag, (fmt, _) in _SCALARS.items()}
)
# The least bytes one array item of each type can take: a string is at least
# its 8-byte length, an array at least its 4-byte type and 8-byte count.
_MIN_ITEM_SIZE: Final[Mapping[int, int]] = types.MappingProxyType(
    {
        **{tag: size for tag, (_, size) in _SCALARS.items()},
        GGUFValueType.STRING: 8,
        GGUFValueType.ARRAY: 12,
    }
)
_MIN_KV_SIZE: Final = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_SIZE: Final = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


def _type_label(tag: int) -> str:
    try:
        return GGUFValueType(tag).name
    except ValueError:
        return f"unknown value type {tag}"


class _Reader:
    """Little-endian reads over a file, buffered in large chunks.

    ``buf`` holds the file's bytes from absolute offset ``base``; ``pos`` is
    the read position inside ``buf``. Hot loops read ``buf``/``pos`` directly
    and call :meth:`fill` only when they run off the end of the buffer.
    """

    __slots__ = ("base", "buf", "file", "pos", "size")

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.size = size
        self.buf = b""
        self.base = 0
        self.pos = 0

    def tell(self) -> int:
        return self.base + self.pos

    def remaining(self) -> int:
        return self.size - self.base - self.pos

    def fill(self, n: int, what: str) -> None:
        """Make sure ``n`` bytes from the position are in ``buf``."""
        if self.pos + n <= len(self.buf):
            return
        if n > self.remaining():
            raise _Bad(
                f"truncated: {what} needs {n} bytes at offset {self.tell()}"
                f" but only {self.remaining()} remain"
            )
        keep = self.buf[self.pos :]
        want = max(n - len(keep), min(max(_CHUNK, len(self.buf)), _MAX_CHUNK))
        self.file.seek(self.base + len(self.buf))
        parts = [keep]
        got = len(keep)
        while got < n:
            data = self.file.read(want - (got - len(keep)))
            if not data:  # the file shrank while we read it
                raise _Bad(
                    f"truncated: {what} needs {n} bytes at offset {self.tell()}"
                    f" but the file ended after {got}"
                )
            parts.append(data)
            got += len(data)
        self.base += self.pos
        self.pos = 0
        self.buf = b"".join(parts)

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining():
            raise _Bad(
                f"truncated: {what} needs {n} bytes at offset {self.tell()}"
                f" but only {self.remaining()} remain"
            )
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:
            self.base += self.pos + n
            self.pos = 0
            self.buf = b""

    def u32(self, what: str) -> int:
        self.fill(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.fill(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def raw_string(self, what: str) -> bytes:
        length = self.u64(what)
        if length > self.remaining():
            raise _Bad(
                f"{what} claims {length} bytes but only {self.remaining()}"
                " remain in the file (truncated or corrupt)"
            )
        self.fill(length, what)
        data = self.buf[self.pos : self.pos + length]
        self.pos += length
        return data

    def string(self, what: str) -> str:
        data = self.raw_string(what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _read_string_array(r: _Reader, count: int, keep: bool) -> tuple[str, ...] | None:
    """Read (or, with ``keep`` false, just walk) ``count`` strings."""
    out: list[bytes] = []
    append = out.append
    unpack = _U64.unpack_from
    buf = r.buf
    pos = r.pos
    end_of_buf = len(buf)
    for index in range(count):
        if pos + 8 > end_of_buf:
            r.pos = pos
            r.fill(8, f"string #{index} of the array")
            buf, pos, end_of_buf = r.buf, r.pos, len(r.buf)
        (length,) = unpack(buf, pos)
        pos += 8
        end = pos + length
        if end > end_of_buf:
            r.pos = pos
            if length > r.remaining():
                raise _Bad(
                    f"string #{index} of the array claims {length} bytes but only"
                    f" {r.remaining()} remain in the file (truncated or corrupt)"
                )
            if keep or length <= _CHUNK:
                r.fill(length, f"string #{index} of the array")
                buf, pos, end_of_buf = r.buf, r.pos, len(r.buf)
                end = pos + length
            else:  # a long string being skipped: no need to read it
                r.skip(length, f"string #{index} of the array")
                buf, pos, end_of_buf = r.buf, r.pos, len(r.buf)
                continue
        if keep:
            append(buf[pos:end])
        pos = end
    r.pos = pos
    if not keep:
        return None
    try:
        return tuple([item.decode("utf-8") for item in out])
    except UnicodeDecodeError:
        for index, item in enumerate(out):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Bad(
                    f"string #{index} of the array is not valid UTF-8"
                    f" ({exc.reason} at byte {exc.start})"
                ) from None
        raise  # pragma: no cover - the loop above always finds the culprit


class _Parser:
    """Reads the metadata values of one header."""

    __slots__ = ("load_arrays", "max_items", "reader")

    def __init__(self, reader: _Reader, load_arrays: bool, max_items: int) -> None:
        self.reader = reader
        self.load_arrays = load_arrays
        self.max_items = max_items

    def value(self, tag: int, depth: int) -> Any:
        r = self.reader
        scalar = _SCALAR_STRUCTS.get(tag)
        if scalar is not None:
            if r.pos + scalar.size > len(r.buf):
                r.fill(scalar.size, f"a {_type_label(tag)} value")
            (value,) = scalar.unpack_from(r.buf, r.pos)
            r.pos += scalar.size
            return value
        if tag == GGUFValueType.STRING:
            return r.string("the string")
        if tag == GGUFValueType.ARRAY:
            return self.array(depth + 1)
        raise _Bad(f"has an unknown value type {tag}")

    def array(self, depth: int) -> tuple[Any, ...] | SkippedArray:
        r = self.reader
        r.fill(12, "the array header")
        item_tag, count = _U32_U64.unpack_from(r.buf, r.pos)
        r.pos += 12
        min_size = _MIN_ITEM_SIZE.get(item_tag)
        if min_size is None:
            raise _Bad(f"is an array of {_type_label(item_tag)}")
        item_type = GGUFValueType(item_tag)
        if item_type == GGUFValueType.ARRAY and depth >= MAX_ARRAY_DEPTH:
            raise _Bad(f"nests arrays more than {MAX_ARRAY_DEPTH} deep")
        if count * min_size > r.remaining():
            raise _Bad(
                f"claims an array of {count} {item_type.name} items, needing at"
                f" least {count * min_size} bytes, but only {r.remaining()} remain"
                " in the file (truncated or corrupt)"
            )
        keep = self.load_arrays or count <= self.max_items
        if item_type == GGUFValueType.STRING:
            strings = _read_string_array(r, count, keep)
            return strings if strings is not None else SkippedArray(item_type, count)
        if item_type == GGUFValueType.ARRAY:
            items = tuple(self.value(item_tag, depth) for _ in range(count))
            return items if keep else SkippedArray(item_type, count)
        fmt, size = _SCALARS[item_tag]
        n_bytes = count * size
        if not keep:
            r.skip(n_bytes, f"an array of {count} {item_type.name} items")
            return SkippedArray(item_type, count)
        r.fill(n_bytes, f"an array of {count} {item_type.name} items")
        values = struct.unpack_from(f"<{count}{fmt}", r.buf, r.pos)
        r.pos += n_bytes
        return values


def _parse(r: _Reader, path: str, load_arrays: bool, max_items: int) -> GGUFHeader:
    size = r.size
    if size < 4:
        raise _Bad(f"not a GGUF file (only {size} bytes)")
    r.fill(4, "the magic")
    magic = r.buf[:4]
    if magic != GGUF_MAGIC:
        raise _Bad(f"not a GGUF file (magic {magic!r})")
    r.fill(_PREAMBLE.size, "the GGUF preamble")
    _, version, tensor_count, kv_count = _PREAMBLE.unpack_from(r.buf, 0)
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version > 0xFFFF and swapped in (1, 2, 3):
            raise _Bad(
                f"big-endian GGUF (version {swapped}) is not supported;"
                " only little-endian files can be read"
            )
        if version == 1:
            raise _Bad("GGUF version 1 is not supported (only versions 2 and 3)")
        raise _Bad(f"unsupported GGUF version {version} (only versions 2 and 3)")
    r.pos = _PREAMBLE.size

    if kv_count * _MIN_KV_SIZE > r.remaining():
        raise _Bad(
            f"claims {kv_count} metadata entries, which cannot fit in the"
            f" {r.remaining()} bytes that remain (truncated or corrupt)"
        )
    parser = _Parser(r, load_arrays, max_items)
    metadata: dict[str, Any] = {}
    for index in range(kv_count):
        key = r.string(f"the key of metadata entry #{index}")
        if key in metadata:
            raise _Bad(f"duplicate metadata key {key!r}")
        try:
            tag = r.u32(f"the value type of metadata key {key!r}")
            metadata[key] = parser.value(tag, 0)
        except _Bad as exc:
            raise _Bad(f"metadata key {key!r}: {exc}") from None

    alignment = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        value = metadata["general.alignment"]
        if not is_int(value):
            raise _Bad(f"general.alignment must be an integer, not {value!r}")
        if value <= 0 or value & (value - 1):
            raise _Bad(f"general.alignment {value} is not a power of two")
        alignment = value

    if tensor_count * _MIN_TENSOR_INFO_SIZE > r.remaining():
        raise _Bad(
            f"claims {tensor_count} tensors, whose infos cannot fit in the"
            f" {r.remaining()} bytes that remain (truncated or corrupt)"
        )
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for index in range(tensor_count):
        name = r.string(f"the name of tensor #{index}")
        label = f"tensor {name!r}"
        if name in names:
            raise _Bad(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = r.u32(f"the dimension count of {label}")
        if n_dims > GGML_MAX_DIMS:
            raise _Bad(f"{label} has {n_dims} dimensions (at most {GGML_MAX_DIMS})")
        r.fill(8 * n_dims + 12, f"the shape, type and offset of {label}")
        shape = struct.unpack_from(f"<{n_dims}Q", r.buf, r.pos)
        r.pos += 8 * n_dims
        ggml_type, offset = _U32_U64.unpack_from(r.buf, r.pos)
        r.pos += 12
        n_elements = 1
        for dim in shape:
            if dim == 0 or dim > _INT64_MAX:
                raise _Bad(f"{label} has an invalid shape {shape}")
            n_elements *= dim
        if n_elements > _INT64_MAX:
            raise _Bad(f"{label} has too many elements ({shape})")
        known = GGML_TYPES.get(ggml_type)
        if known is not None and shape and shape[0] % known.block_size:
            raise _Bad(
                f"{label} of type {known.name} has rows of {shape[0]} elements,"
                f" not a multiple of its block size {known.block_size}"
            )
        if offset % alignment:
            raise _Bad(f"{label} has offset {offset}, not a multiple of the alignment {alignment}")
        tensors.append(TensorInfo(name, tuple(shape), ggml_type, offset))

    header_end = r.tell()
    data_offset = -(-header_end // alignment) * alignment
    placed = sorted((t for t in tensors if t.ggml_type in GGML_TYPES), key=lambda t: t.offset)
    previous: TensorInfo | None = None
    for tensor in placed:
        end = data_offset + tensor.offset + tensor.n_bytes
        if end > size:
            raise _Bad(
                f"truncated: tensor {tensor.name!r} needs bytes up to {end} but the file has {size}"
            )
        if previous is not None and tensor.offset < previous.offset + previous.n_bytes:
            raise _Bad(
                f"tensors {previous.name!r} and {tensor.name!r} overlap"
                f" (offsets {previous.offset} and {tensor.offset})"
            )
        previous = tensor

    return GGUFHeader(
        path=path,
        version=version,
        metadata=types.MappingProxyType(metadata),
        tensors=tuple(tensors),
        alignment=alignment,
        data_offset=data_offset,
        file_size=size,
    )


def read_header(
    path: str | os.PathLike[str],
    *,
    load_arrays: bool = True,
    max_array_items: int = 1024,
) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path``.

    With ``load_arrays`` false, metadata arrays of more than
    ``max_array_items`` items (vocabularies, merges, scores) are walked over
    rather than read and appear as :class:`SkippedArray`; the strings inside
    a skipped array are not checked for valid UTF-8.

    Raises :class:`~inference.errors.ModelLoadError` for a missing or
    unreadable path and for any malformed, truncated or unsupported content.
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise ModelLoadError(f"{name}: no such file", path=name) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{name}: cannot open ({_reason(exc)})", path=name) from None
    if stat.S_ISDIR(mode):
        raise ModelLoadError(f"{name}: is a directory, not a GGUF file", path=name)
    if not stat.S_ISREG(mode):
        raise ModelLoadError(f"{name}: not a regular file", path=name)
    try:
        with open(name, "rb") as file:
            reader = _Reader(file, os.fstat(file.fileno()).st_size)
            return _parse(reader, name, load_arrays, max(0, max_array_items))
    except _Bad as exc:
        raise ModelLoadError(f"{name}: {exc}", path=name) from None
    except FileNotFoundError:  # removed since the stat above
        raise ModelLoadError(f"{name}: no such file", path=name) from None
    except OSError as exc:
        raise ModelLoadError(f"{name}: cannot read ({_reason(exc)})", path=name) from None
    except (struct.error, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        # Not expected: every count is checked before it is used. Kept so
        # that no malformed file can surface as anything but ModelLoadError.
        raise ModelLoadError(
            f"{name}: malformed GGUF header ({type(exc).__name__}: {exc})", path=name
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable file starting with the GGUF magic.

    Reads four bytes; never raises (an unreadable path gives ``False``).
    """
    try:
        name = os.fspath(path)
        if not os.path.isfile(name):  # also keeps a FIFO from blocking us
            return False
        with open(name, "rb") as file:
            return file.read(4) == GGUF_MAGIC
    except (OSError, ValueError, TypeError):
        return False
