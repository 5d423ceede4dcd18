"""The one formula for a call's metrics, and the one for a batch's."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from inference.base import drain
from inference.errors import Cancelled
from inference.metrics import batch_metrics, call_metrics
from inference.stream import StreamControl
from inference.types import BatchResult, FinishReason, Token


def test_call_metrics_from_timestamps() -> None:
    m = call_metrics(100, 11, start=10.0, first=10.5, end=12.5, memory=(5, 9))
    assert (m.prompt_tokens, m.generated_tokens) == (100, 11)
    assert m.prefill_seconds == pytest.approx(0.5) and m.time_to_first_token == pytest.approx(0.5)
    assert m.decode_seconds == pytest.approx(2.0) and m.total_seconds == pytest.approx(2.5)
    assert m.prefill_tokens_per_second == pytest.approx(200.0)
    # The first token came from the prefill: ten more over two seconds.
    assert m.decode_tokens_per_second == pytest.approx(5.0)
    assert (m.active_memory_bytes, m.peak_memory_bytes) == (5, 9)


def test_call_metrics_take_an_engines_own_figures() -> None:
    m = call_metrics(
        10, 3, 0.0, 1.0, 2.0, prefill_seconds=0.25, decode_seconds=0.5, decode_rate=42.0
    )
    assert m.prefill_seconds == 0.25 and m.decode_seconds == 0.5
    assert m.prefill_tokens_per_second == pytest.approx(40.0)
    assert m.decode_tokens_per_second == 42.0
    assert m.time_to_first_token == pytest.approx(1.0)


def test_call_metrics_with_nothing_generated() -> None:
    m = call_metrics(7, 0, 1.0, 1.0, 1.5)
    assert m.time_to_first_token == 0.0 and m.decode_seconds == 0.0
    assert m.decode_tokens_per_second == 0.0


def test_batch_metrics_sum_tokens_and_count_each_first_token_once() -> None:
    one = call_metrics(10, 5, 0.0, 0.5, 2.0)
    two = call_metrics(20, 3, 0.0, 0.25, 1.0)
    empty = BatchResult(finish_reason="error")
    m = batch_metrics([BatchResult(metrics=one), BatchResult(metrics=two), empty], 0.0, 2.25)
    assert (m.prompt_tokens, m.generated_tokens) == (30, 8)
    assert m.time_to_first_token == pytest.approx(0.25)
    assert m.decode_seconds == pytest.approx(2.0)
    assert m.decode_tokens_per_second == pytest.approx((8 - 2) / 2.0)
    assert m.prefill_tokens_per_second == pytest.approx(30 / 0.25)


def _producer(n: int, *, fail: BaseException | None = None) -> Generator[Token, None, FinishReason]:
    for i in range(n):
        yield Token(i, str(i))
    if fail is not None:
        raise fail
    return "length"


def test_drain_keeps_tokens_reason_error_and_metrics() -> None:
    control = StreamControl()
    control.metrics = call_metrics(1, 3, 0.0, 0.1, 0.2)
    ok = drain(_producer(3), control)
    assert (ok.text, ok.finish_reason, ok.err) == ("012", "length", None)
    assert ok.metrics is control.metrics
    cancelled = drain(_producer(1, fail=Cancelled("stop")), StreamControl())
    assert cancelled.finish_reason == "cancelled" and isinstance(cancelled.err, Cancelled)
    assert cancelled.text == "0"
    broken = drain(_producer(0, fail=KeyError("x")), StreamControl())
    assert broken.finish_reason == "error" and type(broken.err).__name__ == "GenerationError"
    assert isinstance(broken.err.__cause__, KeyError)
