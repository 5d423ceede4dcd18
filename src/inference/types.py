"""The value types of the contract: tokens, messages, model facts and results.

All are frozen, slotted dataclasses: cheap to make, safe to share between
threads, and hashable where their fields are.
"""

from __future__ import annotations

import json
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
    "ToolCall",
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

    ``reasoning`` is True for the text of a model's thinking (``<think>``
    blocks, a server's ``reasoning_content``): it streams before the answer,
    told apart by this flag, and :meth:`TokenStream.text` leaves it out.
    """

    id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()
    reasoning: bool = False


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
class ToolCall:
    """One call the model asked for: its id, the function's name and the
    arguments (a dict, parsed from the model's JSON).

    Frozen and hashable (by the arguments' JSON), so messages that hold
    calls stay hashable.
    """

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.id, self.name, json.dumps(self.arguments, sort_keys=True, default=str)))

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's shape: ``{"id", "type": "function", "function": {"name",
        "arguments": "<JSON text>"}}``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        """From OpenAI's shape (``arguments`` JSON text or a dict) or the
        bare ``{"id", "name", "arguments"}``; ValueError if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a tool call must be an object, not {type(data).__name__}")
        inner = data.get("function", data)
        name = inner.get("name") if isinstance(inner, Mapping) else None
        args: Any = inner.get("arguments", {}) if isinstance(inner, Mapping) else None
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):
                raise ValueError(f"tool call {name!r}: arguments are not JSON") from None
        if not isinstance(name, str) or not name or not isinstance(args, dict):
            raise ValueError("a tool call needs a function name and an arguments object")
        return cls(str(data.get("id") or ""), name, args)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``role`` is one of system, user, assistant, tool.

    In a conversation with tools, an assistant message carries the calls it
    made in ``tool_calls`` (its ``content`` may be ``""``), and each tool
    result is a ``tool`` message whose ``tool_call_id`` names the call.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Message role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"Message content must be str; got {type(self.content).__name__}")
        if not isinstance(self.tool_calls, tuple):
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if any(not isinstance(c, ToolCall) for c in self.tool_calls):
            raise ValueError("Message tool_calls must be ToolCall values")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if not isinstance(self.tool_call_id, str):
            raise ValueError("Message tool_call_id must be str")

    def to_dict(self) -> dict[str, Any]:
        """The ``{"role": ..., "content": ...}`` form that chat APIs use (with
        OpenAI's ``tool_calls`` and ``tool_call_id`` when set)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Build a message from a chat-API dict (OpenAI's ``tool_calls`` and
        ``tool_call_id`` included; a ``None`` content is ``""``); other keys
        are ignored."""
        calls = data.get("tool_calls") or ()
        try:
            role = data["role"]
            # An assistant's turn of calls may leave its content out.
            content: Any = data["content"] if not calls or "content" in data else None
        except KeyError as exc:
            raise ValueError(f"a message dict needs {exc.args[0]!r}") from None
        if not isinstance(calls, (list, tuple)):
            raise ValueError("a message's tool_calls must be a list")
        return cls(
            role=role,
            content="" if content is None and (calls or role == "assistant") else content,
            tool_calls=tuple(
                c if isinstance(c, ToolCall) else ToolCall.from_dict(c) for c in calls
            ),
            tool_call_id=data.get("tool_call_id") or "",
        )

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
    #: The quantisation's name (a GGUF file type as llama.cpp's quantiser
    #: names it, such as ``Q4_K_M``), and the bits the weights really cost,
    #: over every tensor.
    quant_type: str = ""
    bits_per_weight: float = 0.0


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
    #: Prompt tokens whose KV came from a cache instead of a prefill, and
    #: where from: "slot" (the sequence's own, kept from its last call),
    #: "sequence" (copied from another sequence, running or idle), "host"
    #: (restored from host memory), "disk" (from the cache folder), "" none.
    cached_tokens: int = 0
    cache_tier: str = ""
    #: Speculative decoding: tokens guessed (by prompt lookup or a draft
    #: model) and checked by the model, and how many of those it accepted.
    drafted_tokens: int = 0
    accepted_tokens: int = 0


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
    #: As :class:`ModelInfo`'s: ``Q4_K_M``, and the real bits per weight.
    quant_type: str = ""
    bits_per_weight: float = 0.0


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
