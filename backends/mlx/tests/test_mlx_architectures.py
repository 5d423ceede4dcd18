"""Each architecture's MLX mapping, checked against llama.cpp's reading of the same file.

For every architecture the MLX GGUF loader supports, a tiny random-weight
model is written with gguf-py's ``GGUFWriter`` in the layout llama.cpp's
converter produces (its tensor names, Q and K rows permuted for llama, the
1 added to Gemma's norm weights, Phi-3's fused QKV and gate-up matrices),
with the metadata that converter writes. The file is then run by both
engines on the same tokens, and their logits must agree.

The tolerance. The weights are F32 and llama.cpp's KV cache is made F32, so
both engines compute in single precision and differ only in summation order
and in their kernels: measured here, the largest logit difference is about
1e-6 of the logits' scale for llama, qwen2, qwen3 and phi3, and 3e-4 for
Gemma, whose GELU llama.cpp takes from a float16 lookup table. A mapping
error (Q and K rows left permuted, Gemma's norm offset kept, Gemma 3's local
window or RoPE base missed, the wrong query scale) moves the logits by 1e-2
of their scale or more, and the tests below show that it does for each fix.
The bound, 2e-3 of the largest logit, sits between the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
pytest.importorskip("gguf")
np = pytest.importorskip("numpy")
pytest.importorskip("llama_cpp")

from inference_mlx import gguf_loader  # noqa: E402
from inference_mlx.gguf_loader import load_gguf  # noqa: E402
from inference_mlx.tensor_types import SUPPORTED_ARCHITECTURES  # noqa: E402
from tiny_gguf import HEADS, HIDDEN, PROBE, VOCAB, llama_cpp_logits, write_tiny  # noqa: E402

TOLERANCE = 2e-3


def mlx_logits(path: Path, ids: list[int]) -> Any:
    model, _, _, _ = load_gguf(str(path))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Any]]]:
    folder = tmp_path_factory.mktemp("architectures")
    out = {}
    for arch in SUPPORTED_ARCHITECTURES:
        path = write_tiny(folder / f"tiny-{arch}.gguf", arch)
        out[arch] = (path, llama_cpp_logits(path, PROBE))
    yield out


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_the_engines_agree(arch: str, files: dict[str, tuple[Path, Any]]) -> None:
    path, want = files[arch]
    got = mlx_logits(path, PROBE)
    assert got.shape == want.shape == (len(PROBE), VOCAB)
    scale = float(np.abs(want).max())
    worst = float(np.abs(got - want).max()) / scale
    assert worst <= TOLERANCE, f"{arch}: logits differ by {worst:.2e} of their scale"
    assert (got.argmax(-1) == want.argmax(-1)).all()


# What each fix guards: undoing it must move the logits well past the bound.
WRONG_MAPPINGS = {
    "llama": ("unpermute_qk", False),
    "gemma2": ("norm_offset", 0.0),
    "gemma3": ("norm_offset", 0.0),
}


@pytest.mark.parametrize("arch", sorted(WRONG_MAPPINGS))
def test_a_wrong_mapping_is_caught(
    arch: str, files: dict[str, tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, want = files[arch]
    field, value = WRONG_MAPPINGS[arch]
    broken = dataclasses.replace(gguf_loader._ARCHITECTURES[arch], **{field: value})
    monkeypatch.setitem(gguf_loader._ARCHITECTURES, arch, broken)
    got = mlx_logits(path, PROBE)
    assert float(np.abs(got - want).max()) / float(np.abs(want).max()) > 5 * TOLERANCE


@pytest.mark.parametrize(
    ("arch", "key", "value"),
    [
        ("gemma3", "sliding_window", 512),  # the local layers' window ignored
        ("gemma3", "rope_local_base_freq", 1_000_000.0),  # one RoPE base for all
        ("gemma2", "query_pre_attn_scalar", HIDDEN / HEADS * 2),  # the 27B rule misapplied
    ],
)
def test_a_wrong_hyperparameter_is_caught(
    arch: str,
    key: str,
    value: Any,
    files: dict[str, tuple[Path, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, want = files[arch]
    real = gguf_loader._config

    def altered(*args: Any, **kwargs: Any) -> Any:
        config, notes = real(*args, **kwargs)
        config[key] = value
        return config, notes

    monkeypatch.setattr(gguf_loader, "_config", altered)
    got = mlx_logits(path, PROBE)
    assert float(np.abs(got - want).max()) / float(np.abs(want).max()) > 5 * TOLERANCE


def test_gemma2_stays_within_its_sliding_window(files: dict[str, tuple[Path, Any]]) -> None:
    _, _, config, notes = load_gguf(str(files["gemma2"][0]))
    assert config["max_position_embeddings"] == 256
    assert any("256-token sliding window" in n for n in notes)
