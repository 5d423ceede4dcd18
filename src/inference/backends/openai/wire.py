"""What the server sends, decoded: completion chunks and one call's accounting.

:class:`CallState` keeps what a generation has received (for retries and
metrics); the helpers read a choice's text and token ids whatever the
server's shape; :data:`FINISH` maps servers' finish reasons to ours. The event
stream itself is parsed by :mod:`.sse`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ...metrics import call_metrics
from ...types import FinishReason, GenerateMetrics, TokenLogprob
from ...values import is_int, is_number

__all__ = [
    "FINISH",
    "CallState",
    "LogprobEntry",
    "choice_ids",
    "choice_logprobs",
    "choice_text",
    "is_int",
    "number",
    "seconds",
]

#: One token's figures as a server reports them: its text, its
#: log-probability and the alternatives (ids unknown: -1).
LogprobEntry = tuple[str, float, tuple[TokenLogprob, ...]]

_perf = time.perf_counter


FINISH: Mapping[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
    "length": "length",
    "max_tokens": "length",
}


class CallState:
    """What one generation has received so far, for retries and metrics."""

    __slots__ = (
        "completion_tokens",
        "end",
        "first",
        "ids_seen",
        "prompt_tokens",
        "received",
        "start",
        "timings",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.start = _perf()
        self.first = 0.0
        self.end = 0.0
        #: Chunks with text or token ids: zero means "failed before its first token".
        self.received = 0
        self.ids_seen = 0
        self.prompt_tokens = 0
        self.completion_tokens: int | None = None
        self.timings: dict[str, Any] = {}
        #: The reply's ``tool_calls`` deltas (a ToolCallDeltas), once any arrive.
        self.tool_calls: Any = None

    def take_usage(self, usage: Mapping[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        if is_int(prompt) and prompt > 0:
            self.prompt_tokens = prompt
        completion = usage.get("completion_tokens")
        if is_int(completion) and completion >= 0:
            self.completion_tokens = completion

    def metrics(self) -> GenerateMetrics:
        """The call's metrics; the server's own timings (llama.cpp's
        ``timings``) replace the ones the client measured."""
        end = self.end or _perf()
        generated = self.completion_tokens
        if generated is None:
            generated = self.ids_seen or self.received
        first = self.first or end
        t = self.timings
        ttft = max(first - self.start, 0.0) if self.received else 0.0
        return call_metrics(
            self.prompt_tokens,
            generated,
            self.start,
            first,
            end,
            prefill_seconds=seconds(t.get("prompt_ms"), ttft),
            decode_seconds=seconds(
                t.get("predicted_ms"), max(end - first, 0.0) if generated else 0.0
            ),
            prefill_rate=number(t.get("prompt_per_second")),
            decode_rate=number(t.get("predicted_per_second")),
        )


def number(value: Any) -> float | None:
    if is_number(value) and value >= 0:
        return float(value)
    return None


def seconds(ms: Any, fallback: float) -> float:
    value = number(ms)
    return value / 1000.0 if value is not None else fallback


def choice_text(choice: Mapping[str, Any], chat: bool) -> str:
    if chat:
        for key in ("delta", "message"):
            part = choice.get(key)
            if isinstance(part, dict):
                content = part.get("content")
                return content if isinstance(content, str) else ""
        return ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def choice_ids(choice: Mapping[str, Any]) -> list[int]:
    raw = choice.get("token_ids")
    if isinstance(raw, list):
        found = [i for i in raw if is_int(i)]
        if len(found) == len(raw):
            return found
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
        if isinstance(content, list):
            ids = [e.get("id") for e in content if isinstance(e, dict)]
            found = [i for i in ids if is_int(i)]
            if found and len(found) == len(ids):
                return found
    return []


def token_texts(choice: Mapping[str, Any]) -> list[bytes] | None:
    """Each token's text in a choice that lists them (its ``logprobs``: a
    chat entry's ``bytes``, else its ``token``; completions' ``tokens``),
    or None when it does not."""
    raw = choice.get("logprobs")
    if not isinstance(raw, dict):
        return None
    content = raw.get("content")
    parts: list[bytes] = []
    if isinstance(content, list):
        for entry in content:
            if not isinstance(entry, dict):
                return None
            data, text = entry.get("bytes"), entry.get("token")
            if isinstance(data, list) and all(is_int(b) and 0 <= b < 256 for b in data):
                parts.append(bytes(data))
            elif isinstance(text, str):
                parts.append(text.encode("utf-8"))
            else:
                return None
        return parts
    tokens = raw.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None
    return [t.encode("utf-8") for t in tokens]


def covering(parts: list[bytes], data: bytes) -> int | None:
    """The most leading ``parts`` that add up to ``data`` (the rest, on a
    chunk that ends the generation, are its end: the end-of-text token, or
    the tokens of a stop string the server cut), or None when none do."""
    best = 0 if not data else None
    total = 0
    for i, part in enumerate(parts):
        total += len(part)
        if total == len(data):
            best = i + 1  # empty parts after it still add up
        elif total > len(data):
            break
    if best is None or b"".join(parts[:best]) != data:
        return None
    return best


def choice_logprobs(choice: Mapping[str, Any], chat: bool) -> list[LogprobEntry]:
    """The per-token log-probabilities of a choice, in either of OpenAI's shapes:
    chat's ``logprobs.content`` list, or completions' parallel ``tokens``,
    ``token_logprobs`` and ``top_logprobs`` lists. Entries it cannot read
    are left out (the caller compares the count with the tokens)."""
    raw = choice.get("logprobs")
    if not isinstance(raw, dict):
        return []
    out: list[LogprobEntry] = []
    content = raw.get("content")
    if isinstance(content, list):
        for entry in content:
            if not isinstance(entry, dict):
                continue
            text, value = entry.get("token"), number_or_none(entry.get("logprob"))
            if not isinstance(text, str) or value is None:
                continue
            top = []
            for alt in entry.get("top_logprobs") or ():
                if isinstance(alt, dict):
                    alt_text, alt_value = alt.get("token"), number_or_none(alt.get("logprob"))
                    if isinstance(alt_text, str) and alt_value is not None:
                        alt_id = alt.get("id")  # llama-server reports ids
                        top.append(
                            TokenLogprob(alt_id if is_int(alt_id) else -1, alt_text, alt_value)
                        )
            out.append((text, value, tuple(top)))
        return out
    tokens, values = raw.get("tokens"), raw.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return []
    tops = raw.get("top_logprobs")
    tops = tops if isinstance(tops, list) else [None] * len(tokens)
    for text, value, top in zip(tokens, values, tops, strict=False):
        figure = number_or_none(value)
        if not isinstance(text, str) or figure is None:
            continue
        alts: tuple[TokenLogprob, ...] = ()
        if isinstance(top, dict):
            pairs = [(t, number_or_none(v)) for t, v in top.items() if isinstance(t, str)]
            alts = tuple(
                TokenLogprob(-1, t, v)
                for t, v in sorted(((t, v) for t, v in pairs if v is not None), key=lambda p: -p[1])
            )
        out.append((text, figure, alts))
    return out


def number_or_none(value: Any) -> float | None:
    """A finite-or-not float from a JSON number (log-probabilities are <= 0)."""
    return float(value) if is_number(value) else None
