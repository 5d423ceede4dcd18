"""The host-memory tier of the prefix cache: the KV of prompts evicted from
the slots, kept as llama.cpp's per-sequence state, least recently used out
first past a byte budget.

When a slot that holds a long prompt's KV is taken for a prompt that shares
none of it, the scheduler saves that KV here first
(``llama_state_seq_get_data``); a later prompt that begins with it starts
from it (``llama_state_seq_set_data`` into its slot, then trimmed to the
shared prefix), as it would from a slot. An entry is found by its tokens: the
longest common prefix with the prompt, to the token, and no shorter than the
entry's *floor*: a sliding-window cache keeps only its window's last cells,
so its KV can be trimmed to a prefix no shorter than the first cell it holds
plus the window (see ``Scheduler._floor``); a full cache's floor is 0.

Pure bookkeeping: the scheduler moves the bytes in and out of the engine.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SPILL_AT_LEAST", "HostCache", "Kept"]
#: The fewest cells a slot must hold for its KV to be kept when it is taken.
SPILL_AT_LEAST = 128


@dataclass(frozen=True)
class Kept:
    """One kept KV: the tokens it holds, llama.cpp's state of them, and the
    shortest prefix it can be trimmed to."""

    tokens: tuple[int, ...]
    state: bytes
    floor: int = 0


class HostCache:
    """Kept KV by token prefix, within ``budget`` bytes (the load option
    ``cache_host_mib``)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._kept: OrderedDict[tuple[int, ...], Kept] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._kept)

    def covers(self, tokens: Sequence[int], floor: int = 0) -> bool:
        """Whether a kept entry serves every prefix that ``tokens`` (trimmed
        to no fewer than ``floor``) would: keeping them would add nothing."""
        key = tuple(tokens)
        with self._lock:
            return any(_covers(kept, key, floor) for kept in self._kept.values())

    def keep(self, tokens: Sequence[int], state: bytes, floor: int = 0) -> None:
        """Keep ``state`` (the KV of ``tokens``, which trims to no fewer than
        ``floor``); entries it covers go, and the least recently used past
        the budget."""
        if len(state) > self._budget or not tokens:
            return
        new = Kept(tuple(tokens), state, floor)
        with self._lock:
            for old in [k for k, kept in self._kept.items() if _covers(new, k, kept.floor)]:
                self._used -= len(self._kept.pop(old).state)
            self._kept[new.tokens] = new
            self._used += len(state)
            while self._used > self._budget:
                _, gone = self._kept.popitem(last=False)
                self._used -= len(gone.state)

    def find(self, prompt: Sequence[int], limit: int) -> tuple[Kept, int] | None:
        """The entry sharing the longest prefix with ``prompt`` (at most
        ``limit`` tokens, at least its floor), and that length; None when
        none does."""
        best: tuple[Kept, int] | None = None
        with self._lock:
            for kept in self._kept.values():
                n = 0
                tokens = kept.tokens
                top = min(len(tokens), limit)
                while n < top and tokens[n] == prompt[n]:
                    n += 1
                if n and n >= kept.floor and (best is None or n > best[1]):
                    best = (kept, n)
            if best is not None:
                self._kept.move_to_end(best[0].tokens)
        return best


def _covers(kept: Kept, tokens: tuple[int, ...], floor: int) -> bool:
    """Whether ``kept`` serves every prefix of ``tokens`` from ``floor`` on."""
    n = len(tokens)
    return len(kept.tokens) >= n and kept.floor <= floor and kept.tokens[:n] == tokens
