"""The ``openai`` backend object: cheap to import (the registry lists it
without loading the client); connecting is :mod:`.connect`'s."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ...errors import ModelLoadError
from ...options import LoadConfig, Option, load_config
from ...values import is_int, is_number
from .urls import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_RETRIES, Settings

if TYPE_CHECKING:
    from .model import OpenAIModel

__all__ = ["OpenAIBackend"]


class OpenAIBackend:
    """The ``openai`` backend: loads ``http(s)://`` URLs of OpenAI-compatible
    servers. Always available: it needs only the standard library.

    The keyword arguments set defaults that the URL fragment overrides.
    """

    name = "openai"
    priority = 0
    formats = ("url",)
    aliases = ("openai-compatible",)
    extra = ""
    reason = "remote OpenAI-compatible servers over HTTP(S); standard library only"

    def __init__(
        self,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        for label, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not is_number(value) or not value > 0:
                raise ValueError(f"{label} must be a number of seconds > 0; got {value!r}")
        if not is_int(retries) or retries < 0:
            raise ValueError(f"retries must be an int >= 0; got {retries!r}")
        self._defaults = Settings(
            connect_timeout=float(connect_timeout),
            read_timeout=float(read_timeout),
            retries=retries,
        )

    def available(self) -> bool:
        return True

    def load_model(
        self, path: str | os.PathLike[str], *opts: Option | LoadConfig, **kwargs: Any
    ) -> OpenAIModel:
        """Connect to the server at ``path`` (an http or https URL) and check
        the model; raise :class:`~inference.ModelLoadError` if that fails."""
        cfg = load_config(*opts, **kwargs)
        text = os.fspath(path)
        if not isinstance(text, str) or not text.strip().lower().startswith(
            ("http://", "https://")
        ):
            shown = text if isinstance(text, str) else repr(text)
            raise ModelLoadError(
                f"{shown}: the openai backend loads http:// or https:// URLs of "
                "OpenAI-compatible servers, not local paths",
                path=shown,
            )
        from .connect import load

        return load(text, cfg, self._defaults)
