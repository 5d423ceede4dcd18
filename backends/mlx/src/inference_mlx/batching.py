"""Continuous batching for MLX: concurrent streams share one mlx-lm
``BatchGenerator``, stepped on the model's engine thread.

Each stream is inserted into the generator with its own sampler (a seeded
one draws from its own key, so its draws do not depend on its neighbours),
its own logits processors (repeat penalty, constraint mask), its stop tokens
and its ``max_tokens``; the generator prefills newcomers in chunks between
decode steps (``prefill_step_size``) and removes a sequence when it
finishes. A cancelled stream is removed at the next step; a stream whose
reader stops is removed with its cache, which the next call may reuse (the
next turn of a chat prefills only its new tokens). A newcomer whose prompt
shares a prefix with a running sequence's starts from a copy of that
sequence's cache (waiting, in its place, for that prefill if it is still
running; those behind it are admitted meanwhile), so that concurrent
requests with one system prompt compute it once. The generator
steps every sequence it holds, so it pauses only when every reader is
:data:`inference.batching.AHEAD` tokens behind. The loop is a job on the
model's engine thread that ends when no stream is left, so that the model's
other calls run between batches.

A sequence that speculates (``speculative="ngram"``, ``draft_model=``, or
both) has its guesses checked in the steps where it decodes alone: such a
step is :func:`inference_mlx.speculative.step`, on the generator's batch,
with as many guesses as :class:`inference.speculation.Pacer` finds pay
(none where none do), prompt lookup's where they pay, else the draft
model's; with others beside it, the generator's own step runs.

The hand-over between the loop and the streams' readers is
:class:`inference.batching.Scheduler`'s.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any, cast

from inference import batching
from inference.disk_cache import BLOCK
from inference.engine_thread import EngineThread
from inference.errors import GenerationError
from inference.options import GenerateConfig
from inference.speculation import Pacer

from . import speculative
from .prompt_cache import WORTH_TAKING, PromptCache, common_prefix, trimmed
from .sampling import logprobs_of, masker, sampling
from .speculative import Drafter, Speculation

_log = logging.getLogger("inference.mlx")

#: A lone speculating sequence's steps that check no guesses are the
#: generator's own, but for one in this many, timed for the pacer.
TIMED_EVERY = 16

__all__ = ["Scheduler", "SeqState"]


class SeqState:
    """A stream's part of the batch: its options, its uid in the generator,
    the raw logits its log-probabilities are read from and its speculation
    (None: none)."""

    __slots__ = ("cfg", "raw", "removed", "spec", "uid", "waiting")

    def __init__(self, cfg: GenerateConfig, spec: Speculation | None = None) -> None:
        self.cfg = cfg
        self.spec = spec
        self.uid = -1
        self.waiting = False  # for a running sequence's prefill of its prefix
        self.raw: deque[Any] = deque()  # logits before the processors, for logprobs
        self.removed = False  # out of the generator


#: Returned by ``Scheduler._shared`` for a newcomer that waits for a
#: running sequence's prefill of its prefix.
_WAIT = object()


def _state(seq: batching.Sequence) -> SeqState:
    return cast("SeqState", seq.state)


class Scheduler(batching.Scheduler):
    """The streams of one MLX model, in one ``BatchGenerator`` run on its
    engine thread. Its collaborators: ``model`` gives the live ``nn.Module``
    (raising once the model is closed), ``stream`` the MLX stream to run on,
    ``cache`` the prompt cache that finished sequences leave behind,
    ``drafter`` the draft model when there is one."""

    def __init__(
        self,
        *,
        engine: EngineThread,
        model: Callable[[], Any],
        stream: Callable[[], Any],
        cache: PromptCache,
        vocab_size: int,
        width: int,
        prefill_step_size: int,
        drafter: Drafter | None = None,
    ) -> None:
        super().__init__(name="inference-mlx", engine=engine)
        self._drafter = drafter
        self._pacer = Pacer()
        self._plain = 0  # steps checking no guesses since the last timed one
        self._model = model
        self._stream = stream
        self._cache = cache
        self._vocab_size = vocab_size
        self._width = width
        self._prefill_step_size = prefill_step_size
        self._gen: Any = None
        self._rotating: bool | None = None  # see _windowed
        self._by_uid: dict[int, batching.Sequence] = {}

    def close(self) -> None:
        super().close()
        if self._drafter is not None:
            self._drafter.release()
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def _generator(self) -> Any:
        if self._gen is None:
            from mlx_lm.generate import BatchGenerator

            self._gen = BatchGenerator(
                self._model(),
                completion_batch_size=self._width,
                prefill_batch_size=self._width,
                prefill_step_size=self._prefill_step_size,
                stream=self._stream(),
            )
        return self._gen

    # -- the engine's part (on the engine thread) -------------------------------------

    def _admit(self, seq: batching.Sequence) -> bool:
        """Take ``seq`` if the generator has room: into the generator now,
        or, while a running sequence prefills its prefix, once that is done
        (it holds its place meanwhile, and those behind it are admitted)."""
        if len(self._running) >= self._width:
            return False
        _state(seq).waiting = not self._place(seq)
        return True

    def _ready(self, seq: batching.Sequence) -> bool:
        state = _state(seq)
        if state.waiting:
            state.waiting = not self._place(seq)
            if state.waiting:
                return False
        return super()._ready(seq)

    def _place(self, seq: batching.Sequence) -> bool:
        """Insert ``seq`` into the generator, starting from the longest
        prefix of its prompt that a running sequence or a kept cache holds;
        False while a running sequence is still prefilling that prefix."""
        from mlx_lm.generate import StopSequences

        state = _state(seq)
        gen = self._generator()
        shared = self._shared(seq, state.cfg)
        if shared is _WAIT:
            return False
        if isinstance(shared, tuple):
            cache, reused, tier = shared
        else:
            cache, reused, tier = self._cache.take(self._model(), seq.prompt, state.cfg)
        seq.control.cached_tokens, seq.control.cache_tier = reused, tier
        sampler, processors = sampling(state.cfg, self._vocab_size)
        if seq.control.guide is not None:
            processors = [*processors, masker(seq.control.guide)]
        if seq.logprobs is not None and processors:
            raw = state.raw

            def capture(_tokens: Any, logits: Any) -> Any:
                raw.append(logits)
                return logits

            processors = [capture, *processors]
        (state.uid,) = gen.insert_segments(
            [self._segments(seq.prompt, reused)],
            max_tokens=[seq.limit],
            caches=[cache],
            all_tokens=[seq.prompt[:reused]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[StopSequences([[t] for t in sorted(seq.stop_ids)])],
        )
        self._by_uid[state.uid] = seq
        return True

    def _segments(self, prompt: list[int], reused: int) -> list[list[int]]:
        """The tokens to prefill, from ``reused`` on: in one segment, or, for
        a model with a sliding window, in segments ending at each
        :data:`~inference.disk_cache.BLOCK` boundary, where the generator
        stops so that a checkpoint is kept (see :meth:`_checkpoint`)."""
        if not self._windowed():
            return [prompt[reused:]]
        cuts = [reused, *range((reused // BLOCK + 1) * BLOCK, len(prompt), BLOCK), len(prompt)]
        return [prompt[a:b] for a, b in pairwise(cuts) if b > a]

    def _windowed(self) -> bool:
        """Whether the model keeps a sliding window's rotating cache, which
        cannot be trimmed back to a shorter prefix once it has wrapped."""
        if self._rotating is None:
            from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache

            cache = make_prompt_cache(self._model())
            self._rotating = any(isinstance(c, RotatingKVCache) for c in cache)
        return self._rotating

    def _checkpoint(self, uid: int) -> None:
        """Keep a copy of the cache of the sequence ``uid`` is prefilling,
        when it has just reached a block boundary short of its prompt's end:
        a later prompt sharing that prefix starts from it (a rotating cache
        past its window cannot be trimmed to it)."""
        seq = self._by_uid.get(uid)
        if seq is None or seq.halted or _state(seq).cfg.repeat_penalty != 1.0:
            return
        found = self._gen.extract_cache([uid]).get(uid)
        if found is None:
            return
        cache, tokens = found
        n = len(tokens)
        if n % BLOCK == 0 and 0 < n < len(seq.prompt) and tokens == seq.prompt[:n]:
            self._cache.keep(cache, list(tokens), checkpoint=True)

    def _shared(self, seq: batching.Sequence, cfg: GenerateConfig) -> object:
        """A copy of an inserted sequence's cache trimmed to the prefix that
        ``seq``'s prompt shares with it (cache, tokens, "sequence"), when
        that is :data:`WORTH_TAKING` tokens more than a kept cache gives;
        :data:`_WAIT` while that sequence is still prefilling; else None.
        Not with a repeat penalty (see ``PromptCache.take``)."""
        if cfg.repeat_penalty != 1.0:
            return None
        limit = len(seq.prompt) - 1
        best, most = None, self._cache.shares(seq.prompt, cfg) + WORTH_TAKING - 1
        for other in self._by_uid.values():
            n = common_prefix(other.prompt, seq.prompt, limit)
            if n > most and not other.halted:
                best, most = other, n
        if best is None:
            return None
        if not best.generated:
            return _WAIT  # its prefill is under way: copy it when done
        uid = _state(best).uid
        cache, _ = self._gen.extract_cache([uid])[uid]
        return (cache, most, "sequence") if trimmed(cache, most) else None

    def _step(self, ready: list[batching.Sequence]) -> None:
        gen = self._generator()
        responses = self._speculate(gen)
        if responses is None:
            prefilled, responses = gen.next()
            for p in prefilled:
                if p.end_of_segment and not p.end_of_prompt and self._windowed():
                    self._checkpoint(p.uid)
        for r in responses:
            seq = self._by_uid.get(r.uid)
            if seq is None:
                continue
            state = _state(seq)
            if r.finish_reason is not None:
                state.removed = True
                del self._by_uid[r.uid]
                self._cache.keep(r.prompt_cache, list(r.all_tokens))
            if seq.halted:
                continue
            guide = seq.control.guide
            if guide is not None and guide.failure is not None:  # it alone ends
                with self._cond:
                    self._halt(seq)
                    seq.fail(guide.failure)
                continue
            # The generator runs its logits processors a step ahead: the guide
            # may already have consumed this token, and a token it never
            # consumes once complete came after the end.
            if guide is not None and guide.stopped and seq.generated >= guide.steps:
                seq.end()
                continue
            lp = None
            if seq.logprobs is not None:
                logits = state.raw.popleft() if state.raw else None
                lp = logprobs_of(int(r.token), seq.logprobs, logits, r.logprobs)
            if seq.give(int(r.token), lp):
                continue
            if r.finish_reason is not None or (
                guide is not None and guide.stopped and seq.generated >= guide.steps
            ):
                seq.end()  # the engine's limit, or the constraint complete with this token

    def _speculate(self, gen: Any) -> list[Any] | None:
        """The responses of a step that checks guesses, when one sequence
        that speculates decodes alone and guesses pay, else None: the
        generator's own step runs (it computes the next token while this
        thread hands the last one over, so a step that checks nothing is
        left to it, but for one in :data:`TIMED_EVERY`, timed for the
        pacer)."""
        batch = speculative.solo(gen)
        seq = self._by_uid.get(batch.uids[0]) if batch is not None else None
        spec = _state(seq).spec if seq is not None and not seq.halted else None
        if seq is None or spec is None:
            return None
        history: list[int] = batch.tokens[0]  # in the cache; the pending token follows
        spec.judge(history)
        # Never past max_tokens: the pending token comes anyway.
        most = min(spec.draft_max, batch.max_tokens[0] - batch._num_tokens[0] - 1)
        k, looked = 0, list[int]()
        if spec.lookup is not None and most > 0:
            # Prompt lookup guesses every step, checked or not (see
            # Acceptance): from the tokens in the cache, so its first guess
            # is of the pending token.
            looked = spec.lookup.guess(history, spec.draft_max + 1)
            spec.made.append((spec.acceptance, looked, len(history)))
            if len(looked) > 1:
                offer = [(spec.acceptance, min(most, len(looked) - 1))]
                k = self._pacer.plan(1, 1, offer, room=most)
        drafter = self._drafter if k == 0 and spec.drafting else None
        if drafter is not None and most > 0:
            k = self._pacer.plan(1, 1, [(spec.draft_acceptance, most)], room=most, drafting=True)
        self._plain = (self._plain + 1) % TIMED_EVERY if k == 0 else 0
        if k == 0 and self._plain != 1:
            return None
        with self._stream_ctx():
            sent: list[int] = []
            if k > 0:
                pending = int(batch._next_tokens[0].item())
                tokens = [*history, pending]
                if drafter is None:  # prompt lookup's, made again if the first was wrong
                    assert spec.lookup is not None
                    right = looked[0] == pending
                    sent = looked[1 : 1 + k] if right else spec.lookup.guess(tokens, k)
                else:
                    try:
                        sent = drafter.guess(tokens, k, self._pacer)
                    except GenerationError:
                        _log.warning("the draft model failed; this step checks none", exc_info=True)
                    spec.made.append((spec.draft_acceptance, sent, len(tokens)))
            start = time.perf_counter()
            responses = speculative.step(batch, sent)
            self._pacer.record(1 + len(sent), time.perf_counter() - start)
        if sent:
            control = seq.control
            control.drafted_tokens += len(sent)
            control.accepted_tokens += max(len(responses) - 1, 0)
        return responses

    def _stream_ctx(self) -> Any:
        import mlx.core as mx

        return mx.stream(self._stream())

    def _remove(self, seq: batching.Sequence, *, keep: bool) -> None:
        state = _state(seq)
        if state.removed or state.uid < 0:
            return
        state.removed = True
        self._by_uid.pop(state.uid, None)
        caches = self._gen.remove([state.uid], return_prompt_caches=keep)
        if keep and state.uid in caches:
            cache, tokens = caches[state.uid]
            self._cache.keep(cache, list(tokens))

    def _cancelled(self, seq: batching.Sequence) -> None:
        self._remove(seq, keep=False)

    def _release(self, seq: batching.Sequence) -> None:
        if seq.running:
            self._remove(seq, keep=not seq.control.stop_requested())
