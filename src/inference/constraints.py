"""Structured output: the call's constraint as one value, and who accepts it.

The five options (``json_schema``, ``json_object``, ``regex``, ``choice``,
``grammar``; :data:`KINDS`) are fields of
:class:`~inference.GenerateConfig`; :func:`constraint_of` folds the one that
is set into a :class:`Constraint`. A model lists the kinds it can enforce in
``capabilities.constraints``, and the front door
(:func:`inference.capabilities.refuse_unsupported`) refuses a call that asks
for another, naming the option and the backend.

In-process backends enforce a constraint with a token mask at every step
(:mod:`inference.guidance`, on llguidance); the remote backend translates it
to the server's own field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import CONSTRAINT_OPTIONS, GenerateConfig

__all__ = ["JSON_LAYOUT", "KINDS", "Constraint", "constraint_of"]

#: Every constraint kind, by the name of its option.
KINDS: tuple[str, ...] = CONSTRAINT_OPTIONS

#: How constrained JSON is laid out unless a schema's own ``x-guidance``
#: says otherwise (llguidance's JSON options): ``json.dumps``'s separators
#: and no other whitespace, so that a small model cannot wander into runs of
#: blank lines.
JSON_LAYOUT: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


@dataclass(frozen=True, slots=True)
class Constraint:
    """One call's constraint: its ``kind`` (a name of :data:`KINDS`) and its
    value (the schema dict, the pattern, the strings, the grammar text;
    True for ``json_object``)."""

    kind: str
    value: Any

    def __hash__(self) -> int:
        return hash((self.kind, repr(self.value)))


def constraint_of(cfg: GenerateConfig) -> Constraint | None:
    """The constraint ``cfg`` asks for, or None (the config allows one at most)."""
    for kind in KINDS:
        value = getattr(cfg, kind)
        if value:
            return Constraint(kind, value)
    return None
