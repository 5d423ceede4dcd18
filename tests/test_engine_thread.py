"""EngineThread: every engine call of a model on one thread, in order."""

from __future__ import annotations

import threading
from collections.abc import Generator

import pytest

from inference.engine_thread import EngineThread


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


def test_calls_from_many_threads_run_one_at_a_time_in_order(engine: EngineThread) -> None:
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def job() -> int:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        with lock:
            running["now"] -= 1
        return threading.get_ident()

    idents: list[int] = []
    threads = [threading.Thread(target=lambda: idents.append(engine.call(job))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(idents) == 8 and len(set(idents)) == 1
    assert running["most"] == 1


def test_a_call_made_on_the_engine_thread_runs_at_once(engine: EngineThread) -> None:
    # A job that asks for another job would wait behind itself: it runs inline.
    assert engine.call(lambda: engine.call(lambda: 5) + 1) == 6


def test_stop_runs_the_exit_hook_on_the_engine_thread() -> None:
    seen: list[str] = []
    engine = EngineThread("hooked", on_exit=lambda: seen.append(threading.current_thread().name))
    engine.call(lambda: None)
    engine.stop()
    assert seen == ["hooked"]


def test_settle_puts_a_result_or_an_error_into_a_future_unless_cancelled() -> None:
    from concurrent.futures import Future

    from inference.engine_thread import settle

    ok: Future[int] = Future()
    settle(ok, lambda: 7)
    assert ok.result() == 7
    bad: Future[int] = Future()
    settle(bad, lambda: 1 // 0)
    assert isinstance(bad.exception(), ZeroDivisionError)
    ran: list[int] = []
    gone: Future[int] = Future()
    gone.cancel()
    settle(gone, lambda: ran.append(1) or 1)
    assert ran == [] and gone.cancelled()
