"""How long and how many: the connection limits uvicorn is run with.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) and the
size of a request's head (h11's ``max_incomplete_event_size``), but nothing
else: a client that sends its headers a byte at a time (slowloris), or opens
a connection and says nothing, holds a socket for ever, and its 503 for a
full server comes only once its headers have arrived. :class:`Deadlines` is
uvicorn's own h11 protocol with a deadline for each request's head, and a
connection limit enforced when the connection is made. The body's deadline
is the app's (``Settings.body_timeout``).

:func:`quiet_accept_errors` keeps a loop that has run out of file
descriptors from writing one traceback per refused ``accept``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from .app import Settings

__all__ = ["Deadlines", "quiet_accept_errors", "raise_open_files_limit", "uvicorn_config"]

_log = logging.getLogger("inference.server")

#: File descriptors kept back from connections: the model, logs, the listening socket.
_SPARE_FDS = 64


class Deadlines(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head and a
    limit on open connections (set by :func:`uvicorn_config`)."""

    header_timeout: float = 10.0
    max_connections: int = 512

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            # Refused before it costs more than the socket; the client may retry.
            self._answer(503, b"the server has too many open connections")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a whole head arrived: a request began
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's head, unless a pipelined one is here already
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.transport.close()  # idle: nothing to answer
            return
        self._answer(408, f"the request head took over {self.header_timeout:g} s".encode())

    def _answer(self, status: int, text: bytes) -> None:
        """Send ``status`` with ``text`` and close, or just close if h11 cannot."""
        try:
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
            out = self.conn.send(h11.Response(status_code=status, headers=headers))
            out = (out or b"") + (self.conn.send(h11.Data(data=text)) or b"")
            out += self.conn.send(h11.EndOfMessage()) or b""
            self.transport.write(out)
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def uvicorn_config(app: Any, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` within ``settings``'
    limits: a deadline for each request's head, an idle deadline between
    requests, and at most ``max_connections`` open connections (fewer if the
    process may not open that many files)."""
    fds = raise_open_files_limit()
    protocol = type(
        "Deadlines",
        (Deadlines,),
        {
            "header_timeout": settings.header_timeout,
            "max_connections": max(1, min(settings.max_connections, fds - _SPARE_FDS)),
        },
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        log_level="warning",
        access_log=False,
    )


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, every: float = 10.0) -> None:
    """Log each kind of error the event loop reports (``accept`` failing with
    too many open files, mostly) at most once per ``every`` seconds, with a
    count of those left out, instead of one traceback each."""
    last: dict[str, float] = {}
    skipped: dict[str, int] = {}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        key = f"{context.get('message', '')}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        now = time.monotonic()
        if now - last.get(key, -every) < every:
            skipped[key] = skipped.get(key, 0) + 1
            return
        last[key] = now
        more = skipped.pop(key, 0)
        _log.warning(
            "%s: %s%s",
            context.get("message", "event loop error"),
            exc,
            f" ({more} more like it in the last {every:g} s)" if more else "",
        )

    loop.set_exception_handler(handler)
