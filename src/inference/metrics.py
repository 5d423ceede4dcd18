"""GenerateMetrics from timestamps and counts: one formula for a call, one for a batch.

Every backend reports its calls through these, so that "tokens per second"
means the same thing everywhere: decode speed counts the tokens after the
first (which the prefill produced) over the time after the first token.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import BatchResult, GenerateMetrics

__all__ = ["batch_metrics", "call_metrics"]


def call_metrics(
    prompt_tokens: int,
    generated: int,
    start: float,
    first: float,
    end: float,
    *,
    prefill_seconds: float | None = None,
    decode_seconds: float | None = None,
    prefill_rate: float | None = None,
    decode_rate: float | None = None,
    memory: tuple[int | None, int | None] = (None, None),
    cached_tokens: int = 0,
    cache_tier: str = "",
    drafted_tokens: int = 0,
    accepted_tokens: int = 0,
) -> GenerateMetrics:
    """Metrics of one call that began at ``start``, produced its first token
    at ``first`` and ended at ``end`` (``perf_counter`` seconds), with
    ``cached_tokens`` of its prompt taken from ``cache_tier``, and
    ``accepted_tokens`` of the ``drafted_tokens`` speculation guessed.

    An engine or server that measured its own prefill and decode times or
    rates passes them; they replace the ones derived from the timestamps.
    ``memory`` is (active, peak) bytes where the backend can tell.
    """
    ttft = max(first - start, 0.0) if generated else 0.0
    prefill = max(first - start, 0.0) if prefill_seconds is None else prefill_seconds
    if decode_seconds is None:
        decode_seconds = max(end - first, 0.0) if generated else 0.0
    if prefill_rate is None:
        prefill_rate = prompt_tokens / prefill if prefill > 0 else 0.0
    if decode_rate is None:
        decode_rate = (
            (generated - 1) / decode_seconds if generated > 1 and decode_seconds > 0 else 0.0
        )
    active, peak = memory
    return GenerateMetrics(
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
        prefill_seconds=prefill,
        decode_seconds=decode_seconds,
        total_seconds=max(end - start, 0.0),
        time_to_first_token=ttft,
        prefill_tokens_per_second=prefill_rate,
        decode_tokens_per_second=decode_rate,
        peak_memory_bytes=peak,
        active_memory_bytes=active,
        cached_tokens=cached_tokens,
        cache_tier=cache_tier,
        drafted_tokens=drafted_tokens,
        accepted_tokens=accepted_tokens,
    )


def batch_metrics(
    results: Sequence[BatchResult],
    start: float,
    end: float,
    *,
    memory: tuple[int | None, int | None] = (None, None),
) -> GenerateMetrics:
    """Metrics of a whole batch from its results' own: tokens summed, the
    first token the earliest of any sequence, and decode speed over the
    tokens after each sequence's first."""
    done = [r.metrics for r in results if r.metrics is not None]
    prompt = sum(m.prompt_tokens for m in done)
    generated = sum(m.generated_tokens for m in done)
    firsts = [m.time_to_first_token for m in done if m.generated_tokens]
    ttft = min(firsts, default=0.0)
    decode = max(end - start - ttft, 0.0) if generated else 0.0
    later = generated - len(firsts)
    return call_metrics(
        prompt,
        generated,
        start,
        start + ttft,
        end,
        decode_seconds=decode,
        decode_rate=later / decode if later > 0 and decode > 0 else 0.0,
        memory=memory,
        drafted_tokens=sum(m.drafted_tokens for m in done),
        accepted_tokens=sum(m.accepted_tokens for m in done),
    )
