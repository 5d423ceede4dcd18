"""Tools and tool calls: the tool shape, each family's call format, the parsers.

Pure text and standard library, so that every backend (and the remote one,
when a server hands back raw text) reads calls the same way.

A model family writes its calls in its own documented format
(:data:`FORMATS`); :func:`format_for` picks one from the chat template and
the special tokens. Each format knows the markers that open a call in a
streamed reply (so that :mod:`inference.reply` keeps the call's text out of
the visible answer) and parses the call text into :class:`ToolCall` values:

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (Hermes 2 Pro, Qwen2.5, Qwen3);
- ``llama3``: a bare ``{"name": ..., "parameters": {...}}`` or one after
  ``<|python_tag|>`` (Llama 3.1, 3.2, 3.3);
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` or the
  newer ``[TOOL_CALLS]name[ARGS]{...}``;
- ``pythonic``: ``[f(a=1), g(b="x")]`` (Llama 4, Gemma, some small models),
  read with :mod:`ast` and never evaluated;
- ``generic``: llama.cpp's format for templates that take no tools:
  ``{"tool_call": {"name": ..., "arguments": {...}}}``,
  ``{"tool_calls": [...]}`` or ``{"response": "..."}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .types import ToolCall

__all__ = [
    "ANY_FORMAT",
    "FORMATS",
    "TOOL_CHOICES",
    "Tool",
    "ToolFormat",
    "call_schema",
    "format_for",
    "generic_response",
    "generic_system_prompt",
    "new_call_id",
    "parse_calls",
    "to_tool",
    "tool_choice",
]

#: The values ``tool_choice`` takes besides ``{"name": ...}``.
TOOL_CHOICES = ("auto", "required", "none")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """One function a model may call: its name, what it does and the JSON
    schema of its arguments (OpenAI's ``function`` object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"type": "object", "properties": {}})
    )

    def __hash__(self) -> int:
        return hash((self.name, self.description, _canonical(self.parameters)))

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI shape: ``{"type": "function", "function": {...}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": _plain(self.parameters),
            },
        }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict (for json.dumps and templates)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_tool(value: Tool | Mapping[str, Any]) -> Tool:
    """A :class:`Tool` from the OpenAI shape or its bare ``function`` dict;
    ValueError naming what is wrong."""
    if isinstance(value, Tool):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"a tool must be a dict; got {type(value).__name__}")
    inner = value.get("function", value) if value.get("type", "function") == "function" else None
    if not isinstance(inner, Mapping):
        raise ValueError(f"a tool must be a function tool; got type {value.get('type')!r}")
    name = inner.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a tool needs a name of letters, digits and _.- ; got {name!r}")
    description = inner.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"tool {name!r}: description must be a str")
    parameters = inner.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema object")
    try:
        frozen = json.loads(json.dumps(_plain(parameters)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tool {name!r}: parameters are not JSON: {exc}") from None
    return Tool(name, description, MappingProxyType(frozen))


_BAD_CHOICE = "tool_choice must be auto, required, none or {{'name': ...}}; got {!r}"


def tool_choice(value: object) -> str:
    """``tool_choice`` as a str: auto, required, none, or the name of the
    function that must be called (given as ``{"name": ...}`` or OpenAI's
    ``{"type": "function", "function": {"name": ...}}``)."""
    if isinstance(value, str):
        if value in TOOL_CHOICES:
            return value
        if value.startswith("function:") and _NAME.match(value[9:]):
            return value  # already in this form
        raise ValueError(_BAD_CHOICE.format(value))
    if isinstance(value, Mapping):
        inner = value.get("function", value)
        name = inner.get("name") if isinstance(inner, Mapping) else None
        if isinstance(name, str) and _NAME.match(name):
            return "function:" + name
    raise ValueError(_BAD_CHOICE.format(value))


def new_call_id() -> str:
    """A fresh call id: nine letters and digits (what Mistral's templates require)."""
    return os.urandom(5).hex()[:9]


def _call(name: object, arguments: object, call_id: object = None) -> ToolCall | None:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    cid = call_id if isinstance(call_id, str) and call_id else new_call_id()
    return ToolCall(cid, name, arguments)


def _json_values(text: str) -> list[Any] | None:
    """Every JSON value in ``text``, one after another (separated by
    whitespace, commas or semicolons); None if anything else is there."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n,;":
            i += 1
        if i >= n:
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        values.append(value)


def _from_objects(values: Iterable[Any], args_keys: Sequence[str]) -> list[ToolCall] | None:
    calls: list[ToolCall] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                return None
            inner = item.get("function", item)
            if not isinstance(inner, dict):
                return None
            key = next((k for k in args_keys if k in inner), None)
            call = _call(inner.get("name"), inner.get(key) if key else {}, item.get("id"))
            if call is None:
                return None
            calls.append(call)
    return calls


def _parse_hermes(text: str) -> list[ToolCall] | None:
    parts = text.split("<tool_call>")
    bodies = [p.split("</tool_call>")[0] for p in (parts[1:] if len(parts) > 1 else parts)]
    return _every_part(bodies, _json_calls)


def _json_calls(text: str) -> list[ToolCall] | None:
    """The calls of JSON objects (``name`` and ``arguments`` or ``parameters``)."""
    return _from_objects(_json_values(text) or [None], ("arguments", "parameters"))


def _every_part(
    parts: list[str], parse: Callable[[str], list[ToolCall] | None]
) -> list[ToolCall] | None:
    """The calls of every non-blank part, or None if one is not a call."""
    calls: list[ToolCall] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        found = parse(part)
        if found is None:
            return None
        calls.extend(found)
    return calls


def _parse_llama3(text: str) -> list[ToolCall] | None:
    body = text.replace("<|python_tag|>", " ").replace("<|eom_id|>", " ").strip()
    values = _json_values(body)
    if values is not None:
        return _from_objects(values, ("parameters", "arguments"))
    # A built-in tool: brave_search.call(query="...")
    return _parse_pythonic(f"[{body}]".replace(".call(", "("))


def _parse_mistral(text: str) -> list[ToolCall] | None:
    parts = text.split("[TOOL_CALLS]")
    return _every_part(parts[1:] if len(parts) > 1 else parts, _mistral_call)


def _mistral_call(part: str) -> list[ToolCall] | None:
    if "[ARGS]" in part:  # v11: name[ARGS]{...}
        name, _, args = part.partition("[ARGS]")
        values = _json_values(args)
        call = _call(name.strip(), values[0] if values else None)
        return None if call is None else [call]
    return _json_calls(part)


def _literal(node: Any) -> Any:
    import ast

    value = ast.literal_eval(node)
    json.dumps(value)  # must be JSON: no sets, bytes or complex numbers
    return value


def _parse_pythonic(text: str) -> list[ToolCall] | None:
    import ast  # imported here: only pythonic replies need it

    body = text.replace("<|python_start|>", "").replace("<|python_end|>", "").strip()
    try:
        tree = ast.parse(body, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls: list[ToolCall] = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        func = node.func
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        name = ".".join([func.id, *reversed(parts)])
        try:
            arguments = {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
        calls.append(ToolCall(new_call_id(), name, arguments))
    return calls


def _parse_generic(text: str) -> list[ToolCall] | None:
    values = _json_values(text.strip())
    if not values or len(values) != 1 or not isinstance(values[0], dict):
        return None
    obj = values[0]
    if "tool_call" in obj:
        return _from_objects([obj["tool_call"]], ("arguments", "parameters"))
    if "tool_calls" in obj:
        return _from_objects([obj["tool_calls"]], ("arguments", "parameters"))
    return None


def generic_response(text: str) -> str | None:
    """The answer of a generic ``{"response": "..."}`` reply, else None."""
    values = _json_values(text.strip())
    if values and len(values) == 1 and isinstance(values[0], dict):
        response = values[0].get("response")
        if isinstance(response, str) and len(values[0]) == 1:
            return response
    return None


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """How one family writes tool calls.

    ``markers`` open a call anywhere in a reply (its text is the call's,
    until ``end`` or the end of the reply); ``leading`` are the characters
    that, first in a reply, make the whole reply a candidate call (kept back
    until the reply ends, then parsed; text that does not parse is the
    answer after all).
    """

    name: str
    markers: tuple[str, ...]
    end: str
    leading: str
    parse: Callable[[str], list[ToolCall] | None]


FORMATS: Mapping[str, ToolFormat] = MappingProxyType(
    {
        "hermes": ToolFormat("hermes", ("<tool_call>",), "</tool_call>", "", _parse_hermes),
        "llama3": ToolFormat("llama3", ("<|python_tag|>",), "", "{", _parse_llama3),
        "mistral": ToolFormat("mistral", ("[TOOL_CALLS]",), "", "", _parse_mistral),
        "pythonic": ToolFormat("pythonic", ("<|python_start|>",), "", "[", _parse_pythonic),
        "generic": ToolFormat("generic", (), "", "{", _parse_generic),
    }
)


def _parse_any(text: str) -> list[ToolCall] | None:
    for fmt in ("hermes", "mistral", "llama3", "generic", "pythonic"):
        calls = FORMATS[fmt].parse(text)
        if calls:
            return calls
    return None


#: Every format's markers at once: for a reply whose family is not known
#: (a remote server that returned a call as raw text).
ANY_FORMAT = ToolFormat(
    "any", ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"), "</tool_call>", "{[", _parse_any
)


def parse_calls(text: str, fmt: str | ToolFormat = "generic") -> list[ToolCall]:
    """The calls in ``text``, written in format ``fmt`` (a name of
    :data:`FORMATS`, or "any"); ``[]`` when it holds none that parse."""
    chosen = ANY_FORMAT if fmt == "any" else FORMATS[fmt] if isinstance(fmt, str) else fmt
    return chosen.parse(text) or []


def format_for(template: str, takes_tools: bool) -> ToolFormat:
    """The call format of a model whose chat template is ``template``:
    from the markers its template writes; ``generic`` when the template
    takes no tools."""
    if not takes_tools:
        return FORMATS["generic"]
    if "<tool_call>" in template:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral"]
    if "<|python_start|>" in template or "func_name1(" in template:
        return FORMATS["pythonic"]
    if "<|python_tag|>" in template or "<|start_header_id|>" in template:
        return FORMATS["llama3"]
    return FORMATS["hermes"]


def call_schema(tools: Sequence[Tool], *, generic: bool) -> dict[str, Any]:
    """The JSON schema of one valid call to one of ``tools``: the generic
    ``{"tool_call": {...}}`` object, or the bare ``{"name", "arguments"}``.

    A tool whose parameters do not say whether other arguments may be given
    takes none (as OpenAI's strict mode): a constrained model cannot then
    invent arguments the function does not have.
    """
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": _strict(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    one: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if not generic:
        return one
    return {
        "type": "object",
        "properties": {"tool_call": one},
        "required": ["tool_call"],
        "additionalProperties": False,
    }


def _strict(parameters: Mapping[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = _plain(parameters)
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def generic_system_prompt(tools: Sequence[Tool], choice: str) -> str:
    """The system text that describes ``tools`` to a model whose template
    takes none (llama.cpp's generic format)."""
    listing = json.dumps([t.to_dict()["function"] for t in tools], indent=2)
    call = '{"tool_call": {"name": "<tool name>", "arguments": {<its arguments>}}}'
    if choice == "auto":
        how = (
            f"To call a tool, reply with only this JSON object: {call}\n"
            "Otherwise, reply to the user in plain text."
        )
    else:
        how = f"Reply with only this JSON object, a call to one of them: {call}"
    return f"You can call these tools:\n{listing}\n{how}"
