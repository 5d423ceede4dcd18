"""The server URL and the backend's settings in its fragment (never sent).

``http(s)://host:port/v1#model=NAME&server=KIND&connect_timeout=S&read_timeout=S&retries=N``:
:func:`parse_url` splits it into where to connect (:class:`Endpoint`) and the
settings over the backend's defaults (:class:`Settings`).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace
from typing import Any

from ...errors import ModelLoadError
from ...redact import shown_url
from .dialects import SERVER_ALIASES, SERVER_KINDS

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRIES",
    "FRAGMENT_KEYS",
    "Endpoint",
    "Settings",
    "fragment_settings",
    "parse_url",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings from the URL fragment, over the backend's defaults."""

    model: str = ""
    server: str = ""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    retries: int = DEFAULT_RETRIES


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server is. ``display`` is safe to show: no credentials, no query."""

    scheme: str
    host: str
    port: int
    base: str
    query: str
    origin: str
    basic_auth: str = ""

    @property
    def display(self) -> str:
        """The base URL without credentials, query or fragment."""
        return self.origin + self.base

    def path(self, suffix: str, *, root: bool = False, query: bool = True) -> str:
        """The request path of ``suffix`` (``root``: at the server's root,
        not under ``/v1``), with the URL's query unless ``query`` is False."""
        base = self.base
        if root and base.endswith("/v1"):
            base = base[: -len("/v1")]
        return f"{base}{suffix}" + (f"?{self.query}" if self.query and query else "")

    def __repr__(self) -> str:
        return f"Endpoint({self.display!r})"


FRAGMENT_KEYS = ("model", "server", "connect_timeout", "read_timeout", "retries")


def parse_url(url: str, defaults: Settings) -> tuple[Endpoint, Settings]:
    """Split a server URL into where to connect and this backend's settings."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ModelLoadError(f"not a valid server URL: {exc}", path=shown_url(url)) from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise ModelLoadError(
            f"{shown_url(url)}: the openai backend needs an http:// or https:// URL with a host",
            path=shown_url(url),
        )
    port = port or (443 if scheme == "https" else 80)
    base = parts.path.rstrip("/") or "/v1"
    shown_host = f"[{host}]" if ":" in host else host
    origin = f"{scheme}://{shown_host}:{port}"
    display = origin + base
    basic = ""
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        import base64

        basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    settings = fragment_settings(parts.fragment, defaults, display)
    return Endpoint(scheme, host, port, base, parts.query, origin, basic), settings


def fragment_settings(fragment: str, defaults: Settings, display: str) -> Settings:
    if not fragment:
        return defaults
    changes: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(fragment, keep_blank_values=True):
        if key not in FRAGMENT_KEYS:
            raise ModelLoadError(
                f"{display}: unknown setting {key!r} in the URL fragment; valid: "
                f"{', '.join(FRAGMENT_KEYS)} (e.g. {display}#model=NAME)",
                path=display,
            )
        if key == "model":
            if not value:
                raise ModelLoadError(f"{display}: model= needs a name", path=display)
            changes["model"] = value
        elif key == "server":
            kind = SERVER_ALIASES.get(value.strip().lower())
            if kind is None:
                raise ModelLoadError(
                    f"{display}: unknown server={value!r}; valid: {', '.join(SERVER_KINDS)}",
                    path=display,
                )
            changes["server"] = kind
        elif key == "retries":
            try:
                n = int(value)
            except ValueError:
                n = -1
            if n < 0:
                raise ModelLoadError(
                    f"{display}: retries must be an int >= 0; got {value!r}", path=display
                )
            changes["retries"] = n
        else:
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not seconds > 0 or seconds == float("inf"):
                raise ModelLoadError(
                    f"{display}: {key} must be a number of seconds > 0; got {value!r}", path=display
                )
            changes[key] = seconds
    return replace(defaults, **changes)
