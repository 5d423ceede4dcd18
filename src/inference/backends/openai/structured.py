"""Structured output, tools and reasoning in each server's own request fields.

Servers spell a constraint four ways: OpenAI's ``response_format``, vLLM's
``structured_outputs``, SGLang's ``regex``, llama.cpp's ``grammar`` (GBNF).
:data:`ACCEPTS` says which constraints each dialect's style can carry and
:func:`constraint_fields` writes one into a request; a constraint the style
cannot carry is refused before any request (``UnsupportedOptionError``).

Tools go as OpenAI's ``tools`` and ``tool_choice`` to servers that apply
the model's own tool template, and the calls come back as ``tool_calls``
deltas (:class:`ToolCallDeltas`). A server that cannot (llama-cpp-python's,
or llama-server with a template that takes no tools) gets the core's
generic format instead: the tools described in the system message, the
reply held to a call by the server's JSON-schema field where the choice
requires one, and the call parsed from the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ...constraints import Constraint
from ...tool_calls import call_schema, new_call_id
from ...types import ToolCall
from .dialects import Dialect

__all__ = [
    "ACCEPTS",
    "ToolCallDeltas",
    "choice_gbnf",
    "constraint_fields",
    "generic_call_constraint",
    "tool_choice_field",
]

#: Style -> the constraints a server of that style can enforce.
ACCEPTS: Mapping[str, frozenset[str]] = {
    "openai": frozenset({"json_schema", "json_object"}),
    "vllm": frozenset({"json_schema", "json_object", "regex", "choice"}),
    "sglang": frozenset({"json_schema", "json_object", "regex", "choice"}),
    "llama.cpp": frozenset({"json_schema", "json_object", "choice"}),
    "llama-cpp-python": frozenset({"json_schema", "json_object", "choice"}),
    "": frozenset(),
}


def choice_gbnf(options: tuple[str, ...]) -> str:
    """A GBNF grammar (llama.cpp's) for exactly one of ``options``."""
    return "root ::= " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options)


def _choice_regex(options: tuple[str, ...]) -> str:
    return "(" + "|".join(re.escape(o) for o in options) + ")"


_ESCAPED = re.compile(r"\\([.+*?(){}|$/])")


def _bracket_pattern(pattern: str) -> str:
    """``pattern`` with each escaped literal outside a class as a one-character
    class (``\\.`` as ``[.]``): the same language."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            out.append(f"[{pair[1]}]" if not in_class and _ESCAPED.fullmatch(pair) else pair)
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _bracket_escapes(schema: Any) -> Any:
    """``schema`` with every ``pattern`` bracketed: llama-cpp-python's server
    writes ``\\.`` of a pattern into its GBNF grammar, which its parser
    refuses, and the whole server process exits (measured on 0.3.36)."""
    if isinstance(schema, dict):
        return {
            k: _bracket_pattern(v) if k == "pattern" and isinstance(v, str) else _bracket_escapes(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_bracket_escapes(v) for v in schema]
    return schema


def constraint_fields(dialect: Dialect, constraint: Constraint) -> dict[str, Any]:
    """The request fields that carry ``constraint`` to a server of ``dialect``
    (the caller has checked that the style accepts it)."""
    kind, value, style = constraint.kind, constraint.value, dialect.structured
    if kind == "json_schema":
        schema = json.loads(json.dumps(dict(value)))
        if style == "llama-cpp-python":
            schema = _bracket_escapes(schema)
            return {"response_format": {"type": "json_object", "schema": schema}}
        named = {"name": "output", "schema": schema, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": named}}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "choice":
        if style in ("llama.cpp", "llama-cpp-python"):
            return {"grammar": choice_gbnf(value)}
        if style == "vllm":
            return {"structured_outputs": {"choice": list(value)}}
        return {"regex": _choice_regex(value)}
    if kind == "regex":
        return {"structured_outputs": {"regex": value}} if style == "vllm" else {"regex": value}
    raise ValueError(f"{kind} cannot be sent to {dialect.label}")  # pragma: no cover


def generic_call_constraint(tools: Any) -> Constraint:
    """The JSON schema of one generic call to one of ``tools``."""
    return Constraint("json_schema", call_schema(list(tools), generic=True))


def tool_choice_field(choice: str) -> str | dict[str, Any]:
    """``tool_choice`` as OpenAI's field spells it."""
    name = choice.removeprefix("function:")
    return choice if name == choice else {"type": "function", "function": {"name": name}}


class ToolCallDeltas:
    """The ``tool_calls`` deltas of a streamed reply, put together.

    Each delta names the call's ``index``; its ``id`` and function name
    arrive once, its ``arguments`` in pieces of JSON text. :meth:`calls`
    gives the finished calls; one whose arguments never became a JSON
    object is kept out of them and described in :attr:`malformed`.
    """

    __slots__ = ("_parts", "malformed")

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, Any]] = {}
        self.malformed: list[str] = []

    def add(self, deltas: object) -> None:
        if not isinstance(deltas, list):
            return
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", position)
            part = self._parts.setdefault(
                index if isinstance(index, int) else position, {"id": "", "name": "", "args": []}
            )
            if isinstance(delta.get("id"), str) and delta["id"]:
                part["id"] = delta["id"]
            function = delta.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str) and function["name"]:
                    part["name"] = function["name"]
                args = function.get("arguments")
                if isinstance(args, str):
                    part["args"].append(args)
                elif isinstance(args, dict):
                    part["args"] = [json.dumps(args)]

    def calls(self) -> tuple[ToolCall, ...]:
        out: list[ToolCall] = []
        for index in sorted(self._parts):
            part = self._parts[index]
            try:
                call = ToolCall.from_dict(
                    {
                        "id": part["id"] or new_call_id(),
                        "name": part["name"],
                        "arguments": "".join(part["args"]),
                    }
                )
            except ValueError:
                args = "".join(part["args"])
                shown = args if len(args) <= 200 else args[:200] + "..."
                self.malformed.append(f"{part['name'] or '(no name)'}({shown})")
                continue
            out.append(call)
        return tuple(out)
