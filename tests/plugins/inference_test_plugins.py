"""Backends for the entry-point and registry tests, one of each kind a plugin
can be: a class, an instance, a factory, one that cannot run here, one whose
``available()`` raises, one that is not a backend at all. The one whose module
fails to import is :mod:`inference_test_broken`.

Each loads models with the fake backend, under its own name.
"""

from __future__ import annotations

import os
from typing import Any

from inference.testing import FakeBackend, FakeModel

#: Bumped each time a backend object of this module is made.
CREATED: dict[str, int] = {}


class _Plugin:
    name = "plugin"
    priority = 0
    formats: tuple[str, ...] = ("gguf",)
    reason = "ready (test plugin)"

    def __init__(self) -> None:
        CREATED[self.name] = CREATED.get(self.name, 0) + 1

    def available(self) -> bool:
        return True

    def load_model(self, path: str | os.PathLike[str], *opts: Any, **kwargs: Any) -> FakeModel:
        fake = FakeBackend(self.name, formats=self.formats, reply=f"[{self.name}] ")
        return fake.load_model(path, *opts, **kwargs)


class GoodBackend(_Plugin):
    """Registered as a class: the registry makes the instance."""

    name = "good"
    priority = 500
    aliases = ("goodie",)
    extra = "good"
    reason = "good to go"


class _InstanceBackend(_Plugin):
    name = "instance"
    priority = 400
    formats = ("gguf", "safetensors")
    reason = "registered as an instance"


#: Registered as an instance.
INSTANCE = _InstanceBackend()


class _FactoryBackend(_Plugin):
    name = "factory"
    priority = 300
    formats = ("safetensors",)
    reason = "made by a factory"


def make_factory_backend() -> _FactoryBackend:
    """Registered as a factory function."""
    return _FactoryBackend()


class UnavailableBackend(_Plugin):
    """Installed, but cannot run here, and says why."""

    name = "unavailable"
    priority = 900
    extra = "frob"

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""

    def available(self) -> bool:
        self.reason = "needs a frobnicator, and none is plugged in"
        return False


class RaisingBackend(_Plugin):
    """``available()`` raises, which a backend must never do."""

    name = "raising"
    priority = 800

    def available(self) -> bool:
        raise RuntimeError("the driver crashed")


class TopSafetensorsBackend(_Plugin):
    """The highest priority of all, but it loads no GGUF."""

    name = "top"
    priority = 1000
    formats = ("safetensors",)
    reason = "only safetensors"


class NotABackend:
    """Has a name but neither available() nor load_model()."""

    name = "notabackend"


class CountingBackend(_Plugin):
    """Counts how many times it is made (see CREATED)."""

    name = "counting"
