"""EngineThread: every engine call of a model on one thread, in order."""

from __future__ import annotations

import threading
from collections.abc import Generator

import pytest

from inference import GenerationError
from inference.engine_thread import PUMP_AHEAD, EngineThread
from inference.errors import Cancelled
from inference.stream import HELD, StreamControl, TokenStream
from inference.types import FinishReason, Token


@pytest.fixture
def engine() -> Generator[EngineThread, None, None]:
    thread = EngineThread("test-engine")
    yield thread
    thread.stop()


def test_calls_run_on_one_thread_and_bring_back_results_and_errors(engine: EngineThread) -> None:
    names = {engine.call(lambda: threading.current_thread().name) for _ in range(3)}
    assert names == {"test-engine"}
    with pytest.raises(KeyError, match="boom"):
        engine.call(lambda: {}["boom"])
    assert engine.call(lambda: 41 + 1) == 42  # still serving after an error


def _counting(total: int, counts: dict[str, int], cond: threading.Condition):  # type: ignore[no-untyped-def]
    def producer(control: StreamControl) -> Generator[Token, None, FinishReason]:
        for i in range(total):
            with cond:
                counts["produced"] += 1
                counts["widest"] = max(counts["widest"], counts["produced"] - counts["read"])
                cond.notify_all()
            yield Token(i, "x")
        return "length"

    return producer


def test_the_engine_runs_at_most_pump_ahead_tokens_ahead(engine: EngineThread) -> None:
    total = PUMP_AHEAD * 4
    cond = threading.Condition()
    counts = {"produced": 0, "read": 0, "widest": 0}
    stream = TokenStream(engine.pump(_counting(total, counts, cond)))
    for _tok in stream:
        with cond:
            # Let the engine go as far as the bound allows before each read.
            cond.wait_for(lambda: counts["produced"] >= min(total, counts["read"] + PUMP_AHEAD + 1))
            counts["read"] += 1
    assert counts["read"] == total
    assert counts["widest"] <= PUMP_AHEAD + 2, counts


def test_a_thread_holding_a_stream_is_refused_another_call(engine: EngineThread) -> None:
    cond = threading.Condition()
    counts = {"produced": 0, "read": 0, "widest": 0}
    first = TokenStream(engine.pump(_counting(1000, counts, cond)))
    next(first)
    second = TokenStream(engine.pump(_counting(2, counts, cond)))
    with pytest.raises(GenerationError, match="already has a call running"):
        list(second)
    assert str(second.err) == HELD
    with pytest.raises(GenerationError, match="already has a call running"):
        engine.call(lambda: None)
    # Another thread may queue behind it; it runs once the first stream ends.
    got: list[int] = []
    other = threading.Thread(target=lambda: got.append(engine.call(lambda: 7)))
    other.start()
    first.close()
    other.join()
    assert got == [7]
    assert engine.call(lambda: 8, held_ok=True) == 8


def test_a_stream_waiting_for_the_engine_honours_its_cancel(engine: EngineThread) -> None:
    release = threading.Event()
    started = threading.Event()

    def busy() -> None:
        started.set()
        release.wait()

    blocker = threading.Thread(target=lambda: engine.call(busy))
    blocker.start()
    started.wait()
    cond = threading.Condition()
    counts = {"produced": 0, "read": 0, "widest": 0}
    stream = TokenStream(engine.pump(_counting(5, counts, cond)))
    canceller = threading.Thread(target=stream.cancel)
    # The stream's job is queued behind `busy`; the cancel ends the wait.
    canceller.start()
    assert list(stream) == []
    canceller.join()
    assert stream.finish_reason == "cancelled" and isinstance(stream.err, Cancelled)
    release.set()
    blocker.join()
    assert counts["produced"] == 0  # the cancelled job never ran its producer


def test_stop_runs_the_exit_hook_on_the_engine_thread() -> None:
    seen: list[str] = []
    engine = EngineThread("hooked", on_exit=lambda: seen.append(threading.current_thread().name))
    engine.call(lambda: None)
    engine.stop()
    assert seen == ["hooked"]
