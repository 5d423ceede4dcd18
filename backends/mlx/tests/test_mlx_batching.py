"""Continuous batching on MLX (its CPU build, for real): concurrent streams
share one mlx-lm BatchGenerator, each gives what it gives alone, and cancel
and exclusive calls behave. On SmolLM2 in float32 (:mod:`fast_cpu`), with
few tokens: MLX's CPU build is slow."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fast_cpu import ROUNDING

import inference
from inference import Message
from inference.testing import together, wait_for

PROMPTS = ["The capital of France is", "Water boils at", "Once upon a time", "def add(a, b):"]


@pytest.fixture(scope="module")
def wide(f32_path: str) -> Iterator[Any]:
    with inference.load_model(f32_path, backend="mlx", parallel_slots=4) as m:
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
    got = together(calls)
    assert got[:2] + got[3:] == alone[:2] + alone[3:]
    # The same tokens; their logprobs equal but for a batch's rounding (fast_cpu).
    assert [i for i, _ in got[2]] == [i for i, _ in alone[2]]
    assert [p for _, p in got[2]] == pytest.approx([p for _, p in alone[2]], abs=ROUNDING)
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


def test_prompts_seen_before_come_back_from_the_kept_caches(f32_path: str) -> None:
    """Two prompts in turn on one sequence: the first's cache, no longer the
    last one kept, is reused from host memory for its next call (tier
    "host"), whose answer equals its first; the last one kept is "slot"."""
    # Past WORTH_TAKING tokens: a shorter prompt would take the other's cache.
    rules = " ".join(f"Rule {i}: be brief." for i in range(12))
    first = [Message("system", rules), Message("user", "Name a colour.")]
    other = [Message("system", rules[::-1]), Message("user", "Name a bird.")]
    with inference.load_model(f32_path, backend="mlx", parallel_slots=1) as m:
        cold = m.chat(first, max_tokens=3).text()
        m.chat(other, max_tokens=3).text()
        again = m.chat(first, max_tokens=3)
        assert again.text() == cold
        assert again.metrics is not None and again.metrics.cache_tier == "host"
        assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
        last = m.chat(first, max_tokens=3)
        last.text()
        assert last.metrics is not None and last.metrics.cache_tier == "slot"
    with inference.load_model(f32_path, backend="mlx", parallel_slots=1, cache_host_mib=0) as m:
        m.chat(first, max_tokens=3).text()
        m.chat(other, max_tokens=3).text()
        again = m.chat(first, max_tokens=3)
        again.text()
        assert again.metrics is not None and again.metrics.cache_tier != "host"


def _rules(n: int) -> str:
    return " ".join(f"Rule {i}: answer briefly and politely, in plain words." for i in range(n))


def test_concurrent_callers_copy_a_running_sequence_s_prefix(f32_path: str) -> None:
    """Two chats with one long system prompt at once: the one admitted
    second waits, in its place, for the first's prefill and starts from a
    copy of its cache (tier "sequence"); an unrelated call that comes while
    it waits is not held behind it; every answer equals its run alone."""
    asks = [
        [Message("system", _rules(6)), Message("user", q)]
        for q in ("Name a colour.", "Name a bird.")
    ]
    other = "Once upon a time"
    with inference.load_model(f32_path, backend="mlx", parallel_slots=3) as m:
        alone = [m.chat(a, max_tokens=3).text() for a in asks]
        alone_other = m.generate(other, max_tokens=3).text()
    with inference.load_model(f32_path, backend="mlx", parallel_slots=3) as m:
        sched = m._scheduler
        got: dict[int, str] = {}
        streams = [m.chat(a, max_tokens=3) for a in asks]
        first = threading.Thread(target=lambda: got.__setitem__(0, streams[0].text()))
        first.start()
        wait_for(lambda: len(sched._by_uid) == 1, "the first chat in the generator")
        second = threading.Thread(target=lambda: got.__setitem__(1, streams[1].text()))
        second.start()
        wait_for(
            lambda: any(s.state.waiting for s in list(sched._running)), "the second one waiting"
        )
        late = m.generate(other, max_tokens=3)
        third = threading.Thread(target=lambda: got.__setitem__(2, late.text()))
        third.start()
        wait_for(lambda: len(sched._by_uid) == 2, "the unrelated call in the generator")
        assert any(s.state.waiting for s in list(sched._running))  # the second still waits
        for t in (first, second, third):
            t.join()
    assert [got[0], got[1], got[2]] == [*alone, alone_other]
    metrics = [s.metrics for s in streams]
    assert metrics[0] is not None and metrics[1] is not None
    assert (metrics[0].cache_tier, metrics[1].cache_tier) == ("", "sequence")
    assert 80 < metrics[1].cached_tokens < metrics[1].prompt_tokens


def test_a_fresh_model_restores_a_prompt_an_earlier_one_saw_from_disk(
    f32_path: str, tmp_path: Any
) -> None:
    """cache_dir: a model closed, another loaded on the same folder restores
    the prompt's cache from disk in mlx-lm's format (tier "disk"), with the
    first's answer."""
    from inference.disk_cache import entry_files

    ask = [Message("system", _rules(20)), Message("user", "Name a colour.")]  # past a block
    opts = {"parallel_slots": 1, "cache_dir": str(tmp_path)}
    with inference.load_model(f32_path, backend="mlx", **opts) as m:
        cold = m.chat(ask, max_tokens=3, logprobs=1)
        first = [(t.text, t.logprob) for t in cold]
    assert entry_files(str(tmp_path))  # written by the time the model closed
    with inference.load_model(f32_path, backend="mlx", **opts) as m:
        again = m.chat(ask, max_tokens=3, logprobs=1)
        warm = [(t.text, t.logprob) for t in again]
    assert again.metrics is not None and again.metrics.cache_tier == "disk"
    assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
    assert [t for t, _ in warm] == [t for t, _ in first]
    assert max(abs(a - b) for (_, a), (_, b) in zip(warm, first, strict=True)) < 0.05


def test_a_sliding_window_model_reuses_its_block_checkpoints(tmp_path: Any) -> None:
    """Gemma 3's local layers keep a rotating cache (a window of 5 tokens in
    the tiny model), which cannot be trimmed back to a shorter prefix once
    it has wrapped: a prefill keeps a copy at each 256-token boundary, so a
    prompt sharing that prefix starts there, time after time, in this
    process and (with ``cache_dir``) in the next, and its answer equals a
    cold model's. With nothing kept, nothing is reused."""
    from tiny_gguf import write_tiny

    path = str(write_tiny(tmp_path / "gemma3.gguf", "gemma3"))
    words = "".join(f"w{i * 5 % 64}" for i in range(150))
    first, second = words + "w1w2w3", words[: len(words) * 9 // 10] + "w7w7w9"
    with inference.load_model(path, backend="mlx", cache_host_mib=0, parallel_slots=1) as cold:
        want = {p: cold.generate(p, max_tokens=6, logprobs=0) for p in (first, second)}
        answers = {p: [(t.id, t.logprob) for t in s] for p, s in want.items()}
        for s in want.values():
            assert s.metrics is not None and s.metrics.cached_tokens == 0
    opts = {"parallel_slots": 1, "cache_dir": str(tmp_path / "kv")}
    with inference.load_model(path, backend="mlx", **opts) as m:
        for prompt, reused in ((first, 0), (second, 256), (first, 256), (second, 256)):
            stream = m.generate(prompt, max_tokens=6, logprobs=0)
            assert [(t.id, t.logprob) for t in stream] == answers[prompt]
            assert stream.metrics is not None and stream.metrics.cached_tokens == reused
            assert 300 < stream.metrics.prompt_tokens < 512
    with inference.load_model(path, backend="mlx", **opts) as m:  # a restart
        stream = m.generate(second, max_tokens=6, logprobs=0)
        assert [(t.id, t.logprob) for t in stream] == answers[second]
        assert stream.metrics is not None
        assert (stream.metrics.cached_tokens, stream.metrics.cache_tier) == (256, "disk")
