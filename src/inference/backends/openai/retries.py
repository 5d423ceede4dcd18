"""When a failed request is tried again, and how long to wait first.

Only before a generation's first token: nothing is retried mid-stream.
Exponential backoff with jitter, honouring the server's ``Retry-After`` up to
a cap; the wait wakes for a cancel or a deadline.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from ...stream import StreamControl

if TYPE_CHECKING:
    from .transport import Failure

__all__ = [
    "BACKOFF",
    "BACKOFF_CAP",
    "RETRIABLE_STATUS",
    "RETRY_AFTER_CAP",
    "Retry",
    "backoff",
    "pause",
    "retry_after",
]

_log = logging.getLogger(__name__)

BACKOFF = 0.25  # first retry after about this many seconds, doubling
BACKOFF_CAP = 4.0
RETRY_AFTER_CAP = 10.0
#: HTTP statuses worth another try.
RETRIABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def backoff(attempt: int, retry_after: float | None) -> float:
    delay = min(BACKOFF * 2.0**attempt, BACKOFF_CAP) * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


def pause(seconds: float, control: StreamControl | None) -> None:
    """Sleep, but wake for a cancel or a deadline."""
    end = time.monotonic() + seconds
    while True:
        if control is not None and control.stop_requested():
            control.check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


class Retry:
    """The attempts of one request, up to ``limit`` retries: after each
    failure, :meth:`after` waits out the backoff, or raises the failure
    (saying how many attempts it took) when it is final."""

    def __init__(self, limit: int, control: StreamControl | None, what: str) -> None:
        self.limit = limit
        self.control = control
        self.what = what
        self.attempt = 0

    def after(self, failure: Failure) -> None:
        if not failure.retriable or self.attempt >= self.limit:
            if self.attempt:
                failure.message += f" (gave up after {self.attempt + 1} attempts)"
            raise failure
        delay = backoff(self.attempt, failure.retry_after)
        _log.info("%s failed (%s); trying again in %.2f s", self.what, failure.message, delay)
        self.attempt += 1
        pause(delay, self.control)
