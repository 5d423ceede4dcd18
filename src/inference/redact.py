"""Model locations as they may appear in logs and messages: URLs without credentials.

One function, used by the registry's log and by the ``openai`` backend's
errors, so that what is hidden (user information, query, fragment) is the
same everywhere.
"""

from __future__ import annotations

import urllib.parse

__all__ = ["shown_url"]


def shown_url(url: str) -> str:
    """``url`` without user information, query or fragment; IPv6 hosts keep
    their brackets. A URL that cannot be parsed (a bad port) is shown as
    ``<invalid URL>``, never raised."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"
