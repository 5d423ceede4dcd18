"""Speculative decoding's engine-free parts: prompt lookup's guesses, each
sequence's acceptance, and how many guesses a step checks.

An engine that speculates feeds a sequence's last token together with
guessed continuations in one decode, then samples the model at each
position in turn, keeping a guess only while it equals the token sampled
there. Each token is sampled from the model's own distribution given the
tokens before it, exactly as without guesses; a guess only saves the decode
of its position when it was right. (For a draft model that guesses its most
likely token, the standard accept/reject rule reduces to this: the draft's
distribution is a point mass, so a guess is kept with the model's
probability of it, and a rejection samples the model's distribution without
it.) So greedy output is the model's own, and sampled output follows the
model's distribution, with the same seed the same tokens, wherever the
engine rounds a decode of several tokens as it rounds single ones
(llama.cpp's CPU kernels do not always past 256 KV cells: see
docs/backends.md).

Guesses cost: a decode of ``1 + k`` tokens takes longer than one of a
single token (on a CPU, nearly ``1 + k`` times as long for some weight
types), and a draft model's own decodes take time. :class:`Pacer` measures
both and gives each step the number of guesses that yields the most tokens
per second expected, from each sequence's acceptance so far
(:class:`Acceptance`); where guesses do not pay, none are made.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UnsupportedOptionError

__all__ = [
    "DEFAULT_DRAFT_MAX",
    "NGRAM_SIZES",
    "P_MIN",
    "Acceptance",
    "Lookup",
    "Pacer",
    "Speculation",
    "check_vocabulary",
    "expected_tokens",
]

#: The most guesses one step checks for a sequence unless ``draft_max`` says.
DEFAULT_DRAFT_MAX = 16
#: A draft model guesses only while its most likely token has at least this
#: probability (llama.cpp's ``--draft-p-min``): an unsure guess is seldom
#: right, and its check costs.
P_MIN = 0.75
#: Prompt lookup matches the sequence's last this many tokens, longest first.
NGRAM_SIZES = (3, 2)


class Lookup:
    """Prompt lookup over one growing sequence of tokens: its guesses are the
    tokens that followed the latest earlier occurrence of its last
    :data:`NGRAM_SIZES` tokens. The n-grams are indexed as the sequence grows,
    so a step costs the new tokens, not the whole history."""

    __slots__ = ("_indexed", "_seen")

    def __init__(self) -> None:
        #: n -> n-gram -> the position of its last token, latest occurrence.
        self._seen: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAM_SIZES}
        self._indexed = 0  # n-grams ending before this position are in _seen

    def guess(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` guessed continuations of ``tokens`` (which only grows
        between calls), or none."""
        end = len(tokens) - 1  # the last n-gram ends here: looked up, not indexed yet
        for pos in range(self._indexed, end):
            for n, seen in self._seen.items():
                if pos + 1 >= n:
                    seen[tuple(tokens[pos + 1 - n : pos + 1])] = pos
        self._indexed = max(self._indexed, end)
        if k <= 0:
            return []
        for n, seen in self._seen.items():
            if end + 1 >= n:
                at = seen.get(tuple(tokens[end + 1 - n :]))
                if at is not None:
                    return list(tokens[at + 1 : at + 1 + k])
        return []


def expected_tokens(first: float, then: float, k: int) -> float:
    """Tokens a step is expected to emit with ``k`` guesses, the first right
    with probability ``first`` and each later one, when all before it were
    right, with probability ``then``: the sampled token, plus each guess
    while all before it were right."""
    total, p = 1.0, first
    for _ in range(k):
        total += p
        p *= then
    return total


class Acceptance:
    """How often one sequence's guesses are right, after a right guess and
    after a wrong one (or none): guesses come right in runs (a passage being
    copied) and wrong in runs (new text), so the first guess of a step is
    judged by how the last one fared, and each later one as following a
    right one. Counts decay, so that a sequence moving from copying to
    writing anew is followed."""

    __slots__ = ("_counts", "_last_right")

    DECAY = 0.9

    def __init__(self) -> None:
        #: [after a wrong guess, after a right one] -> [right, wrong], decayed.
        self._counts = [[1.0, 1.0], [1.0, 1.0]]
        self._last_right = False

    def rate(self, after_right: bool) -> float:
        right, wrong = self._counts[after_right]
        return right / (right + wrong)

    def expected(self, k: int) -> float:
        """Tokens a step is expected to emit with ``k`` guesses from here."""
        return expected_tokens(self.rate(self._last_right), self.rate(True), k)

    def observe(self, guesses: Sequence[int], emitted: Sequence[int]) -> None:
        """Compare ``guesses`` made before a step with the tokens it
        ``emitted``: each guess up to the first wrong one counts, whether or
        not it was checked in the step (prompt lookup guesses every step, so
        its rates are known before a guess is ever sent)."""
        for guess, token in zip(guesses, emitted, strict=False):
            right = guess == token
            counts = self._counts[self._last_right]
            counts[0] = counts[0] * self.DECAY + right
            counts[1] = counts[1] * self.DECAY + (not right)
            self._last_right = right
            if not right:
                break


class Speculation:
    """One sequence's speculative decoding: its prompt lookup (None with a
    draft model), how often its guesses are right, the most it may make a
    step, and the guesses made for this step (checked or not). An engine
    adds what its step needs."""

    __slots__ = ("acceptance", "draft_max", "guesses", "lookup")

    def __init__(self, *, ngram: bool, draft_max: int) -> None:
        self.lookup = Lookup() if ngram else None
        self.acceptance = Acceptance()
        self.draft_max = draft_max
        self.guesses: list[int] = []


class Pacer:
    """How many guesses a step checks, from measured decode times.

    ``record`` keeps the time of each decode by its width in tokens (and a
    draft model's, by its width in sequences); :meth:`plan` chooses the one
    number of guesses ``k`` (each sequence gets at most ``k``, at most as
    many as it has) that gives the most tokens per second expected, 0 when
    none pays. A width not measured yet is estimated from those that were
    (linearly between them; past the widest, at the slope of the widest two
    of two tokens or more, else an optimistic prior), so that a step tries
    it and learns its real cost.
    """

    __slots__ = ("_draft", "_target", "fixed")

    #: Weight of a new measurement in a width's running time.
    ALPHA = 0.25
    #: Before anything is measured: a decode of ``n`` tokens is assumed to
    #: cost ``1 + PRIOR_SLOPE * (n - 1)`` single-token decodes.
    PRIOR_SLOPE = 0.15
    #: Before a draft decode is measured: its cost, in target decodes.
    PRIOR_DRAFT = 0.25

    def __init__(self) -> None:
        self._target: dict[int, float] = {}
        self._draft: dict[int, float] = {}
        #: Check every guess offered, paying or not (to measure acceptance
        #: and to test the checking itself).
        self.fixed = False

    def record(self, width: int, seconds: float, *, draft: bool = False) -> None:
        table = self._draft if draft else self._target
        old = table.get(width)
        table[width] = seconds if old is None else old + self.ALPHA * (seconds - old)

    def time(self, width: int, *, draft: bool = False) -> float:
        """The expected seconds of one decode ``width`` wide (relative units
        before anything is measured)."""
        table = self._draft if draft else self._target
        if width in table:
            return table[width]
        one = self._one()
        if not table:
            return one * (self.PRIOR_DRAFT if draft else 1 + self.PRIOR_SLOPE * (width - 1))
        known = sorted(table)
        below = [w for w in known if w < width]
        above = [w for w in known if w > width]
        if below and above:
            a, b = below[-1], above[0]
            return table[a] + (table[b] - table[a]) * (width - a) / (b - a)
        if above:  # narrower than any measured: no cheaper than the narrowest
            return table[above[0]]
        last = below[-1]
        # The slope of the widest two widths of two or more tokens: from one
        # token to two, a CPU changes kernels (a matrix-vector product to a
        # matrix one), a step no later width repeats.
        wide = [w for w in below if w >= 2]
        if len(wide) >= 2:
            a, b = wide[-2], wide[-1]
            slope = max((table[b] - table[a]) / (b - a), 0.0)
        else:
            slope = (self.PRIOR_DRAFT if draft else self.PRIOR_SLOPE) * one
        return table[last] + slope * (width - last)

    def _one(self) -> float:
        """A single-token decode's time: measured, else inferred from the
        narrowest width measured through the prior, else 1 (relative)."""
        table = self._target
        if 1 in table:
            return table[1]
        if not table:
            return 1.0
        w = min(table)
        return table[w] / (1 + self.PRIOR_SLOPE * (w - 1))

    def plan(
        self,
        base: int,
        emitting: int,
        offers: Sequence[tuple[Acceptance, int]],
        *,
        room: int,
        drafting: bool = False,
    ) -> int:
        """The most guesses any sequence checks this step.

        ``base``: tokens the step decodes anyway (one per decoding sequence,
        plus any prompt being prefilled); ``emitting``: the sequences that
        sample a token; ``offers``: for each sequence that may guess, its
        acceptance and the guesses it has (or may draft); ``room``: the
        most guesses the batch takes; ``drafting``: guesses come from a
        draft model, whose decodes (one per guess, as wide as the
        sequences that guess) cost too.
        """
        most = max((n for _, n in offers), default=0)
        if self.fixed:
            return min(most, room)
        best_k, best = 0, emitting / self.time(base)
        for k in range(1, most + 1):
            sent = [min(k, n) for _, n in offers]
            extra = sum(sent)
            if extra > room:
                break
            tokens = emitting + sum(
                acc.expected(n) - 1 for (acc, _), n in zip(offers, sent, strict=True)
            )
            seconds = self.time(base + extra)
            if drafting:
                seconds += k * self.time(sum(1 for n in sent if n), draft=True)
            if tokens / seconds > best:
                best_k, best = k, tokens / seconds
        return best_k


def check_vocabulary(ours: Sequence[str], theirs: Sequence[str], path: str, backend: str) -> None:
    """UnsupportedOptionError saying why, unless the draft model at ``path``
    has the model's tokens (``theirs`` and ``ours``, by id) with the same
    ids: a guess is a token id of one model checked by the other."""
    why = ""
    if not ours or not theirs:
        why = "one of the two lists no tokens"
    elif len(ours) != len(theirs):
        why = f"its vocabulary has {len(theirs)} tokens, the model's {len(ours)}"
    else:
        differ = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), -1)
        if differ >= 0:
            why = f"token {differ} is {theirs[differ]!r} in it, {ours[differ]!r} in the model"
    if why:
        raise UnsupportedOptionError(
            f"{path} cannot be the draft model: {why}; a draft model must have the "
            "model's vocabulary",
            option="draft_model",
            backend=backend,
        )
