"""When a failed request is tried again, and how long to wait first.

Only before a generation's first token: nothing is retried mid-stream.
Exponential backoff with jitter, honouring the server's ``Retry-After`` up to
a cap; the wait wakes for a cancel or a deadline.
"""

from __future__ import annotations

import random
import time

from ...stream import StreamControl

__all__ = [
    "BACKOFF",
    "BACKOFF_CAP",
    "RETRIABLE_STATUS",
    "RETRY_AFTER_CAP",
    "backoff",
    "pause",
    "retry_after",
]

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
