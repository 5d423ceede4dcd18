"""Continuous batching's plumbing: concurrent streams handed between their
readers and one engine loop.

An engine that decodes several streams in one step (``llama_cpp``'s
multi-sequence ``llama_decode``, MLX's ``BatchGenerator``) subclasses
:class:`Scheduler` and writes three things: how a waiting sequence is
admitted (:meth:`Scheduler._admit`), one step over the ready sequences
(:meth:`Scheduler._step`), and what is freed when a sequence goes
(:meth:`Scheduler._release`). The base supplies the rest:

- each stream's ``_generate_ids`` is :meth:`Scheduler.stream`, run in the
  stream's reader thread: it queues a :class:`Sequence`, then yields the
  token ids the loop samples for it, honouring cancel and deadline while it
  waits;
- the loop runs while there is work (on a thread of its own, or as a job on
  the model's engine thread) and lets callers in first come, first served;
  every verb that decodes (a stream, each prompt of ``batch_generate``)
  hands its sequences in from its callers' threads, so none is ever read on
  the engine thread (where it would wait for a loop queued behind itself:
  refused);
- a sequence whose reader has :data:`AHEAD` tokens unread may sit out steps
  (where the engine can pause one sequence) until the reader catches up;
- a cancelled sequence is dropped from the engine at the next step, before
  its reader comes back; a sequence whose reader leaves is let go within
  one step, and its reader waits for that, so nothing of it is left in the
  engine when the call returns;
- other engine work that must not wait for the running streams to end (an
  embedding batch, in a context of its own) runs between two steps
  (:meth:`Scheduler.between_steps`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from concurrent.futures import Future
from typing import Any, TypeVar

from .engine_thread import EngineThread, settle
from .errors import GenerationError
from .stream import StreamControl

__all__ = ["AHEAD", "STEP_FAILED", "Scheduler", "Sequence"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Tokens a sequence may decode ahead of its reader before it sits out steps.
AHEAD = 4
#: What a caller whose sequence was in a failed step is told (the engine's
#: own error, which may quote another caller's call, goes to the log).
STEP_FAILED = "the engine failed during a batched step; the call was ended"
#: Seconds between checks of a waiting reader's cancel, and of the running
#: sequences' cancels while the loop has nothing to step.
_POLL = 0.05

#: What a reader's queue carries: a token and its log-probabilities, the end
#: of the sequence (the engine's own limit: its context is full), or an error.
_Item = tuple[int, Any] | None | BaseException

#: Log-probabilities of one token: its own and the ``k`` most likely
#: ``(id, log-probability)`` at that step, most likely first.
Logprobs = tuple[float, list[tuple[int, float]]]


class Sequence:
    """One stream's sequence, from its submission until its reader leaves.

    ``state`` belongs to the engine (its sampler, its slot...).
    """

    __slots__ = (
        "control",
        "generated",
        "gone",
        "halted",
        "leaving",
        "limit",
        "logprobs",
        "out",
        "prompt",
        "running",
        "state",
        "stop_ids",
    )

    def __init__(
        self,
        prompt: Seq[int],
        control: StreamControl,
        *,
        limit: int,
        stop_ids: frozenset[int],
        logprobs: int | None,
        state: Any = None,
    ) -> None:
        self.prompt = list(prompt)
        self.control = control
        self.limit = limit
        self.stop_ids = stop_ids
        self.logprobs = logprobs
        self.state = state
        self.out: queue.Queue[_Item] = queue.Queue()
        self.generated = 0
        self.running = False  # admitted into the engine
        self.halted = False  # no more steps: finished, cancelled or failed
        self.leaving = False  # its reader has stopped
        self.gone = False  # let go: nothing of it is in the engine

    def give(self, token: int, logprobs: Logprobs | None = None) -> bool:
        """Hand ``token`` to the reader; True (and the sequence ends) if it
        was the last: a stop token, or its ``limit`` reached."""
        self.generated += 1
        self.out.put((token, logprobs))
        if token in self.stop_ids or self.generated >= self.limit:
            self.end()
        return self.halted

    def end(self) -> None:
        """End the sequence here. A reader that has not stopped by itself
        (at a stop token, ``max_tokens``, the end of a constraint) ends it as
        "length": the engine's own limit, its context is full."""
        if not self.halted:
            self.halted = True
            self.out.put(None)

    def fail(self, err: BaseException) -> None:
        self.halted = True
        self.out.put(err)

    @property
    def unread(self) -> int:
        return self.out.qsize()


class Scheduler:
    """The step loop of one model's engine, shared by its streams."""

    def __init__(self, *, name: str, engine: EngineThread | None = None) -> None:
        self._name = name
        self._engine = engine
        self._cond = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._between: deque[Callable[[], None]] = deque()
        self._looping = False
        self._stopping = False
        self._tls = threading.local()
        #: Steps run since the model was loaded, and the most sequences one ran.
        self.steps = 0
        self.widest = 0

    # -- the reader's side ------------------------------------------------------

    def generate(
        self,
        prompt: Seq[int],
        control: StreamControl,
        *,
        limit: int,
        stop_ids: frozenset[int],
        logprobs: int | None = None,
        state: Any = None,
    ) -> Iterator[int]:
        """The token ids of one stream's sequence (``state``: the engine's
        part of it, released with it), as the loop samples them."""
        engine = self._engine
        if engine is not None and engine.is_current():
            # Its reader would wait for a loop queued behind itself. No path
            # of the library reads a stream there: every verb that decodes
            # runs its sequences from callers' threads.
            raise GenerationError("a stream cannot be read on its model's engine thread")
        seq = Sequence(
            prompt, control, limit=limit, stop_ids=stop_ids, logprobs=logprobs, state=state
        )
        return self.stream(seq)

    def stream(self, seq: Sequence) -> Iterator[int]:
        """The token ids of ``seq``, as the loop samples them."""
        control = seq.control
        with self._cond:
            if self._stopping:
                self._release(seq)
                raise GenerationError("the model is closed")
            self._inbox.append(seq)
            self._start_loop()
            self._cond.notify_all()
        try:
            get = seq.out.get
            while True:
                try:
                    item = get(timeout=_POLL)
                except queue.Empty:
                    control.check()
                    continue
                if seq.unread == AHEAD - 1:
                    with self._cond:  # it may have sat out a step: wake the loop
                        self._cond.notify_all()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                tok, self._tls.logprobs = item
                yield tok
        finally:
            self._leave(seq)

    def between_steps(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` on the loop, between two steps, and return its result
        (its exception raised here): engine work that must not wait for the
        running streams to end, nor run beside a step."""
        engine = self._engine
        if engine is not None and engine.is_current():
            return work()
        done: Future[_T] = Future()

        def job() -> None:
            settle(done, work)

        with self._cond:
            if self._stopping:
                raise GenerationError("the model is closed")
            self._between.append(job)
            self._start_loop()
            self._cond.notify_all()
        return done.result()

    def _start_loop(self) -> None:
        """Start the loop unless it runs (with the condition held)."""
        if not self._looping:
            self._looping = True
            if self._engine is not None:
                self._engine.submit(self._loop)
            else:
                threading.Thread(target=self._loop, name=self._name, daemon=True).start()

    def last_logprobs(self) -> Logprobs:
        """The log-probabilities of the token this thread's stream has just
        yielded (asked for with ``logprobs``)."""
        value: Logprobs = self._tls.logprobs
        return value

    def _leave(self, seq: Sequence) -> None:
        with self._cond:
            seq.leaving = True
            self._cond.notify_all()
            while not seq.gone:
                if not self._looping:
                    self._drop(seq)  # no loop runs, so it is not in the engine
                    break
                self._cond.wait(_POLL)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._inbox or self._running)

    def close(self) -> None:
        """Stop the loop (no stream may be running) and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            while self._looping:
                self._cond.wait(_POLL)

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    ready = self._next_step()
                    while ready is None and not self._between:
                        if self._stopping or not (self._inbox or self._running):
                            # Decided under the lock a newcomer takes to see
                            # whether a loop runs: none is stranded.
                            self._looping = False
                            self._cond.notify_all()
                            return
                        self._cond.wait(_POLL)
                        ready = self._next_step()
                    between = list(self._between)
                    self._between.clear()
                for job in between:  # each reports to its own caller
                    job()
                if ready is not None:
                    self._run_step(ready)
        except BaseException:
            # The loop itself failed (admitting a sequence, say): every
            # sequence it holds ends with an error, none waits for a step
            # that will never come; the next call starts a new loop.
            # Not raised again: it would end the engine thread too.
            _log.warning("the step loop failed", exc_info=True)
            with self._cond:
                for seq in [*self._inbox, *self._running]:
                    if not seq.halted:
                        seq.fail(GenerationError(STEP_FAILED))
                    try:
                        self._drop(seq)
                    except Exception:
                        _log.debug("freeing a sequence after the loop failed", exc_info=True)
                self._looping = False
                self._cond.notify_all()

    def _run_step(self, ready: list[Sequence]) -> None:
        try:
            self._step(ready)
        except Exception:  # one step's fault must not end the others' loop
            # Engines fail a sequence at fault alone (its constraint, say); a
            # fault of the whole step ends every sequence in it, and their
            # callers learn nothing of each other's calls: the log has it.
            _log.warning("a batched step of %d sequences failed", len(ready), exc_info=True)
            with self._cond:
                for seq in ready:
                    if not seq.halted:
                        self._halt(seq)
                        seq.fail(GenerationError(STEP_FAILED))
        self.steps += 1
        self.widest = max(self.widest, len(ready))

    # -- with the condition held, on the loop -------------------------------------

    def _next_step(self) -> list[Sequence] | None:
        """Let leavers go, halt the cancelled, admit newcomers, and choose
        who steps now (None: nobody)."""
        for seq in [s for s in self._running if s.leaving]:
            self._drop(seq)
        for seq in [s for s in self._inbox if s.leaving]:
            self._drop(seq)
        for seq in self._running:
            if not seq.halted and seq.control.stop_requested():
                self._halt(seq)  # its reader sees the cancel itself
        while self._inbox and not self._inbox[0].control.stop_requested():
            seq = self._inbox[0]
            if not self._admit(seq):
                break  # it waits, and those behind it with it
            self._inbox.popleft()
            seq.running = True
            self._running.append(seq)
        ready = [s for s in self._running if not s.halted and self._ready(s)]
        return ready or None

    def _drop(self, seq: Sequence) -> None:
        if seq in self._inbox:
            self._inbox.remove(seq)
        if seq in self._running:
            self._running.remove(seq)
        if not seq.gone:
            self._release(seq)
            seq.gone = True
        self._cond.notify_all()

    def _halt(self, seq: Sequence) -> None:
        """Stop stepping a cancelled ``seq`` and free what it holds now."""
        seq.halted = True
        self._cancelled(seq)

    # -- the engine's part (override) -----------------------------------------------

    def _admit(self, seq: Sequence) -> bool:
        """Place ``seq`` in the engine, or return False to keep it waiting."""
        raise NotImplementedError

    def _ready(self, seq: Sequence) -> bool:
        """Whether a running, unhalted ``seq`` steps now (default: unless its
        reader has :data:`AHEAD` tokens unread)."""
        return seq.unread < AHEAD

    def _step(self, ready: list[Sequence]) -> None:
        """One engine step for ``ready``: sample and :meth:`Sequence.give`
        each its next token (sequences still prefilling may give none)."""
        raise NotImplementedError

    def _cancelled(self, seq: Sequence) -> None:
        """``seq`` was cancelled while running: free its engine state now."""

    def _release(self, seq: Sequence) -> None:
        """``seq`` is gone (admitted or not, ``seq.running`` says): free what
        remains of it."""
