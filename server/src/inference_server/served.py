"""The models one server serves: each by its name, with its own slots; a
request's ``model`` picks one, and what each can do is read from its
capabilities.

A request without a ``model`` (or with an empty one) goes to the first
served model that can do what the route asks (generate, embed, rerank; for
the last two, a model that does not generate comes first: the embedding
model served beside a chat model). An
Ollama-style tag (``name:latest``) names ``name``. Any other name that is not
served is refused (:class:`UnknownModel`, a 404 that lists the served names),
and a served model asked for what it cannot do is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from inference import TextModel

from .requests import BadRequest

__all__ = ["NEEDS", "Catalogue", "Served", "UnknownModel", "model_name"]

#: What a route needs of a model, and how a refusal says it.
NEEDS = {"generate": "generate text", "embed": "embed text", "rerank": "rerank documents"}


class UnknownModel(LookupError):
    """A request named a model this server does not serve (HTTP 404)."""

    def __init__(self, asked: str, names: list[str]) -> None:
        super().__init__(
            f"the model {asked!r} is not served here; this server serves: {', '.join(names)}"
        )


@dataclass
class Served:
    """One served model: its name, the model, and its slots (``parallel``
    requests run on it at once)."""

    name: str
    model: TextModel
    slots: asyncio.Semaphore

    def can(self, need: str) -> bool:
        caps = self.model.capabilities
        return bool({"generate": caps.generate, "embed": caps.embed, "rerank": caps.rerank}[need])

    def abilities(self) -> list[str]:
        """What it does, in Ollama's words (``/api/show``'s ``capabilities``)."""
        caps = self.model.capabilities
        out = ["completion"] if caps.generate else []
        out += ["tools"] if caps.tools else []
        out += ["thinking"] if caps.reasoning else []
        out += ["embedding"] if caps.embed else []
        return out

    def card(self, created: int) -> dict[str, Any]:
        """The model as OpenAI's ``/v1/models`` lists it, with what it can do."""
        info = self.model.info
        return {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "inference",
            "backend": info.backend,
            "context_length": self.model.capabilities.context_length or info.context_length,
            "capabilities": self.model.capabilities.as_dict(),
        }

    def details(self) -> dict[str, Any]:
        """The model as Ollama's ``details`` describe it."""
        info = self.model.info
        bits = f"Q{info.quant_bits}" if info.quant_bits else ""
        return {
            "parent_model": "",
            "format": "gguf" if info.path.endswith(".gguf") else "safetensors",
            "family": info.architecture,
            "families": [info.architecture] if info.architecture else [],
            "parameter_size": "",
            "quantization_level": info.quant_type or bits,
        }


class Catalogue:
    """The served models by name, in the order given (the first is the default)."""

    def __init__(self, models: Mapping[str, TextModel], parallel: int) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self._served = {
            name: Served(name, model, asyncio.Semaphore(max(1, parallel)))
            for name, model in models.items()
        }

    def __iter__(self) -> Iterator[Served]:
        return iter(self._served.values())

    def __len__(self) -> int:
        return len(self._served)

    @property
    def names(self) -> list[str]:
        return list(self._served)

    @property
    def first(self) -> Served:
        return next(iter(self._served.values()))

    def find(self, asked: str) -> Served:
        """The model named ``asked`` (or ``asked`` without an Ollama ``:latest`` tag)."""
        served = self._served.get(asked)
        if served is None and asked.endswith(":latest"):
            served = self._served.get(asked.removesuffix(":latest"))
        if served is None:
            raise UnknownModel(asked, self.names)
        return served

    def pick(self, asked: object, need: str) -> Served:
        """The model a request's ``model`` field names, for a route that needs ``need``."""
        if asked is not None and not isinstance(asked, str):
            raise BadRequest("model must be a string", "model")
        if not asked:
            # Embedding and ranking go to a model made for them (one that does
            # not generate) before a chat model that can also embed.
            able = [s for s in self if s.can(need)]
            if need != "generate":
                able.sort(key=lambda s: s.can("generate"))
            if able:
                return able[0]
            raise BadRequest(f"no model served here can {NEEDS[need]}", "model")
        served = self.find(asked)
        if not served.can(need):
            others = [s.name for s in self if s.can(need)]
            also = f"; {', '.join(others)} can" if others else ""
            raise BadRequest(f"the model {served.name!r} cannot {NEEDS[need]}{also}", "model")
        return served


def model_name(path: str) -> tuple[str, str]:
    """A command line's model: ``NAME=PATH`` or ``PATH`` (named by its file or
    folder), as (name, path)."""
    name, sep, rest = path.partition("=")
    if sep and name and os.sep not in name and not os.path.exists(path):
        return name, rest
    return os.path.basename(os.fspath(path).rstrip("/")) or "model", path
