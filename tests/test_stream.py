"""TokenStream and StreamControl: stopping, errors, results and async use.

Hand-written producers show the stream's own behaviour exactly; the fake
backend (with ``delay``) shows it end to end through a model's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest

from inference import (
    Cancelled,
    DeadlineExceeded,
    GenerationError,
    TokenStream,
    with_cancel,
    with_max_tokens,
    with_timeout,
)
from inference.stream import Producer, StreamControl
from inference.testing import FakeBackend, FakeModel, cancel_after
from inference.types import FinishReason, GenerateMetrics, Token

pytestmark = pytest.mark.timeout(30)

#: A generous bound on waits for another thread; never reached when things work.
WAIT = 10


class Recorder:
    """A producer factory that logs what happens to the producer."""

    def __init__(
        self,
        count: int | None = 3,
        *,
        reason: FinishReason | None = "length",
        fail_at: int | None = None,
        error: BaseException | None = None,
        metrics: GenerateMetrics | None = None,
        pause: float = 0.0,
    ) -> None:
        self.count = count
        self.reason = reason
        self.fail_at = fail_at
        self.error = error or ValueError("bad byte")
        self.metrics = metrics
        self.pause = pause
        self.log: list[str] = []
        self.produced = 0

    def __call__(self, control: StreamControl) -> Generator[Token, None, FinishReason]:
        self.log.append("started")
        try:
            i = 0
            while self.count is None or i < self.count:
                control.check()
                if i == self.fail_at:
                    raise self.error
                self.produced += 1
                yield Token(i, f"t{i} ")
                i += 1
                if self.pause:
                    time.sleep(self.pause)
            control.metrics = self.metrics
            return self.reason  # type: ignore[return-value]
        finally:
            self.log.append("closed")


@pytest.fixture
def model() -> Generator[FakeModel, None, None]:
    with FakeBackend(delay=0.001, reply="abcdefghij").load_model("fake") as m:
        yield m


def lock_is_free(model: FakeModel) -> bool:
    return model._gate.running == 0


# -- finishing ---------------------------------------------------------------------


def test_a_stream_yields_the_producers_tokens_and_reason() -> None:
    producer: Producer = Recorder(3)
    stream = TokenStream(producer)
    assert not stream.done and stream.finish_reason is None
    assert list(stream) == [Token(0, "t0 "), Token(1, "t1 "), Token(2, "t2 ")]
    assert stream.done
    assert stream.finish_reason == "length"
    assert stream.err is None
    with pytest.raises(StopIteration):
        next(stream)
    assert iter(stream) is stream


@pytest.mark.parametrize(
    ("reason", "expected"), [(None, "stop"), ("stop", "stop"), ("length", "length")]
)
def test_finish_reasons(reason: Any, expected: str) -> None:
    stream = TokenStream(Recorder(1, reason=reason))
    list(stream)
    assert stream.finish_reason == expected


def test_text_consumes_the_rest() -> None:
    stream = TokenStream(Recorder(4))
    assert next(stream).text == "t0 "
    assert stream.text() == "t1 t2 t3 "
    assert stream.text() == ""
    assert stream.done


def test_metrics_only_after_the_end() -> None:
    metrics = GenerateMetrics(prompt_tokens=2, generated_tokens=3)
    stream = TokenStream(Recorder(3, metrics=metrics))
    next(stream)
    assert stream.metrics is None
    list(stream)
    assert stream.metrics is metrics


def test_the_finish_hook_runs_once() -> None:
    calls: list[tuple[Any, Any]] = []
    metrics = GenerateMetrics(generated_tokens=2)
    stream = TokenStream(Recorder(2, metrics=metrics), on_finish=lambda e, m: calls.append((e, m)))
    list(stream)
    list(stream)
    stream.close()
    assert calls == [(None, metrics)]


# -- cancelling ------------------------------------------------------------------------


def test_cancel_from_another_thread_between_tokens() -> None:
    rec = Recorder(None)
    stream = TokenStream(rec)
    got = cancel_after(stream, 3)
    assert len(got) == 3, "the cancel takes effect at the next token"
    assert stream.finish_reason == "cancelled"
    assert type(stream.err) is Cancelled
    assert rec.log == ["started", "closed"]


def test_cancel_while_the_consumer_waits_on_the_engine() -> None:
    busy = threading.Event()

    def prefill(control: StreamControl) -> Generator[Token, None, FinishReason]:
        busy.set()
        while not control.stop_requested():  # an engine's abort callback
            time.sleep(0.001)
        control.check()
        yield Token(0, "never")
        return "stop"

    stream = TokenStream(prefill)
    canceller = threading.Thread(target=lambda: busy.wait(WAIT) and stream.cancel())
    canceller.start()
    assert list(stream) == []
    canceller.join()
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)


def test_cancel_a_model_stream_from_another_thread(model: FakeModel) -> None:
    stream = model.generate("x", max_tokens=10_000)
    three = threading.Event()
    got: list[Token] = []

    def consume() -> None:
        for tok in stream:
            got.append(tok)
            if len(got) == 3:
                three.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert three.wait(WAIT)
    stream.cancel()
    worker.join(WAIT)
    assert not worker.is_alive()
    assert 3 <= len(got) < 10_000
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)
    assert model.err is stream.err
    assert lock_is_free(model)
    assert stream.metrics is not None and stream.metrics.generated_tokens >= 3
    assert model.generate("x", max_tokens=3).text() == "abc"
    assert model.err is None


def test_cancel_event_option() -> None:
    event = threading.Event()
    rec = Recorder(None)
    stream = TokenStream(rec, cancel=event)
    next(stream)
    threading.Thread(target=event.set).start()
    event.wait(WAIT)
    assert list(stream) == []
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)


def test_cancel_event_set_before_the_call(model: FakeModel) -> None:
    event = threading.Event()
    event.set()
    stream = model.generate("x", with_cancel(event), with_max_tokens(10_000))
    assert len(list(stream)) <= 1
    assert stream.finish_reason == "cancelled"
    assert isinstance(model.err, Cancelled)
    assert model.generate("x", max_tokens=2).text() == "ab"


# -- deadlines ---------------------------------------------------------------------------


def test_timeout_ends_quietly_with_deadline_exceeded() -> None:
    rec = Recorder(None, pause=0.001)
    stream = TokenStream(rec, timeout=0.02)
    list(stream)
    assert stream.finish_reason == "cancelled"
    err = stream.err
    assert isinstance(err, DeadlineExceeded)
    assert isinstance(err, TimeoutError) and isinstance(err, Cancelled)
    assert str(err) == "the call ran past its timeout of 0.02 s"
    assert rec.log[-1] == "closed"


def test_timeout_on_a_model(model: FakeModel) -> None:
    stream = model.generate("x", with_timeout(0.05), max_tokens=10_000)
    tokens = list(stream)
    assert len(tokens) < 10_000
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, DeadlineExceeded)
    assert isinstance(model.err, DeadlineExceeded)
    assert lock_is_free(model)
    assert model.generate("x", max_tokens=2).text() == "ab"
    assert model.err is None


# -- closing --------------------------------------------------------------------------


def test_close_before_the_first_token_never_starts_the_producer() -> None:
    rec = Recorder(3)
    stream = TokenStream(rec)
    stream.close()
    assert rec.log == []
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)
    assert list(stream) == []


def test_close_mid_stream_runs_the_producers_cleanup() -> None:
    rec = Recorder(10)
    stream = TokenStream(rec)
    next(stream)
    stream.close()
    assert rec.log == ["started", "closed"]
    assert rec.produced == 1
    assert stream.finish_reason == "cancelled"
    assert str(stream.err) == "the stream was closed"
    stream.close()  # idempotent
    assert stream.finish_reason == "cancelled"


def test_close_after_the_end_keeps_the_result() -> None:
    stream = TokenStream(Recorder(2))
    list(stream)
    stream.close()
    assert (stream.finish_reason, stream.err) == ("length", None)


def test_close_from_another_thread_while_the_engine_runs() -> None:
    busy, resume = threading.Event(), threading.Event()

    def producer(control: StreamControl) -> Generator[Token, None, FinishReason]:
        yield Token(0, "a")
        busy.set()
        resume.wait(WAIT)
        control.check()
        yield Token(1, "b")
        return "stop"

    stream = TokenStream(producer)
    assert next(stream) == Token(0, "a")
    got: list[Token] = []
    worker = threading.Thread(target=lambda: got.extend(stream))
    worker.start()
    assert busy.wait(WAIT)
    stream.close()  # the generator is running in the worker: close only cancels
    resume.set()
    worker.join(WAIT)
    assert got == []
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)


def test_context_manager_closes() -> None:
    rec = Recorder(10)
    with TokenStream(rec) as stream:
        next(stream)
    assert rec.log == ["started", "closed"]
    assert stream.finish_reason == "cancelled"


def test_context_manager_releases_the_model(model: FakeModel) -> None:
    with model.generate("x", max_tokens=10_000) as stream:
        next(stream)
        assert not lock_is_free(model)
    assert lock_is_free(model)
    assert stream.finish_reason == "cancelled"
    assert model.generate("x", max_tokens=3).text() == "abc"


def test_a_dropped_stream_is_closed() -> None:
    rec = Recorder(10)
    stream = TokenStream(rec)
    next(stream)
    del stream
    gc.collect()
    assert rec.log == ["started", "closed"]


def test_break_then_reuse(model: FakeModel) -> None:
    for _tok in model.generate("x", max_tokens=10_000):
        break
    # The abandoned stream was dropped, which closed it and freed the model.
    assert lock_is_free(model)
    assert model.generate("x", max_tokens=3).text() == "abc"


def test_an_unfinished_stream_blocks_the_same_thread_clearly(model: FakeModel) -> None:
    first = model.generate("x", max_tokens=10_000)
    next(first)
    second = model.generate("x", max_tokens=3)
    with pytest.raises(GenerationError, match="already has a call running on this model"):
        second.text()
    first.close()
    assert model.generate("x", max_tokens=3).text() == "abc"


# -- errors -------------------------------------------------------------------------


def test_a_failing_producer_raises_generation_error_from_iteration() -> None:
    calls: list[Any] = []
    rec = Recorder(5, fail_at=2)
    stream = TokenStream(rec, on_finish=lambda e, m: calls.append(e))
    got = []
    with pytest.raises(GenerationError, match="generation failed: bad byte") as info:
        for tok in stream:
            got.append(tok)
    assert len(got) == 2
    assert stream.err is info.value
    assert isinstance(info.value.__cause__, ValueError)
    assert stream.finish_reason == "error"
    assert calls == [info.value]
    assert list(stream) == [], "the error is raised once, then kept in err"
    assert rec.log == ["started", "closed"]


def test_a_generation_error_is_not_wrapped_again() -> None:
    original = GenerationError("engine says no")
    stream = TokenStream(Recorder(3, fail_at=0, error=original))
    with pytest.raises(GenerationError) as info:
        stream.text()
    assert info.value is original and stream.err is original


def test_a_producer_raising_cancelled_ends_quietly() -> None:
    stream = TokenStream(Recorder(3, fail_at=1, error=Cancelled("engine aborted")))
    assert [t.id for t in stream] == [0]
    assert stream.finish_reason == "cancelled"
    assert str(stream.err) == "engine aborted"


def test_model_errors_are_kept_on_the_model() -> None:
    def reply(prompt: str) -> str:
        if prompt == "boom":
            raise ValueError("the engine choked")
        return "fine"

    with FakeBackend(reply=reply).load_model("m") as model:
        stream = model.generate("boom", max_tokens=3)
        with pytest.raises(GenerationError, match="the engine choked"):
            stream.text()
        assert model.err is stream.err
        assert isinstance(stream.err.__cause__, ValueError)  # type: ignore[union-attr]
        assert lock_is_free(model)
        good = model.generate("ok", max_tokens=4)
        assert good.text() == "fine"
        assert model.err is None
        assert model.metrics == good.metrics and good.metrics is not None
        assert good.metrics.generated_tokens == 4


# -- async ----------------------------------------------------------------------------


def test_async_for_gives_the_same_tokens(model: FakeModel) -> None:
    expected = list(model.generate("x", max_tokens=5))

    async def collect() -> list[Token]:
        return [tok async for tok in model.generate("x", max_tokens=5)]

    assert asyncio.run(collect()) == expected
    assert lock_is_free(model)


def test_async_for_raises_generation_errors() -> None:
    stream = TokenStream(Recorder(5, fail_at=1))

    async def collect() -> list[Token]:
        return [tok async for tok in stream]

    with pytest.raises(GenerationError, match="bad byte"):
        asyncio.run(collect())
    assert stream.finish_reason == "error"


def _cancel_the_reading_task(stream: TokenStream, then: Callable[[], Any]) -> Any:
    """Read ``stream`` with ``async for`` in a task, cancel the task after the
    first token; what ``then()`` says once the task is gone."""

    async def main() -> Any:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in stream:
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), WAIT)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        return then()

    return asyncio.run(main())


def test_cancelling_the_task_cancels_the_engine() -> None:
    rec = Recorder(None, pause=0.001)
    stream = TokenStream(rec)
    log = _cancel_the_reading_task(stream, lambda: list(rec.log))
    assert log == ["started", "closed"]  # by the time the task is gone, the engine has stopped
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)
    produced = rec.produced
    time.sleep(0.01)
    assert rec.produced == produced, "the producer kept running after the task was cancelled"


def test_cancelling_the_task_frees_the_model(model: FakeModel) -> None:
    stream = model.generate("x", max_tokens=10_000)
    _cancel_the_reading_task(stream, lambda: None)
    assert stream.finish_reason == "cancelled"
    assert lock_is_free(model)
    assert model.calls == 1
    assert model.generate("x", max_tokens=2).text() == "ab"
    assert model.calls == 2


def test_breaking_out_of_async_for_closes_the_stream() -> None:
    rec = Recorder(None)
    stream = TokenStream(rec)

    async def main() -> Token:
        async for tok in stream:
            return tok
        raise AssertionError("no token")

    assert asyncio.run(main()) == Token(0, "t0 ")
    assert stream.finish_reason == "cancelled"
    assert rec.log == ["started", "closed"]


# -- StreamControl ------------------------------------------------------------------------


def test_stream_control_signals() -> None:
    control = StreamControl()
    assert not control.stop_requested()
    control.check()
    control.cancel()
    assert control.stop_requested()
    with pytest.raises(Cancelled) as info:
        control.check()
    assert not isinstance(info.value, DeadlineExceeded)

    event = threading.Event()
    user = StreamControl(cancel=event)
    assert not user.stop_requested()
    event.set()
    assert user.stop_requested()
    with pytest.raises(Cancelled):
        user.check()


def test_stream_control_deadline() -> None:
    control = StreamControl(timeout=1e-9)
    time.sleep(0.001)
    assert control.stop_requested()
    with pytest.raises(DeadlineExceeded):
        control.check()
    none = StreamControl()
    assert none.deadline is None and none.timeout is None
    assert not none.stop_requested()
    none.check()


def test_an_interrupt_ends_the_stream_as_cancelled() -> None:
    calls: list[Any] = []
    rec = Recorder(5, fail_at=1, error=KeyboardInterrupt())
    stream = TokenStream(rec, on_finish=lambda e, m: calls.append(e))
    next(stream)
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert stream.done
    assert stream.finish_reason == "cancelled"
    assert isinstance(stream.err, Cancelled)
    assert str(stream.err) == "interrupted by KeyboardInterrupt"
    assert calls == [stream.err], "the model hears how the call ended"
    assert list(stream) == []


# -- async: a slow reader bounds the engine ---------------------------------------------


def test_async_reader_bounds_how_far_the_engine_runs_ahead() -> None:
    """The engine never runs more than ASYNC_AHEAD (+1 in hand) tokens ahead of
    an ``async for`` reader: the reader waits until the producer has gone as
    far as the bound lets it, each time, then takes one token."""
    from inference.stream import ASYNC_AHEAD

    total = ASYNC_AHEAD * 4
    cond = threading.Condition()
    counts = {"produced": 0, "consumed": 0, "widest": 0}

    def producer(control: StreamControl) -> Generator[Token, None, FinishReason]:
        for i in range(total):
            with cond:
                counts["produced"] += 1
                gap = counts["produced"] - counts["consumed"]
                counts["widest"] = max(counts["widest"], gap)
                cond.notify_all()
            yield Token(i, "x")
        return "length"

    def wait_for_the_producer() -> None:
        with cond:
            cond.wait_for(
                lambda: counts["produced"] >= min(total, counts["consumed"] + ASYNC_AHEAD + 1)
            )

    async def read() -> int:
        loop = asyncio.get_running_loop()
        got = 0
        async for _tok in TokenStream(producer):
            await loop.run_in_executor(None, wait_for_the_producer)
            with cond:
                counts["consumed"] += 1
            got += 1
        return got

    assert asyncio.run(read()) == total
    assert counts["widest"] <= ASYNC_AHEAD + 2, counts


def test_async_reader_that_stops_early_frees_the_model() -> None:
    model = FakeModel("m", repeat=True)

    async def first_token() -> str:
        async for tok in model.generate("abc", max_tokens=10_000):
            return tok.text
        return ""

    assert asyncio.run(first_token())
    assert model.generate("abc", max_tokens=3).text()  # not left locked


def test_stream_holders_refuse_a_second_stream_on_the_same_thread() -> None:
    from inference.stream import HELD, StreamHolders

    holders = StreamHolders()
    holders.refuse_if_held()  # holds nothing yet
    with holders.holding():
        with pytest.raises(GenerationError, match="already has a call running"):
            holders.refuse_if_held()
        with pytest.raises(GenerationError) as second, holders.holding():
            pass
        assert str(second.value) == HELD
        # Another thread holds nothing: it may.
        other: list[BaseException | None] = []

        def elsewhere() -> None:
            try:
                with holders.holding():
                    other.append(None)
            except BaseException as exc:
                other.append(exc)

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()
        assert other == [None]
    holders.refuse_if_held()  # released
