"""Speculative decoding on MLX: a step that checks guessed tokens, and the
draft model that guesses them (``draft_model=``; prompt lookup's guesses
are :class:`inference.speculation.Lookup`'s).

mlx-lm's ``BatchGenerator`` decodes one token per sequence a step, and its
own speculative path (``speculative_generate_step``) runs one sequence
outside any batch. So the scheduler checks guesses where a step decodes
one sequence alone (as the llama.cpp backend does: see
:data:`inference_llamacpp.batching.SPECULATE_UP_TO`): :func:`step` then
takes the place of the generator's own step for that sequence, on the
generator's batch, its cache and its sampling state. It feeds the token the
last step sampled and the guesses in one forward pass, then samples each
position in turn with the sequence's own logits processors and sampler,
keeping a guess only while it equals the token sampled there; the rejected
guesses are trimmed from the cache. The batch is left exactly as the
generator's own steps would have left it after those tokens (the next token
sampled and pending, the cache, the token history, the processors' context,
the stop matcher, the count), so the generator's next step, when another
sequence joins, goes on from it; each token is drawn by the same sampler
call, a seeded sampler's key split once a token, as without guesses.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

from inference import speculation
from inference.errors import GenerationError
from inference.speculation import P_MIN, Pacer

__all__ = ["Drafter", "Speculation", "solo", "step", "tokens_by_id", "unable"]

#: The generator's batch attributes :func:`step` reads or keeps in step
#: (mlx-lm 0.32's ``GenerationBatch``).
_BATCH_STATE = (
    "model",
    "fallback_sampler",
    "_next_tokens",
    "_next_logprobs",
    "_token_context",
    "_num_tokens",
    "_matchers",
    "prompt_cache",
    "tokens",
    "samplers",
    "logits_processors",
    "max_tokens",
    "uids",
)


class Speculation(speculation.Speculation):
    """A sequence's speculation, and the guesses it made at its last two
    steps, each with the acceptance that judges it and where in the tokens
    it begins: a step's guesses are judged two steps on, when the token
    sampled after the last one checked (pending until a step decodes it)
    is among the tokens."""

    __slots__ = ("judging", "made")

    def __init__(self, how: str, *, draft_max: int) -> None:
        super().__init__(how, draft_max=draft_max)
        self.made: list[tuple[speculation.Acceptance, list[int], int]] = []  # this step's
        self.judging: list[tuple[speculation.Acceptance, list[int], int]] = []  # the last's

    def judge(self, tokens: list[int]) -> None:
        """Judge the guesses made two steps before by ``tokens`` (the
        sequence's, every one decoded), and move the last step's up."""
        for acceptance, guesses, at in self.judging:
            acceptance.observe(guesses, tokens[at:])
        self.judging, self.made = self.made, []


def unable(model: Any) -> str:
    """Why ``model`` cannot check guesses on this mlx-lm, or ""."""
    from mlx_lm.generate import GenerationBatch
    from mlx_lm.models.cache import RotatingKVCache, can_trim_prompt_cache, make_prompt_cache

    cache = make_prompt_cache(model)
    if any(isinstance(c, RotatingKVCache) for c in cache) or not can_trim_prompt_cache(cache):
        return "its cache (a sliding window or a recurrent state) cannot drop rejected guesses"
    empty = GenerationBatch.empty(model, lambda x: x)
    if not all(hasattr(empty, name) for name in _BATCH_STATE):
        return "this mlx-lm's generation batch is not the one this backend was written for"
    return ""


def solo(gen: Any) -> Any:
    """The generator's batch when it decodes one sequence and holds no other
    (none prefilling or waiting), else None."""
    batch = getattr(gen, "_generation_batch", None)
    if batch is None or len(batch.uids) != 1:
        return None
    if len(gen._prompt_batch) or gen._unprocessed_sequences:
        return None
    return batch


def step(batch: Any, guesses: list[int]) -> list[Any]:
    """One decode of ``batch``'s one sequence with ``guesses`` of what follows
    its pending token: the generator's responses for the tokens it emits
    (the pending one, then each guess kept; the last token sampled is
    pending now)."""
    import mlx.core as mx

    pending = int(batch._next_tokens[0].item())
    fed = [pending, *guesses]
    inputs = mx.array(fed, dtype=mx.uint32)
    logits = batch.model(inputs[None], cache=batch.prompt_cache)[0]
    processors = batch.logits_processors[0] or ()
    sampler = batch.samplers[0] or batch.fallback_sampler
    context = batch._token_context[0]
    sampled: list[int] = []
    logprobs: list[Any] = [batch._next_logprobs[0]]  # each fed token's
    for i in range(len(fed)):
        row = logits[i : i + 1]
        if processors:
            tokens = context.update_and_fetch(inputs[i : i + 1])
            for processor in processors:
                row = processor(tokens, row)
        row = row - mx.logsumexp(row, axis=-1, keepdims=True)
        token = sampler(row)
        sampled.append(int(token.item()))
        logprobs.append(row[0])
        if i == len(guesses) or sampled[-1] != guesses[i]:
            break
    batch._next_tokens, batch._next_logprobs = token, [logprobs[-1]]
    return _emit(batch, fed[: len(sampled)], logprobs, len(fed))


def _emit(batch: Any, tokens: list[int], logprobs: list[Any], fed: int) -> list[Any]:
    """The responses for ``tokens`` (fed and kept), as the generator's step
    gives them; the cache trimmed to what it keeps."""
    from mlx_lm.generate import GenerationBatch

    uid, history = batch.uids[0], batch.tokens[0]
    out = []
    for token, lp in zip(tokens, logprobs, strict=False):
        history.append(token)
        batch._num_tokens[0] += 1
        finish = None
        if batch._num_tokens[0] >= batch.max_tokens[0]:
            finish = "length"
        if batch._matchers[0].advance(token):
            finish = "stop"
        if finish is None:
            out.append(GenerationBatch.Response(uid, token, lp, None, None, None))
            continue
        _trim(batch, fed - len(out) - 1)
        cache = batch.extract_cache(0)
        out.append(GenerationBatch.Response(uid, token, lp, finish, cache, history))
        batch.filter([])
        return out
    _trim(batch, fed - len(tokens))
    return out


def _trim(batch: Any, n: int) -> None:
    if n > 0:
        for layer in batch.prompt_cache:
            layer.trim(n)


def tokens_by_id(vocabulary: Mapping[str, int]) -> list[str]:
    """A tokenizer's token strings in the order of their ids below its size
    ("" for an id there none has), then those with ids past it, named with
    their ids: at most twice its size, whatever ids a tokenizer file says."""
    n = len(vocabulary)
    out = [""] * n
    beyond: list[tuple[int, str]] = []
    for token, i in vocabulary.items():
        if 0 <= i < n:
            out[i] = token
        else:
            beyond.append((i, token))
    return out + [f"{t} (id {i})" for i, t in sorted(beyond)]


class Drafter:
    """A draft model and its one KV cache: one sequence guesses at a time
    (:func:`solo`), so the cache holds a prefix of that sequence's tokens,
    brought up to them before each guess (a rejected guess costs nothing to
    undo, and a new sequence starts from the prefix it shares)."""

    def __init__(self, model: Any, *, prefill_step_size: int) -> None:
        self._model = model
        self._step = prefill_step_size
        self._cache: Any = None
        self._held: list[int] = []  # the tokens whose KV the cache holds

    def guess(self, tokens: list[int], k: int, pacer: Pacer) -> list[int]:
        """Up to ``k`` greedy guesses of what follows ``tokens``, stopping
        where the draft's most likely token falls below :data:`P_MIN`; each
        decode's time goes to ``pacer``, the first's with the catching up it
        took (a cache behind by many tokens, as after a run of prompt
        lookup's guesses, makes the draft model's guesses dearer)."""
        import mlx.core as mx

        start = time.perf_counter()
        logits = self._catch_up(tokens)
        pacer.record(1, time.perf_counter() - start, draft=True)
        out: list[int] = []
        while True:
            probs = mx.softmax(logits.astype(mx.float32), axis=-1)
            best = mx.argmax(probs)
            if cast("float", probs[best].item()) < P_MIN:
                return out
            out.append(cast("int", best.item()))
            if len(out) >= k:
                return out
            start = time.perf_counter()
            logits = self._forward([out[-1]])
            mx.eval(logits)
            pacer.record(1, time.perf_counter() - start, draft=True)
            self._held.append(out[-1])

    def _catch_up(self, tokens: list[int]) -> Any:
        """The draft's logits after ``tokens``, its cache brought up to them."""
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        from .prompt_cache import common_prefix

        held = self._held
        n = common_prefix(held, tokens, len(tokens) - 1)  # the last token is always fed
        if self._cache is None:
            self._cache = make_prompt_cache(self._model)
        elif n < len(held):
            trim_prompt_cache(self._cache, len(held) - n)
            del held[n:]
        logits = None
        while n < len(tokens):
            chunk = tokens[n : n + self._step]
            logits = self._forward(chunk)
            mx.eval(logits)
            held.extend(chunk)
            n += len(chunk)
        return logits

    def _forward(self, tokens: list[int]) -> Any:
        import mlx.core as mx

        try:
            out = self._model(mx.array([tokens], dtype=mx.uint32), cache=self._cache)
        except Exception as exc:  # its cache is unknown now: start over
            self._cache, self._held = None, []
            raise GenerationError(f"the draft model failed: {exc}") from exc
        return out[0, -1]

    def release(self) -> None:
        self._model = self._cache = None
        self._held = []
