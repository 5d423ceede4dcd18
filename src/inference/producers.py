"""Running producers to their end: one (:func:`drain`) or several at once
(:func:`drain_many`, the one decode path of ``batch_generate``), each kept
as a :class:`~inference.types.BatchResult`."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

from .errors import Cancelled, GenerationError, InferenceError
from .options import GenerateConfig
from .stream import Producer, StreamControl
from .types import BatchResult, FinishReason, Token

__all__ = ["drain", "drain_many", "map_concurrently"]

_T = TypeVar("_T")
_A = TypeVar("_A")


def drain(gen: Generator[Token, None, FinishReason], control: StreamControl) -> BatchResult:
    """Run a producer to its end and keep what it gave as a :class:`BatchResult`:
    its tokens, its finish reason, its error (a ``Cancelled`` as "cancelled",
    any other as "error") and the metrics it left in ``control``."""
    tokens: list[Token] = []
    err: BaseException | None = None
    try:
        while True:
            tokens.append(next(gen))
    except StopIteration as stop:
        reason: FinishReason = stop.value or "stop"
    except Cancelled as exc:
        reason, err = "cancelled", exc
    except Exception as exc:
        reason, err = "error", _as_generation_error(exc)
    finally:
        gen.close()
    return BatchResult(
        tokens=tuple(tokens),
        text="".join(t.text for t in tokens),
        finish_reason=reason,
        err=err,
        metrics=control.metrics,
    )


def drain_many(
    producers: Sequence[Producer], cfg: GenerateConfig, *, width: int
) -> list[BatchResult]:
    """Run each producer to its end, up to ``width`` at once (each in a
    worker thread, as a stream's reader would run it), and keep each as a
    :class:`BatchResult`, in order. They share ``cfg``'s cancel and one
    deadline; a prompt not yet started when the batch is cancelled or out of
    time ends "cancelled", and an interrupted caller stops them all."""
    controls = [StreamControl(cancel=cfg.cancel, timeout=cfg.timeout) for _ in producers]
    for control in controls[1:]:
        control.deadline = controls[0].deadline

    def stop_all() -> None:
        for control in controls:
            control.cancel()

    def one(i: int) -> BatchResult:
        return drain(producers[i](controls[i]), controls[i])

    return map_concurrently(one, list(range(len(producers))), width, on_abort=stop_all)


def map_concurrently(
    fn: Callable[[_A], _T],
    items: Sequence[_A],
    width: int,
    *,
    on_abort: Callable[[], None] | None = None,
) -> list[_T]:
    """``[fn(item) for item in items]``, up to ``width`` at once in worker
    threads; ``on_abort`` runs if the caller is interrupted while it waits."""
    width = min(width, len(items))
    if width <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="inference-worker")
    try:
        return list(pool.map(fn, items))
    except BaseException:
        if on_abort is not None:
            on_abort()
        raise
    finally:
        pool.shutdown(wait=True)


def _as_generation_error(exc: BaseException) -> BaseException:
    if isinstance(exc, InferenceError):
        return exc
    wrapped = GenerationError(str(exc) or type(exc).__name__)
    wrapped.__cause__ = exc
    return wrapped
