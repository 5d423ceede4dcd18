"""Server-sent events: an incremental parser of ``text/event-stream`` bodies.

Feed it the bytes of a response as they arrive; it hands back each event
once the blank line that ends it has arrived::

    parser = SSEParser()
    for chunk in chunks:
        for event in parser.feed(chunk):
            print(event.event, event.data)
    parser.close()

It follows the WHATWG HTML standard's "event stream interpretation": UTF-8
with replacement characters, lines ended by CRLF, LF or CR (even when the
CR and LF arrive in different chunks), one leading byte-order mark ignored,
``:`` comments, ``data`` lines joined with ``\\n``, ``event``, ``id`` (kept
for later events, ignored when it contains NUL) and ``retry`` (digits only).
An event cut off by the end of the stream is discarded, as the standard
says; :attr:`SSEParser.incomplete` tells whether that happened.

Its one addition is a size limit, so that a server which never ends a line
cannot exhaust memory: :class:`SSEError` is raised instead.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_EVENT_SIZE", "SSEError", "SSEParser", "ServerSentEvent"]

#: Largest line or event data, in characters, that a parser accepts by default.
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEError(ValueError):
    """The stream broke a limit of the parser (a line or an event too large)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``event`` is the type ("message" unless the stream named one), ``id`` the
    last event id seen so far (as the standard defines it), ``retry`` the
    reconnection time in milliseconds when this event set one.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEParser:
    """Incremental event-stream parser; one per response. Not thread-safe."""

    __slots__ = (
        "_data",
        "_decode",
        "_event",
        "_has_data",
        "_line",
        "_max",
        "_retry",
        "_size",
        "_skip_lf",
        "_started",
        "closed",
        "incomplete",
        "last_event_id",
        "lines",
        "retry",
        "unknown_fields",
    )

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be >= 1; got {max_event_size!r}")
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._max = max_event_size
        self._line = ""
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._has_data = False
        self._size = 0
        self._event = ""
        self._retry: int | None = None
        #: The last event id buffer: carried over to later events.
        self.last_event_id = ""
        #: The latest reconnection time (ms) the stream asked for, if any.
        self.retry: int | None = None
        #: Lines with a field name the standard does not know (ignored).
        self.unknown_fields = 0
        #: Lines seen so far (blank ones and comments included).
        self.lines = 0
        #: Set by :meth:`close` when an unfinished event had to be dropped.
        self.incomplete = False
        #: Whether :meth:`close` has been called.
        self.closed = False

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse more bytes; return the events they complete, in order."""
        if self.closed:
            raise ValueError("feed() after close()")
        return self._text(self._decode(data))

    def close(self) -> list[ServerSentEvent]:
        """End of stream. Return the events still due (always none: an event
        is only dispatched by its blank line) and note in :attr:`incomplete`
        whether an unfinished one was discarded."""
        if self.closed:
            return []
        events = self._text(self._decode(b"", final=True))
        self.closed = True
        self.incomplete = self.pending
        self._line = ""
        self._data = []
        self._has_data = False
        self._size = 0
        self._event = ""
        return events

    @property
    def pending(self) -> bool:
        """Whether part of an event (or of a line) is buffered."""
        return bool(self._line) or self._has_data

    # -- machinery ---------------------------------------------------------

    def _text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        if not text:
            return []
        parts = _LINE_END.split(text)
        if len(parts) == 1:
            self._line += text
            self._check(self._line, "line")
            return []
        if text.endswith("\r"):
            # The LF of a CRLF may arrive with the next chunk.
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        first, *middle, last = parts
        self._process(self._line + first, events)
        for line in middle:
            self._process(line, events)
        self._line = last
        self._check(self._line, "line")
        return events

    def _check(self, text: str, what: str) -> None:
        if len(text) > self._max:
            raise SSEError(
                f"an event-stream {what} exceeds {self._max} characters; "
                "the server is not sending server-sent events"
            )

    def _process(self, line: str, events: list[ServerSentEvent]) -> None:
        self.lines += 1
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
            self._size += len(value) + 1
            if self._size > self._max:
                raise SSEError(f"an event-stream event exceeds {self._max} characters of data")
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
                self.retry = self._retry
        else:
            self.unknown_fields += 1

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        retry, self._retry = self._retry, None
        if not self._has_data:
            self._event = ""
            return
        data = "\n".join(self._data)
        events.append(
            ServerSentEvent(
                data=data,
                event=self._event or "message",
                id=self.last_event_id,
                retry=retry,
            )
        )
        self._data = []
        self._has_data = False
        self._size = 0
        self._event = ""
