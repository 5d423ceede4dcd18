"""Continuous batching on the real SmolLM2: concurrent streams share the
engine's decode steps, each gives what it gives alone, and cancel, queueing,
prefix reuse and exclusive calls behave."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
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


SYSTEM = " ".join(f"Rule {i}: be brief, be kind, and stay on topic {i}." for i in range(40))
QUESTIONS = ["Name a colour.", "Name a fruit.", "Name a city.", "Name a tree."]
ASKS = [[Message("system", SYSTEM), Message("user", q)] for q in QUESTIONS]


def _forget(m: Any) -> None:
    m._scheduler.forget()
    lc.llama_memory_clear(lc.llama_get_memory(m._ctx), True)


def test_a_prefix_copied_from_another_sequence_equals_the_slot_s_own(model_path: str) -> None:
    """The KV copied from another (running) sequence's slot gives the very
    log-probabilities the slot's own cached prefix gives, token for token:
    the same prefill shapes, so any difference would be a wrong state."""
    # A fixed thread count: the tuner's probes change the sums' order.
    with inference.load_model(
        model_path, backend="llama_cpp", parallel_slots=2, context_len=1024, threads=2
    ) as m:
        m.chat(ASKS[0], max_tokens=4).text()  # a slot holds the system prompt
        own = m.chat(ASKS[1], max_tokens=12, logprobs=2)
        mine = list(own)
        assert own.metrics is not None and own.metrics.cache_tier == "slot"
        _forget(m)
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with m.chat(ASKS[0], max_tokens=200) as stream:
                next(iter(stream))
                held.set()
                release.wait(60)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            held.wait(60)
            running = m._scheduler._running
            wait_for(lambda: all(s.unread >= 4 for s in list(running)), "the holder pausing")
            copied = m.chat(ASKS[1], max_tokens=12, logprobs=2)
            theirs = list(copied)
        finally:
            release.set()
            holder.join(60)
        assert copied.metrics is not None and copied.metrics.cache_tier == "sequence"
        assert copied.metrics.cached_tokens == own.metrics.cached_tokens > 400
    assert [t.text for t in theirs] == [t.text for t in mine]
    assert [t.logprob for t in theirs] == [t.logprob for t in mine]


def test_concurrent_callers_with_one_system_prompt_prefill_it_once(model_path: str) -> None:
    """Four streams, one long system prompt: the engine computes it once
    (counted), the others wait for it and copy its KV; the metrics say how
    many prompt tokens each took from the cache."""
    with inference.load_model(
        model_path, backend="llama_cpp", parallel_slots=4, context_len=1024
    ) as m:
        prefix = len(m.encode(m._render_chat([Message("system", SYSTEM)])))
        whole = sum(len(m.encode(m._render_chat(a))) for a in ASKS)
        before = m._scheduler.prefilled

        def run(ask: list[Message]) -> tuple[str, int, str]:
            stream = m.chat(ask, max_tokens=12)
            text = stream.text()
            assert stream.metrics is not None
            return text, stream.metrics.cached_tokens, stream.metrics.cache_tier

        got = together([lambda a=a: run(a) for a in ASKS])
        computed = m._scheduler.prefilled - before
    assert prefix > 400 and all(g[0] for g in got)
    assert computed < whole - 3 * (prefix - 64)  # the shared part once, then each question
    cached = sorted(g[1] for g in got)
    assert cached[0] == 0 and all(c >= prefix - 64 for c in cached[1:])
    assert {g[2] for g in got if g[1]} == {"sequence"}


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


def test_a_prompt_evicted_from_its_slot_comes_back_from_host_memory(model_path: str) -> None:
    """One slot, two long prompts in turn: the first's KV, evicted by the
    second, is kept in the host tier and restored for the first's next call,
    whose answer equals its first run's, and whose log-probabilities equal
    those after its own slot's cached prefix."""
    notes = " ".join(f"Note {i}: the sea is wide and the sky is high." for i in range(30))
    other = [Message("system", notes), Message("user", "Name a bird.")]
    with inference.load_model(
        model_path, backend="llama_cpp", parallel_slots=1, context_len=1024, threads=2
    ) as m:
        cold = list(m.chat(ASKS[0], max_tokens=8, logprobs=1))
        # Again, from its own slot: the last prompt token computed alone, as
        # after a restore (so the log-probabilities can be compared exactly).
        mine = list(m.chat(ASKS[0], max_tokens=8, logprobs=1))
        m.chat(other, max_tokens=4).text()  # takes the slot: the first prompt is kept
        assert len(m._scheduler._host) == 1
        before = m._scheduler.prefilled
        again = m.chat(ASKS[0], max_tokens=8, logprobs=1)
        warm = list(again)
        computed = m._scheduler.prefilled - before
        assert again.metrics is not None and again.metrics.cache_tier == "host"
        assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
    assert computed == 1
    assert [t.text for t in warm] == [t.text for t in cold]
    assert [(t.text, t.logprob) for t in warm] == [(t.text, t.logprob) for t in mine]
    with inference.load_model(
        model_path, backend="llama_cpp", parallel_slots=1, context_len=1024, cache_host_mib=0
    ) as m:
        m.chat(ASKS[0], max_tokens=2).text()
        m.chat(other, max_tokens=2).text()
        again = m.chat(ASKS[0], max_tokens=2)
        again.text()
        assert again.metrics is not None and again.metrics.cache_tier != "host"
        assert again.metrics.cached_tokens < 16  # the template's opening only


def test_the_host_tier_keeps_the_least_recently_used_out_first() -> None:
    from inference_llamacpp.host_cache import HostCache

    host = HostCache(budget=3000)
    host.keep([1, 2, 3], b"a" * 1000)
    host.keep([1, 2, 3, 4], b"b" * 1000)  # covers the first: it goes
    assert len(host) == 1 and host.used == 1000 and host.covers([1, 2])
    host.keep([7, 8], b"c" * 1000)
    host.keep([9], b"d" * 1000)
    found = host.find([1, 2, 3, 4, 5], limit=4)
    assert found is not None and found[1] == 4  # and it is now the most recent
    host.keep([5, 6], b"e" * 1000)  # over budget: the least recently used, [7, 8], goes
    assert host.find([7, 8], limit=2) is None and host.find([9], limit=1) is not None
    host.keep([0] * 10, b"f" * 4000)  # larger than the whole budget: not kept
    assert host.find([0] * 10, limit=10) is None and host.used <= 3000


def test_a_fresh_model_restores_a_prompt_an_earlier_one_saw_from_disk(
    model_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cache_dir: a model closed, another loaded on the same folder restores
    the prompt's KV from disk (tier "disk"), computing one token, with the
    answer of the first and the log-probabilities after a cached prefix; a
    corrupt entry is skipped, deleted, and the prompt prefilled as new."""
    from inference.cli import main
    from inference.disk_cache import entry_files

    opts = {"parallel_slots": 1, "context_len": 1024, "threads": 2, "cache_dir": str(tmp_path)}
    with inference.load_model(model_path, backend="llama_cpp", **opts) as m:
        cold = list(m.chat(ASKS[0], max_tokens=8, logprobs=1))
        mine = list(m.chat(ASKS[0], max_tokens=8, logprobs=1))  # from its slot
    assert entry_files(str(tmp_path))  # written by the time the model closed
    with inference.load_model(model_path, backend="llama_cpp", **opts) as m:
        before = m._scheduler.prefilled
        again = m.chat(ASKS[0], max_tokens=8, logprobs=1)
        warm = list(again)
        computed = m._scheduler.prefilled - before
    assert again.metrics is not None and again.metrics.cache_tier == "disk"
    assert computed == 1 and again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
    assert [t.text for t in warm] == [t.text for t in cold]
    assert [(t.text, t.logprob) for t in warm] == [(t.text, t.logprob) for t in mine]
    listed = io.StringIO()  # inference cache lists the folder
    assert main(["cache", str(tmp_path), "--json"], stdout=listed) == 0
    got = json.loads(listed.getvalue())
    assert got["bytes"] > 0 and got["entries"][0]["tokens"] >= again.metrics.prompt_tokens
    assert got["entries"][0]["names"] == got["entries"][0]["tokens"] // 256
    for path, *_ in entry_files(str(tmp_path)):  # every name of the entry, corrupted
        data = Path(path).read_bytes()
        Path(path).unlink()
        Path(path).write_bytes(data[: len(data) // 2])
    with (
        caplog.at_level("WARNING", logger="inference.cache"),
        inference.load_model(model_path, backend="llama_cpp", **opts) as m,
    ):
        fresh = m.chat(ASKS[0], max_tokens=8)
        assert fresh.text() == "".join(t.text for t in cold)
        assert fresh.metrics is not None and fresh.metrics.cached_tokens == 0
    assert "skipped and deleted" in caplog.text
    assert main(["cache", str(tmp_path), "--clear"], stdout=io.StringIO()) == 0
    assert not entry_files(str(tmp_path))
