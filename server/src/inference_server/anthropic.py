"""Anthropic's Messages API: ``POST /v1/messages`` and its ``count_tokens``.

:func:`messages_call` reads a request body into a :class:`Call` (the
``system`` prompt and the turns of content blocks as the core's messages;
``tools``, ``tool_choice`` and ``thinking`` as the core's options);
:func:`message_whole` and :func:`message_events` shape the reply as a
``message`` object or as Anthropic's event stream (``message_start``,
``content_block_start``/``_delta``/``_stop`` for ``thinking``, ``text``
and ``tool_use`` blocks, ``message_delta`` with the stop reason and usage,
``message_stop``; ``ping`` while the first token is awaited).

The conversation renders the same way every turn: blocks are joined by a
fixed rule, the assistant's earlier thinking is left out of the prompt (as
the chat templates of reasoning models do), and tool calls keep their ids,
so the prompt of turn N is a prefix of turn N+1's and the engine reuses its
KV instead of prefilling the history again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from inference import GenerationError, Message, Token, TokenStream, ToolCall

from .requests import BadRequest, Call, checked_options, number, sampling_limit, stop_strings
from .shapes import next_token, rest

__all__ = [
    "ERROR_TYPES",
    "PING_EVERY",
    "MessagesCall",
    "count_reply",
    "error_body",
    "message_events",
    "message_whole",
    "messages_call",
    "new_id",
]

#: Seconds between ``ping`` events while the first token is awaited.
PING_EVERY = 5.0

#: Anthropic's error ``type`` for each HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}

_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    # Accepted and ignored: what they steer is Anthropic's service, not a model.
    *("metadata", "service_tier", "cache_control", "inference_geo", "speed"),
    *("diagnostics", "user_profile_id", "workspace_id", "container"),
}
_COUNT_FIELDS = {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape."""
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
    }


@dataclass
class MessagesCall:
    """A Messages request: the generation, and what the reply's shape needs."""

    call: Call
    #: Whether the reply may open with a thinking block.
    thinking: bool = False


def messages_call(
    body: Mapping[str, Any], *, reasons: bool, max_tokens_cap: int, count: bool = False
) -> MessagesCall:
    """A ``/v1/messages`` body (or, with ``count``, a ``count_tokens`` body)
    as a call; ``reasons`` says whether the model thinks (else ``thinking``
    enabled is refused)."""
    known = _COUNT_FIELDS if count else _FIELDS
    extra = sorted(set(body) - known)
    if extra:
        raise BadRequest(f"{extra[0]}: Extra inputs are not permitted", extra[0])
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model: Field required", "model")
    options: dict[str, Any] = {}
    if count:
        options["max_tokens"] = 0
    else:
        if "max_tokens" not in body:
            raise BadRequest("max_tokens: Field required", "max_tokens")
        options["max_tokens"] = sampling_limit(body["max_tokens"], max_tokens_cap, "max_tokens")
        for key in ("temperature", "top_p", "top_k"):
            value = number(body, key)
            if value is not None:
                options[key] = int(value) if key == "top_k" else float(value)
        stops = body.get("stop_sequences")
        if stops is not None and (stops := stop_strings(stops, "stop_sequences")):
            options["stop"] = stops
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be a boolean", "stream")
    messages = _system(body.get("system")) + _turns(body.get("messages"))
    tools = body.get("tools")
    if tools:
        options["tools"] = _tools(tools)
        if body.get("tool_choice") is not None:
            choice = _tool_choice(body["tool_choice"])
            if choice is not None:
                options["tool_choice"] = choice
    elif body.get("tool_choice") not in (None, {"type": "auto"}, {"type": "none"}):
        raise BadRequest("tool_choice needs tools", "tool_choice")
    options.update(_output_config(body.get("output_config")))
    thinking = _thinking(body.get("thinking"), reasons)
    if thinking is not None:
        options["enable_thinking"] = thinking
    call = Call(chat=True, messages=messages, options=checked_options(options))
    call.stream = bool(body.get("stream", False)) and not count
    return MessagesCall(call, thinking=bool(thinking) if thinking is not None else reasons)


def _system(raw: object) -> list[Message]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [Message("system", raw)]
    if isinstance(raw, list):
        return [Message("system", _text_of(raw, "system"))]
    raise BadRequest("system must be a string or a list of text blocks", "system")


def _text_of(blocks: list[Any], where: str) -> str:
    """The text of a list of text blocks, joined by newlines."""
    texts = []
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise BadRequest(f"{where}: only text blocks are supported here; got {kind!r}", where)
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}: a text block needs text", where)
        texts.append(text)
    return "\n".join(texts)


def _turns(raw: object) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list", "messages")
    out: list[Message] = []
    for i, turn in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(turn, dict):
            raise BadRequest(f"{where} must be an object", "messages")
        role = turn.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{where}.role must be user or assistant", "messages")
        content = turn.get("content")
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise BadRequest(f"{where}.content must be a string or a list of blocks", "messages")
        if role == "user":
            out += _user_blocks(content, where)
        else:
            out.append(_assistant_blocks(content, where))
    return out


def _user_blocks(blocks: list[Any], where: str) -> list[Message]:
    """A user turn: its tool results (each a tool message), then its text."""
    results: list[Message] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"{at}.tool_use_id: Field required", "messages")
            inner = block.get("content", "")
            text = inner if isinstance(inner, str) else _text_of(inner, at)
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append(Message("tool", text, tool_call_id=call_id))
        elif kind in ("image", "document"):
            raise BadRequest(
                f"{at}: {kind} blocks are not supported: this server reads text only", "messages"
            )
        else:
            raise BadRequest(f"{at}: a user turn takes text and tool_result blocks", "messages")
    if texts or not results:
        results.append(Message("user", "\n".join(texts)))
    return results


def _assistant_blocks(blocks: list[Any], where: str) -> Message:
    """An assistant turn: its text and its tool calls (thinking left out)."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            name, arguments, call_id = block.get("name"), block.get("input", {}), block.get("id")
            if not isinstance(name, str) or not name or not isinstance(arguments, dict):
                raise BadRequest(f"{at}: a tool_use block needs a name and an input object")
            calls.append(ToolCall(call_id if isinstance(call_id, str) else "", name, arguments))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # not rendered again: the templates drop past reasoning
        else:
            raise BadRequest(f"{at}: an assistant turn takes text, tool_use and thinking blocks")
    return Message("assistant", "\n".join(texts), tool_calls=tuple(calls))


def _tools(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise BadRequest("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools.{i} must be an object", "tools")
        kind = tool.get("type", "custom")
        if kind not in ("custom", None) or "input_schema" not in tool:
            raise BadRequest(
                f"tools.{i}: only client tools with an input_schema are supported (not {kind!r})",
                "tools",
            )
        out.append(
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description") or "",
                    "parameters": tool["input_schema"],
                },
            }
        )
    return out


def _tool_choice(raw: object) -> Any:
    if not isinstance(raw, dict):
        raise BadRequest("tool_choice must be an object", "tool_choice")
    kind = raw.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(raw.get("name"), str):
        return {"name": raw["name"]}
    raise BadRequest("tool_choice.type must be auto, any, tool (with a name) or none")


def _output_config(raw: object) -> dict[str, Any]:
    """``output_config``: its ``format`` (a JSON schema the reply follows);
    ``effort`` and ``task_budget`` are advice this server does not take."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("output_config must be an object", "output_config")
    fmt = raw.get("format")
    if fmt is None:
        return {}
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise BadRequest("output_config.format.type must be json_schema", "output_config")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise BadRequest("output_config.format.schema must be an object", "output_config")
    return {"json_schema": schema}


def _thinking(raw: object, reasons: bool) -> bool | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "disabled":
        return False if reasons else None
    if kind in ("enabled", "adaptive"):
        if not reasons:
            raise BadRequest("thinking: this model does not reason", "thinking")
        return True
    raise BadRequest("thinking.type must be enabled, adaptive or disabled", "thinking")


# -- the reply -------------------------------------------------------------------


def _stop_reason(stream: TokenStream) -> str:
    if stream.tool_calls:
        return "tool_use"
    if stream.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stream.stop_sequence is not None else "end_turn"


def _usage(stream: TokenStream) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are those not read from the cache
    (``cache_read_input_tokens``), as Anthropic counts them."""
    m = stream.metrics
    cached = m.cached_tokens if m else 0
    return {
        "input_tokens": (m.prompt_tokens if m else 0) - cached,
        "output_tokens": m.generated_tokens if m else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _tool_blocks(stream: TokenStream) -> list[dict[str, Any]]:
    return [
        {
            "type": "tool_use",
            "id": c.id or f"toolu_{uuid.uuid4().hex[:24]}",
            "name": c.name,
            "input": c.arguments,
        }
        for c in stream.tool_calls
    ]


def new_id() -> str:
    """A fresh message id."""
    return f"msg_{uuid.uuid4().hex[:24]}"


def message_whole(stream: TokenStream, tokens: list[Token], mid: str, model: str) -> dict[str, Any]:
    """The whole reply as Anthropic's ``message`` object."""
    content: list[dict[str, Any]] = []
    if stream.reasoning:
        content.append({"type": "thinking", "thinking": stream.reasoning, "signature": ""})
    text = "".join(t.text for t in tokens if not t.reasoning)
    if text or not stream.tool_calls:
        content.append({"type": "text", "text": text})
    content += _tool_blocks(stream)
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(stream),
        "stop_sequence": stream.stop_sequence,
        "usage": _usage(stream),
    }


def count_reply(stream: TokenStream) -> dict[str, int]:
    for _ in stream:  # max_tokens=0: nothing comes; the prompt is counted
        pass
    m = stream.metrics
    return {"input_tokens": m.prompt_tokens if m else 0}


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


async def message_events(
    stream: TokenStream, tokens: AsyncIterator[Token], mid: str, model: str
) -> AsyncIterator[str]:
    """The reply as Anthropic's event stream, from ``message_start`` (sent at
    once, then a ``ping`` every :data:`PING_EVERY` seconds until the first
    token) to ``message_stop``; a failure is an ``error`` event."""
    start: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    yield _event("message_start", {"message": start})
    first_task = asyncio.ensure_future(next_token(tokens))
    try:
        while not first_task.done():
            done, _ = await asyncio.wait({first_task}, timeout=PING_EVERY)
            if not done:
                yield _event("ping", {})
        first = first_task.result()
    except GenerationError as exc:
        yield _event("error", error_body(500, f"the generation failed: {exc}"))
        return
    finally:
        if not first_task.done():
            first_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, GenerationError):
                await first_task
    index = -1
    open_kind = ""

    def opening(kind: str) -> list[str]:
        nonlocal index, open_kind
        out = []
        if open_kind:
            out.append(_event("content_block_stop", {"index": index}))
        index += 1
        open_kind = kind
        block: dict[str, Any] = {"type": kind, kind: ""}
        if kind == "thinking":
            block["signature"] = ""
        out.append(_event("content_block_start", {"index": index, "content_block": block}))
        return out

    async for tok in rest(first, tokens):
        if not tok.text:
            continue
        kind = "thinking" if tok.reasoning else "text"
        if kind != open_kind:
            for piece in opening(kind):
                yield piece
        change = {"type": f"{kind}_delta", kind: tok.text}
        yield _event("content_block_delta", {"index": index, "delta": change})
    if stream.finish_reason == "error":
        yield _event("error", error_body(500, f"the generation failed: {stream.err}"))
        return
    if open_kind:
        yield _event("content_block_stop", {"index": index})
    elif not stream.tool_calls:  # an empty answer is still one text block
        for piece in opening("text"):
            yield piece
        yield _event("content_block_stop", {"index": index})
    for block in _tool_blocks(stream):
        index += 1
        start_block = {**block, "input": {}}
        yield _event("content_block_start", {"index": index, "content_block": start_block})
        partial = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield _event("content_block_delta", {"index": index, "delta": partial})
        yield _event("content_block_stop", {"index": index})
    usage = _usage(stream)
    delta: dict[str, Any] = {"stop_reason": _stop_reason(stream)}
    delta["stop_sequence"] = stream.stop_sequence
    yield _event("message_delta", {"delta": delta, "usage": usage})
    yield _event("message_stop", {})
