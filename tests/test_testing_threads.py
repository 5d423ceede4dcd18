"""inference.testing's thread helpers: together and wait_for."""

from __future__ import annotations

import functools
import threading

import pytest

from inference.testing import together, wait_for


def test_together_runs_the_calls_at_once_and_keeps_their_order() -> None:
    barrier = threading.Barrier(3, timeout=10)  # breaks unless all three run at once

    def call(i: int) -> int:
        barrier.wait()
        return i * 10

    assert together([functools.partial(call, i) for i in range(3)]) == [0, 10, 20]


def test_together_returns_a_calls_error_in_its_place() -> None:
    def boom() -> int:
        raise ValueError("boom")

    got = together([lambda: 1, boom])
    assert got[0] == 1
    assert isinstance(got[1], ValueError) and str(got[1]) == "boom"


def test_together_fails_on_a_call_that_hangs() -> None:
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match="1 of 2 concurrent calls still ran"):
            together([lambda: 1, lambda: release.wait(30)], timeout=0.2)
    finally:
        release.set()


def test_wait_for_returns_once_the_event_comes_and_fails_if_it_never_does() -> None:
    flag = threading.Event()
    threading.Timer(0.05, flag.set).start()
    wait_for(flag.is_set, "the flag", limit=10)
    assert flag.is_set()
    with pytest.raises(AssertionError, match=r"never did not happen within 0\.1 s"):
        wait_for(lambda: False, "never", limit=0.1)
