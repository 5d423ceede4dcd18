"""Gate: who runs on one model now, admitted first come, first served.

A call holds the gate while it runs. A *shared* hold is a stream that the
engine decodes in one batch with others (continuous batching): up to
``width`` of them run at once. An *exclusive* hold (a stream on an engine
that cannot batch, ``classify``, ``batch_generate``, scoring, freeing the
model) runs alone. Callers wait in one FIFO queue, so a stream cannot
overtake an exclusive call that came first, nor the other way round; a
waiting caller honours its cancel and deadline.

A thread that already holds the gate (an unfinished stream of this model)
and asks again is refused with :data:`~inference.stream.HELD` rather than
waiting for itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from .errors import GenerationError
from .stream import HELD, StreamControl

__all__ = ["Gate"]

#: Seconds between checks of a waiting caller's cancel and deadline.
_POLL = 0.05


class _Ticket:
    __slots__ = ("shared",)

    def __init__(self, shared: bool) -> None:
        self.shared = shared


class Gate:
    """Up to ``width`` shared holders or one exclusive holder, in arrival order."""

    def __init__(self, width: int = 1, *, on_empty: Callable[[], None] | None = None) -> None:
        self.width = max(1, width)
        self._on_empty = on_empty
        self._cond = threading.Condition()
        self._queue: deque[_Ticket] = deque()
        self._holders: dict[object, tuple[int, StreamControl]] = {}
        self._exclusive = False

    @property
    def waiting(self) -> int:
        """Callers queued for the gate now."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Callers holding the gate now."""
        return len(self._holders)

    def held_here(self) -> bool:
        """Whether the calling thread holds the gate."""
        me = threading.get_ident()
        with self._cond:
            return any(thread == me for thread, _ in self._holders.values())

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for nobody to hold the gate."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._holders:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, _POLL))
            return True

    def if_idle(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` now if nobody holds the gate (with nobody let in
        meanwhile); otherwise ``on_empty`` does the work when the last
        holder leaves."""
        with self._cond:
            if not self._holders:
                fn()

    def controls(self) -> list[StreamControl]:
        """The stop signals of the calls holding the gate."""
        with self._cond:
            return [control for _, control in self._holders.values()]

    def _may_enter(self, ticket: _Ticket) -> bool:
        if self._queue[0] is not ticket or self._exclusive:
            return False
        return len(self._holders) < self.width if ticket.shared else not self._holders

    @contextlib.contextmanager
    def hold(self, control: StreamControl, *, shared: bool) -> Iterator[None]:
        """Wait for a turn (raising ``Cancelled`` or ``DeadlineExceeded`` if
        the call stops first), run the body, then let the next caller in."""
        ticket = _Ticket(shared)
        me = threading.get_ident()
        with self._cond:
            if any(thread == me for thread, _ in self._holders.values()):
                raise GenerationError(HELD)
            self._queue.append(ticket)
            try:
                while not self._may_enter(ticket):
                    if control.stop_requested():
                        control.check()
                    wait = _POLL
                    if control.deadline is not None:
                        wait = max(0.0, min(wait, control.deadline - time.monotonic()))
                    self._cond.wait(wait)
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._holders[ticket] = (me, control)
            self._exclusive = not shared
            self._cond.notify_all()  # the next in line may fit beside this one
        try:
            yield
        finally:
            with self._cond:
                del self._holders[ticket]
                self._exclusive = False
                if not self._holders and self._on_empty is not None:
                    self._on_empty()
                self._cond.notify_all()
