"""The embedding context: texts' token ids in, pooled vectors out, many texts
per ``llama_decode``.

llama.cpp pools a sequence's token vectors only in a context made with
``embeddings=True`` and a pooling type, and such a context's outputs are
not the generation context's logits: so a model holds two contexts on one
set of weights. The generation context is made at load; this one on the
first ``embed`` (or ``rerank``), on the model's engine thread, where every
batch of it also runs (between two generation steps: the scheduler's
``between_steps``), so that embedding never waits for the running streams
to end, nor they for it.

One context of :data:`EMBED_CONTEXT_CAP` tokens at most (the model's trained
length when shorter) holds a batch: its sequences side by side, each with
its own ``seq_id``, in one ``llama_decode`` (a non-causal encoder needs a
whole sequence in one micro-batch, so the micro-batch is the context).

Concurrent callers share those batches (:class:`EmbedQueue`): each batch
takes the waiting requests' texts in turn, so eight clients embedding a
few texts each make one ``llama_decode``, not eight, and a request of
thousands of texts does not hold a small one behind all of its batches.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import llama_cpp as lc

from inference.errors import GenerationError, ModelLoadError

from .batching import Batch

__all__ = [
    "EMBED_CONTEXT_CAP",
    "EMBED_SEQUENCES",
    "POOLING_TYPES",
    "EmbedQueue",
    "EmbeddingContext",
]

#: The most tokens one embedding batch holds (and so one text).
EMBED_CONTEXT_CAP = 2048
#: The most texts one embedding batch holds.
EMBED_SEQUENCES = 64
#: llama.cpp's pooling types by this library's names ("" follows the model file).
POOLING_TYPES = {
    "": lc.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "mean": lc.LLAMA_POOLING_TYPE_MEAN,
    "cls": lc.LLAMA_POOLING_TYPE_CLS,
    "last": lc.LLAMA_POOLING_TYPE_LAST,
    "rank": lc.LLAMA_POOLING_TYPE_RANK,
}


class EmbeddingContext:
    """A llama.cpp context that pools: :meth:`run` gives one vector (as
    float32 bytes) per sequence of token ids. Use on the engine thread only."""

    def __init__(
        self, model: Any, *, n_ctx: int, pooling: int, threads: int, flash_attn: int, path: str
    ) -> None:
        params = lc.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = pooling
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx
        params.n_seq_max = EMBED_SEQUENCES
        params.kv_unified = True  # the batch's sequences share the n_ctx cells
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = flash_attn  # llama.cpp's, as the model was loaded
        params.no_perf = True
        self._ctx = lc.llama_init_from_model(model, params)
        if not self._ctx:
            raise ModelLoadError(
                f"{path}: llama.cpp could not make an embedding context of {n_ctx} tokens",
                path=path,
            )
        self.n_ctx = lc.llama_n_ctx(self._ctx)
        self.pooling = int(lc.llama_pooling_type(self._ctx))
        rank = self.pooling == lc.LLAMA_POOLING_TYPE_RANK
        self.width = int(lc.llama_model_n_cls_out(model)) if rank else lc.llama_model_n_embd(model)
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = Batch(self.n_ctx, EMBED_SEQUENCES)

    def run(self, seqs: list[list[int]]) -> bytes:
        """The pooled vectors of ``seqs`` (at most :data:`EMBED_SEQUENCES`,
        :attr:`n_ctx` tokens in all), row after row, as float32 bytes."""
        batch = self._batch
        batch.clear()
        for seq, ids in enumerate(seqs):
            for pos, token in enumerate(ids):
                batch.add(token, pos, seq, True)
        batch.raw.n_tokens = batch.n
        try:
            rc = lc.llama_decode(self._ctx, batch.raw)
            if rc != 0:
                raise GenerationError(f"llama.cpp could not embed the batch (code {rc})")
            size = self.width * 4
            out = bytearray()
            for seq in range(len(seqs)):
                ptr = lc.llama_get_embeddings_seq(self._ctx, seq)
                if not ptr:
                    raise GenerationError("llama.cpp gave no pooled vector for a text")
                out += ctypes.string_at(ptr, size)
            return bytes(out)
        finally:
            if self._mem:
                lc.llama_memory_clear(self._mem, True)

    def free(self) -> None:
        self._batch.free()
        lc.llama_free(self._ctx)
        self._ctx = None


class _Request:
    """One caller's texts, and the rows pooled for them so far."""

    def __init__(self, seqs: list[list[int]]) -> None:
        self.seqs = seqs
        self.taken = 0  # texts handed to a batch
        self.rows: list[bytes] = [b""] * len(seqs)
        self.left = len(seqs)
        self.width = 0
        self.future: Future[tuple[bytes, int]] = Future()


class EmbedQueue:
    """Embedding requests from any number of threads, merged into batches.

    :meth:`put` queues a request's token-id sequences and returns a future
    of its pooled rows (float32 bytes, row after row) and their width.
    :meth:`step`, run on the engine thread, makes one batch of at most
    :data:`EMBED_SEQUENCES` texts and ``budget`` tokens, taking the waiting
    requests' next texts in turn, and runs it through ``run``. A batch that
    fails fails the requests it held a text of, and only those.
    """

    def __init__(self, budget: int, run: Callable[[list[list[int]]], tuple[bytes, int]]) -> None:
        self._budget = budget
        self._run = run
        self._lock = threading.Lock()
        self._waiting: list[_Request] = []

    def put(self, seqs: list[list[int]]) -> Future[tuple[bytes, int]]:
        request = _Request(seqs)
        if not seqs:
            request.future.set_result((b"", 0))
            return request.future
        if any(len(ids) > self._budget for ids in seqs):
            raise ValueError(f"a text is longer than the {self._budget} tokens a batch holds")
        with self._lock:
            self._waiting.append(request)
        return request.future

    def step(self) -> None:
        """Run one merged batch (nothing when no request waits)."""
        with self._lock:
            group, owners = self._take()
        if not group:
            return
        try:
            raw, width = self._run(group)
        except BaseException as exc:
            failed = {id(r): r for r, _ in owners}
            with self._lock:
                self._waiting = [r for r in self._waiting if id(r) not in failed]
            for request in failed.values():
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        size = width * 4
        finished = []
        for row, (request, index) in enumerate(owners):
            request.rows[index] = raw[row * size : (row + 1) * size]
            request.width = width
            request.left -= 1
            if request.left == 0:
                finished.append(request)
        with self._lock:
            self._waiting = [r for r in self._waiting if r.left]
        for request in finished:
            request.future.set_result((b"".join(request.rows), request.width))

    def _take(self) -> tuple[list[list[int]], list[tuple[_Request, int]]]:
        """The next batch, the waiting requests' texts taken in turn (the
        lock held): the texts, and whose each is."""
        group: list[list[int]] = []
        owners: list[tuple[_Request, int]] = []
        used = 0
        open_ = [r for r in self._waiting if r.taken < len(r.seqs)]
        while open_ and len(group) < EMBED_SEQUENCES:
            progressed = False
            for request in open_:
                if len(group) == EMBED_SEQUENCES:
                    break
                ids = request.seqs[request.taken]
                if used + len(ids) > self._budget:
                    continue  # this one waits for the next batch
                group.append(ids)
                owners.append((request, request.taken))
                used += len(ids)
                request.taken += 1
                progressed = True
            if not progressed:
                break
            open_ = [r for r in open_ if r.taken < len(r.seqs)]
        return group, owners
