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

import statistics
from collections import deque
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
#: Prompt lookup matches the sequence's last this many tokens, longest first:
#: a longer match finds the occurrence whose context is the sequence's own.
#: Against (3, 2), in two alternating runs on SmolLM2 Q8_0 (128 tokens, 3
#: rounds each), editing code went from 1.07x and 1.09x to 1.21x and 1.26x
#: of plain decoding, quoting a passage from 1.59x and 1.40x to 1.54x and
#: 1.86x, the rest within the runs' spread.
NGRAM_SIZES = (5, 4, 3, 2)


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
    """One sequence's speculative decoding: its prompt lookup (None without
    one), whether a draft model guesses for it (with both, lookup's guesses
    come first, as llama.cpp orders its kinds: they cost nothing to make),
    how often each source's guesses are right, and the most it may make a
    step. An engine adds what its step needs."""

    __slots__ = ("acceptance", "draft_acceptance", "draft_max", "drafting", "lookup")

    def __init__(self, how: str, *, draft_max: int) -> None:
        """``how``: one of :data:`inference.options.SPECULATION`."""
        kinds = how.split("+")
        self.lookup = Lookup() if "ngram" in kinds else None
        self.drafting = "draft" in kinds
        self.acceptance = Acceptance()  # prompt lookup's guesses
        self.draft_acceptance = Acceptance()  # the draft model's
        self.draft_max = draft_max


class _Costs:
    """One model's recent decode times: single-token decodes, whose median
    is their time, and wider ones, whose times by width fix a line (Theil
    and Sen's: the median of the slopes between widths), which one slow
    decode, or one width measured badly among several, barely moves."""

    __slots__ = ("_line", "ones", "wide")

    #: Recent decodes kept per width, and widths kept (the latest used).
    KEEP = 5
    WIDTHS = 16

    def __init__(self) -> None:
        self.ones: deque[float] = deque(maxlen=self.KEEP)
        #: Width -> its recent decodes' seconds, the latest used last.
        self.wide: dict[int, deque[float]] = {}
        self._line: tuple[float, float] | None = None  # fitted on demand

    def record(self, width: int, seconds: float) -> None:
        if not seconds > 0:  # a clock that did not move measured nothing
            return
        if width <= 1:
            self.ones.append(seconds)
            return
        recent = self.wide.pop(width, None) or deque(maxlen=self.KEEP)
        recent.append(seconds)
        self.wide[width] = recent
        if len(self.wide) > self.WIDTHS:
            del self.wide[next(iter(self.wide))]
        self._line = None

    def one(self) -> float | None:
        return statistics.median(self.ones) if self.ones else None

    def least(self) -> float:
        """The least a single-token decode takes: measured, else the
        narrowest wider decode's time per token (a decode of ``n`` tokens
        takes no longer than ``n`` single ones); 0 before any is measured."""
        one = self.one()
        if one is not None:
            return one
        if not self.wide:
            return 0.0
        width = min(self.wide)
        return statistics.median(self.wide[width]) / width

    def widest(self) -> int:
        """The widest decode measured (0: none)."""
        return max(self.wide, default=1 if self.ones else 0)

    def line(self) -> tuple[float, float] | None:
        """``(intercept, slope)`` of wider decodes' seconds against their
        width, the slope at least 0; None until two widths are measured."""
        if self._line is None and len(self.wide) >= 2:
            points = sorted((w, statistics.median(t)) for w, t in self.wide.items())
            slope = max(
                statistics.median(
                    (tb - ta) / (wb - wa)
                    for i, (wa, ta) in enumerate(points)
                    for wb, tb in points[i + 1 :]
                ),
                0.0,
            )
            self._line = (statistics.median(t - slope * w for w, t in points), slope)
        return self._line


class Pacer:
    """How many guesses a step checks, from measured decode times.

    ``record`` keeps the times of recent decodes by their width in tokens
    (and a draft model's, by their width in sequences); :meth:`plan` chooses
    the one number of guesses ``k`` (each sequence gets at most ``k``, at
    most as many as it has) that gives the most tokens per second expected,
    0 when none pays. A single-token decode's time is the median of recent
    ones; a wider one's lies on a line through recent wider decodes. (From
    one token to two, a CPU changes kernels, from a matrix-vector product
    to a matrix one, a step no later width repeats; past it, a decode's time
    grows about linearly with its width.) The line is fitted robustly to
    every width measured, so that a decode slowed by another process cannot
    make the widths past it look too dear ever to be tried again. Until two
    widths are measured, a prior slope stands in, optimistic, so that a step
    tries a wider decode and learns its cost; a step tries no decode more
    than twice as wide as the widest measured, so that learning a dear
    device's costs takes a few narrow steps, not one wide one.
    """

    __slots__ = ("_draft", "_target", "fixed")

    #: Before two widths are measured: each token past one is assumed to
    #: cost ``PRIOR_SLOPE`` single-token decodes.
    PRIOR_SLOPE = 0.15
    #: Before a draft decode is measured: its cost, in target decodes.
    PRIOR_DRAFT = 0.25

    def __init__(self) -> None:
        self._target = _Costs()
        self._draft = _Costs()
        #: Check every guess offered, paying or not (to measure acceptance
        #: and to test the checking itself).
        self.fixed = False

    def record(self, width: int, seconds: float, *, draft: bool = False) -> None:
        (self._draft if draft else self._target).record(width, seconds)

    def time(self, width: int, *, draft: bool = False) -> float:
        """The expected seconds of one decode ``width`` wide (relative units
        before anything is measured)."""
        costs = self._draft if draft else self._target
        one = costs.one()
        if width <= 1 and one is not None:
            return one
        unit = self._one() * (self.PRIOR_DRAFT if draft else 1.0)
        line = costs.line()
        if line is not None:
            estimate = line[0] + line[1] * width
        elif costs.wide:  # one width measured: the prior slope from it
            (w, seen), *_ = costs.wide.items()
            estimate = statistics.median(seen) + self.PRIOR_SLOPE * unit * (width - w)
        else:
            estimate = (one or unit) + self.PRIOR_SLOPE * unit * (width - 1)
        # Never below a single token's time, measured or bounded: a line
        # through two noisy widths can cross zero short of them.
        return max(estimate, costs.least())

    def _one(self) -> float:
        """A single-token decode's time: measured, else inferred from the
        narrowest decode measured through the prior, else 1 (relative)."""
        one = self._target.one()
        if one is not None:
            return one
        if not self._target.wide:
            return 1.0
        w = min(self._target.wide)
        return statistics.median(self._target.wide[w]) / (1 + self.PRIOR_SLOPE * (w - 1))

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
        # Widths are tried at most twice as wide as the widest measured: on a
        # device where a decode of n tokens costs n single ones, the prior's
        # optimism then costs a step or two of learning, not one of 17 tokens.
        reach = max(2 * self._target.widest(), base + 2)
        best_k, best = 0, emitting / self.time(base)
        for k in range(1, most + 1):
            sent = [min(k, n) for _, n in offers]
            extra = sum(sent)
            if extra > room or base + extra > reach:
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
