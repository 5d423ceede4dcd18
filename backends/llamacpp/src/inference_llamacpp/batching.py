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
prompt) is given that slot and prefills only the rest. The prefix cache
goes further (see :meth:`Scheduler._admit`): a longer prefix in another
slot, running or idle, is copied in; one another sequence is still
prefilling is waited for, then copied; and a slot's KV about to be
overwritten is kept in host memory (:mod:`inference_llamacpp.host_cache`)
and restored for a later prompt that begins with it.

A sliding-window model (Gemma 3) has a compact cache: its window layers keep
only their window's last cells, so its KV cannot be trimmed back far (see
:meth:`Scheduler._floor`); a recurrent or hybrid model's state (Mamba,
RWKV, Granite 4, LFM2) cannot be trimmed at all. A trim that would leave a
state that is not the prefix's is refused, never used. So that reuse still
happens, such a model's prompts are prefilled in chunks that end at block
boundaries (:data:`inference.disk_cache.BLOCK` tokens), and the state at
each boundary is kept as a checkpoint in the host and disk tiers.

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

import ctypes
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp as lc
import numpy as np

from inference import batching, speculation
from inference.disk_cache import BLOCK, DiskCache
from inference.engine_thread import EngineThread
from inference.errors import GenerationError
from inference.speculation import Pacer

from .host_cache import SPILL_AT_LEAST, HostCache, Kept
from .threads import ThreadTuner

if TYPE_CHECKING:
    from .speculative import Drafter

__all__ = [
    "ABORTABLE_PREFILL",
    "COPY_AT_LEAST",
    "PREFILL_CHUNK",
    "SPECULATE_UP_TO",
    "Batch",
    "Scheduler",
    "SeqState",
    "Speculation",
    "log_softmax",
]

#: Prompt tokens prefilled per step while other sequences are decoding.
PREFILL_CHUNK = 64
#: The fewest more prompt tokens another slot must hold than the slot taken
#: for its KV to be copied: a copy moves a whole KV stream (tens of MiB), a
#: prefill of a few dozen tokens costs less.
COPY_AT_LEAST = 64
#: A step that prefills at least this many tokens can be aborted part-way.
ABORTABLE_PREFILL = 64
#: Guesses are checked only in a step where at most this many sequences
#: decode (and none prefills). Several sequences' tokens already fill a
#: CPU's arithmetic, and with a KV stream per sequence llama.cpp splits a
#: step whose sequences feed unequal numbers of tokens into one graph pass
#: per length: 8 streams with guesses for each gave 0.74x the tokens/s of
#: 8 without (``bench/bench_speculative.py``, 2026-12-06).
SPECULATE_UP_TO = 1

_NO_ABORT = lc.ggml_abort_callback()  # a NULL callback
_log = logging.getLogger(__name__)


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


class Speculation(speculation.Speculation):
    """A sequence's speculation, the guesses each source made for this step
    (checked or not), and the ones checked and their batch rows."""

    __slots__ = ("draft_guesses", "drafts", "guesses", "rows")

    def __init__(self, how: str, *, draft_max: int) -> None:
        super().__init__(how, draft_max=draft_max)
        self.guesses: list[int] = []  # prompt lookup's, this step
        self.draft_guesses: list[int] = []  # the draft model's, this step
        self.drafts: list[int] = []  # checked this step (a prefix of one source's guesses)
        self.rows: list[int] = []  # the batch rows of the drafts' logits

    def observe(self, emitted: Sequence[int]) -> None:
        """Judge this step's guesses, each source's by its own acceptance,
        by the tokens the step ``emitted`` (the token sampled after the last
        guess kept included), then forget them."""
        self.acceptance.observe(self.guesses, emitted)
        self.draft_acceptance.observe(self.draft_guesses, emitted)
        self.guesses, self.draft_guesses = [], []


class SeqState:
    """A sequence's part of the engine: its sampler chain (owned: freed
    with the sequence), its slot, and its speculation (None: none)."""

    __slots__ = ("fed", "prompt_len", "sampler", "slot", "spec", "wait_for")

    def __init__(self, sampler: Any, prompt_len: int, spec: Speculation | None = None) -> None:
        self.sampler = sampler
        self.prompt_len = prompt_len
        self.spec = spec
        self.slot: _Slot | None = None
        self.fed = 0  # tokens this step puts into the batch (drafts aside)
        #: (a slot, its sequence, n): the first n tokens of the prompt are
        #: being prefilled there; this one waits for them, then copies them.
        self.wait_for: tuple[_Slot, batching.Sequence | None, int] | None = None

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
        host: HostCache | None = None,
        disk: DiskCache | None = None,
        n_swa: int = 0,
        recurrent: bool = False,
        drafter: Drafter | None = None,
    ) -> None:
        super().__init__(name="inference-llama_cpp", engine=engine)
        #: Speculative decoding: the draft model, if any, and what a step's
        #: guesses cost (prompt lookup needs neither drafter nor model).
        self._drafter = drafter
        self._pacer = Pacer()
        self._ctx = ctx
        self._host = host
        self._disk = disk
        #: A compact sliding-window cache's window (0: every cell is kept).
        self._n_swa = n_swa
        #: A recurrent state (a recurrent or hybrid model): it cannot be
        #: trimmed at all, only taken whole.
        self._recurrent = recurrent
        #: Whether prompts are checkpointed at block boundaries (see the module).
        self._checkpoints = (bool(n_swa) or recurrent) and (host is not None or disk is not None)
        self._tuner = tuner
        self._mem = lc.llama_get_memory(ctx)
        self._n_ctx = n_ctx
        self._n_vocab = n_vocab
        self._batch = Batch(n_batch, n_seq)
        self._slots = [_Slot(i) for i in range(n_seq)]
        self._step_no = 0
        self._abort_for: list[batching.Sequence] = []
        self._abort_cb = lc.ggml_abort_callback(lambda _data: self._all_stopped())
        #: Since the model was loaded: prompt tokens prefilled, prompt tokens
        #: taken from cached KV instead, and the most prompt tokens one step
        #: prefilled beside a decoding sequence.
        self.prefilled = 0
        self.reused = 0
        self.widest_prefill_beside_decode = 0
        #: Since the model was loaded: guesses checked, and those accepted.
        self.drafted = 0
        self.accepted = 0

    def forget(self) -> None:
        """Forget every cached prompt: the caller has cleared the KV cache
        (only while no stream runs)."""
        with self._cond:
            for slot in self._slots:
                slot.tokens, slot.cells = [], 0

    def close(self) -> None:
        super().close()
        self._batch.free()
        if self._disk is not None:
            self._disk.close()  # a restart finds what was written

    # -- the engine's part -------------------------------------------------------------

    def _admit(self, seq: batching.Sequence) -> bool:
        """Take an idle slot for ``seq``, starting from the longest prefix of
        its prompt whose KV is kept anywhere (each tier is taken only for at
        least :data:`COPY_AT_LEAST` tokens more than the one before it):

        - an idle slot that holds a prefix is taken as it is (its tail trimmed);
        - a prefix held by another slot, running or idle, is copied into the
          slot taken (``llama_memory_seq_cp``: with a KV stream per
          sequence, the whole stream is copied before the next decode), then
          trimmed to the prefix;
        - a prefix kept in host memory, else on disk, is restored into it
          (``llama_state_seq_set_data``), then trimmed;
        - a prefix another running sequence is still prefilling is waited
          for (:meth:`_waited`), then copied: eight requests with one system
          prompt prefill it once;
        - else the lowest empty slot, else the one idle longest.

        A slot whose KV is about to be overwritten is kept in host memory
        first (:meth:`_spill`). A prefix shorter than a sliding-window
        cache's floor is not taken from it, and a trim the cache cannot make
        (a recurrent cache) gives no reuse: the slot starts empty, never
        from a state that is not the prefix's.
        """
        free = sorted((s for s in self._slots if s.owner is None), key=lambda s: s.used)
        if not free:
            return False
        prompt = seq.prompt
        limit = len(prompt) - 1  # at least one prompt token is decoded
        own, shared = None, 0  # the idle slot holding the longest prefix
        for slot in free:
            n = _common(slot.tokens, prompt, min(slot.cells, limit))
            if n > shared and n >= self._floor(slot):
                own, shared = slot, n
        others = [s for s in self._slots if s is not own and s.tokens]
        source, held = None, shared  # a prefix held elsewhere, worth a copy
        for slot in others:
            n = _common(slot.tokens, prompt, min(slot.cells, limit))
            if n >= held + COPY_AT_LEAST and n >= self._floor(slot):
                source, held = slot, n
        kept: tuple[Kept, int, str] | None = None
        if self._host is not None:
            found = self._host.find(prompt, limit)
            if found is not None and found[1] >= held + COPY_AT_LEAST:
                kept = (found[0], found[1], "host")
        if self._disk is not None:
            floor = (kept[1] if kept else held) + COPY_AT_LEAST
            on_disk = self._disk.find(prompt, limit, floor)
            if on_disk is not None:
                entry, n = on_disk
                kept = (Kept(entry.tokens, entry.state, entry.floor), n, "disk")
        best = kept[1] if kept is not None else held
        coming, planned = None, best  # one being prefilled elsewhere, worth a wait
        for slot in others:
            if slot.owner is not None and slot.cells < limit:
                n = _common(slot.tokens, prompt, min(len(slot.tokens), limit))
                if n >= planned + COPY_AT_LEAST and n > slot.cells:
                    coming, planned = slot, n
        spare = [s for s in free if s is not source]
        if (source is not None or coming is not None or kept is not None) and spare:
            # Any idle slot but the source: an empty one first, else the one idle longest.
            target = min(spare, key=lambda s: (bool(s.cells), s.used, s.id))
        elif own is not None:
            target, source, coming, kept = own, None, None, None
        else:  # the lowest empty slot (see _step), else the one idle longest
            empty = [s for s in free if not s.cells]
            target = min(empty, key=lambda s: s.id) if empty else free[0]
            source, coming, kept = None, None, None
        if target.cells - (shared if target is own else 0) >= SPILL_AT_LEAST:
            self._spill(target)  # much of its KV is about to go: keep it in host memory
        target.tokens = list(prompt)
        target.owner = seq
        target.used = self._step_no
        state = _state(seq)
        state.slot = target
        if coming is not None:
            # Another sequence is prefilling a longer prefix of this prompt:
            # wait for it rather than compute it twice.
            self._free_cells(target)
            state.wait_for = (coming, coming.owner, planned)
        elif kept is not None:
            self._started(seq, self._restore(kept[0], target, kept[1]), kept[2])
        elif source is not None:
            self._started(seq, self._copy(source, target, held), "sequence")
        elif shared and self._trim(target, shared):
            self._started(seq, shared, "slot")
        else:
            self._free_cells(target)
            self._started(seq, 0, "")
        return True

    def _floor(self, slot: _Slot) -> int:
        """The fewest of ``slot``'s cells its KV can be trimmed to and still
        be the KV of that prefix. A compact sliding-window cache keeps its
        window layers' cells from ``llama_memory_seq_pos_min`` on only, and
        the token after a prefix of ``n`` attends to the ``n_swa`` cells
        before it (in a chunked window, to fewer): ``n`` must be at least the
        first cell kept plus the window. A recurrent state is of its whole
        prefix alone. 0 for a full cache."""
        if self._recurrent:
            return slot.cells
        if not self._n_swa:
            return 0
        first: int = lc.llama_memory_seq_pos_min(self._mem, slot.id)
        return first + self._n_swa if first > 0 else 0

    def _kept_floor(self, slot: _Slot) -> int:
        """The :meth:`_floor` of ``slot``'s state once saved: llama.cpp writes
        a window layer's last ``n_swa`` cells only, so a sliding-window
        model's saved state is of its whole prefix alone."""
        if self._recurrent or (self._n_swa and slot.cells > self._n_swa):
            return slot.cells
        return self._floor(slot)

    def _trim(self, slot: _Slot, n: int) -> bool:
        """Trim ``slot``'s KV to its first ``n`` cells; False, and the slot
        emptied, when the state left would not be that prefix's (below its
        :meth:`_floor`) or the cache cannot trim (a recurrent one)."""
        if n >= self._floor(slot) and lc.llama_memory_seq_rm(self._mem, slot.id, n, -1):
            slot.cells = n
            return True
        self._free_cells(slot)
        return False

    def _copy(self, source: _Slot, target: _Slot, n: int) -> int:
        """Start ``target`` from the first ``n`` cells of ``source``'s KV;
        the cells it starts with (0 when it cannot be trimmed so)."""
        lc.llama_memory_seq_cp(self._mem, source.id, target.id, -1, -1)
        return n if self._trim(target, n) else 0

    def _spill(self, slot: _Slot) -> None:
        """Keep ``slot``'s KV in the host tier (llama.cpp's state of its
        sequence), unless it is kept already."""
        host = self._host
        if host is None:
            return
        tokens = slot.tokens[: slot.cells]
        floor = self._kept_floor(slot)
        if host.covers(tokens, floor):
            return
        state = self._state(slot)
        if state:
            host.keep(tokens, state, floor)

    def _checkpoint(self, slot: _Slot) -> None:
        """Keep a sliding-window model's prompt KV at a block boundary (its
        cells are a multiple of :data:`BLOCK`) in the host and disk tiers:
        a later prompt that shares the prefix starts from it, where the
        compact cache cannot be trimmed back to it."""
        tokens = slot.tokens[: slot.cells]
        floor = self._kept_floor(slot)
        host = self._host
        state = None
        if host is not None and not host.covers(tokens, floor):
            state = self._state(slot)
            if state:
                host.keep(tokens, state, floor)
        self._write(slot, floor, state)

    def _state(self, slot: _Slot) -> bytes:
        """llama.cpp's state of ``slot``'s sequence (b"" if it gives none)."""
        size = lc.llama_state_seq_get_size(self._ctx, slot.id)
        buf = (ctypes.c_uint8 * size)()
        got = lc.llama_state_seq_get_data(self._ctx, buf, size, slot.id)
        return bytes(buf)[:got]

    def _persist(self, slot: _Slot) -> None:
        """Write ``slot``'s KV to the disk tier: see :meth:`_write`."""
        self._write(slot, self._kept_floor(slot))

    def _write(self, slot: _Slot, floor: int, state: bytes | None = None) -> None:
        """Hand the KV of ``slot``'s cells (``state`` when taken already,
        trimmable to ``floor``) to the disk tier, which writes it off the
        engine thread (:meth:`inference.disk_cache.DiskCache.submit`)."""
        if self._disk is not None and self._disk.enabled:
            self._disk.submit(
                slot.tokens[: slot.cells],
                lc.llama_state_seq_get_size(self._ctx, slot.id),
                lambda: self._state(slot) if state is None else state,
                floor,
            )

    def _restore(self, kept: Kept, target: _Slot, n: int) -> int:
        """Start ``target`` from the first ``n`` tokens of ``kept``; the
        cells it starts with (0 when the state does not load or trim)."""
        self._free_cells(target)
        state = kept.state
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not lc.llama_state_seq_set_data(self._ctx, buf, len(state), target.id):
            self._free_cells(target)
            return 0
        return n if self._trim(target, n) else 0

    def _started(self, seq: batching.Sequence, cached: int, tier: str) -> None:
        seq.control.cached_tokens, seq.control.cache_tier = cached, tier
        self.reused += cached

    def _waited(self, seq: batching.Sequence, state: SeqState) -> bool:
        """Whether ``seq``, waiting for another sequence's prefill of its
        prefix, may go on: that prefill is done (its KV is copied in) or
        will not be (it goes on from nothing)."""
        assert state.wait_for is not None and state.slot is not None
        source, owner, n = state.wait_for
        if source.owner is owner and owner is not None and not owner.halted and source.cells < n:
            return False
        state.wait_for = None
        target = state.slot
        whole = source.cells >= n and source.tokens[:n] == seq.prompt[:n]
        if whole and self._copy(source, target, n):
            self._started(seq, n, "sequence")
            return True
        # Not copied (a sliding-window cache past the prefix): a checkpoint
        # that prefill left in the host tier, else from nothing.
        found = self._host.find(seq.prompt, len(seq.prompt) - 1) if self._host else None
        if found is not None:
            self._started(seq, self._restore(found[0], target, found[1]), "host")
        else:
            self._started(seq, 0, "")
        return True

    def _ready(self, seq: batching.Sequence) -> bool:
        state = _state(seq)
        if state.wait_for is not None and not self._waited(seq, state):
            return False
        return state.unfed > 0 or super()._ready(seq)

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
                self._persist(slot)
        lc.llama_sampler_free(state.sampler)

    def _free(self, slot: _Slot) -> None:
        self._free_cells(slot)
        slot.tokens = []

    def _free_cells(self, slot: _Slot) -> None:
        """Empty ``slot``'s KV (its planned tokens stay)."""
        lc.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
        slot.cells = 0

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
            if self._checkpoints:  # end at a block boundary: a checkpoint there
                n = min(n, BLOCK - slot.cells % BLOCK)
            for p in range(slot.cells, slot.cells + n):
                batch.add(slot.tokens[p], p, slot.id, p == last)
            state.fed = n
            budget -= n
            prefilled += n
            if slot.cells + n > last:
                to_sample.append((seq, batch.n - 1))
        if 0 < len(decoding) <= SPECULATE_UP_TO and not prefilled:
            self._guess(decoding)
        stepping = [s for s in ready if _state(s).fed]
        if not stepping:
            return
        start = time.perf_counter()
        try:
            probe = self._decode(
                stepping, abortable=prefilled >= ABORTABLE_PREFILL, timed=not prefilled
            )
        finally:
            fed = [(s, _state(s).fed) for s in stepping]
            for s in stepping:
                _state(s).fed = 0
        if not prefilled and not probe:  # a probe's thread count is not the usual one
            self._pacer.record(batch.n, time.perf_counter() - start)
        self._step_no += 1
        self.prefilled += prefilled
        if decoding:
            self.widest_prefill_beside_decode = max(self.widest_prefill_beside_decode, prefilled)
        for seq, n in fed:
            slot = _state(seq).slot
            assert slot is not None
            slot.cells += n
            slot.used = self._step_no
            if self._checkpoints and slot.cells % BLOCK == 0 and slot.cells <= len(seq.prompt):
                self._checkpoint(slot)
        for seq, row in to_sample:
            if not seq.halted:
                try:
                    self._emit(seq, row)
                except GenerationError as exc:  # its constraint failed: it alone ends
                    with self._cond:
                        self._halt(seq)
                        seq.fail(exc)

    def _guess(self, decoding: list[batching.Sequence]) -> None:
        """Add guessed continuations of the decoding sequences that speculate
        to the batch (each guessed token with logits, after the sequence's
        last token): as many as :class:`~inference.speculation.Pacer` finds
        pay, from prompt lookup where its guesses pay, else from the draft
        model."""
        batch = self._batch
        looked: list[tuple[Speculation, _Slot, int]] = []  # (its speculation, slot, most)
        drafting: list[tuple[Speculation, _Slot, int]] = []
        for seq in decoding:
            state = _state(seq)
            spec, slot = state.spec, state.slot
            if spec is None:
                continue
            assert slot is not None
            # Never past max_tokens (one token comes anyway) nor the context.
            most = min(spec.draft_max, seq.limit - seq.generated - 1, self._n_ctx - slot.cells - 1)
            if spec.lookup is not None:  # guesses every step, sent or not (see Acceptance)
                spec.guesses = spec.lookup.guess(slot.tokens, spec.draft_max)
                if most > 0 and spec.guesses:
                    looked.append((spec, slot, min(most, len(spec.guesses))))
            if most > 0 and spec.drafting:
                drafting.append((spec, slot, most))
        room = batch.capacity - batch.n
        if looked:
            offers = [(spec.acceptance, most) for spec, _, most in looked]
            k = self._pacer.plan(batch.n, len(decoding), offers, room=room)
            if k > 0:
                self._add(
                    [(spec, slot, spec.guesses[: min(k, most)]) for spec, slot, most in looked]
                )
                return
        if not drafting or self._drafter is None:
            return
        offers = [(spec.draft_acceptance, most) for spec, _, most in drafting]
        k = self._pacer.plan(batch.n, len(decoding), offers, room=room, drafting=True)
        if k <= 0:
            return
        wants = [
            (slot.id, slot.tokens[: slot.cells + 1], min(k, most)) for _, slot, most in drafting
        ]
        try:
            drafted = self._drafter.guess(wants, self._pacer)
        except GenerationError:
            _log.warning("the draft model failed; this step checks no guesses", exc_info=True)
            return
        for (spec, _, _), guesses in zip(drafting, drafted, strict=True):
            spec.draft_guesses = guesses
        self._add([(spec, slot, spec.draft_guesses) for spec, slot, _ in drafting])

    def _add(self, checked: list[tuple[Speculation, _Slot, list[int]]]) -> None:
        """Put each sequence's guesses to check into the batch, after its
        last token."""
        batch = self._batch
        for spec, slot, drafts in checked:
            spec.drafts = drafts
            spec.rows = []
            for i, tok in enumerate(drafts):
                spec.rows.append(batch.n)
                batch.add(tok, slot.cells + 1 + i, slot.id, True)

    def _decode(self, stepping: list[batching.Sequence], *, abortable: bool, timed: bool) -> bool:
        """One ``llama_decode`` of the batch; whether it ran at the thread
        tuner's probe count."""
        batch = self._batch
        batch.raw.n_tokens = batch.n
        if abortable:
            self._abort_for = stepping
            lc.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        tuner = self._tuner
        probe = False
        try:
            if tuner is not None:
                tuner.before(timed=timed)
                probe = tuner.probing
            start = time.perf_counter()
            rc = lc.llama_decode(self._ctx, batch.raw)
            if tuner is not None and timed and rc == 0:
                tuner.after(batch.n, time.perf_counter() - start)
        finally:
            if abortable:
                lc.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
                self._abort_for = []
        if rc == 0:
            return probe
        if rc == 2:  # every sequence of the step was cancelled
            with self._cond:
                for seq in stepping:
                    self._halt(seq)
            return probe
        raise GenerationError(f"llama_decode failed with code {rc}")

    def _all_stopped(self) -> bool:
        seqs = self._abort_for
        return bool(seqs) and all(s.control.stop_requested() for s in seqs)

    def _emit(self, seq: batching.Sequence, row: int) -> None:
        """Sample ``seq``'s next token from ``row``, then, where it guessed,
        one more from each guess's row while the token sampled equals the
        guess (the guess's KV is then the token's, and kept); the rejected
        guesses' KV cells go."""
        state = _state(seq)
        spec, slot = state.spec, state.slot
        assert slot is not None
        if spec is None:
            self._sample(seq, row)
            return
        drafts, rows = spec.drafts, [row, *spec.rows]
        spec.drafts, spec.rows = [], []
        emitted: list[int] = []
        try:
            while True:
                tok = self._sample(seq, rows[len(emitted)])
                emitted.append(tok)
                if seq.halted or len(emitted) > len(drafts) or tok != drafts[len(emitted) - 1]:
                    break
                slot.cells += 1  # the guess was right: its KV stays
        finally:  # also when a constraint fails part-way: no cell past slot.cells stays
            accepted = max(len(emitted) - 1, 0)
            if accepted < len(drafts):
                lc.llama_memory_seq_rm(self._mem, slot.id, slot.cells, -1)
        spec.observe(emitted)
        if drafts:
            control = seq.control
            control.drafted_tokens += len(drafts)
            control.accepted_tokens += accepted
            self.drafted += len(drafts)
            self.accepted += accepted

    def _sample(self, seq: batching.Sequence, row: int) -> int:
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
        tok = int(lc.llama_sampler_sample(state.sampler, self._ctx, row))
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
        return tok
