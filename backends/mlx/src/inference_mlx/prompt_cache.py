"""The prompt cache of an MLX model: the last finished sequence's KV cache,
reused by the next sequence for the prefix the two share (the next turn of a
chat prefills only its new tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inference.options import GenerateConfig

__all__ = ["PromptCache"]


class PromptCache:
    """One KV cache and the tokens it holds (engine thread only)."""

    def __init__(self) -> None:
        self._cache: Any = None
        self._tokens: list[int] = []

    def take(self, model: Any, ids: Sequence[int], cfg: GenerateConfig) -> tuple[Any, int]:
        """The KV cache for a sequence on ``ids``, and how many of them it
        holds already: the kept cache trimmed to the prefix the two share,
        else a new one. The kept cache is given away (invalid until a
        sequence that ends well is kept again).

        Not with a repeat penalty: mlx-lm's penalty sees only the tokens fed
        in this call, so a reused prefix would change the answer.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        cache, cached = self._cache, self._tokens
        self.clear()
        if cache is not None and cfg.repeat_penalty == 1.0 and can_trim_prompt_cache(cache):
            limit = min(len(cached), len(ids) - 1)  # at least one token is fed
            common = 0
            while common < limit and cached[common] == ids[common]:
                common += 1
            extra = len(cached) - common
            trimmed: Any = trim_prompt_cache(cache, extra)  # an int, whatever its annotation says
            if common and trimmed == extra:
                return cache, common
        return make_prompt_cache(model), 0

    def keep(self, cache: Any, fed: list[int]) -> None:
        """Keep ``cache`` for the next sequence if it holds exactly ``fed``
        (one cancelled mid-prefill holds fewer)."""
        offsets = {getattr(layer, "offset", None) for layer in cache}
        if offsets == {len(fed)}:
            self._cache, self._tokens = cache, fed

    def clear(self) -> None:
        self._cache, self._tokens = None, []
