"""Log-likelihood scoring for in-process models: the :class:`~inference.Scorer` front door.

A backend whose engine can return the logits of chosen positions subclasses
:class:`ScoringTextModel` instead of :class:`~inference.base.BaseTextModel`
and writes one more primitive, ``_score_ids``. This module supplies the rest,
as lm-evaluation-harness defines it:

- the token boundary between a context and its continuation (spaces that end
  the context move to the continuation; the whole text is tokenised once and
  the continuation is what follows the context's own tokens; an empty context
  becomes the BOS token, or EOS for a model without one);
- the rolling windows over a long text (``get_rolling_token_windows`` with a
  context of one token, made disjoint), and the perplexity from their sum;
- the lock, cancellation, deadlines, ``err`` and metrics, as for every call.

:class:`ScoringState` is the front door alone (``score``, ``score_batch``,
``score_rolling``), for a model that is not token-id based (the ``openai``
backend) to implement over its own seams.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .base import BaseTextModel
from .errors import GenerationError
from .model_state import ModelState
from .options import GenerateConfig, Option, generate_config
from .stream import StreamControl
from .types import RollingScore, ScoreResult

__all__ = [
    "ScoringState",
    "ScoringTextModel",
    "check_pairs",
    "continuation_ids",
    "rolling_windows",
]

#: One scored pair as the engine sees it: all the token ids, and how many of
#: the last ones are the continuation (each is scored given those before it).
IdPair = tuple[Sequence[int], int]


def continuation_ids(
    encode: Any, context: str, continuation: str, *, prefix_id: int
) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split of ``context + continuation`` into token ids.

    ``encode(text)`` tokenises as the model does for a prompt (BOS included
    where the model adds one). Returns ``(context ids, continuation ids)``;
    an empty context is ``[prefix_id]``.
    """
    if not context:
        return [prefix_id], list(encode(continuation, bos=False))
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = list(encode(context + continuation, bos=True))
    head = list(encode(context, bos=True))
    return head, whole[len(head) :]


def rolling_windows(
    ids: Sequence[int], *, prefix_id: int, window: int
) -> Iterator[tuple[list[int], list[int]]]:
    """Disjoint ``(context, continuation)`` windows covering every token of ``ids``.

    lm-evaluation-harness's ``get_rolling_token_windows(ids, prefix_id,
    window, context_len=1)`` followed by ``make_disjoint_window``: each token
    is scored once, given up to ``window`` tokens before it (the first given
    ``prefix_id``).
    """
    if window < 1:
        raise ValueError("the window must hold at least one token")
    tokens = list(ids)
    if not tokens:
        return
    first = min(window, len(tokens))
    yield [prefix_id], tokens[:first]
    done = first
    while done < len(tokens):
        take = min(len(tokens) - done, window)
        end = done + take
        context = tokens[max(end - window - 1, 0) : end - 1]
        yield context[: len(context) - (take - 1)], tokens[end - take : end]
        done = end


class ScoringState(ModelState):
    """The :class:`~inference.Scorer` front door over two seams.

    ``score``, ``score_batch`` and ``score_rolling`` check their arguments
    and the model, then call ``_score_pairs(pairs, cfg)`` or
    ``_score_text(text, cfg)`` through the front door that records ``err``.
    :class:`ScoringTextModel` implements the seams for in-process engines;
    the ``openai`` backend implements them over HTTP.
    """

    def score(
        self, context: str, continuation: str, *opts: Option | GenerateConfig, **kwargs: Any
    ) -> ScoreResult:
        """The log-probabilities of ``continuation``'s tokens after ``context``
        (``timeout=`` and ``cancel=`` apply; see :class:`~inference.Scorer`)."""
        return self.score_batch([(context, continuation)], *opts, **kwargs)[0]

    def score_batch(
        self, pairs: Sequence[tuple[str, str]], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[ScoreResult]:
        """:meth:`score` of many pairs, batched where the engine batches."""
        cfg = generate_config(*opts, **kwargs)
        checked = check_pairs(pairs)
        self._check_open()
        if not checked:
            return []
        return self._door(self._score_pairs, checked, cfg)

    def score_rolling(
        self, text: str, *opts: Option | GenerateConfig, **kwargs: Any
    ) -> RollingScore:
        """The log-likelihood of all of ``text``, in windows of the context length."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str; got {type(text).__name__}")
        cfg = generate_config(*opts, **kwargs)
        self._check_open()
        return self._door(self._score_text, text, cfg)

    def _score_pairs(self, pairs: list[tuple[str, str]], cfg: GenerateConfig) -> list[ScoreResult]:
        raise NotImplementedError

    def _score_text(self, text: str, cfg: GenerateConfig) -> RollingScore:
        raise NotImplementedError


class ScoringTextModel(BaseTextModel, ScoringState):
    """A :class:`~inference.base.BaseTextModel` that is also a :class:`~inference.Scorer`.

    Subclasses implement ``_score_ids(pairs, control)``: for each
    ``(ids, n)``, the log-probability of each of the last ``n`` tokens of
    ``ids`` given the tokens before it, from the model's raw logits, and
    whether each is the most likely token there (the greedy flag is their
    conjunction). The engine may batch the pairs; it must not keep logits for
    positions it was not asked about.
    """

    def _score_ids(
        self, pairs: Sequence[IdPair], control: StreamControl
    ) -> list[tuple[list[float], bool]]:
        raise NotImplementedError

    def _prefix_id(self) -> int:
        """The token an empty context stands for: BOS, else EOS (lm-evaluation-harness's
        ``prefix_token_id``)."""
        for text in (self._bos_token, self._eos_token):
            ids = self._encode(text, False) if text else []
            if len(ids) == 1:
                return ids[0]
        if self._eog_ids:
            return min(self._eog_ids)
        raise GenerationError(
            f"the {self.backend_name} model has no BOS or EOS token to score an empty context"
        )

    def _encode_for_score(self, text: str, *, bos: bool) -> list[int]:
        return self._encode(text, self._add_bos and bos)

    def _score_pairs(self, pairs: list[tuple[str, str]], cfg: GenerateConfig) -> list[ScoreResult]:
        prefix = self._prefix_id()
        split = [continuation_ids(self._encode_for_score, c, x, prefix_id=prefix) for c, x in pairs]
        limit = self._info.context_length + 1  # the last token is scored, not fed
        scored: list[IdPair] = []
        for i, (head, tail) in enumerate(split):
            if len(tail) >= limit:
                raise GenerationError(
                    f"pair {i}: the continuation has {len(tail)} tokens; the context holds "
                    f"{self._info.context_length}"
                )
            # As lm-evaluation-harness: a context too long loses its start.
            scored.append(((head + tail)[-limit:], len(tail)))
        return self._score_all(scored, cfg)

    def _score_text(self, text: str, cfg: GenerateConfig) -> RollingScore:
        ids = self._encode_for_score(text, bos=False)
        windows = list(
            rolling_windows(ids, prefix_id=self._prefix_id(), window=self._info.context_length)
        )
        results = self._score_all([(head + tail, len(tail)) for head, tail in windows], cfg)
        total = math.fsum(r.total for r in results)
        count = sum(len(r.logprobs) for r in results)
        return RollingScore(
            total=total, tokens=count, perplexity=math.exp(-total / count) if count else math.nan
        )

    def _score_all(self, pairs: list[IdPair], cfg: GenerateConfig) -> list[ScoreResult]:
        def run(control: StreamControl) -> list[ScoreResult]:
            start = time.perf_counter()
            scored = self._score_ids(pairs, control) if pairs else []
            end = time.perf_counter()
            tokens = sum(len(ids) for ids, _ in pairs)
            control.metrics = self._measure(tokens, 0, start, end, end)
            return [
                ScoreResult(
                    logprobs=tuple(logprobs),
                    total=math.fsum(logprobs),
                    is_greedy=greedy,
                    token_ids=tuple(ids[len(ids) - n :]),
                )
                for (ids, n), (logprobs, greedy) in zip(pairs, scored, strict=True)
            ]

        return self._run(run, cfg)


def check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` as a list of ``(str, str)``; TypeError naming the first bad one."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs must be a sequence of (context, continuation) pairs")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"pair {i} must be a (context, continuation) tuple; got {pair!r}")
        context, continuation = pair
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise TypeError(f"pair {i}: context and continuation must be str")
        out.append((context, continuation))
    return out
