"""What a client asks for, checked: OpenAI and Ollama request bodies as calls.

Each parser takes a decoded JSON body and returns a :class:`Call`: the
messages or the prompt, the generation options (as the core's keywords, so
the core's own checks run on them), and whether to stream. Anything
malformed, unknown or out of bounds raises :class:`BadRequest`, which the
app answers with HTTP 400 and an OpenAI-style error body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference import Message
from inference.options import generate_config
from inference.values import is_number

__all__ = [
    "BadRequest",
    "Call",
    "checked_options",
    "number",
    "ollama_call",
    "openai_call",
    "sampling_limit",
    "stop_strings",
    "strict_schema",
]


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400); ``param`` names the field."""

    def __init__(self, message: str, param: str = "") -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Call:
    """One generation a request asks for."""

    chat: bool
    messages: list[Message] = field(default_factory=list)
    prompt: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    #: OpenAI: send a usage chunk at the end of a stream.
    usage_in_stream: bool = False
    #: OpenAI: log-probabilities asked for (chat: a bool and top_logprobs).
    logprobs: bool = False


# OpenAI fields taken as they are, and those accepted only at their neutral value.
_OPENAI_CHAT = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "chat_template_kwargs",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
}
_OPENAI_COMPLETION = (
    _OPENAI_CHAT
    - {
        "messages",
        "tools",
        "tool_choice",
        "response_format",
        "parallel_tool_calls",
        "chat_template_kwargs",
        "max_completion_tokens",
        "top_logprobs",
    }
) | {"prompt", "echo"}


def _unknown(body: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise BadRequest(f"unknown field {extra[0]!r}", extra[0])


def number(body: Mapping[str, Any], key: str) -> Any:
    """``body[key]`` when it is a finite number, None when absent; else BadRequest."""
    value = body.get(key)
    if value is not None and not is_number(value):
        raise BadRequest(f"{key} must be a number", key)
    if value is not None and not _finite(value):
        raise BadRequest(f"{key} must be a finite number", key)
    return value


#: The most stop strings one request may give.
MAX_STOPS = 16


def stop_strings(value: object, name: str) -> list[str]:
    """A request's stop strings (a string or a list of them), checked, the
    empty ones left out."""
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest(f"{name} must be a string or a list of strings", name)
    if len(stops) > MAX_STOPS:
        raise BadRequest(f"{name} takes at most {MAX_STOPS} strings", name)
    return [s for s in stops if s]


def sampling_limit(value: object, cap: int, name: str) -> int:
    """A request's token limit, checked and cut to ``cap`` (more ends as "length")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name} must be an int >= 0", name)
    return min(value, cap)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _neutral(body: Mapping[str, Any], key: str, neutral: Any) -> None:
    if key in body and body[key] not in (None, neutral):
        raise BadRequest(f"{key} other than {neutral!r} is not supported", key)


def _sampling(body: Mapping[str, Any], max_tokens_cap: int, default_max: int) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    opts["max_tokens"] = sampling_limit(
        default_max if limit is None else limit, max_tokens_cap, "max_tokens"
    )
    for key, option in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("repeat_penalty", "repeat_penalty"),
        ("repetition_penalty", "repeat_penalty"),
    ):
        value = number(body, key)
        if value is not None:
            opts[option] = int(value) if option == "top_k" else float(value)
    if opts.get("top_k", 0) < 0:
        opts["top_k"] = 0  # vLLM's "off"
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BadRequest("seed must be an int", "seed")
        opts["seed"] = seed & 0xFFFFFFFF
    stop = body.get("stop")
    if stop is not None and (stops := stop_strings(stop, "stop")):
        opts["stop"] = stops
    _neutral(body, "n", 1)
    _neutral(body, "presence_penalty", 0)
    _neutral(body, "frequency_penalty", 0)
    return opts


def _stream_flags(body: Mapping[str, Any], call: Call) -> None:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a bool", "stream")
    call.stream = stream
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        call.usage_in_stream = bool(options.get("include_usage"))


def _messages(raw: object) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list", "messages")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"messages[{i}] must be an object", "messages")
        content = item.get("content")
        if isinstance(content, list):  # OpenAI's content parts: the text ones
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(p, str) for p in parts):
                raise BadRequest(f"messages[{i}]: only text content is supported", "messages")
            item = {**item, "content": "".join(p for p in parts if isinstance(p, str))}
        try:
            out.append(Message.from_dict(item))
        except ValueError as exc:
            raise BadRequest(f"messages[{i}]: {exc}", "messages") from None
    return out


def checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options``, once the core's own checks pass on them (else a 400)."""
    try:
        generate_config(**options)
    except (ValueError, TypeError) as exc:
        raise BadRequest(str(exc)) from None
    return options


def _checked(call: Call) -> Call:
    checked_options(call.options)
    return call


def openai_call(
    body: Mapping[str, Any], *, chat: bool, max_tokens_cap: int, default_max: int
) -> Call:
    """An OpenAI ``/v1/chat/completions`` or ``/v1/completions`` body as a Call."""
    _unknown(body, _OPENAI_CHAT if chat else _OPENAI_COMPLETION)
    call = Call(chat=chat, options=_sampling(body, max_tokens_cap, default_max))
    _stream_flags(body, call)
    if chat:
        call.messages = _messages(body.get("messages"))
        if body.get("logprobs"):
            top = body.get("top_logprobs", 0)
            if isinstance(top, bool) or not isinstance(top, int):
                raise BadRequest("top_logprobs must be an int", "top_logprobs")
            call.options["logprobs"] = top
            call.logprobs = True
        fmt = body.get("response_format")
        if fmt is not None:
            call.options.update(_response_format(fmt))
        if body.get("tools"):
            call.options["tools"] = body["tools"]
            if "tool_choice" in body:
                call.options["tool_choice"] = body["tool_choice"]
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None:
            if not isinstance(kwargs, dict):
                raise BadRequest("chat_template_kwargs must be an object", "chat_template_kwargs")
            kwargs = dict(kwargs)
            if "enable_thinking" in kwargs:
                call.options["enable_thinking"] = kwargs.pop("enable_thinking")
            if kwargs:
                call.options["template_vars"] = kwargs
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string (one prompt per request)", "prompt")
        call.prompt = prompt
        _neutral(body, "echo", False)
        lp = body.get("logprobs")
        if lp is not None:
            if isinstance(lp, bool) or not isinstance(lp, int):
                raise BadRequest("logprobs must be an int", "logprobs")
            call.options["logprobs"] = lp
            call.logprobs = True
    return _checked(call)


#: Keys whose value is a map of names to schemas, and keys holding a schema
#: or a list of them: where strict mode looks for nested objects.
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_KEYS = ("items", "prefixItems", "anyOf", "allOf", "oneOf", "not")


def strict_schema(schema: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``schema`` under OpenAI's strict mode: every object closed
    (``additionalProperties: false``, added where absent) and every property
    required. A schema strict mode cannot express (an object open to other
    keys, an optional property) is refused, naming where, as OpenAI does."""
    out = dict(schema)
    props = out.get("properties")
    if out.get("type") == "object" or isinstance(props, dict):
        extra = out.get("additionalProperties", False)
        if extra is not False:
            raise BadRequest(
                f"{where}: strict mode needs additionalProperties false on every object"
            )
        out["additionalProperties"] = False
        names = list(props) if isinstance(props, dict) else []
        required = out.get("required", [])
        missing = [n for n in names if n not in required] if isinstance(required, list) else names
        if missing:
            raise BadRequest(
                f"{where}: strict mode needs every property required; {missing[0]!r} is not "
                "(give it a null type instead)"
            )
    for key in _SCHEMA_MAPS:
        inner = out.get(key)
        if isinstance(inner, dict):
            out[key] = {
                name: strict_schema(sub, f"{where}.{key}.{name}") if isinstance(sub, dict) else sub
                for name, sub in inner.items()
            }
    for key in _SCHEMA_KEYS:
        inner = out.get(key)
        if isinstance(inner, dict):
            out[key] = strict_schema(inner, f"{where}.{key}")
        elif isinstance(inner, list):
            out[key] = [
                strict_schema(sub, f"{where}.{key}.{i}") if isinstance(sub, dict) else sub
                for i, sub in enumerate(inner)
            ]
    return out


def _response_format(fmt: object) -> dict[str, Any]:
    if not isinstance(fmt, dict):
        raise BadRequest("response_format must be an object", "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        schema = fmt.get("schema")  # llama-cpp-python's spelling
        return {"json_schema": schema} if isinstance(schema, dict) else {"json_object": True}
    if kind == "json_schema":
        inner = fmt.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "response_format.json_schema.schema must be an object", "response_format"
            )
        if inner.get("strict") is True:  # type: ignore[union-attr]
            schema = strict_schema(schema, "response_format.json_schema.schema")
        return {"json_schema": schema}
    raise BadRequest(f"response_format type {kind!r} is not supported", "response_format")


_OLLAMA_CHAT = {
    "model",
    "messages",
    "stream",
    "format",
    "options",
    "tools",
    "think",
    "keep_alive",
    "logprobs",
    "top_logprobs",
}
_OLLAMA_GENERATE = {
    "model",
    "prompt",
    "system",
    "stream",
    "format",
    "options",
    "raw",
    "think",
    "keep_alive",
    "images",
    "context",
    "template",
    "suffix",
    "logprobs",
    "top_logprobs",
}
_OLLAMA_OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
}


def ollama_call(
    body: Mapping[str, Any],
    *,
    chat: bool,
    max_tokens_cap: int,
    default_max: int,
    reasons: bool = False,
    context: int = 0,
) -> Call:
    """An Ollama ``/api/chat`` or ``/api/generate`` body as a Call (streamed
    by default), for a model that reasons (or not: then ``think`` is
    refused) with a loaded context of ``context`` tokens (a larger
    ``num_ctx`` is refused)."""
    _unknown(body, _OLLAMA_CHAT if chat else _OLLAMA_GENERATE)
    raw_options = body.get("options") or {}
    if not isinstance(raw_options, dict):
        raise BadRequest("options must be an object", "options")
    num_ctx = raw_options.get("num_ctx")
    if num_ctx is not None:
        if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1:
            raise BadRequest("num_ctx must be a positive int", "options")
        if context and num_ctx > context:
            raise BadRequest(
                f"num_ctx {num_ctx} is larger than the model's loaded context of {context} "
                "tokens (load it with a larger --context-len)",
                "options",
            )
    mapped: dict[str, Any] = {}
    for key, value in raw_options.items():
        if key in _OLLAMA_OPTIONS and value is not None:
            mapped["max_tokens" if key == "num_predict" else key] = value
    if isinstance(mapped.get("max_tokens"), int) and mapped["max_tokens"] < 0:
        mapped["max_tokens"] = default_max  # Ollama's -1: no limit (here: the default)
    call = Call(chat=chat, options=_sampling(mapped, max_tokens_cap, default_max))
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a bool", "stream")
    call.stream = stream
    fmt = body.get("format")
    if fmt == "json":
        call.options["json_object"] = True
    elif isinstance(fmt, dict):
        call.options["json_schema"] = fmt
    elif fmt not in (None, ""):
        raise BadRequest("format must be 'json' or a JSON schema", "format")
    think = body.get("think")
    if think is not None:
        if think not in (True, False, "high", "medium", "low"):
            raise BadRequest('think must be true, false, "high", "medium" or "low"', "think")
        if think is not False and not reasons:
            raise BadRequest(f'"{body.get("model") or "the model"}" does not support thinking')
        if reasons and not body.get("raw"):
            call.options["enable_thinking"] = think is not False
    if body.get("logprobs"):
        top = body.get("top_logprobs", 0)
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise BadRequest("top_logprobs must be an int from 0 to 20", "top_logprobs")
        call.options["logprobs"] = top
        call.logprobs = True
    if chat:
        call.messages = _messages(body.get("messages"))
        if body.get("tools"):
            call.options["tools"] = body["tools"]
    else:
        prompt = body.get("prompt", "")
        system = body.get("system")
        if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
            raise BadRequest("prompt and system must be strings", "prompt")
        if body.get("raw"):
            call.prompt = prompt
        else:  # Ollama renders the prompt through the chat template
            call.chat = True
            call.messages = ([Message("system", system)] if system else []) + [
                Message("user", prompt)
            ]
    return _checked(call)
