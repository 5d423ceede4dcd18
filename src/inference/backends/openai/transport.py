"""Requests to one server: the keep-alive connection pool, the watchdog that
shuts a cancelled call's socket, and HTTP failures as :class:`Failure`.

The strict point of cut-off, as in httpx: above it, JSON bodies and event
streams; below it, sockets. Nothing here knows what a completion is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when first used: listing backends stays cheap
    import http.client

from ... import __version__, env
from ...stream import StreamControl
from .retries import RETRIABLE_STATUS, Retry, retry_after
from .urls import Endpoint, Settings

__all__ = [
    "MAX_ERROR_BODY",
    "MAX_JSON_BODY",
    "READ_SIZE",
    "WATCHDOG",
    "Client",
    "Failure",
    "Response",
    "Watchdog",
    "describe",
    "error_text",
]

_log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 16 * 1024 * 1024
WATCH_INTERVAL = 0.02


class Failure(Exception):
    """One request went wrong; the caller turns it into a public error.

    ``retriable``: trying again may help (connection refused, timeouts, 5xx,
    a connection cut before any token); ``status`` the HTTP status, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        status: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retriable = retriable
        self.status = status
        self.retry_after = retry_after


def describe(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc or type(exc).__name__)


# -- cancelling a blocked read -------------------------------------------------


class Watchdog:
    """One daemon thread that shuts the socket of every call that was
    cancelled or ran past its deadline, so that a read blocked on the
    network returns at once and the server sees the client go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, tuple[StreamControl, http.client.HTTPConnection]] = {}
        self._next = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, control: StreamControl | None, conn: http.client.HTTPConnection) -> int:
        if control is None:
            return -1
        with self._lock:
            self._next += 1
            key = self._next
            self._items[key] = (control, conn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="inference-openai-watchdog", daemon=True
                )
                self._thread.start()
        self._wake.set()
        return key

    def unwatch(self, key: int) -> None:
        if key >= 0:
            with self._lock:
                self._items.pop(key, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                items = list(self._items.items())
                if not items:
                    self._wake.clear()
            if not items:
                self._wake.wait()
                continue
            for key, (control, conn) in items:
                if control.stop_requested():
                    shutdown(conn)
                    self.unwatch(key)
            time.sleep(WATCH_INTERVAL)


def shutdown(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = Watchdog()


# -- HTTP ----------------------------------------------------------------------


class Client:
    """Requests to one server: a pool of keep-alive connections, headers,
    error texts, retries with backoff. Thread-safe."""

    def __init__(self, endpoint: Endpoint, settings: Settings, api_key: str) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._key = api_key
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self.max_idle = 4
        self.closed = False

    def __repr__(self) -> str:
        return f"<Client {self.endpoint.display}>"

    @property
    def has_key(self) -> bool:
        return bool(self._key)

    # -- connections -------------------------------------------------------

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        import http.client
        import ssl

        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        ep = self.endpoint
        conn: http.client.HTTPConnection
        if ep.scheme == "https":
            conn = http.client.HTTPSConnection(
                ep.host,
                ep.port,
                timeout=self.settings.connect_timeout,
                context=ssl.create_default_context(),
            )
        else:
            conn = http.client.HTTPConnection(
                ep.host, ep.port, timeout=self.settings.connect_timeout
            )
        return conn, False

    def release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self.closed and len(self._idle) < self.max_idle and conn.sock is not None:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        import ssl

        host = self.endpoint.host
        try:
            conn.connect()
        except socket.gaierror as exc:
            raise Failure(
                f"cannot resolve the host name {host!r}: {describe(exc)}", retriable=True
            ) from None
        except ConnectionRefusedError:
            raise Failure(
                "connection refused: is the server running and listening there?", retriable=True
            ) from None
        except TimeoutError:
            raise Failure(
                f"could not connect within {self.settings.connect_timeout:g} s", retriable=True
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise Failure(
                f"the server's TLS certificate was not accepted: {exc.verify_message or exc}",
                retriable=False,
            ) from None
        except ssl.SSLError as exc:
            raise Failure(f"TLS failed: {exc}", retriable=False) from None
        except OSError as exc:
            raise Failure(f"cannot connect: {describe(exc)}", retriable=True) from None
        if conn.sock is not None:
            conn.sock.settimeout(self.settings.read_timeout)

    def headers(self, *, json_body: bool, stream: bool) -> dict[str, str]:
        headers = {
            "User-Agent": f"inference/{__version__}",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if json_body:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        elif self.endpoint.basic_auth:
            headers["Authorization"] = self.endpoint.basic_auth
        return headers

    def scrub(self, text: str) -> str:
        """Remove the API key (and URL credentials) from a server's text."""
        for secret in (self._key, self.endpoint.basic_auth.partition(" ")[2]):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    # -- requests ------------------------------------------------------------

    def open(
        self,
        method: str,
        suffix: str,
        payload: bytes | None,
        control: StreamControl | None,
        *,
        stream: bool,
        root: bool = False,
    ) -> Response:
        """Send one request and return its response once the status is OK,
        owning its connection (close it, or use it as a context manager).

        A keep-alive connection that the server closed meanwhile is
        replaced at once, without counting as a retry.
        """
        path = self.endpoint.path(suffix, root=root)
        headers = self.headers(json_body=payload is not None, stream=stream)
        while True:
            conn, reused = self._acquire()
            key = WATCHDOG.watch(control, conn)
            try:
                if conn.sock is None:
                    self._connect(conn)
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
            except Failure:
                WATCHDOG.unwatch(key)
                conn.close()
                if control is not None and control.stop_requested():
                    control.check()
                raise
            except Exception as exc:
                WATCHDOG.unwatch(key)
                conn.close()
                if control is not None and control.stop_requested():
                    control.check()
                if reused and isinstance(exc, ConnectionError):
                    continue  # a stale keep-alive connection
                raise self.transport_failure(exc, before_answer=True) from None
            if resp.status >= 400:
                try:
                    failure = self.status_failure(resp)
                finally:
                    WATCHDOG.unwatch(key)
                    conn.close()
                raise failure
            _log.debug(
                "%s %s%s: HTTP %d",
                method,
                self.endpoint.origin,
                self.endpoint.path(suffix, root=root, query=False),
                resp.status,
            )
            return Response(self, conn, resp, key)

    def transport_failure(self, exc: BaseException, *, before_answer: bool) -> Failure:
        import http.client
        import ssl

        if isinstance(exc, Failure):
            return exc
        if isinstance(exc, TimeoutError):
            what = "answer" if before_answer else "more data"
            return Failure(
                f"no {what} from the server within {self.settings.read_timeout:g} s (read_timeout)",
                retriable=True,
            )
        if isinstance(exc, http.client.IncompleteRead):
            return Failure("the connection was cut mid-stream", retriable=True)
        if isinstance(exc, ConnectionError):  # http.client.RemoteDisconnected too
            return Failure(
                f"the server closed the connection ({type(exc).__name__})", retriable=True
            )
        if isinstance(exc, http.client.HTTPException):
            return Failure(f"the server's answer is not valid HTTP: {exc!r}", retriable=False)
        if isinstance(exc, ssl.SSLError):
            return Failure(f"TLS failed: {exc}", retriable=False)
        if isinstance(exc, OSError):
            return Failure(f"network error: {describe(exc)}", retriable=True)
        if isinstance(exc, ValueError):  # a read on a connection shut meanwhile
            return Failure(f"the connection was closed: {exc}", retriable=True)
        return Failure(f"{type(exc).__name__}: {exc}", retriable=False)

    def status_failure(self, resp: http.client.HTTPResponse) -> Failure:
        status = resp.status
        try:
            body = resp.read(MAX_ERROR_BODY)
        except Exception:
            body = b""
        text = self.scrub(error_text(body))
        head = f"HTTP {status} {resp.reason}".rstrip()
        wait = retry_after(resp.getheader("Retry-After"))
        if status in (401, 403):
            hint = (
                "the API key was not accepted"
                if self._key
                else "no API key was sent: give one with with_api_key(), api_key=, "
                f"or the {env.INFERENCE_API_KEY} or {env.OPENAI_API_KEY} environment variable"
            )
            return Failure(
                f"the server refused the request ({head}): {text}; {hint}",
                retriable=False,
                status=status,
            )
        return Failure(
            f"{head}: {text}",
            retriable=status in RETRIABLE_STATUS,
            status=status,
            retry_after=wait,
        )

    def fetch_json(
        self,
        method: str,
        suffix: str,
        body: Any = None,
        *,
        control: StreamControl | None = None,
        root: bool = False,
        retries: int | None = None,
    ) -> Any:
        """One JSON request with retries; raises Failure when it gives up."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        where = self.endpoint.origin + self.endpoint.path(suffix, root=root, query=False)
        retry = Retry(self.settings.retries if retries is None else retries, control, where)
        while True:
            try:
                with self.open(method, suffix, payload, control, stream=False, root=root) as answer:
                    data = answer.read_all(MAX_JSON_BODY)
            except Failure as exc:
                retry.after(exc)
                continue
            try:
                return json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                snippet = self.scrub(data[:200].decode("utf-8", "replace"))
                raise Failure(
                    f"the answer to {method} {suffix} is not JSON ({exc}): {snippet!r}",
                    retriable=False,
                ) from None


class Response:
    """An answer whose status was OK, owning its connection: the watchdog
    shuts the connection if the call is cancelled meanwhile, and
    :meth:`close` gives it back to the pool when the answer was read to its
    end and the connection can carry another request (else closes it)."""

    def __init__(
        self,
        client: Client,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        key: int,
    ) -> None:
        self._client = client
        self._conn = conn
        self._resp = resp
        self._key = key
        #: Read to its end, and the connection can be used again.
        self.reusable = False

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def content_type(self) -> str:
        return (self._resp.getheader("Content-Type") or "").split(";")[0].strip().lower()

    def read1(self, size: int) -> bytes:
        """Up to ``size`` bytes, as soon as some arrive; Failure if the
        connection fails."""
        try:
            return self._resp.read1(size)
        except Exception as exc:
            raise self._client.transport_failure(exc, before_answer=False) from None

    def read_all(self, limit: int) -> bytes:
        """The whole body; Failure if it is larger than ``limit`` bytes.
        (``read``, not ``read1``: at the end of a body of known length only
        ``read`` closes the response, which lets the connection be reused.)"""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                data = self._resp.read(min(READ_SIZE, limit + 1 - size))
            except Exception as exc:
                raise self._client.transport_failure(exc, before_answer=False) from None
            if not data:
                self.reusable = not self._resp.will_close
                return b"".join(chunks)
            chunks.append(data)
            size += len(data)
            if size > limit:
                raise Failure(f"the server's answer is larger than {limit} bytes", retriable=False)

    def finish(self, done: bool) -> None:
        """Read what is left of an answer whose stream has ended (``done``:
        it said so), so that its connection can carry the next request."""
        resp, conn = self._resp, self._conn
        if resp.will_close or conn.sock is None:
            return
        if not done:
            self.reusable = resp.isclosed()
            return
        sock = conn.sock
        read_timeout = self._client.settings.read_timeout
        try:
            sock.settimeout(min(1.0, read_timeout))
            left = READ_SIZE
            while left > 0:
                data = resp.read1(left)
                if not data:
                    sock.settimeout(read_timeout)
                    self.reusable = True
                    return
                left -= len(data)
        except Exception:
            return

    def close(self) -> None:
        WATCHDOG.unwatch(self._key)
        if self.reusable:
            self._client.release(self._conn)
        else:
            self._conn.close()


def error_text(body: bytes) -> str:
    """The message in a server's error body, whatever its shape."""
    text = body.decode("utf-8", "replace").strip()
    message: Any = None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error.get("msg")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = doc.get("message") or doc.get("detail")
    if message is not None and not isinstance(message, str):
        message = json.dumps(message)
    out = " ".join((message if isinstance(message, str) else text).split())
    if len(out) > 500:
        out = out[:497] + "..."
    return out or "(no error text)"
