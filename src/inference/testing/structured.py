"""Structured-output validity on a real model: the schemas, tools and checks.

Every backend's tests, and ``bench/bench_structured.py``, run the same
checks: ``runs`` sampled generations (temperature 0.8, one seed each) and
how many of them are valid. :data:`SCHEMAS` covers nested objects, arrays of
enums, bounded numbers, required and optional keys and a string pattern;
:data:`TOOLS` are three functions for ``tool_choice="required"``.

Validation uses ``jsonschema`` (a test dependency), imported when a check runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocols import TextModel
from ..types import Message

__all__ = [
    "CHOICES",
    "REGEX",
    "SCHEMAS",
    "TOOLS",
    "Validity",
    "choice_validity",
    "regex_validity",
    "schema_validity",
    "tool_validity",
]

_NAME = {"type": "string", "minLength": 1, "maxLength": 24}

#: Five schemas, each exercising one part of JSON Schema.
SCHEMAS: Mapping[str, dict[str, Any]] = {
    "nested object": {
        "type": "object",
        "properties": {
            "name": _NAME,
            "address": {
                "type": "object",
                "properties": {"city": _NAME, "country": _NAME},
                "required": ["city", "country"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "array of enums": {
        "type": "object",
        "properties": {
            "colours": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue", "yellow"]},
                "minItems": 1,
                "maxItems": 4,
            }
        },
        "required": ["colours"],
        "additionalProperties": False,
    },
    "bounded numbers": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["age", "score"],
        "additionalProperties": False,
    },
    "required and optional keys": {
        "type": "object",
        "properties": {
            "title": _NAME,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "subtitle": _NAME,
            "pages": {"type": "integer", "minimum": 1, "maximum": 2000},
        },
        "required": ["title", "year"],
        "additionalProperties": False,
    },
    "string pattern": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.(com|org)$"},
        },
        "required": ["code", "email"],
        "additionalProperties": False,
    },
}

_ASK = {
    "nested object": "Describe a person and where they live.",
    "array of enums": "Name some colours you like.",
    "bounded numbers": "Give an age and a score between 0 and 1.",
    "required and optional keys": "Describe a book.",
    "string pattern": "Give a product code and an e-mail address.",
}

#: A pattern and the prompt it answers.
REGEX = (r"[0-9]{1,2}:[0-9]{2} (am|pm)", "What time is it? Answer like 7:45 pm.")
#: Strings to choose among (multi-byte characters included) and the prompt.
CHOICES = (("café", "thé", "jus d'orange"), "Which drink would you like?")

#: Three functions, in OpenAI's shape.
TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": _NAME,
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money from one currency to another",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number", "minimum": 0},
                    "source": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "target": {"type": "string", "pattern": "^[A-Z]{3}$"},
                },
                "required": ["amount", "source", "target"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "set_alarm",
            "description": "Set an alarm",
            "parameters": {
                "type": "object",
                "properties": {
                    "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                    "minute": {"type": "integer", "minimum": 0, "maximum": 59},
                },
                "required": ["hour", "minute"],
            },
        },
    },
)

_TOOL_ASKS = (
    "What is the weather like in Paris?",
    "How much is 20 euros in dollars?",
    "Wake me up at half past six.",
    "Is it raining in Tokyo?",
)


@dataclass
class Validity:
    """How many of ``runs`` outputs were valid; the invalid ones, for the report
    (schemas: ``"NAME: 'TEXT'"``; tools: ``{"calls": [[name, arguments]], "text"}`` as JSON)."""

    check: str
    runs: int = 0
    valid: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, ok: bool, text: str) -> None:
        self.runs += 1
        self.valid += ok
        if not ok:
            self.failures.append(text)

    def __str__(self) -> str:
        return f"{self.check}: {self.valid}/{self.runs} valid"


def _sampled(seed: int) -> dict[str, Any]:
    return {"temperature": 0.8, "seed": seed}


def schema_validity(
    model: TextModel, runs: int = 50, *, constrained: bool = True, max_tokens: int = 160
) -> Validity:
    """``runs`` chats, one seed each, cycling through :data:`SCHEMAS`; valid
    when the text parses and validates. Unconstrained, the schema is only
    asked for in the prompt (for comparison)."""
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    result = Validity("json_schema" if constrained else "json_schema (prompt only)")
    names = list(SCHEMAS)
    for seed in range(runs):
        name = names[seed % len(names)]
        schema = SCHEMAS[name]
        messages = [
            Message("system", f"Reply with JSON that matches this schema: {json.dumps(schema)}"),
            Message("user", _ASK[name]),
        ]
        options: dict[str, Any] = {"json_schema": schema} if constrained else {}
        text = model.chat(messages, max_tokens=max_tokens, **_sampled(seed), **options).text()
        try:
            jsonschema.validate(json.loads(text), schema)
            ok = True
        except (ValueError, jsonschema.ValidationError):
            ok = False
        result.add(ok, f"{name}: {text!r}")
    return result


def regex_validity(model: TextModel, runs: int = 20, *, constrained: bool = True) -> Validity:
    """``runs`` chats under :data:`REGEX`; valid when the whole text matches."""
    pattern, ask = REGEX
    result = Validity("regex" if constrained else "regex (prompt only)")
    for seed in range(runs):
        options: dict[str, Any] = {"regex": pattern} if constrained else {}
        text = model.chat([Message("user", ask)], max_tokens=16, **_sampled(seed), **options).text()
        result.add(re.fullmatch(pattern, text) is not None, repr(text))
    return result


def choice_validity(model: TextModel, runs: int = 20, *, constrained: bool = True) -> Validity:
    """``runs`` chats under :data:`CHOICES`; valid when the text is one of them."""
    options_, ask = CHOICES
    result = Validity("choice" if constrained else "choice (prompt only)")
    for seed in range(runs):
        options: dict[str, Any] = {"choice": list(options_)} if constrained else {}
        prompt = f"{ask} Answer with one of: {', '.join(options_)}."
        text = model.chat(
            [Message("user", prompt)], max_tokens=12, **_sampled(seed), **options
        ).text()
        result.add(text in options_, repr(text))
    return result


def tool_validity(model: TextModel, runs: int = 20, *, max_tokens: int = 96) -> Validity:
    """``runs`` chats with the three :data:`TOOLS` and ``tool_choice="required"``;
    valid when there is a call to one of them whose arguments validate."""
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    result = Validity("tool_choice=required")
    for seed in range(runs):
        ask = _TOOL_ASKS[seed % len(_TOOL_ASKS)]
        stream = model.chat(
            [Message("user", ask)],
            tools=list(TOOLS),
            tool_choice="required",
            max_tokens=max_tokens,
            **_sampled(seed),
        )
        text = stream.text()
        calls = stream.tool_calls
        ok = bool(calls)
        for call in calls:
            try:
                jsonschema.validate(call.arguments, schemas[call.name])
            except (KeyError, jsonschema.ValidationError):
                ok = False
        shown = {"calls": [[c.name, c.arguments] for c in calls], "text": text}
        result.add(ok, json.dumps(shown, ensure_ascii=False))
    return result
