"""EngineThread: one worker thread that runs every engine call of a model.

For engines whose state belongs to the thread that made it (MLX streams are
thread-local since mlx 0.31.2): calls run there in order, results and
exceptions come back in a :class:`concurrent.futures.Future`, and a stream's
tokens are pumped through a bounded queue, so that the consumer's thread
never touches the engine and the engine runs at most a few tokens ahead.

The calls are serialised on one thread, so a consumer thread that still
holds an unfinished stream of this model and asks for another call would
wait forever behind itself. It gets a :class:`~inference.GenerationError`
instead, as it does without an engine thread.

The worker is a daemon thread of our own, not a ``ThreadPoolExecutor``:
the executor joins its workers at interpreter exit, and a stream that its
reader abandoned without closing would then hang the exit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any, TypeVar

from .stream import Producer, StreamControl, StreamHolders
from .types import FinishReason, Token

__all__ = ["PUMP_AHEAD", "EngineThread"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)

#: Tokens an engine thread may generate ahead of the stream's reader.
PUMP_AHEAD = 8
#: Seconds between checks of a stream's cancel while it waits.
_POLL = 0.05


class EngineThread:
    """One worker thread that runs every engine call of a model, in order."""

    def __init__(self, name: str, *, on_exit: Callable[[], None] | None = None) -> None:
        self._name = name
        self._on_exit = on_exit
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Reader threads that hold an unfinished stream of this engine.
        self._readers = StreamHolders()

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

    def call(self, fn: Callable[[], _T], *, held_ok: bool = False) -> _T:
        """Run ``fn`` on the engine thread and return its result (or raise its error).

        ``held_ok`` lets a thread that holds an unfinished stream wait anyway:
        only for a caller that has cancelled that stream first (``close()``).
        """
        if threading.current_thread() is self._thread:
            return fn()
        if not held_ok:
            self._readers.refuse_if_held()
        self._ensure()
        future: Future[_T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._jobs.put(job)
        return future.result()

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` to run on the engine thread, without waiting for it."""
        self._ensure()
        self._jobs.put(fn)

    def pump(self, producer: Producer) -> Producer:
        """Wrap a producer so that it runs on the engine thread, its tokens
        handed to the stream's reader through a queue of :data:`PUMP_AHEAD`."""

        def pumped(control: StreamControl) -> Generator[Token, None, FinishReason]:
            with self._readers.holding():
                return (yield from self._pumped(producer, control))

        return pumped

    def _pumped(
        self, producer: Producer, control: StreamControl
    ) -> Generator[Token, None, FinishReason]:
        self._ensure()
        out: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=PUMP_AHEAD)
        reader_gone = threading.Event()

        def put(item: tuple[int, Any]) -> bool:
            while not reader_gone.is_set():
                try:
                    out.put(item, timeout=_POLL)
                    return True
                except queue.Full:
                    # Nobody reads and the call is cancelled: end it here.
                    # The queue is full, so a returning reader meets a
                    # token first, sees the cancel and stops there.
                    if control.stop_requested():
                        return False
            return False

        def job() -> None:
            if reader_gone.is_set():
                return  # cancelled while it waited for the thread
            gen = producer(control)
            try:
                while put((0, next(gen))):
                    pass
            except StopIteration as stop:
                put((1, stop.value))
            except BaseException as exc:
                put((2, exc))
            finally:
                gen.close()

        self._jobs.put(job)
        try:
            while True:
                try:
                    kind, value = out.get(timeout=_POLL)
                except queue.Empty:
                    # Waiting for the engine (a prefill, or calls queued
                    # ahead of this one): a cancel or a deadline still counts.
                    control.check()
                    continue
                if kind == 0:
                    if control.stop_requested():
                        control.check()
                    yield value
                elif kind == 1:
                    return value  # type: ignore[no-any-return]
                else:
                    raise value
        finally:
            reader_gone.set()
            control.cancel()

    def stop(self, timeout: float | None = 60.0) -> None:
        """End the thread once its queued calls have run, and wait for it."""
        thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            if thread is not threading.current_thread():
                thread.join(timeout)
