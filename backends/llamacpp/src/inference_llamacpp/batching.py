"""Continuous batching: the model's engine thread decodes every running
stream of a llama.cpp model in one ``llama_decode`` per step.

Each stream is a sequence of the context, in a *slot* (a ``seq_id`` with
its own KV cells: the context is made with one KV stream per sequence, each
as long as the model's context). A step puts the last sampled token of every
decoding sequence into one batch, adds a chunk of a prompt still being
prefilled (at most :data:`PREFILL_CHUNK` tokens while others decode, so
their inter-token latency stays bounded), decodes, and samples each
sequence from its own row of logits with its own sampler chain, constraint
and seed. A stream joins between steps, and leaves when its reader stops (a
stop token, ``max_tokens``, a stop string, cancel, deadline or error); its
sampler goes then, and a cancelled or failed sequence's KV cells go at once.

A finished sequence's cells stay in its slot as a cached prompt: the next
call whose prompt starts with them (the next turn of a chat, the same system
prompt) is given that slot and prefills only the rest.

Why a KV stream per slot rather than one unified cache shared by every
sequence: llama.cpp's attention sums over a sequence's cells in cell order,
and in a shared cache a sequence's later tokens can land in cells freed
below its earlier ones; the sums then round differently and greedy output
can differ from the same prompt run alone (measured on 2026-12-02, in two
runs: only 11 and 9 of 24 streams of 64 tokens equalled their runs alone,
``bench/bench_batching.py --unified``). In its own stream a
sequence's cells stay in position order, and each stream's greedy output is
exactly what it is alone.

The hand-over between the loop and the streams' readers (queues, cancel,
leaving) is :class:`inference.batching.Scheduler`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import llama_cpp as lc
import numpy as np

from inference import batching
from inference.engine_thread import EngineThread
from inference.errors import GenerationError

from .threads import ThreadTuner

__all__ = ["ABORTABLE_PREFILL", "PREFILL_CHUNK", "Batch", "Scheduler", "SeqState", "log_softmax"]

#: Prompt tokens prefilled per step while other sequences are decoding.
PREFILL_CHUNK = 64
#: A step that prefills at least this many tokens can be aborted part-way.
ABORTABLE_PREFILL = 64

_NO_ABORT = lc.ggml_abort_callback()  # a NULL callback


class Batch:
    """A reusable ``llama_batch`` of up to ``capacity`` tokens."""

    def __init__(self, capacity: int, n_seq_max: int) -> None:
        self.capacity = capacity
        self.raw = lc.llama_batch_init(capacity, 0, n_seq_max)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> None:
        b, i = self.raw, self.n
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1

    def free(self) -> None:
        lc.llama_batch_free(self.raw)


class _Slot:
    """One ``seq_id``: the tokens whose KV it holds, and who runs in it."""

    __slots__ = ("cells", "id", "owner", "tokens", "used")

    def __init__(self, seq_id: int) -> None:
        self.id = seq_id
        self.tokens: list[int] = []  # tokens[:cells] are in its KV cells
        self.cells = 0
        self.owner: batching.Sequence | None = None
        self.used = 0  # the step it last ran in: idle slots go oldest first


class SeqState:
    """A sequence's part of the engine: its sampler chain (owned: freed
    with the sequence) and its slot."""

    __slots__ = ("fed", "prompt_len", "sampler", "slot")

    def __init__(self, sampler: Any, prompt_len: int) -> None:
        self.sampler = sampler
        self.prompt_len = prompt_len
        self.slot: _Slot | None = None
        self.fed = 0  # tokens this step puts into the batch

    @property
    def unfed(self) -> int:
        """Prompt tokens not yet in its KV cells."""
        slot = self.slot
        return max(self.prompt_len - slot.cells, 0) if slot is not None else 0


def _state(seq: batching.Sequence) -> SeqState:
    state: SeqState = seq.state
    return state


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def log_softmax(logits: Any) -> Any:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _top_k(logprobs: Any, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely ``(id, log-probability)``, most likely first."""
    if k <= 0:
        return []
    ids = np.argpartition(-logprobs, k - 1)[:k]
    ids = ids[np.argsort(-logprobs[ids], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in ids]


class Scheduler(batching.Scheduler):
    """The decode loop of one llama.cpp context, run by ``start`` (a job on
    the model's engine thread)."""

    def __init__(
        self,
        ctx: Any,
        *,
        n_ctx: int,
        n_batch: int,
        n_seq: int,
        n_vocab: int,
        engine: EngineThread,
        tuner: ThreadTuner | None = None,
    ) -> None:
        super().__init__(name="inference-llama_cpp", engine=engine)
        self._ctx = ctx
        self._tuner = tuner
        self._mem = lc.llama_get_memory(ctx)
        self._n_ctx = n_ctx
        self._n_vocab = n_vocab
        self._batch = Batch(n_batch, n_seq)
        self._slots = [_Slot(i) for i in range(n_seq)]
        self._step_no = 0
        self._abort_for: list[batching.Sequence] = []
        self._abort_cb = lc.ggml_abort_callback(lambda _data: self._all_stopped())
        #: Since the model was loaded: prompt tokens prefilled, and the most
        #: prompt tokens one step prefilled beside a decoding sequence.
        self.prefilled = 0
        self.widest_prefill_beside_decode = 0

    def forget(self) -> None:
        """Forget every cached prompt: the caller has cleared the KV cache
        (only while no stream runs)."""
        with self._cond:
            for slot in self._slots:
                slot.tokens, slot.cells = [], 0

    def close(self) -> None:
        super().close()
        self._batch.free()

    # -- the engine's part -------------------------------------------------------------

    def _admit(self, seq: batching.Sequence) -> bool:
        """The idle slot whose cached cells share the longest prefix with
        the prompt, else an empty one, else the one idle longest."""
        free = sorted((s for s in self._slots if s.owner is None), key=lambda s: s.used)
        if not free:
            return False
        prompt = seq.prompt
        limit = len(prompt) - 1  # at least one prompt token is decoded
        target, shared = None, 0
        for slot in free:
            n = _common(slot.tokens, prompt, min(slot.cells, limit))
            if n > shared:
                target, shared = slot, n
        if target is None:  # the lowest empty slot (see _step), else the one idle longest
            empty = [s for s in free if not s.cells]
            target = min(empty, key=lambda s: s.id) if empty else free[0]
        if not shared or not lc.llama_memory_seq_rm(self._mem, target.id, shared, -1):
            self._free(target)
        else:
            target.cells = shared
        target.tokens = list(prompt)
        target.owner = seq
        target.used = self._step_no
        _state(seq).slot = target
        return True

    def _ready(self, seq: batching.Sequence) -> bool:
        return _state(seq).unfed > 0 or super()._ready(seq)

    def _cancelled(self, seq: batching.Sequence) -> None:
        slot = _state(seq).slot
        if slot is not None:
            self._free(slot)  # at once: its reader has not come back yet

    def _release(self, seq: batching.Sequence) -> None:
        state = _state(seq)
        slot = state.slot
        if slot is not None and slot.owner is seq:
            slot.owner = None
            if seq.control.stop_requested() or slot.cells < len(seq.prompt):
                self._free(slot)  # cancelled, failed, or its prefill unfinished
            else:
                del slot.tokens[slot.cells :]  # a cached prompt for the next call
        lc.llama_sampler_free(state.sampler)

    def _free(self, slot: _Slot) -> None:
        if slot.cells:
            lc.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
        slot.tokens, slot.cells = [], 0

    def _step(self, ready: list[batching.Sequence]) -> None:
        """Build the batch, decode, sample."""
        batch = self._batch
        # In slot order: with a KV stream per sequence, llama.cpp puts only
        # consecutive seq_ids into one micro-batch, so this keeps a step's
        # decoding sequences in one graph pass.
        ready = sorted(ready, key=lambda s: _state(s).slot.id)  # type: ignore[union-attr]
        decoding = [s for s in ready if not _state(s).unfed]
        batch.clear()
        to_sample: list[tuple[batching.Sequence, int]] = []
        for seq in decoding:
            state = _state(seq)
            slot = state.slot
            assert slot is not None
            batch.add(slot.tokens[slot.cells], slot.cells, slot.id, True)
            state.fed = 1
            to_sample.append((seq, batch.n - 1))
        budget = batch.capacity - batch.n
        if decoding:
            budget = min(budget, PREFILL_CHUNK)
        prefilled = 0
        for seq in ready:
            state = _state(seq)
            slot = state.slot
            if budget <= 0:
                break
            if slot is None or not state.unfed:
                continue
            last = len(seq.prompt) - 1
            n = min(budget, last + 1 - slot.cells)
            for p in range(slot.cells, slot.cells + n):
                batch.add(slot.tokens[p], p, slot.id, p == last)
            state.fed = n
            budget -= n
            prefilled += n
            if slot.cells + n > last:
                to_sample.append((seq, batch.n - 1))
        stepping = [s for s in ready if _state(s).fed]
        if not stepping:
            return
        try:
            self._decode(stepping, abortable=prefilled >= ABORTABLE_PREFILL, timed=not prefilled)
        finally:
            fed = [(s, _state(s).fed) for s in stepping]
            for s in stepping:
                _state(s).fed = 0
        self._step_no += 1
        self.prefilled += prefilled
        if decoding:
            self.widest_prefill_beside_decode = max(self.widest_prefill_beside_decode, prefilled)
        for seq, n in fed:
            slot = _state(seq).slot
            assert slot is not None
            slot.cells += n
            slot.used = self._step_no
        for seq, row in to_sample:
            if not seq.halted:
                try:
                    self._sample(seq, row)
                except GenerationError as exc:  # its constraint failed: it alone ends
                    with self._cond:
                        self._halt(seq)
                        seq.fail(exc)

    def _decode(self, stepping: list[batching.Sequence], *, abortable: bool, timed: bool) -> None:
        batch = self._batch
        batch.raw.n_tokens = batch.n
        if abortable:
            self._abort_for = stepping
            lc.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        tuner = self._tuner
        try:
            if tuner is not None:
                tuner.before(timed=timed)
            start = time.perf_counter()
            rc = lc.llama_decode(self._ctx, batch.raw)
            if tuner is not None and timed and rc == 0:
                tuner.after(batch.n, time.perf_counter() - start)
        finally:
            if abortable:
                lc.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
                self._abort_for = []
        if rc == 0:
            return
        if rc == 2:  # every sequence of the step was cancelled
            with self._cond:
                for seq in stepping:
                    self._halt(seq)
            return
        raise GenerationError(f"llama_decode failed with code {rc}")

    def _all_stopped(self) -> bool:
        seqs = self._abort_for
        return bool(seqs) and all(s.control.stop_requested() for s in seqs)

    def _sample(self, seq: batching.Sequence, row: int) -> None:
        state = _state(seq)
        slot = state.slot
        assert slot is not None
        guide = seq.control.guide
        k = seq.logprobs
        raw = None
        if guide is not None or k is not None:
            logits = np.ctypeslib.as_array(
                lc.llama_get_logits_ith(self._ctx, row), shape=(self._n_vocab,)
            )
            raw = logits.copy() if guide is not None and k is not None else logits
            if guide is not None:
                # The constraint's mask on the logits the sampler chain
                # copies, so penalties and sampling act within it.
                guide.mask(logits)
        tok = lc.llama_sampler_sample(state.sampler, self._ctx, row)
        if guide is not None:
            guide.consume(tok)
        lp = None
        if k is not None:
            logprobs = log_softmax(raw)
            lp = (float(logprobs[tok]), _top_k(logprobs, k))
        slot.tokens.append(tok)
        if not seq.give(tok, lp) and (
            (guide is not None and guide.stopped) or slot.cells >= self._n_ctx
        ):
            seq.end()  # the constraint is complete, or the context is full
