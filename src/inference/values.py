"""Numbers read from untrusted data (JSON bodies, ``config.json``, GGUF
metadata): an integer is an ``int`` that is not a ``bool`` (JSON's ``true``
is not 1)."""

from __future__ import annotations

from typing import TypeGuard

__all__ = ["is_int", "is_number", "whole_number"]


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an ``int`` or a ``float``, and not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole_number(value: object) -> int | None:
    """``value`` as an ``int`` if it is one, or a ``float`` with no fraction
    (``4096.0`` in a config file); else None."""
    if is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
