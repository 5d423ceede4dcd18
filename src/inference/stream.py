"""TokenStream: what ``generate`` and ``chat`` return, and how a call is stopped.

A stream wraps a *producer*: a generator function that takes a
:class:`StreamControl` and yields :class:`~inference.Token` objects, returning
its finish reason. The stream adds what every backend needs and no backend
should write twice: cancellation from any thread, deadlines, quiet endings
for cancellation, error wrapping, ``async for`` and ``text()``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import Any

from .errors import Cancelled, DeadlineExceeded, GenerationError
from .types import FinishReason, GenerateMetrics, Token, ToolCall

__all__ = ["ASYNC_AHEAD", "HELD", "Producer", "StreamControl", "StreamHolders", "TokenStream"]


class StreamControl:
    """The stop signals of one call, polled by the producer between tokens.

    ``stop_requested()`` is cheap enough to call for every token and from an
    engine's abort callback during a long prefill. ``check()`` raises the
    matching :class:`~inference.Cancelled` or
    :class:`~inference.DeadlineExceeded`.
    """

    __slots__ = (
        "_event",
        "_user",
        "accepted_tokens",
        "cache_tier",
        "cached_tokens",
        "deadline",
        "drafted_tokens",
        "guide",
        "metrics",
        "stop_sequence",
        "timeout",
        "tool_calls",
    )

    def __init__(
        self,
        *,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> None:
        self._event = threading.Event()
        self._user = cancel
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.metrics: GenerateMetrics | None = None
        #: The call's constraint state, for in-process engines (a
        #: :class:`inference.guidance.Guide`), or None.
        self.guide: Any = None
        #: The tool calls of the reply, set by the producer as it ends.
        self.tool_calls: tuple[ToolCall, ...] = ()
        #: The stop string that ended the reply, set by the producer.
        self.stop_sequence: str | None = None
        #: Prompt tokens an engine took from cached KV, and from where (see
        #: :class:`~inference.GenerateMetrics`), set as it admits the call.
        self.cached_tokens = 0
        self.cache_tier = ""
        #: Speculative decoding's guesses checked, and accepted, so far.
        self.drafted_tokens = 0
        self.accepted_tokens = 0

    def cancel(self) -> None:
        """Ask the producer to stop at its next check."""
        self._event.set()

    def stop_requested(self) -> bool:
        """True once cancelled, the user's event is set, or the deadline passed."""
        if self._event.is_set():
            return True
        if self._user is not None and self._user.is_set():
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise Cancelled or DeadlineExceeded if the call must stop."""
        if self._event.is_set() or (self._user is not None and self._user.is_set()):
            raise Cancelled("the call was cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"the call ran past its timeout of {self.timeout:g} s")


#: What a thread that holds an unfinished stream of a model is told when it
#: asks that model for another call (every backend says the same).
HELD = (
    "this thread already has a call running on this model (an unfinished "
    "stream?); finish or close it first"
)


class StreamHolders:
    """The threads that hold an unfinished stream of one model.

    A model whose calls run one at a time (on its lock, or on its engine
    thread) would make a thread that holds a stream and asks for another call
    wait for itself forever; such a thread gets GenerationError instead.
    """

    __slots__ = ("_held", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[int] = set()

    def refuse_if_held(self) -> None:
        """GenerationError if this thread holds an unfinished stream."""
        if threading.get_ident() in self._held:
            raise GenerationError(HELD)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Around a stream's producer, which runs in its reader's thread."""
        me = threading.get_ident()
        with self._lock:
            if me in self._held:
                raise GenerationError(HELD)
            self._held.add(me)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(me)


#: A generator function that streams tokens and returns the finish reason.
Producer = Callable[[StreamControl], Generator[Token, None, FinishReason]]

#: Called once when a stream ends: (error or None, metrics or None).
FinishHook = Callable[[BaseException | None, GenerateMetrics | None], None]

_END = object()

#: Tokens an ``async for`` reader may have waiting before the engine pauses.
ASYNC_AHEAD = 16


class TokenStream(Iterator[Token]):
    """An iterator of :class:`~inference.Token` with a way to stop it.

    Iterate it (``for tok in stream``) or ``async for`` it. ``cancel()`` may
    be called from any thread; breaking out of the loop and ``close()`` stop
    the engine too. A cancelled or timed-out stream ends quietly with
    ``finish_reason == "cancelled"`` and ``err`` holding the
    :class:`~inference.Cancelled`; any other failure raises
    :class:`~inference.GenerationError` from the iteration and is kept in
    ``err``.
    """

    __slots__ = (
        "__weakref__",
        "_control",
        "_done",
        "_err",
        "_finish_reason",
        "_gen",
        "_on_finish",
        "_reasoning",
    )

    def __init__(
        self,
        producer: Producer,
        *,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
        on_finish: FinishHook | None = None,
    ) -> None:
        self._control = StreamControl(cancel=cancel, timeout=timeout)
        self._gen = producer(self._control)
        self._done = False
        self._finish_reason: FinishReason | None = None
        self._err: BaseException | None = None
        self._on_finish = on_finish
        self._reasoning: list[str] = []

    # -- iteration ---------------------------------------------------------

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> Token:
        if self._done:
            raise StopIteration
        try:
            tok = next(self._gen)
            if tok.reasoning:
                self._reasoning.append(tok.text)
            return tok
        except StopIteration as stop:
            self._finish(stop.value or "stop", None)
            raise StopIteration from None
        except Cancelled as exc:
            self._finish("cancelled", exc)
            raise StopIteration from None
        except GenerationError as exc:
            self._finish("error", exc)
            raise
        except Exception as exc:
            wrapped = GenerationError(f"generation failed: {exc}")
            wrapped.__cause__ = exc
            self._finish("error", wrapped)
            raise wrapped from exc
        except BaseException as exc:  # KeyboardInterrupt...: the call is over, as cancelled
            self._finish("cancelled", Cancelled(f"interrupted by {type(exc).__name__}"))
            raise

    def _finish(self, reason: FinishReason, err: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._finish_reason = reason
        self._err = err
        if self._on_finish is not None:
            hook, self._on_finish = self._on_finish, None
            hook(err, self._control.metrics)

    # -- stopping ----------------------------------------------------------

    def cancel(self) -> None:
        """Stop the engine within one token. Safe from any thread."""
        self._control.cancel()

    def close(self) -> None:
        """Stop and release the engine now; the stream ends as cancelled."""
        self._control.cancel()
        if self._done:
            return
        try:
            self._gen.close()
        except ValueError:
            # Running in another thread: it sees the cancel at its next token.
            return
        self._finish("cancelled", Cancelled("the stream was closed"))

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.close()

    # -- results -----------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the stream has ended."""
        return self._done

    @property
    def finish_reason(self) -> FinishReason | None:
        """ "stop", "length", "cancelled" or "error"; None while running."""
        return self._finish_reason

    @property
    def err(self) -> BaseException | None:
        """Why the stream ended early, or None."""
        return self._err

    @property
    def metrics(self) -> GenerateMetrics | None:
        """Timings of this call, once it has ended."""
        return self._control.metrics if self._done else None

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The calls the model made (``chat`` with ``tools``), once the stream
        has ended: ``()`` before, and when it made none."""
        return self._control.tool_calls if self._done else ()

    @property
    def stop_sequence(self) -> str | None:
        """The stop string (of ``stop=``) that ended the stream, once it has
        ended with ``finish_reason == "stop"`` because of one; None when it
        ended otherwise (an end-of-generation token, a length, an error), or
        when a remote server did not say which."""
        return self._control.stop_sequence if self._done else None

    @property
    def reasoning(self) -> str:
        """The text of the model's reasoning that has streamed so far
        (tokens with ``reasoning=True``)."""
        return "".join(self._reasoning)

    def answer(self) -> Iterator[Token]:
        """The rest of the stream without its reasoning tokens."""
        return (tok for tok in self if not tok.reasoning)

    def text(self) -> str:
        """Consume the rest of the stream and return the text of its answer
        (its reasoning is in :attr:`reasoning`)."""
        return "".join(tok.text for tok in self if not tok.reasoning)

    # -- async -------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Token]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Token]:
        """Run the blocking engine in a worker thread; cancelling the task
        cancels the stream. At most :data:`ASYNC_AHEAD` tokens wait for the
        task, so a slow reader slows the engine instead of filling memory."""
        import asyncio  # imported here: it costs start-up time for sync users

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        room = threading.Semaphore(ASYNC_AHEAD)
        gone = threading.Event()  # the task stopped reading

        def hand(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for tok in self:
                    room.acquire()
                    if gone.is_set():
                        self.close()  # ends the call and frees the model here
                        return
                    hand(tok)
            except BaseException as exc:  # handed to the awaiting task
                if not gone.is_set():
                    hand(_Raise(exc))
            else:
                if not gone.is_set():
                    hand(_END)

        worker = threading.Thread(target=pump, name="inference-stream", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, _Raise):
                    raise item.exc
                room.release()
                yield item
        finally:
            gone.set()
            room.release()  # a worker waiting for room wakes, sees gone, stops
            if not self._done:
                self.cancel()
                await asyncio.shield(loop.run_in_executor(None, worker.join))


class _Raise:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
