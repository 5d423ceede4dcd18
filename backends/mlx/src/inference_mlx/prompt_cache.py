"""The prompt cache of an MLX model: finished sequences' KV caches, reused by
a later sequence for the prefix they share (the next turn of a chat
prefills only its new tokens; a system prompt seen before is not prefilled
again).

The last finished sequence's cache is always kept (as a llama.cpp slot
keeps its cells); older ones stay while they fit the host-memory budget
(the load option ``cache_host_mib``), least recently used out first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inference.options import GenerateConfig

__all__ = ["WORTH_TAKING", "PromptCache"]

#: A kept cache is taken for a prompt that shares at least this many of its
#: tokens, or would lose fewer than this many: an unrelated prompt that
#: shares only a template's opening starts a new cache instead.
WORTH_TAKING = 64


class _Kept:
    __slots__ = ("cache", "size", "tokens")

    def __init__(self, cache: Any, tokens: list[int]) -> None:
        self.cache = cache
        self.tokens = tokens
        self.size = sum(int(getattr(layer, "nbytes", 0) or 0) for layer in cache)


class PromptCache:
    """Kept KV caches and the tokens each holds (engine thread only)."""

    def __init__(self, budget: int = 0) -> None:
        self._budget = budget
        self._kept: list[_Kept] = []  # most recently kept or used last

    def take(self, model: Any, ids: Sequence[int], cfg: GenerateConfig) -> tuple[Any, int, str]:
        """The KV cache for a sequence on ``ids``, how many of them it holds
        already, and where it came from ("slot": the last one kept, "host":
        an older one, "": a new cache): the kept cache sharing the longest
        prefix, trimmed to it (and given away), else a new one.

        Not with a repeat penalty: mlx-lm's penalty sees only the tokens fed
        in this call, so a reused prefix would change the answer.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        best, common = None, 0
        if cfg.repeat_penalty == 1.0:
            limit = len(ids) - 1  # at least one token is fed
            for kept in self._kept:
                top = min(len(kept.tokens), limit)
                n = 0
                while n < top and kept.tokens[n] == ids[n]:
                    n += 1
                # Not a cache that would lose much for little: it stays kept.
                worth = n >= WORTH_TAKING or len(kept.tokens) - n < WORTH_TAKING
                if n > common and worth and can_trim_prompt_cache(kept.cache):
                    best, common = kept, n
        if best is not None:
            tier = "slot" if best is self._kept[-1] else "host"
            self._kept.remove(best)
            extra = len(best.tokens) - common
            trimmed: Any = trim_prompt_cache(
                best.cache, extra
            )  # an int, whatever its annotation says
            if trimmed == extra:
                return best.cache, common, tier
        return make_prompt_cache(model), 0, ""

    def keep(self, cache: Any, fed: list[int]) -> None:
        """Keep ``cache`` if it holds exactly ``fed`` (one cancelled
        mid-prefill holds fewer), and the older ones that still fit."""
        offsets = {getattr(layer, "offset", None) for layer in cache}
        if offsets != {len(fed)}:
            return
        self._kept.append(_Kept(cache, fed))
        used = sum(k.size for k in self._kept)
        while len(self._kept) > 1 and used - self._kept[-1].size > self._budget:
            used -= self._kept.pop(0).size

    def clear(self) -> None:
        self._kept = []
