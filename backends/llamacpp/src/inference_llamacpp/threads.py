"""How many CPU threads llama.cpp decodes with, chosen as the machine's load changes.

llama.cpp's threads meet at a barrier after every operation of the graph, so
each step goes at the pace of its slowest thread: with a thread on every
core and a second process decoding on the same cores, a descheduled thread
holds the others at the barrier and both processes collapse (on this
project's 2-core machine: 133 tokens/s alone, 21 each as two processes,
against 91 each with one thread apiece). No fixed count is right for both:
one thread apiece keeps two processes fair but loses a third alone.

So :class:`ThreadTuner` keeps the count that is fastest now. Every 2 to 8
seconds of decoding (the wait doubles while the other count loses; at once
when three steps in a row take twice their recent median) it tries the
neighbouring count (half, or double up to the cores this process may use)
for a few decode steps, compares their times with the current count's on
steps of the same width, and keeps the faster. Alone, that costs under one
percent (a few slower steps every few seconds); beside another process, it
finds one thread apiece within a second or two, and goes back within 8 s
of the other process ending. ``threads=N`` at load fixes the count and
turns this off.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

import llama_cpp as lc

__all__ = ["ThreadTuner"]

#: Seconds of decoding between two probes; doubled after each probe that
#: loses, up to PROBE_AT_MOST_EVERY.
PROBE_EVERY = 2.0
PROBE_AT_MOST_EVERY = 8.0
#: Decode steps a probe runs at the other count.
PROBE_STEPS = 4
#: Recent steps kept per (width, threads), to compare a probe with.
KEEP = 16
#: How much faster the other count must be to be kept.
MARGIN = 0.9
#: SLOW_STEPS steps in a row this many times their recent median bring the
#: next probe forward.
SLOWER = 2.0
SLOW_STEPS = 3


class ThreadTuner:
    """Times llama.cpp's decode-only steps and sets its thread count to the
    fastest of the current one and its neighbours (see the module docstring)."""

    def __init__(self, ctx: Any, cores: int) -> None:
        self._ctx = ctx
        self._cores = max(1, cores)
        self.threads = self._cores
        #: Recent step times at the current count, by width.
        self._times: dict[int, deque[float]] = {}
        #: The running probe's step times, by width.
        self._tried: dict[int, list[float]] = {}
        self._wait = PROBE_EVERY  # until the next probe, doubled while probes lose
        self._next_probe = time.monotonic() + self._wait
        self._probe: int | None = None  # the count being tried
        self._probe_left = 0
        self._down = True  # which neighbour the next probe tries
        self._applied = self.threads  # what llama.cpp has now
        self._slow: list[float] = []  # the steps in a row past SLOWER times the median
        self.probing = False  # see before()

    def before(self, *, timed: bool) -> None:
        """Set llama.cpp's thread count for the next ``llama_decode``: a
        ``timed`` one (decode-only, reported to :meth:`after`) may be a
        probe's; any other (a prefill, scoring) runs at the current count."""
        if timed and self._probe is None and time.monotonic() >= self._next_probe:
            other = self._neighbour()
            if other != self.threads:
                self._probe, self._probe_left, self._tried = other, PROBE_STEPS, {}
        probe = self._probe if timed else None
        #: Whether the decode set up runs at a probe's count (its time says
        #: little of the current count's).
        self.probing = probe is not None
        self._set(self.threads if probe is None else probe)

    def after(self, width: int, seconds: float) -> None:
        """Record a decode-only step of ``width`` sequences that took ``seconds``."""
        if self._probe is None:
            recent = self._times.setdefault(width, deque(maxlen=KEEP))
            slow = len(recent) == KEEP and seconds > SLOWER * statistics.median(recent)
            self._slow = [*self._slow, seconds] if slow else []
            recent.append(seconds)
            if len(self._slow) == SLOW_STEPS:
                # The machine changed (another process started): compare the
                # other count with these steps, now.
                self._times[width] = deque(self._slow, maxlen=KEEP)
                self._slow, self._next_probe, self._wait = [], 0.0, PROBE_EVERY
            return
        self._tried.setdefault(width, []).append(seconds)
        self._probe_left -= 1
        if self._probe_left > 0:
            return
        tried, self._probe = self._probe, None
        if self._faster():
            self.threads = tried
            self._times = {w: deque(t, maxlen=KEEP) for w, t in self._tried.items()}
            self._wait = PROBE_EVERY
        else:  # each probe that loses waits twice as long for the next
            self._wait = min(2 * self._wait, PROBE_AT_MOST_EVERY)
        self._next_probe = time.monotonic() + self._wait

    def _faster(self) -> bool:
        """Whether the probe beat the current count on every width both ran."""
        wins = [
            statistics.median(times) < MARGIN * statistics.median(self._times[width])
            for width, times in self._tried.items()
            if self._times.get(width)
        ]
        return bool(wins) and all(wins)

    def _neighbour(self) -> int:
        self._down = not self._down
        if self._down or self.threads == self._cores:
            return max(1, self.threads // 2)
        return min(self._cores, self.threads * 2)

    def _set(self, n: int) -> None:
        if n != self._applied:
            lc.llama_set_n_threads(self._ctx, n, n)
            self._applied = n
