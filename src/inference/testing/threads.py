"""Thread helpers for concurrency tests: run calls at once, wait for an
event, cancel a stream from another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["cancel_after", "together", "wait_for"]


def together(calls: Sequence[Callable[[], Any]], *, timeout: float = 300.0) -> list[Any]:
    """Run ``calls`` at once, each in its own thread; their results in order
    (an exception a call raised stands in for its result). A call still
    running after ``timeout`` seconds fails the caller: a hang is a fault."""
    out: list[Any] = [None] * len(calls)

    def work(i: int) -> None:
        try:
            out[i] = calls[i]()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    hung = sum(t.is_alive() for t in threads)
    if hung:
        raise AssertionError(f"{hung} of {len(calls)} concurrent calls still ran after {timeout} s")
    return out


def wait_for(cond: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Wait until ``cond()`` holds (an event that must come, not a timing);
    fail with ``what`` did not happen after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit} s")
        time.sleep(0.005)


def cancel_after(stream: Any, n: int) -> list[Any]:
    """Read ``stream`` (a :class:`~inference.TokenStream`), cancelling it from
    another thread once ``n`` tokens have come (the cancel has landed before
    the next token is read); every token read."""
    got: list[Any] = []
    tokens: Iterable[Any] = stream
    for tok in tokens:
        got.append(tok)
        if len(got) == n:
            canceller = threading.Thread(target=stream.cancel)
            canceller.start()
            canceller.join()
    return got
