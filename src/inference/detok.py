"""From token bytes to token text: incremental UTF-8 and stop strings.

:class:`TextAssembler` takes each generated token's raw bytes and hands back
the :class:`~inference.Token` objects to emit. It never shows a replacement
character for a character split across tokens (the token that starts it
carries ``""``), holds back text that might be the start of a stop string,
and releases it when it turns out not to be. The texts it emits concatenate
to exactly the generated text, without the stop string. Stop strings are
matched by one Knuth-Morris-Pratt automaton each, fed every character once:
the work is linear in the text and the stop strings, however long the held
text grows (a prefix of a long stop string is held until it cannot match).

:class:`LogprobAssembler` wraps one to give each emitted token the
log-probabilities of its id (``logprobs=k``).
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Sequence

from .types import Token, TokenLogprob

__all__ = ["LogprobAssembler", "TextAssembler"]


def _failure(pattern: str) -> list[int]:
    """KMP's failure function: for each prefix of ``pattern``, the length of
    its longest proper prefix that is also its suffix."""
    fail = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    return fail


class TextAssembler:
    """Turns (id, bytes) pairs into tokens to emit; one per generation."""

    __slots__ = (
        "_buf",
        "_decode",
        "_fail",
        "_matched",
        "_pending",
        "_stops",
        "matched",
        "stopped",
    )

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._stops = tuple(stop)
        self._fail = [_failure(s) for s in self._stops]
        #: Per stop string: how much of it the text so far ends with.
        self._matched = [0] * len(self._stops)
        self._pending: list[Token] = []
        self._buf = ""
        #: Set once a stop string has matched; nothing more is emitted.
        self.stopped = False
        #: The stop string that matched (the earliest in the text), once one has.
        self.matched: str | None = None

    def push(self, token_id: int, data: bytes) -> list[Token]:
        """Add one token; return the tokens that are now safe to emit."""
        text = self._decode(data)
        if not self._stops:
            return [Token(token_id, text)]
        self._pending.append(Token(token_id, text))
        start = len(self._buf)
        self._buf += text
        return self._scan(text, start)

    def _scan(self, text: str, start: int) -> list[Token]:
        """Feed ``text`` (at ``start`` in the held text) to every stop
        string's automaton; cut at the earliest stop string it completes, or
        emit all but the longest tail that could still begin one."""
        cut = -1
        for j, stop in enumerate(self._stops):
            fail, k, size = self._fail[j], self._matched[j], len(stop)
            for offset, ch in enumerate(text):
                while k and ch != stop[k]:
                    k = fail[k - 1]
                if ch == stop[k]:
                    k += 1
                if k == size:  # this stop string's first occurrence
                    begin = start + offset + 1 - size
                    if cut == -1 or begin < cut:
                        cut, self.matched = begin, stop
                    break
            self._matched[j] = k
        if cut != -1:
            self.stopped = True
            return self._take(cut, partial=True)
        return self._take(len(self._buf) - max(self._matched), partial=False)

    def _take(self, upto: int, *, partial: bool) -> list[Token]:
        """Emit pending tokens whose text ends at or before ``upto``.

        With ``partial`` the token that crosses ``upto`` is emitted cut short
        and everything after it is dropped (a stop string matched there).
        """
        out: list[Token] = []
        used = 0
        keep = 0
        for keep, tok in enumerate(self._pending):  # noqa: B007
            end = used + len(tok.text)
            if end <= upto:
                out.append(tok)
                used = end
                continue
            if partial:
                head = tok.text[: upto - used]
                if head:
                    out.append(Token(tok.id, head))
                self._pending.clear()
                self._buf = ""
                return out
            break
        else:
            keep = len(self._pending)
        del self._pending[:keep]
        self._buf = self._buf[used:]
        return out

    def flush(self) -> list[Token]:
        """The generation ended without a stop string: release what was held."""
        out, self._pending, self._buf = self._pending, [], ""
        return out


class LogprobAssembler:
    """A :class:`TextAssembler` whose tokens carry their log-probabilities.

    ``push(token_id, data, logprob, top)`` takes one token's figures with its
    bytes. The assembler emits one token per id, in order (holding some back
    for stop strings), so each id's figures wait in a queue until its token
    is emitted; those of tokens a stop string drops are dropped with them.
    """

    __slots__ = ("_asm", "_pending", "k")

    def __init__(self, asm: TextAssembler, k: int = 0) -> None:
        self._asm = asm
        #: The alternatives asked for per token (``logprobs=k``).
        self.k = k
        self._pending: deque[tuple[float, tuple[TokenLogprob, ...]]] = deque()

    @property
    def stopped(self) -> bool:
        return self._asm.stopped

    def push(
        self, token_id: int, data: bytes, logprob: float, top: tuple[TokenLogprob, ...]
    ) -> list[Token]:
        self._pending.append((logprob, top))
        return self._attach(self._asm.push(token_id, data))

    def flush(self) -> list[Token]:
        return self._attach(self._asm.flush())

    def _attach(self, out: list[Token]) -> list[Token]:
        emitted = []
        for tok in out:
            logprob, top = self._pending.popleft()
            emitted.append(Token(tok.id, tok.text, logprob, top))
        return emitted
