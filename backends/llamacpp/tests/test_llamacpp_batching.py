"""Continuous batching on the real SmolLM2: concurrent streams share the
engine's decode steps, each gives what it gives alone, and cancel, queueing,
prefix reuse and exclusive calls behave."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp as lc
import pytest

import inference
from inference import Message
from inference.testing import together, wait_for

PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "Once upon a time",
    "def add(a, b):",
]


@pytest.fixture(scope="module")
def wide(model_path: str) -> Iterator[Any]:
    with inference.load_model(
        model_path, backend="llama_cpp", parallel_slots=4, context_len=1024
    ) as m:
        yield m


def test_concurrent_streams_share_decode_steps_and_equal_their_runs_alone(wide: Any) -> None:
    alone = [wide.generate(p, max_tokens=16).text() for p in PROMPTS]
    sched = wide._scheduler
    steps = sched.steps
    got = together([lambda p=p: wide.generate(p, max_tokens=16).text() for p in PROMPTS])
    assert got == alone
    # 4 streams of 16 tokens one after another take 64 steps; together,
    # they shared them.
    assert sched.steps - steps < 40
    assert sched.widest >= 2


def test_mixed_options_logprobs_and_constraints_equal_their_runs_alone(wide: Any) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: wide.generate(PROMPTS[0], max_tokens=8, temperature=0.9, seed=7).text(),
        lambda: [
            (t.id, t.logprob, tuple(a.id for a in t.top_logprobs))
            for t in wide.generate(PROMPTS[1], max_tokens=6, logprobs=3)
        ],
        lambda: wide.chat(
            [Message("user", "Is the sky blue? Answer yes or no.")], choice=["yes", "no"]
        ).text(),
        lambda: wide.generate(PROMPTS[3], max_tokens=12, stop=["\n"], repeat_penalty=1.3).text(),
        lambda: wide.chat([Message("user", "Name a colour.")], max_tokens=8).text(),
    ]
    alone = [call() for call in calls]
    assert alone[2] in ("yes", "no")
    assert together(calls) == alone


def test_a_stream_joins_a_running_batch_and_leaves_it_running(wide: Any) -> None:
    long_alone = wide.generate(PROMPTS[2], max_tokens=40).text()
    short_alone = wide.generate(PROMPTS[0], max_tokens=5).text()
    first = wide.generate(PROMPTS[2], max_tokens=40)
    head = [next(first).text for _ in range(3)]
    # The first stream is mid-generation; the second (from another thread:
    # one thread runs one stream at a time) joins and finishes while the
    # first has most of its tokens to go.
    assert together([lambda: wide.generate(PROMPTS[0], max_tokens=5).text()]) == [short_alone]
    assert not first.done
    assert "".join(head) + first.text() == long_alone
    assert first.finish_reason == "length"


def test_a_caller_beyond_the_slots_waits_and_honours_its_cancel(model_path: str) -> None:
    with inference.load_model(model_path, backend="llama_cpp", parallel_slots=1) as m:
        holder = m.generate(PROMPTS[2], max_tokens=500)
        next(holder)
        stop = threading.Event()
        waiting = m.generate(PROMPTS[0], max_tokens=5, cancel=stop)
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(waiting.text()))
        t.start()
        wait_for(lambda: m._gate.waiting == 1, "the second call queueing")
        stop.set()
        t.join(30)
        assert result == [""]
        assert waiting.finish_reason == "cancelled"
        assert isinstance(waiting.err, inference.Cancelled)
        assert not holder.done  # it did not wait for the holder to finish
        late = m.generate(PROMPTS[0], max_tokens=5, timeout=0.2)
        t = threading.Thread(target=late.text)
        t.start()
        t.join(30)
        assert isinstance(late.err, inference.DeadlineExceeded)
        holder.close()
        assert m.generate(PROMPTS[0], max_tokens=3).text()


def test_a_cancelled_sequence_frees_its_cells_at_once(wide: Any) -> None:
    stream = wide.generate(PROMPTS[1], max_tokens=200)
    next(stream)
    sched = wide._scheduler
    slot = sched._running[0].state.slot.id
    mem = lc.llama_get_memory(wide._ctx)
    assert lc.llama_memory_seq_pos_max(mem, slot) >= 0
    stream.cancel()  # its reader has not come back yet
    wait_for(lambda: lc.llama_memory_seq_pos_max(mem, slot) == -1, "the cells being freed")
    assert not stream.done
    assert list(stream) == []
    assert stream.finish_reason == "cancelled"


def test_a_repeated_prompt_prefills_only_its_last_token(wide: Any) -> None:
    prompt = "In a small village by the sea there lived an old fisherman who"
    first = wide.generate(prompt, max_tokens=4).text()
    before = wide._scheduler.prefilled
    assert wide.generate(prompt, max_tokens=4).text() == first
    assert wide._scheduler.prefilled - before == 1
    assert wide.metrics.prompt_tokens == len(wide.encode(prompt))  # the whole prompt, reused or not


def test_long_prompt_is_prefilled_in_chunks_beside_running_streams(wide: Any) -> None:
    from inference_llamacpp.batching import PREFILL_CHUNK

    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    assert len(wide.encode(long_prompt)) > 2 * PREFILL_CHUNK
    alone = wide.generate(long_prompt, max_tokens=3).text()
    sched = wide._scheduler
    sched.widest_prefill_beside_decode = 0
    with wide.generate(PROMPTS[2], max_tokens=60) as running:
        next(running)
        joined = together([lambda: wide.generate(long_prompt, max_tokens=3).text()])
    assert joined == [alone]
    # The running stream kept decoding: no step gave it more than a chunk.
    assert 0 < sched.widest_prefill_beside_decode <= PREFILL_CHUNK


def test_a_cached_prompt_is_forgotten_when_classify_clears_the_memory(wide: Any) -> None:
    """classify (which waits for running streams: the conformance suite checks
    it) empties the KV cache; a slot's cached prompt must go with it."""
    cached = wide.generate(PROMPTS[0], max_tokens=5).text()
    wide.classify(PROMPTS)
    assert wide.generate(PROMPTS[0], max_tokens=5).text() == cached


def test_a_full_context_ends_the_sequence_as_length(model_path: str) -> None:
    with inference.load_model(
        model_path, backend="llama_cpp", parallel_slots=2, context_len=256
    ) as m:
        long_prompt = " ".join(["one two three four five six seven eight"] * 24)
        n = len(m.encode(long_prompt))
        assert n < 256

        def fill() -> tuple[int, str | None]:
            stream = m.generate(long_prompt, max_tokens=1000)
            return len(list(stream)), stream.finish_reason

        results = together([fill, lambda: m.generate(PROMPTS[0], max_tokens=10).text()])
        assert results[0] == (257 - n, "length")  # the last token needs no cell
        assert results[1] == m.generate(PROMPTS[0], max_tokens=10).text()


#: Constraints whose engine fails once decoding starts (llguidance: a schema
#: that refers to itself; a regex whose lexer blows up after a few tokens).
FAILING = [{"json_schema": {"$ref": "#"}}, {"regex": "^((a{100}){100}){100}$"}]


@pytest.mark.parametrize("attack", FAILING, ids=["self-referring schema", "exploding regex"])
def test_a_failing_constraint_ends_its_own_stream_alone(wide: Any, attack: Any) -> None:
    alone = wide.generate(PROMPTS[0], max_tokens=24).text()

    def attacker() -> tuple[str, str | None, str]:
        stream = wide.generate("Answer: a", max_tokens=16, **attack)
        got: list[str] = []
        with contextlib.suppress(inference.GenerationError):
            got.extend(t.text for t in stream)
        return "".join(got), stream.finish_reason, str(stream.err)

    with wide.generate(PROMPTS[0], max_tokens=24) as victim:
        first = next(victim)  # decoding: the attacker joins its steps
        ((text, reason, message),) = together([attacker])
        rest = victim.text()
    assert reason == "error" and len(text) <= 4
    assert "constraint engine" in message
    assert "<state>" not in message and "Parser" not in message  # no engine internals
    assert first.text + rest == alone  # the other stream went on undisturbed
    assert victim.err is None and victim.finish_reason == "length"
    assert wide.generate(PROMPTS[1], max_tokens=4).text()  # the model is ready
