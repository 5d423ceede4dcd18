"""The prompt cache of an MLX model: finished sequences' KV caches, reused by
a later sequence for the prefix they share (the next turn of a chat
prefills only its new tokens; a system prompt seen before is not prefilled
again).

The last finished sequence's cache is always kept (as a llama.cpp slot
keeps its cells); older ones stay while they fit the host-memory budget
(the load option ``cache_host_mib``), least recently used out first. With a
disk tier (``cache_dir``), a finished sequence of at least a block of
tokens is also written there in mlx-lm's own format
(``save_prompt_cache``, safetensors), so that a fresh process restores it
(``load_prompt_cache``). A running sequence's cache is shared by the
scheduler (:meth:`inference_mlx.batching.Scheduler._admit`), and so are a
sliding-window model's checkpoints, its caches at each block boundary of a
prefill (:meth:`inference_mlx.batching.Scheduler._checkpoint`): such a
cache cannot be trimmed once its window has wrapped, so a checkpoint is lent
as a copy and stays.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Sequence
from typing import Any

from inference.disk_cache import DiskCache
from inference.options import GenerateConfig

__all__ = ["WORTH_TAKING", "PromptCache", "common_prefix", "dump", "load", "trimmed"]

_log = logging.getLogger("inference.cache")

#: A kept cache is taken for a prompt that shares at least this many of its
#: tokens, or would lose fewer than this many: an unrelated prompt that
#: shares only a template's opening starts a new cache instead.
WORTH_TAKING = 64


class _Kept:
    __slots__ = ("cache", "checkpoint", "size", "tokens")

    def __init__(self, cache: Any, tokens: list[int], checkpoint: bool) -> None:
        self.cache = cache
        self.tokens = tokens
        self.checkpoint = checkpoint  # a prefill's, kept for every prompt sharing it
        self.size = nbytes(cache)


def nbytes(cache: Any) -> int:
    return sum(int(getattr(layer, "nbytes", 0) or 0) for layer in cache)


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    top = min(len(a), len(b), limit)
    n = 0
    while n < top and a[n] == b[n]:
        n += 1
    return n


def trimmed(cache: Any, n: int) -> bool:
    """Trim ``cache`` (a model's list of layer caches) to its first ``n``
    tokens; False when it cannot be (a rotating window cache past its size)."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    extra = int(getattr(cache[0], "offset", n)) - n
    if extra == 0:
        return True
    if extra < 0 or not can_trim_prompt_cache(cache):
        return False
    done: Any = trim_prompt_cache(cache, extra)  # an int, whatever its annotation says
    return bool(done == extra)


class _Named(io.BytesIO):
    # mx.load reads a file-like object by the format its name gives.
    name = "prompt.safetensors"


def dump(cache: Any) -> bytes:
    """``cache`` in mlx-lm's prompt-cache format (safetensors)."""
    from mlx_lm.models.cache import save_prompt_cache

    buf = io.BytesIO()
    save_prompt_cache(buf, cache)  # type: ignore[arg-type]  # mx.save_safetensors takes a file
    return buf.getvalue()


def load(data: bytes) -> Any:
    """The cache :func:`dump` wrote."""
    from mlx_lm.models.cache import load_prompt_cache

    return load_prompt_cache(_Named(data))  # type: ignore[no-untyped-call]


class PromptCache:
    """Kept KV caches and the tokens each holds (engine thread only), and
    the disk tier when there is one."""

    def __init__(self, budget: int = 0, disk: DiskCache | None = None) -> None:
        self._budget = budget
        self._disk = disk
        self._kept: list[_Kept] = []  # most recently kept or used last

    def shares(self, ids: Sequence[int], cfg: GenerateConfig) -> int:
        """How many tokens of ``ids`` :meth:`take` would start from in
        memory (the disk tier is not looked at)."""
        best = self._best(ids, cfg)
        return best[1] if best is not None else 0

    def _best(self, ids: Sequence[int], cfg: GenerateConfig) -> tuple[_Kept, int] | None:
        from mlx_lm.models.cache import can_trim_prompt_cache

        if cfg.repeat_penalty != 1.0:
            return None
        best, common = None, 0
        limit = len(ids) - 1  # at least one token is fed
        for kept in self._kept:
            n = common_prefix(kept.tokens, ids, limit)
            # Not a cache that would lose much for little: it stays kept.
            worth = n >= WORTH_TAKING or len(kept.tokens) - n < WORTH_TAKING
            trims = n == len(kept.tokens) or can_trim_prompt_cache(kept.cache)
            if n > common and worth and trims:
                best, common = kept, n
        return (best, common) if best is not None else None

    def take(self, model: Any, ids: Sequence[int], cfg: GenerateConfig) -> tuple[Any, int, str]:
        """The KV cache for a sequence on ``ids``, how many of them it holds
        already, and where it came from ("slot": the last one kept, "host":
        an older one, "disk", "": a new cache): the kept cache sharing the
        longest prefix, trimmed to it (and given away), or one on disk
        sharing :data:`WORTH_TAKING` tokens more, else a new one.

        Not with a repeat penalty: mlx-lm's penalty sees only the tokens fed
        in this call, so a reused prefix would change the answer.
        """
        from mlx_lm.models.cache import make_prompt_cache

        best = self._best(ids, cfg)
        common = best[1] if best is not None else 0
        restored = self._from_disk(ids, common) if cfg.repeat_penalty == 1.0 else None
        if restored is not None:
            return restored
        if best is not None:
            kept = best[0]
            tier = "slot" if kept is self._kept[-1] else "host"
            self._kept.remove(kept)
            cache = kept.cache
            if kept.checkpoint:  # a copy goes; it stays, most recently used
                self._kept.append(kept)
                cache = copy.deepcopy(cache)
            if trimmed(cache, common):
                return cache, common, tier
        return make_prompt_cache(model), 0, ""

    def _from_disk(self, ids: Sequence[int], common: int) -> tuple[Any, int, str] | None:
        disk = self._disk
        if disk is None:
            return None
        found = disk.find(ids, len(ids) - 1, common + WORTH_TAKING)
        if found is None:
            return None
        entry, n = found
        try:
            cache = load(entry.state)
        except Exception as exc:  # a whole entry (its checksum held) mlx-lm cannot read
            _log.warning("the prefix cache could not load an entry of %d tokens: %s", n, exc)
            return None
        return (cache, n, "disk") if trimmed(cache, n) else None

    def keep(self, cache: Any, fed: list[int], *, checkpoint: bool = False) -> None:
        """Keep ``cache`` if it holds exactly ``fed`` (one cancelled
        mid-prefill holds fewer), and the older ones that still fit; write
        it to the disk tier too. A ``checkpoint`` (a sliding-window model's
        cache at a block boundary of a prefill) is lent as a copy, and stays."""
        offsets = {getattr(layer, "offset", None) for layer in cache}
        if offsets != {len(fed)}:
            return
        if checkpoint and any(k.checkpoint and k.tokens == fed for k in self._kept):
            return  # two prefills of one prompt at once
        if self._disk is not None:
            from mlx_lm.models.cache import can_trim_prompt_cache

            # A cache that cannot be trimmed serves only prompts sharing all of it.
            floor = 0 if can_trim_prompt_cache(cache) else len(fed)
            self._disk.submit(fed, nbytes(cache), lambda: dump(cache), floor)
        self._kept.append(_Kept(cache, fed, checkpoint))
        used = sum(k.size for k in self._kept)
        while len(self._kept) > 1 and used - self._kept[-1].size > self._budget:
            used -= self._kept.pop(0).size

    def clear(self) -> None:
        self._kept = []
        if self._disk is not None:
            self._disk.close()  # a restart finds what was written
