"""Scoring on a remote server: completions with ``echo`` and prompt log-probabilities.

A completions request with ``echo: true``, ``logprobs: 1`` and
``max_tokens: 1`` makes a server that supports it (vLLM, SGLang,
llama-cpp-python's server started with ``--logits_all True``) return the
prompt's own tokens with their log-probabilities, their text offsets and the
most likely token at each step. From those:

- the continuation's tokens are those that start at or after the end of the
  context (after lm-eval's move of the context's trailing spaces); a token
  that straddles the boundary counts as the context's;
- ``is_greedy`` holds when each continuation token's log-probability is the
  highest at its step;
- the text's first token has no figure (the server conditions it on
  nothing), so an empty context, and the first token of a rolling score,
  are not scored here; where the tokenizer adds a BOS token, vLLM lists it
  first and shifts every later offset by its text: it is taken out, the
  offsets moved back, and the text's first token is scored on it.

:class:`ScoringOpenAIModel` is the remote model on a server that can; on
servers that cannot (llama-server returns no prompt log-probabilities with
``echo``, llama.cpp#27174; Ollama has no ``echo``) the model is a plain
:class:`~.model.OpenAIModel`, no :class:`~inference.Scorer`, by the dialect
table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import GenerationError
from ...options import GenerateConfig
from ...producers import map_concurrently
from ...scoring import ScoringState
from ...stream import StreamControl
from ...types import RollingScore, ScoreResult
from .model import OpenAIModel
from .transport import Failure
from .wire import number_or_none

__all__ = [
    "ScoringOpenAIModel",
    "echo_body",
    "rolling_from_echo",
    "score_from_echo",
    "split_context",
]

#: One prompt token as the server reports it: start offset, text,
#: log-probability (None for the first), and the best log-probability there.
EchoToken = tuple[int, str, float | None, float | None]


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's move of a context's trailing spaces to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def echo_body(model: str, text: str) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": text,
        "max_tokens": 1,
        "echo": True,
        "logprobs": 1,
        "temperature": 0.0,
        "stream": False,
    }


def echo_tokens(doc: Any, text: str, where: str) -> list[EchoToken]:
    """The prompt's tokens from an echo answer; GenerationError if it has none."""
    choices = doc.get("choices") if isinstance(doc, Mapping) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    raw = choice.get("logprobs") if isinstance(choice, Mapping) else None
    if not isinstance(raw, Mapping):
        raise GenerationError(f"{where}: the server's echo answer has no log-probabilities")
    tokens, values = raw.get("tokens"), raw.get("token_logprobs")
    offsets, tops = raw.get("text_offset"), raw.get("top_logprobs")
    if not (isinstance(tokens, list) and isinstance(values, list) and isinstance(offsets, list)):
        raise GenerationError(
            f"{where}: the server's echo answer lacks tokens, token_logprobs or text_offset"
        )
    tops = tops if isinstance(tops, list) else [None] * len(tokens)
    rows = list(zip(tokens, values, offsets, tops, strict=False))
    shift = 0
    if (
        len(rows) > 1
        and rows[0][1] is None
        and isinstance(rows[0][0], str)
        and not text.startswith(rows[0][0])
        and isinstance(rows[1][2], int)
    ):
        # A token the tokenizer added (BOS: vLLM lists "<bos>" at offset 0
        # and shifts every later offset by its text, which the echoed text
        # does not hold): not the text's, and the text starts after it.
        shift = rows[1][2]
        rows = rows[1:]
    out: list[EchoToken] = []
    for token, value, raw_offset, top in rows:
        offset = raw_offset - shift if isinstance(raw_offset, int) else None
        if not isinstance(token, str) or offset is None or offset >= len(text):
            continue  # the generated token, after the echoed prompt
        best = None
        if isinstance(top, Mapping):
            figures = [v for v in (number_or_none(x) for x in top.values()) if v is not None]
            best = max(figures) if figures else None
        out.append((offset, token, number_or_none(value), best))
    return out


def score_from_echo(tokens: Sequence[EchoToken], context: str, where: str) -> ScoreResult:
    tail = [t for t in tokens if t[0] >= len(context)]
    if not tail:
        return ScoreResult(logprobs=(), total=0.0, is_greedy=True)
    if any(t[2] is None for t in tail):
        raise GenerationError(
            f"{where}: the server gives the text's first token no log-probability, so a "
            "continuation after an empty context cannot be scored remotely"
        )
    logprobs = tuple(float(t[2]) for t in tail)  # type: ignore[arg-type]
    greedy = all(t[3] is not None and float(t[2]) >= t[3] - 1e-6 for t in tail)  # type: ignore[arg-type]
    return ScoreResult(logprobs=logprobs, total=math.fsum(logprobs), is_greedy=greedy)


def rolling_from_echo(tokens: Sequence[EchoToken]) -> RollingScore:
    figures = [t[2] for t in tokens if t[2] is not None]
    total = math.fsum(figures)
    count = len(figures)
    return RollingScore(
        total=total, tokens=count, perplexity=math.exp(-total / count) if count else math.nan
    )


class ScoringOpenAIModel(ScoringState, OpenAIModel):
    """An :class:`OpenAIModel` on a server that scores text: also a
    :class:`~inference.Scorer`, from completions with ``echo``."""

    # (score, score_batch and score_rolling come from ScoringState; the rules
    # are this module's.)

    def _score_text(self, text: str, cfg: GenerateConfig) -> RollingScore:
        """One echo request (``text`` must fit the server's context); the first
        token, which the server scores on nothing, is not counted."""
        return rolling_from_echo(self._echo(text, cfg))

    def _echo(self, text: str, cfg: GenerateConfig) -> list[Any]:
        control = StreamControl(cancel=cfg.cancel, timeout=cfg.timeout)
        try:
            doc = self._client.fetch_json(
                "POST", "/completions", echo_body(self._name, text), control=control
            )
        except Failure as exc:
            raise GenerationError(f"{self._url}: scoring failed: {exc.message}") from exc
        control.check()
        return echo_tokens(doc, text, self._url)

    def _score_pairs(self, pairs: list[tuple[str, str]], cfg: GenerateConfig) -> list[ScoreResult]:

        def one(pair: tuple[str, str]) -> ScoreResult:
            context, continuation = split_context(*pair)
            return score_from_echo(self._echo(context + continuation, cfg), context, self._url)

        results = map_concurrently(one, pairs, self._slots)
        self._err = None
        return results
