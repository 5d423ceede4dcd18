"""Continuous batching for MLX: concurrent streams share one mlx-lm
``BatchGenerator``, stepped on the model's engine thread.

Each stream is inserted into the generator with its own sampler (a seeded
one draws from its own key, so its draws do not depend on its neighbours),
its own logits processors (repeat penalty, constraint mask), its stop tokens
and its ``max_tokens``; the generator prefills newcomers in chunks between
decode steps (``prefill_step_size``) and removes a sequence when it
finishes. A cancelled stream is removed at the next step; a stream whose
reader stops is removed with its cache, which the next call may reuse as
the single-sequence path does (the next turn of a chat prefills only its new
tokens). The generator steps every sequence it holds, so it pauses only
when every reader is :data:`inference.batching.AHEAD` tokens behind. The
loop is a job on the model's engine thread that ends when no stream is
left, so that the model's other calls run between batches.

The hand-over between the loop and the streams' readers is
:class:`inference.batching.Scheduler`'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from inference import batching
from inference.options import GenerateConfig

if TYPE_CHECKING:
    from .engine import MlxModel

__all__ = ["Scheduler", "SeqState", "keyed_sampler"]


def keyed_sampler(cfg: GenerateConfig, top_k: int) -> Callable[[Any], Any]:
    """mlx-lm's sampling chain for ``cfg`` (top-p, min-p, top-k, then a
    draw at the temperature), drawing from its own key seeded with
    ``cfg.seed``, so that a seeded sequence draws the same tokens alone and
    in a batch."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    filters: list[Callable[[Any], Any]] = []
    if 0 < cfg.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, cfg.top_p))
    if cfg.min_p != 0.0:
        filters.append(lambda x: apply_min_p(x, cfg.min_p, 1))
    if top_k > 0:
        filters.append(lambda x: apply_top_k(x, top_k))
    key = [mx.random.key(cfg.seed or 0)]
    scale = 1.0 / cfg.temperature

    def sample(logprobs: Any) -> Any:
        for f in filters:
            logprobs = f(logprobs)
        keys = mx.random.split(key[0])
        key[0] = keys[0]
        return mx.random.categorical(logprobs * scale, key=keys[1])

    return sample


class SeqState:
    """A stream's part of the batch: its options, its uid in the generator
    and the raw logits its log-probabilities are read from."""

    __slots__ = ("cfg", "raw", "removed", "uid")

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg
        self.uid = -1
        self.raw: deque[Any] = deque()  # logits before the processors, for logprobs
        self.removed = False  # out of the generator


def _state(seq: batching.Sequence) -> SeqState:
    return cast("SeqState", seq.state)


class Scheduler(batching.Scheduler):
    """The streams of one :class:`~inference_mlx.engine.MlxModel`, in one
    ``BatchGenerator`` run on its engine thread."""

    def __init__(self, model: MlxModel, *, width: int, prefill_step_size: int) -> None:
        engine = model._engine
        assert engine is not None
        super().__init__(name="inference-mlx", engine=engine)
        self._model = model
        self._width = width
        self._prefill_step_size = prefill_step_size
        self._gen: Any = None
        self._by_uid: dict[int, batching.Sequence] = {}

    def close(self) -> None:
        super().close()
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def _generator(self) -> Any:
        if self._gen is None:
            from mlx_lm.generate import BatchGenerator

            self._gen = BatchGenerator(
                self._model._live(),
                completion_batch_size=self._width,
                prefill_batch_size=self._width,
                prefill_step_size=self._prefill_step_size,
                stream=self._model._stream_for_engine(),
            )
        return self._gen

    # -- the engine's part (on the engine thread) -------------------------------------

    def _admit(self, seq: batching.Sequence) -> bool:
        from mlx_lm.generate import StopSequences

        if len(self._running) >= self._width:
            return False
        state = _state(seq)
        model = self._model
        sampler, processors = model._sampling(state.cfg)
        if seq.control.guide is not None:
            from .engine import _masker

            processors = [*processors, _masker(seq.control.guide)]
        if seq.logprobs is not None and processors:
            raw = state.raw

            def capture(_tokens: Any, logits: Any) -> Any:
                raw.append(logits)
                return logits

            processors = [capture, *processors]
        cache, reused = model._reuse_cache(model._live(), seq.prompt, state.cfg)
        gen = self._generator()
        (state.uid,) = gen.insert(
            [seq.prompt[reused:]],
            max_tokens=[seq.limit],
            caches=[cache],
            all_tokens=[seq.prompt[:reused]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[StopSequences([[t] for t in sorted(seq.stop_ids)])],
        )
        self._by_uid[state.uid] = seq
        return True

    def _step(self, ready: list[batching.Sequence]) -> None:
        gen = self._generator()
        _, responses = gen.next()
        for r in responses:
            seq = self._by_uid.get(r.uid)
            if seq is None:
                continue
            state = _state(seq)
            if r.finish_reason is not None:
                state.removed = True
                del self._by_uid[r.uid]
                self._model._keep_cache(r.prompt_cache, list(r.all_tokens))
            if seq.halted:
                continue
            lp = None
            if seq.logprobs is not None:
                logits = state.raw.popleft() if state.raw else None
                lp = self._model._logprobs_of(int(r.token), seq.logprobs, logits, r.logprobs)
            if not seq.give(int(r.token), lp) and r.finish_reason is not None:
                seq.end()

    def _remove(self, seq: batching.Sequence, *, keep: bool) -> None:
        state = _state(seq)
        if state.removed or state.uid < 0:
            return
        state.removed = True
        self._by_uid.pop(state.uid, None)
        caches = self._gen.remove([state.uid], return_prompt_caches=keep)
        if keep and state.uid in caches:
            cache, tokens = caches[state.uid]
            self._model._keep_cache(cache, list(tokens))

    def _cancelled(self, seq: batching.Sequence) -> None:
        self._remove(seq, keep=False)

    def _release(self, seq: batching.Sequence) -> None:
        if seq.running:
            self._remove(seq, keep=not seq.control.stop_requested())
