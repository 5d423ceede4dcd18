"""The draft model: a smaller llama.cpp model whose guesses the scheduler
checks (speculative decoding with ``draft_model=``).

It has its own model and context, run on the target's engine thread inside
the scheduler's step (:meth:`inference_llamacpp.batching.Scheduler._step`):
one KV stream per slot of the target, each holding a prefix of that slot's
tokens. Before it guesses, a stream is brought up to the target's tokens
(its tail past their common prefix trimmed, the rest fed in batches), so a
rejected guess costs nothing to undo. It guesses greedily, one decode per
guess for every guessing sequence together, and stops a sequence's guesses
where its own most likely token falls below
:data:`inference.speculation.P_MIN`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import llama_cpp as lc
import numpy as np

from inference.errors import GenerationError, ModelLoadError, UnsupportedOptionError
from inference.gguf import GGUFHeader, read_header
from inference.speculation import P_MIN, Pacer, check_vocabulary

from . import preflight
from .batching import Batch

__all__ = ["Drafter"]


class Drafter:
    """A draft model's context, one KV stream per target slot."""

    def __init__(
        self,
        path: str,
        target: GGUFHeader,
        *,
        n_ctx: int,
        n_seq: int,
        threads: int,
        flash_attn: int,
    ) -> None:
        header = read_header(path)
        preflight.check(header, path)
        check_vocabulary(
            target.get("tokenizer.ggml.tokens") or (),
            header.get("tokenizer.ggml.tokens") or (),
            path,
            "llama_cpp",
        )
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Batch | None = None
        try:
            self._open(path, n_ctx, n_seq, threads, flash_attn)
        except BaseException:
            self.free()
            raise

    def _open(self, path: str, n_ctx: int, n_seq: int, threads: int, flash_attn: int) -> None:
        mparams = lc.llama_model_default_params()
        self._model = lc.llama_model_load_from_file(path.encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"{path}: llama.cpp could not load the draft model", path=path)
        if lc.llama_model_is_recurrent(self._model) or lc.llama_model_is_hybrid(self._model):
            raise UnsupportedOptionError(
                f"{path} cannot be the draft model: its recurrent state cannot drop "
                "rejected guesses",
                option="draft_model",
                backend="llama_cpp",
            )
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq
        cparams.n_batch = cparams.n_ubatch = max(min(n_ctx, 512), n_seq)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False
        cparams.swa_full = True  # trimmed back after every rejected guess
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = flash_attn  # the target's llama.cpp flash_attn_type
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError(
                f"{path}: llama.cpp could not create the draft model's context", path=path
            )
        self._mem = lc.llama_get_memory(self._ctx)
        self._n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._batch = Batch(lc.llama_n_batch(self._ctx), n_seq)
        #: Per slot: the tokens whose KV its stream holds.
        self._held: list[list[int]] = [[] for _ in range(n_seq)]

    def guess(
        self, wants: Sequence[tuple[int, Sequence[int], int]], pacer: Pacer
    ) -> list[list[int]]:
        """For each ``(slot, tokens, k)``, up to ``k`` greedy guesses of what
        follows ``tokens`` (the target slot's, its last sampled token
        included), in one decode per guess for all of them; each decode's
        time goes to ``pacer``, the first's with the catching up it took
        (a stream behind by many tokens, as after a run of prompt lookup's
        guesses, makes the draft model's guesses dearer)."""
        batch = self._batch
        assert batch is not None
        going = [i for i, (_, _, k) in enumerate(wants) if k > 0]
        start = time.perf_counter()
        rows = self._catch_up(wants)
        if going:
            pacer.record(len(going), time.perf_counter() - start, draft=True)
        out: list[list[int]] = [[] for _ in wants]
        while going:
            batch.clear()
            still = []
            for i in going:
                slot, _, k = wants[i]
                logits = np.ctypeslib.as_array(
                    lc.llama_get_logits_ith(self._ctx, rows[i]), shape=(self._n_vocab,)
                )
                tok = int(logits.argmax())
                if 1.0 / np.exp(logits - logits[tok]).sum() < P_MIN:  # its probability
                    continue  # unsure: no more guesses for it
                out[i].append(tok)
                if len(out[i]) >= k:
                    continue
                held = self._held[slot]
                rows[i] = batch.n
                batch.add(tok, len(held), slot, True)
                held.append(tok)
                still.append(i)
            going = still
            if going:
                self._decode(pacer, width=len(going))
        return out

    def _catch_up(self, wants: Sequence[tuple[int, Sequence[int], int]]) -> list[int]:
        """Bring each wanted slot's stream up to its tokens (its last token
        decoded, with logits, in the last decode): the batch row of each
        one's logits."""
        batch = self._batch
        assert batch is not None
        body: list[tuple[int, int, int]] = []  # (slot, position, token)
        tails: list[tuple[int, int, int, int]] = []  # the same, and which want
        for i, (slot, tokens, k) in enumerate(wants):
            if k <= 0:
                continue
            held = self._held[slot]
            n = 0
            limit = min(len(held), len(tokens) - 1)  # the last token is always fed
            while n < limit and held[n] == tokens[n]:
                n += 1
            if n < len(held):
                lc.llama_memory_seq_rm(self._mem, slot, n, -1)
                del held[n:]
            body.extend((slot, p, tokens[p]) for p in range(n, len(tokens) - 1))
            tails.append((slot, len(tokens) - 1, tokens[-1], i))
            held.extend(tokens[n:])
        rows = [0] * len(wants)
        cut = max(len(body) - (batch.capacity - len(tails)), 0)
        for start in range(0, cut, batch.capacity):
            batch.clear()
            for slot, p, t in body[start : min(start + batch.capacity, cut)]:
                batch.add(t, p, slot, False)
            self._decode(None)
        batch.clear()
        for slot, p, t in body[cut:]:
            batch.add(t, p, slot, False)
        for slot, p, t, i in tails:
            rows[i] = batch.n
            batch.add(t, p, slot, True)
        if batch.n:
            self._decode(None)
        return rows

    def _decode(self, pacer: Pacer | None, *, width: int = 0) -> None:
        batch = self._batch
        assert batch is not None
        batch.raw.n_tokens = batch.n
        start = time.perf_counter()
        rc = lc.llama_decode(self._ctx, batch.raw)
        if rc != 0:
            for held in self._held:  # its streams are unknown now: start over
                held.clear()
            lc.llama_memory_clear(self._mem, True)
            raise GenerationError(f"the draft model's llama_decode failed with code {rc}")
        if pacer is not None:
            pacer.record(width, time.perf_counter() - start, draft=True)

    def free(self) -> None:
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None
