"""OpenAI's Responses API: ``POST /v1/responses``, and the responses kept
for ``previous_response_id`` (``GET`` and ``DELETE /v1/responses/{id}``).

:func:`responses_call` reads a request body into a :class:`Call`:
``input`` (a string, or items: messages, ``function_call``,
``function_call_output``; reasoning items are not rendered again),
``instructions`` (a system message for this turn only, as OpenAI does),
``tools`` (function tools), ``tool_choice``, ``text.format``,
``max_output_tokens``, ``temperature``/``top_p`` and ``reasoning``.
:func:`response_whole` and :func:`response_events` shape the reply as a
``response`` object or as the Responses event stream.

:class:`ResponseStore` keeps recent responses in memory, least recently
used first out past a byte budget: each with its conversation, so that a
request naming it as ``previous_response_id`` continues it. Nothing
survives a restart: an id from before one is a 404.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from inference import Message, Token, TokenStream, ToolCall

from .requests import BadRequest, Call, checked_options, number, sampling_limit, strict_schema
from .shapes import rest

__all__ = [
    "NotStored",
    "ResponseStore",
    "ResponsesCall",
    "new_id",
    "response_events",
    "response_whole",
    "responses_call",
]

_FIELDS = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "previous_response_id",
    "store",
    "reasoning",
    "metadata",
    "parallel_tool_calls",
    "truncation",
    "user",
    "include",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
}


class NotStored(LookupError):
    """A response id this server does not keep (HTTP 404)."""


@dataclass
class Stored:
    response: dict[str, Any]
    #: The conversation up to and including this response's output.
    conversation: list[Message]
    size: int


class ResponseStore:
    """Recent responses by id, within ``budget`` bytes (least recently used
    out first)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._kept: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, response: dict[str, Any], conversation: list[Message]) -> None:
        size = len(json.dumps(response)) + sum(len(m.content) + 64 for m in conversation)
        if size > self._budget:
            return  # larger than the whole store: not kept
        with self._lock:
            self._kept[response["id"]] = Stored(response, conversation, size)
            self._used += size
            while self._used > self._budget:
                _, old = self._kept.popitem(last=False)
                self._used -= old.size

    def get(self, rid: str) -> Stored:
        with self._lock:
            stored = self._kept.get(rid)
            if stored is None:
                raise NotStored(f"no response {rid!r} is stored here (it may have been evicted)")
            self._kept.move_to_end(rid)
            return stored

    def delete(self, rid: str) -> None:
        with self._lock:
            stored = self._kept.pop(rid, None)
            if stored is None:
                raise NotStored(f"no response {rid!r} is stored here")
            self._used -= stored.size

    def __len__(self) -> int:
        return len(self._kept)


@dataclass
class ResponsesCall:
    """A Responses request: the generation, and what its reply repeats."""

    call: Call
    #: The conversation without this turn's instructions (what is stored).
    history: list[Message]
    store: bool
    #: The request's settings, as the response object repeats them.
    echo: dict[str, Any] = field(default_factory=dict)


def responses_call(
    body: Mapping[str, Any],
    *,
    reasons: bool,
    max_tokens_cap: int,
    default_max: int,
    store: ResponseStore,
) -> ResponsesCall:
    """A ``/v1/responses`` body as a call (its history from ``store`` when it
    names a ``previous_response_id``)."""
    extra = sorted(set(body) - _FIELDS)
    if extra:
        raise BadRequest(f"Unknown parameter: '{extra[0]}'.", extra[0])
    limit = body.get("max_output_tokens")
    options: dict[str, Any] = {
        "max_tokens": sampling_limit(
            default_max if limit is None else limit, max_tokens_cap, "max_output_tokens"
        )
    }
    for key in ("temperature", "top_p"):
        value = number(body, key)
        if value is not None:
            options[key] = float(value)
    history: list[Message] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str) or not previous:
            raise BadRequest("previous_response_id must be a string", "previous_response_id")
        history = list(store.get(previous).conversation)
    history += _input(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("instructions must be a string", "instructions")
    messages = ([Message("system", instructions)] if instructions else []) + history
    tools = body.get("tools")
    if tools:
        options["tools"] = _tools(tools)
        choice = body.get("tool_choice")
        if choice is not None:
            options["tool_choice"] = _tool_choice(choice)
    options.update(_text_format(body.get("text")))
    thinking = _reasoning(body.get("reasoning"), reasons)
    if thinking is not None:
        options["enable_thinking"] = thinking
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", "stream")
    keep = body.get("store", True)
    if not isinstance(keep, bool):
        raise BadRequest("store must be a boolean", "store")
    call = Call(chat=True, messages=messages, options=checked_options(options), stream=stream)
    echo = {
        "instructions": instructions,
        "max_output_tokens": limit,
        "temperature": options.get("temperature", 0.0),
        "top_p": options.get("top_p", 1.0),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": previous,
        "store": keep,
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }
    return ResponsesCall(call, history, keep, echo)


def _text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts", "input")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise BadRequest(
                f"{where}.content.{j}: {kind} is not supported: this server reads text only",
                "input",
            )
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise BadRequest(f"{where}.content.{j}: unknown content part {kind!r}", "input")
    return "\n".join(texts)


def _input(raw: object) -> list[Message]:
    """``input`` as messages: a string is one user message."""
    if isinstance(raw, str):
        return [Message("user", raw)]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("input must be a string or a non-empty list of items", "input")
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role == "developer":
                role = "system"
            if role not in ("user", "system", "assistant"):
                raise BadRequest(f"{where}.role must be user, system, developer or assistant")
            out.append(Message(role, _text(item.get("content"), where)))
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments", "{}")
            call_id = item.get("call_id")
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else None
            except ValueError:
                parsed = None
            if not isinstance(name, str) or not isinstance(parsed, dict):
                raise BadRequest(f"{where}: a function_call needs a name and JSON arguments")
            call = ToolCall(call_id if isinstance(call_id, str) else "", name, parsed)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":  # the same turn's calls
                out[-1] = Message("assistant", last.content, tool_calls=(*last.tool_calls, call))
            else:
                out.append(Message("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"{where}.call_id: a function_call_output needs it")
            text = output if isinstance(output, str) else _text(output, where)
            out.append(Message("tool", text, tool_call_id=call_id))
        elif kind == "reasoning":
            continue  # not rendered again: the templates drop past reasoning
        else:
            raise BadRequest(f"{where}: input items of type {kind!r} are not supported", "input")
    return out


def _tools(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise BadRequest("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"tools.{i}: only function tools are supported (not {kind!r})")
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if tool.get("strict") and isinstance(parameters, dict):
            parameters = strict_schema(parameters, f"tools.{i}.parameters")
        out.append(
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description") or "",
                    "parameters": parameters,
                },
            }
        )
    return out


def _tool_choice(raw: object) -> Any:
    if raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"name": raw["name"]}
    raise BadRequest("tool_choice must be auto, none, required or a function", "tool_choice")


def _text_format(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema" and isinstance(fmt, dict):
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("text.format.schema must be an object", "text")
        if fmt.get("strict"):
            schema = strict_schema(schema, "text.format.schema")
        return {"json_schema": schema}
    raise BadRequest("text.format.type must be text, json_object or json_schema", "text")


def _reasoning(raw: object, reasons: bool) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("reasoning must be an object", "reasoning")
    effort = raw.get("effort")
    if effort is None:
        return None
    if effort in ("none", "minimal"):
        return False if reasons else None
    if not reasons:
        raise BadRequest("reasoning: this model does not reason", "reasoning")
    return True


# -- the reply -------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def new_id() -> str:
    """A fresh response id."""
    return _id("resp")


@dataclass
class _Ids:
    """The ids of one response's output items, fixed before it streams."""

    response: str
    reasoning: str = field(default_factory=lambda: _id("rs"))
    message: str = field(default_factory=lambda: _id("msg"))


def _base(asked: ResponsesCall, ids: _Ids, model: str, created: int) -> dict[str, Any]:
    return {
        "id": ids.response,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        **asked.echo,
    }


def _reasoning_item(ids: _Ids, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": ids.reasoning,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(ids: _Ids, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": ids.message,
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" else [],
    }


def _call_items(stream: TokenStream) -> list[dict[str, Any]]:
    return [
        {
            "type": "function_call",
            "id": f"fc_{c.id}",
            "call_id": c.id,
            "name": c.name,
            "arguments": json.dumps(c.arguments),
            "status": "completed",
        }
        for c in stream.tool_calls
    ]


def _finish(
    base: dict[str, Any], stream: TokenStream, output: list[dict[str, Any]], thought: int
) -> None:
    """Complete ``base`` with the output, the status and the usage
    (``thought``: the reasoning tokens)."""
    m = stream.metrics
    prompt, made = (m.prompt_tokens, m.generated_tokens) if m else (0, 0)
    base["output"] = output
    length = stream.finish_reason == "length" and not stream.tool_calls
    base["status"] = "incomplete" if length else "completed"
    base["incomplete_details"] = {"reason": "max_output_tokens"} if length else None
    base["usage"] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": m.cached_tokens if m else 0},
        "output_tokens": made,
        "output_tokens_details": {"reasoning_tokens": thought},
        "total_tokens": prompt + made,
    }


def _conversation(asked: ResponsesCall, text: str, stream: TokenStream) -> list[Message]:
    """The stored conversation: the history, then this reply."""
    reply = Message("assistant", text, tool_calls=stream.tool_calls)
    return [*asked.history, reply]


def response_whole(
    stream: TokenStream,
    tokens: list[Token],
    asked: ResponsesCall,
    rid: str,
    model: str,
    store: ResponseStore,
) -> dict[str, Any]:
    """The whole reply as a ``response`` object (kept in ``store`` unless
    ``store: false``)."""
    ids = _Ids(rid)
    base = _base(asked, ids, model, int(time.time()))
    output = []
    if stream.reasoning:
        output.append(_reasoning_item(ids, stream.reasoning))
    text = "".join(t.text for t in tokens if not t.reasoning)
    if text or not stream.tool_calls:
        output.append(_message_item(ids, text, "completed"))
    output += _call_items(stream)
    _finish(base, stream, output, sum(1 for t in tokens if t.reasoning))
    if asked.store:
        store.put(base, _conversation(asked, text, stream))
    return base


class _Events:
    """Numbered Responses events."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **data: Any) -> str:
        body = {"type": kind, "sequence_number": self.n, **data}
        self.n += 1
        return f"event: {kind}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


async def response_events(
    stream: TokenStream,
    tokens: AsyncIterator[Token],
    first: Token | None,
    asked: ResponsesCall,
    rid: str,
    model: str,
    store: ResponseStore,
) -> AsyncIterator[str]:
    """The reply as the Responses event stream: ``response.created``, each
    output item added, its deltas and done, then ``response.completed`` (or
    ``response.incomplete`` at the length limit, ``response.failed`` on a
    failure)."""
    ids = _Ids(rid)
    event = _Events()
    base = _base(asked, ids, model, int(time.time()))
    yield event("response.created", response=dict(base))
    yield event("response.in_progress", response=dict(base))
    output: list[dict[str, Any]] = []
    current = ""  # "reasoning" or "message": the item open now
    texts = {"reasoning": "", "message": ""}
    thought = 0

    def close() -> list[str]:
        index = len(output)
        if current == "reasoning":
            text = texts["reasoning"]
            item = _reasoning_item(ids, text)
            out = [
                event(
                    "response.reasoning_text.done",
                    item_id=ids.reasoning,
                    output_index=index,
                    content_index=0,
                    text=text,
                ),
                event("response.output_item.done", output_index=index, item=item),
            ]
        else:
            text = texts["message"]
            item = _message_item(ids, text, "completed")
            part = _text_part(text)
            out = [
                event(
                    "response.output_text.done",
                    item_id=ids.message,
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                event(
                    "response.content_part.done",
                    item_id=ids.message,
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
                event("response.output_item.done", output_index=index, item=item),
            ]
        output.append(item)
        return out

    def opening(kind: str) -> list[str]:
        index = len(output)
        if kind == "reasoning":
            item = {**_reasoning_item(ids, ""), "content": [], "status": "in_progress"}
            return [event("response.output_item.added", output_index=index, item=item)]
        return [
            event(
                "response.output_item.added",
                output_index=index,
                item=_message_item(ids, "", "in_progress"),
            ),
            event(
                "response.content_part.added",
                item_id=ids.message,
                output_index=index,
                content_index=0,
                part=_text_part(""),
            ),
        ]

    async for tok in rest(first, tokens):
        if not tok.text:
            continue
        kind = "reasoning" if tok.reasoning else "message"
        if kind != current:
            if current:
                for piece in close():
                    yield piece
            current = kind
            for piece in opening(kind):
                yield piece
        texts[kind] += tok.text
        thought += tok.reasoning
        index = len(output)
        if kind == "reasoning":
            yield event(
                "response.reasoning_text.delta",
                item_id=ids.reasoning,
                output_index=index,
                content_index=0,
                delta=tok.text,
            )
        else:
            yield event(
                "response.output_text.delta",
                item_id=ids.message,
                output_index=index,
                content_index=0,
                delta=tok.text,
                logprobs=[],
            )
    if stream.finish_reason == "error":
        base["status"] = "failed"
        base["error"] = {"code": "server_error", "message": f"the generation failed: {stream.err}"}
        yield event("response.failed", response=base)
        return
    if current:
        for piece in close():
            yield piece
    if not texts["message"] and not stream.tool_calls:
        current = "message"  # an empty answer is still one message
        for piece in opening("message"):
            yield piece
        for piece in close():
            yield piece
    for item in _call_items(stream):
        index = len(output)
        added = {**item, "arguments": "", "status": "in_progress"}
        yield event("response.output_item.added", output_index=index, item=added)
        yield event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=index,
            delta=item["arguments"],
        )
        yield event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            name=item["name"],
            arguments=item["arguments"],
        )
        yield event("response.output_item.done", output_index=index, item=item)
        output.append(item)
    _finish(base, stream, output, thought)
    if asked.store:
        store.put(base, _conversation(asked, texts["message"], stream))
    kind = "response.incomplete" if base["status"] == "incomplete" else "response.completed"
    yield event(kind, response=base)
