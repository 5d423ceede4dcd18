"""What the server sends: OpenAI's chunks and completions, Ollama's lines.

Tokens with empty text (a part of a multi-byte character) are not sent;
reasoning tokens go as OpenAI's ``reasoning_content`` and Ollama's
``thinking``; the calls of a reply (``stream.tool_calls``) go at its end.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from inference import GenerationError, Token, TokenStream

from .requests import Call

__all__ = [
    "next_token",
    "ollama_lines",
    "ollama_whole",
    "openai_events",
    "openai_whole",
    "rest",
]


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _finish(stream: TokenStream) -> str:
    if stream.tool_calls:
        return "tool_calls"
    return "length" if stream.finish_reason == "length" else "stop"


def _usage(stream: TokenStream) -> dict[str, Any]:
    m = stream.metrics
    prompt = m.prompt_tokens if m else 0
    completion = m.generated_tokens if m else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": m.cached_tokens if m else 0},
    }


def _entry(tok: Token) -> dict[str, Any]:
    return {
        "id": tok.id,
        "token": tok.text,
        "logprob": tok.logprob,
        "bytes": list(tok.text.encode()),
        "top_logprobs": [
            {
                "id": alt.id,
                "token": alt.text,
                "logprob": alt.logprob,
                "bytes": list(alt.text.encode()),
            }
            for alt in tok.top_logprobs
        ],
    }


def _completion_logprobs(tokens: list[Token]) -> dict[str, Any]:
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{a.text: a.logprob for a in t.top_logprobs} for t in tokens],
        "text_offset": [],
    }


def _calls(stream: TokenStream) -> list[dict[str, Any]]:
    return [c.to_dict() for c in stream.tool_calls]


async def next_token(tokens: AsyncIterator[Token]) -> Token | None:
    """The next token of ``tokens``, or None at its end."""
    try:
        return await tokens.__anext__()
    except StopAsyncIteration:
        return None


async def rest(first: Token | None, tokens: AsyncIterator[Token]) -> AsyncIterator[Token]:
    """The first token and the rest; a failure ends it (the stream keeps it in ``err``)."""
    if first is not None:
        yield first
    with contextlib.suppress(GenerationError):
        async for tok in tokens:
            yield tok


async def openai_events(
    stream: TokenStream,
    tokens: AsyncIterator[Token],
    first: Token | None,
    call: Call,
    cid: str,
    model: str,
    chat: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any], **extra: Any) -> str:
        return _sse(
            {
                "id": cid,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
                **extra,
            }
        )

    if chat:
        yield chunk(
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        )
    async for tok in rest(first, tokens):
        if not tok.text:
            continue
        if chat:
            key = "reasoning_content" if tok.reasoning else "content"
            choice: dict[str, Any] = {"index": 0, "delta": {key: tok.text}, "finish_reason": None}
            if call.logprobs and not tok.reasoning:
                choice["logprobs"] = {"content": [_entry(tok)]}
        else:
            choice = {"index": 0, "text": tok.text, "finish_reason": None}
            if call.logprobs:
                choice["logprobs"] = _completion_logprobs([tok])
        yield chunk(choice)
    if stream.finish_reason == "error":
        yield _sse(
            {"error": {"message": f"the generation failed: {stream.err}", "type": "server_error"}}
        )
        return
    if chat and stream.tool_calls:
        calls = [{"index": i, **c} for i, c in enumerate(_calls(stream))]
        yield chunk({"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None})
    end: dict[str, Any] = {"index": 0, "finish_reason": _finish(stream)}
    if chat:
        end["delta"] = {}
    else:
        end["text"] = ""
    yield chunk(end)
    if call.usage_in_stream:
        yield _sse(
            {
                "id": cid,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(stream),
            }
        )
    yield "data: [DONE]\n\n"


def openai_whole(
    stream: TokenStream, tokens: list[Token], call: Call, cid: str, model: str, chat: bool
) -> dict[str, Any]:
    answer = [t for t in tokens if not t.reasoning]
    text = "".join(t.text for t in answer)
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(stream)}
    if chat:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not stream.tool_calls else None,
        }
        if stream.reasoning:
            message["reasoning_content"] = stream.reasoning
        if stream.tool_calls:
            message["tool_calls"] = _calls(stream)
        choice["message"] = message
        if call.logprobs:
            choice["logprobs"] = {"content": [_entry(t) for t in answer if t.text]}
    else:
        choice["text"] = text
        if call.logprobs:
            choice["logprobs"] = _completion_logprobs([t for t in answer if t.text])
    return {
        "id": cid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(stream),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ollama_done(stream: TokenStream) -> dict[str, Any]:
    m = stream.metrics
    ns = 1_000_000_000
    return {
        "done": True,
        "done_reason": "length" if stream.finish_reason == "length" else "stop",
        "total_duration": int((m.total_seconds if m else 0) * ns),
        "load_duration": 0,
        "prompt_eval_count": m.prompt_tokens if m else 0,
        "prompt_eval_duration": int((m.prefill_seconds if m else 0) * ns),
        "eval_count": m.generated_tokens if m else 0,
        "eval_duration": int((m.decode_seconds if m else 0) * ns),
    }


def _ollama_calls(stream: TokenStream) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in stream.tool_calls]


def _ollama_logprob(tok: Token) -> dict[str, Any]:
    """One token's log-probabilities, as Ollama returns them."""
    return {
        "token": tok.text,
        "logprob": tok.logprob,
        "bytes": list(tok.text.encode()),
        "top_logprobs": [
            {"token": a.text, "logprob": a.logprob, "bytes": list(a.text.encode())}
            for a in tok.top_logprobs
        ],
    }


async def ollama_lines(
    stream: TokenStream,
    tokens: AsyncIterator[Token],
    first: Token | None,
    call: Call,
    model: str,
    chat: bool,
) -> AsyncIterator[str]:
    async for tok in rest(first, tokens):
        if not tok.text:
            continue
        if chat:
            key = "thinking" if tok.reasoning else "content"
            body: dict[str, Any] = {"message": {"role": "assistant", "content": "", key: tok.text}}
        else:
            body = {"response": "" if tok.reasoning else tok.text}
            if tok.reasoning:
                body["thinking"] = tok.text
        if call.logprobs and not tok.reasoning:
            body["logprobs"] = [_ollama_logprob(tok)]
        yield (
            json.dumps(
                {"model": model, "created_at": _now(), **body, "done": False}, ensure_ascii=False
            )
            + "\n"
        )
    if stream.finish_reason == "error":
        yield json.dumps({"error": f"the generation failed: {stream.err}"}) + "\n"
        return
    last: dict[str, Any] = {"model": model, "created_at": _now()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if stream.tool_calls:
            message["tool_calls"] = _ollama_calls(stream)
        last["message"] = message
    else:
        last["response"] = ""
    yield json.dumps({**last, **_ollama_done(stream)}, ensure_ascii=False) + "\n"


def ollama_whole(
    stream: TokenStream, tokens: list[Token], call: Call, model: str, chat: bool
) -> dict[str, Any]:
    text = "".join(t.text for t in tokens if not t.reasoning)
    out: dict[str, Any] = {"model": model, "created_at": _now()}
    if call.logprobs:
        out["logprobs"] = [_ollama_logprob(t) for t in tokens if t.text and not t.reasoning]
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if stream.reasoning:
            message["thinking"] = stream.reasoning
        if stream.tool_calls:
            message["tool_calls"] = _ollama_calls(stream)
        out["message"] = message
    else:
        out["response"] = text
        if stream.reasoning:
            out["thinking"] = stream.reasoning
    return {**out, **_ollama_done(stream)}
