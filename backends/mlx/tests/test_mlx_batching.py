"""Continuous batching on MLX (its CPU build, for real): concurrent streams
share one mlx-lm BatchGenerator, each gives what it gives alone, and cancel
and exclusive calls behave. Few tokens: MLX's CPU build is slow."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import inference
from inference import Message
from inference.testing import together, wait_for

PROMPTS = ["The capital of France is", "Water boils at", "Once upon a time", "def add(a, b):"]


@pytest.fixture(scope="module")
def wide(model_path: str) -> Iterator[Any]:
    with inference.load_model(model_path, backend="mlx", parallel_slots=4) as m:
        yield m


def test_concurrent_streams_share_the_batch_and_equal_their_runs_alone(wide: Any) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: wide.generate(PROMPTS[0], max_tokens=6).text(),
        lambda: wide.generate(PROMPTS[1], max_tokens=5, temperature=0.9, seed=3).text(),
        lambda: [(t.id, t.logprob) for t in wide.generate(PROMPTS[2], max_tokens=4, logprobs=2)],
        lambda: wide.chat([Message("user", "Name a colour.")], max_tokens=4).text(),
    ]
    alone = [call() for call in calls]
    sched = wide._scheduler
    steps = sched.steps
    sched.widest = 0
    assert together(calls) == alone
    assert sched.widest >= 2
    # 19 tokens one after another take 19 steps and more; together, fewer.
    assert sched.steps - steps < 19


def test_a_cancelled_stream_leaves_the_batch_before_its_reader_returns(wide: Any) -> None:
    stream = wide.generate(PROMPTS[3], max_tokens=200)
    next(stream)
    sched = wide._scheduler
    assert len(sched._by_uid) == 1
    stream.cancel()
    wait_for(lambda: not sched._by_uid, "the sequence leaving the generator")
    assert list(stream) == []
    assert stream.finish_reason == "cancelled"
    assert wide.generate(PROMPTS[0], max_tokens=2).text()


def test_a_failing_constraint_ends_its_own_stream_alone(wide: Any) -> None:
    """A schema that refers to itself fails inside the generator's shared
    step: that sequence alone ends, without the engine's internals."""
    alone = wide.generate(PROMPTS[0], max_tokens=6).text()

    def attacker() -> tuple[str | None, str]:
        stream = wide.generate("Answer:", max_tokens=4, json_schema={"$ref": "#"})
        with contextlib.suppress(inference.GenerationError):
            stream.text()
        return stream.finish_reason, str(stream.err)

    with wide.generate(PROMPTS[0], max_tokens=6) as victim:
        first = next(victim)
        ((reason, message),) = together([attacker])
        rest = victim.text()
    assert reason == "error" and "constraint engine" in message and "<state>" not in message
    assert first.text + rest == alone and victim.err is None


def test_prompts_seen_before_come_back_from_the_kept_caches(model_path: str) -> None:
    """Two prompts in turn on one sequence: the first's cache, no longer the
    last one kept, is reused from host memory for its next call (tier
    "host"), whose answer equals its first; the last one kept is "slot"."""
    rules = " ".join(f"Rule {i}: be brief." for i in range(12))
    first = [Message("system", rules), Message("user", "Name a colour.")]
    other = [Message("system", rules[::-1]), Message("user", "Name a bird.")]
    with inference.load_model(model_path, backend="mlx", parallel_slots=1) as m:
        cold = m.chat(first, max_tokens=3).text()
        m.chat(other, max_tokens=3).text()
        again = m.chat(first, max_tokens=3)
        assert again.text() == cold
        assert again.metrics is not None and again.metrics.cache_tier == "host"
        assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
        last = m.chat(first, max_tokens=3)
        last.text()
        assert last.metrics is not None and last.metrics.cache_tier == "slot"
    with inference.load_model(model_path, backend="mlx", parallel_slots=1, cache_host_mib=0) as m:
        m.chat(first, max_tokens=3).text()
        m.chat(other, max_tokens=3).text()
        again = m.chat(first, max_tokens=3)
        again.text()
        assert again.metrics is not None and again.metrics.cache_tier != "host"
