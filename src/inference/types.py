"""The value types of the contract: tokens, messages, model facts and results.

All are frozen, slotted dataclasses: cheap to make, safe to share between
threads, and hashable where their fields are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

__all__ = [
    "ROLES",
    "BatchResult",
    "ClassifyResult",
    "DiscoveredModel",
    "FinishReason",
    "GenerateMetrics",
    "Message",
    "ModelInfo",
    "RollingScore",
    "ScoreResult",
    "Token",
    "TokenLogprob",
]

ROLES = ("system", "user", "assistant", "tool")

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token: the engine's id and the text it adds to the output.

    The texts of a stream's tokens concatenate to exactly the generated text.
    A token that ends part-way through a multi-byte character carries ``""``
    and the character arrives whole with the token that completes it.
    Remote backends that do not report ids use ``-1``.

    Under ``logprobs=k`` (:func:`~inference.with_logprobs`) a token also
    carries ``logprob``, the natural log of the probability the model gave it,
    and ``top_logprobs``, the ``k`` most likely tokens at that step, most
    likely first. Both come from the model's raw distribution: the softmax of
    its logits before the repeat penalty, temperature, top-k, top-p or min-p
    reshape it (as vLLM reports by default), so they do not depend on the
    sampling options. Otherwise they stay None and ``()``, and a token equals
    ``Token(id, text)``.
    """

    id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()


class TokenLogprob(NamedTuple):
    """One alternative at a step: token id, its text and its log-probability.

    ``text`` is the token's own bytes decoded (a piece of a multi-byte
    character shows as U+FFFD). Remote backends that do not report ids use
    ``-1``.
    """

    id: int
    text: str
    logprob: float


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``role`` is one of system, user, assistant, tool."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Message role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"Message content must be str; got {type(self.content).__name__}")

    def to_dict(self) -> dict[str, str]:
        """The ``{"role": ..., "content": ...}`` form that chat APIs use."""
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Build a message from a chat-API dict; other keys are ignored."""
        try:
            return cls(role=data["role"], content=data["content"])
        except KeyError as exc:
            raise ValueError(f"a message dict needs {exc.args[0]!r}") from None

    @classmethod
    def coerce(cls, value: Message | Mapping[str, Any]) -> Message:
        """Accept a :class:`Message` or its dict form."""
        if isinstance(value, Message):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ValueError(f"a chat message must be a Message or a dict; got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a loaded model is. Zero means "not known"."""

    architecture: str = ""
    vocab_size: int = 0
    layers: int = 0
    hidden_size: int = 0
    context_length: int = 0
    quant_bits: int = 0
    quant_group_size: int = 0
    backend: str = ""
    path: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerateMetrics:
    """Timings and counts of one finished call.

    ``time_to_first_token`` is measured from the start of the call (after the
    model lock is taken) to the first token leaving the engine, so it is the
    prefill time. Decode speed counts the tokens after the first one over the
    time since the first one. Memory figures are ``None`` where the backend
    cannot tell.
    """

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0
    time_to_first_token: float = 0.0
    prefill_tokens_per_second: float = 0.0
    decode_tokens_per_second: float = 0.0
    peak_memory_bytes: int | None = None
    active_memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """The next token after one prompt, from a single forward pass.

    ``logits`` holds the whole vocabulary's logits at the last position when
    ``return_logits`` was asked for (local backends give an ``array('f')``),
    else ``None``.
    """

    token: Token
    logits: Sequence[float] | None = None
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one prompt of :meth:`TextModel.batch_generate`.

    A prompt that failed has ``err`` set and ``finish_reason == "error"``;
    the other prompts are unaffected.
    """

    tokens: tuple[Token, ...] = ()
    text: str = ""
    finish_reason: FinishReason = "stop"
    err: BaseException | None = None
    metrics: GenerateMetrics | None = None


@dataclass(frozen=True, slots=True)
class DiscoveredModel:
    """A model found on disk by :func:`inference.discover`."""

    path: str
    format: str
    architecture: str = ""
    quant_bits: int = 0
    quant_group_size: int = 0
    context_length: int = 0
    file_count: int = 0
    size_bytes: int = 0
    name: str = ""
    extra: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The log-likelihood of a continuation after a context (:meth:`Scorer.score`).

    ``logprobs`` holds the log-probability of each continuation token given
    everything before it, ``total`` their sum, and ``is_greedy`` whether
    greedy decoding from the context would have produced exactly these
    tokens: lm-evaluation-harness's ``loglikelihood`` pair. ``token_ids`` are
    the continuation's tokens.
    """

    logprobs: tuple[float, ...]
    total: float
    is_greedy: bool
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RollingScore:
    """The log-likelihood of a whole text (:meth:`Scorer.score_rolling`).

    ``total`` is the sum of every token's log-probability, scored in
    windows of the model's context (lm-evaluation-harness's
    ``loglikelihood_rolling``); ``tokens`` is how many were scored and
    ``perplexity`` is ``exp(-total / tokens)``.
    """

    total: float
    tokens: int
    perplexity: float
