"""How the next token is chosen on MLX: mlx-lm's sampler and logits
processors for a call's options, a constraint's mask, and the
log-probabilities of a sampled token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from inference.errors import GenerationError
from inference.options import GenerateConfig

__all__ = ["PENALTY_LAST_N", "keyed_sampler", "log_softmax", "logprobs_of", "masker", "sampling"]

#: Tokens the repeat penalty looks back over (as the llama.cpp backend).
PENALTY_LAST_N = 64


def sampling(cfg: GenerateConfig, vocab_size: int) -> tuple[Any, list[Any]]:
    """mlx-lm's sampler and logits processors for ``cfg``; a seeded sampler
    draws from its own key (see :func:`keyed_sampler`)."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    top_k = cfg.top_k if not vocab_size or cfg.top_k < vocab_size else 0
    if cfg.temperature > 0 and cfg.seed is not None:
        sampler = keyed_sampler(cfg, top_k)
    else:
        sampler = make_sampler(temp=cfg.temperature, top_p=cfg.top_p, min_p=cfg.min_p, top_k=top_k)
    processors = make_logits_processors(
        repetition_penalty=cfg.repeat_penalty if cfg.repeat_penalty != 1.0 else None,
        repetition_context_size=PENALTY_LAST_N,
    )
    return sampler, processors


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


def masker(guide: Any) -> Any:
    """An mlx-lm logits processor that applies ``guide``'s mask.

    mlx-lm calls it for each step with the tokens so far: from the second
    call on, the last of them is the token just sampled, which the guide
    consumes before it gives the next mask. It never raises inside the
    generator's step, which every sequence shares: a constraint that fails
    is recorded in ``guide.failure``, and the scheduler ends that sequence
    alone.
    """
    import mlx.core as mx
    import numpy as np

    started = False

    def constrain(tokens: Any, logits: Any) -> Any:
        nonlocal started
        if guide.stopped or guide.failure is not None:
            return logits  # a step after the end: its token is never used
        try:
            if started:
                guide.consume(int(tokens[-1].item()))
            started = True
            if guide.stopped:
                return logits
            allowed = guide.allowed()
        except GenerationError as exc:
            guide.failure = exc
            return logits
        width = logits.shape[-1]
        if len(allowed) < width:
            allowed = np.concatenate([allowed, np.zeros(width - len(allowed), dtype=bool)])
        return mx.where(mx.array(allowed[:width]), logits, -mx.inf)

    return constrain


def log_softmax(logits: Any) -> Any:
    import mlx.core as mx

    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def logprobs_of(
    token_id: int, k: int, raw: Any, logprobs: Any
) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of ``token_id`` and the ``k`` most likely tokens,
    from the raw logits of its step when kept (``raw``: before the logits
    processors), else from ``logprobs``."""
    import mlx.core as mx

    if raw is not None:
        logprobs = log_softmax(raw)
    logprobs = logprobs.reshape(-1).astype(mx.float32)
    chosen = float(logprobs[token_id].item())
    if k <= 0:
        return chosen, []
    ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
    values = logprobs[ids]
    pairs = zip(cast("list[int]", ids.tolist()), cast("list[float]", values.tolist()), strict=True)
    return chosen, sorted(pairs, key=lambda p: (-p[1], p[0]))
