"""EngineThread: one worker thread that runs every engine call of a model.

For engines whose state belongs to the thread that made it (MLX streams are
thread-local since mlx 0.31.2), and for llama.cpp, whose OpenMP team
belongs to the thread that calls it: calls run there in order, results and
exceptions come back in a :class:`concurrent.futures.Future`. Streams never
run there: their readers hand sequences to the engine's step loop
(:mod:`inference.batching`), which is a job on this thread; the model's gate
(taken in the caller's thread) keeps a thread that holds an unfinished
stream from waiting behind itself.

The worker is a daemon thread of our own, not a ``ThreadPoolExecutor``:
the executor joins its workers at interpreter exit, and a stream that its
reader abandoned without closing would then hang the exit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

__all__ = ["EngineThread", "settle"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


def settle(future: Future[_T], fn: Callable[[], _T]) -> None:
    """Run ``fn`` into ``future``: its result, or the exception it raised
    (nothing, if the future was cancelled first)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


class EngineThread:
    """One worker thread that runs every engine call of a model, in order."""

    def __init__(self, name: str, *, on_exit: Callable[[], None] | None = None) -> None:
        self._name = name
        self._on_exit = on_exit
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                job()
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception as exc:  # nothing the caller could do
                    _log.debug("engine thread exit hook failed: %s", exc)

    def is_current(self) -> bool:
        """Whether the calling thread is the engine thread."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the engine thread and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            return fn()
        self._ensure()
        future: Future[_T] = Future()

        def job() -> None:
            settle(future, fn)

        self._jobs.put(job)
        return future.result()

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` to run on the engine thread, without waiting for it."""
        self._ensure()
        self._jobs.put(fn)

    def stop(self, timeout: float | None = 60.0) -> None:
        """End the thread once its queued calls have run, and wait for it."""
        thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            if thread is not threading.current_thread():
                thread.join(timeout)
