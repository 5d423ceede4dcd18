"""The ``openai`` backend: a :class:`~inference.TextModel` in front of a remote
OpenAI-compatible server (vLLM, SGLang, llama.cpp's llama-server,
llama-cpp-python's server, Ollama, TGI...), standard library only.

::

    import inference
    with inference.load_model("http://gpu-box:8000/v1#model=Qwen/Qwen3-8B") as m:
        print(m.generate("Once upon a time", max_tokens=32).text())

The URL is the server's OpenAI base URL (the one an OpenAI client is given,
ending in ``/v1``; a bare ``http://host:port`` gets ``/v1``). Settings of
this backend go in the URL's *fragment*, which is never sent to the server:

``model=NAME``
    the served model to use. Without it the server's only model (from
    ``GET /v1/models``) is used; several models and none named is a
    :class:`~inference.ModelLoadError` that lists them.
``server=KIND``
    ``llama.cpp``, ``llama-cpp-python``, ``vllm``, ``sglang``, ``ollama``,
    ``tgi`` or ``openai`` (a generic server): which request fields the
    server understands. Detected from ``/v1/models`` when not given.
``connect_timeout=S``, ``read_timeout=S``
    seconds to wait for a connection (default 10) and for the next bytes
    from the server, between tokens (default 120).
``retries=N``
    how many times a request that failed before its first token is tried
    again, with exponential backoff (default 2).

For example ``http://127.0.0.1:8080/v1#model=smollm2&read_timeout=30``.

The API key comes from ``with_api_key``/``api_key=``, else the
``INFERENCE_API_KEY`` or ``OPENAI_API_KEY`` environment variable, and is
sent as ``Authorization: Bearer``. It never appears in a log line, an error
message or a ``repr``; user and password in the URL are sent as HTTP Basic
authentication when no key is given, and are never shown either.

Every :class:`~inference.GenerateConfig` field is sent explicitly under the
name the server understands, the core's defaults included, so that a
server's own defaults (llama-cpp-python's ``repeat_penalty`` 1.1, vLLM's
``generation_config.json``) do not leak in. ``Token.id`` is the server's
token id where it reports one (llama.cpp via ``n_probs``, vLLM and SGLang via
``return_token_ids``), else ``-1``. ``docs/openai.md`` has the whole table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

if TYPE_CHECKING:  # imported when first used: listing backends stays cheap
    import http.client

from .. import __version__, env
from ..base import ModelState, check_messages, check_prompt_text, check_prompts
from ..detok import TextAssembler
from ..errors import Cancelled, GenerationError, InferenceError, ModelLoadError
from ..options import GenerateConfig, LoadConfig, Option, generate_config, load_config
from ..redact import shown_url
from ..sse import SSEError, SSEParser
from ..stream import StreamControl, TokenStream
from ..types import (
    BatchResult,
    ClassifyResult,
    FinishReason,
    GenerateMetrics,
    Message,
    ModelInfo,
    Token,
)

__all__ = ["SERVER_KINDS", "OpenAIBackend", "OpenAIModel"]

_log = logging.getLogger(__name__)
_perf = time.perf_counter
_T = TypeVar("_T")
_R = TypeVar("_R")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_RETRIES = 2

_BACKOFF = 0.25  # first retry after about this many seconds, doubling
_BACKOFF_CAP = 4.0
_RETRY_AFTER_CAP = 10.0
_RETRIABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_READ_SIZE = 64 * 1024
_MAX_ERROR_BODY = 64 * 1024
_MAX_JSON_BODY = 16 * 1024 * 1024
_WATCH_INTERVAL = 0.02


# -- what each server understands -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Dialect:
    """The request fields one kind of server honours (see docs/openai.md)."""

    name: str
    label: str
    #: (field, value that turns it off), or None when the server ignores top_k.
    top_k: tuple[str, int] | None
    min_p: bool
    #: Field names for the repetition penalty (empty: not honoured).
    repeat_penalty: tuple[str, ...]
    #: Whether the repetition penalty is honoured by the chat endpoint too.
    repeat_on_chat: bool
    #: Value of top_p that means "off", or None to leave the field out.
    top_p_off: float | None
    #: "native" (stop_token_ids), "client" (ids reported, checked here) or "".
    stop_ids: str
    #: How token ids are asked for: "n_probs", "token_ids" or "".
    token_ids: str
    #: Most stop strings the server takes (0: no limit); the rest are
    #: enforced client-side.
    max_stop: int
    #: Requests sent at once by batch_generate and classify by default.
    slots: int
    #: Ask the server to count the prompt's tokens when it reports no usage.
    count_prompt: bool = False
    #: Send the "off" values of top_k, min_p and the repetition penalty
    #: explicitly (False: only values the user set).
    send_off: bool = True


_DIALECTS: Mapping[str, _Dialect] = {
    d.name: d
    for d in (
        _Dialect(
            "llama.cpp",
            "llama.cpp's llama-server",
            ("top_k", 0),
            True,
            ("repeat_penalty",),
            True,
            1.0,
            "client",
            "n_probs",
            0,
            4,
        ),
        _Dialect(
            "llama-cpp-python",
            "llama-cpp-python's server",
            ("top_k", 0),
            True,
            ("repeat_penalty",),
            True,
            1.0,
            "",
            "",
            0,
            1,
            count_prompt=True,
        ),
        _Dialect(
            "vllm",
            "vLLM",
            ("top_k", -1),
            True,
            ("repetition_penalty",),
            True,
            1.0,
            "native",
            "token_ids",
            0,
            8,
        ),
        _Dialect(
            "sglang",
            "SGLang",
            ("top_k", -1),
            True,
            ("repetition_penalty",),
            True,
            1.0,
            "native",
            "token_ids",
            0,
            8,
        ),
        _Dialect("ollama", "Ollama", None, False, (), False, 1.0, "", "", 0, 1),
        _Dialect(
            "tgi",
            "Text Generation Inference",
            None,
            False,
            ("repetition_penalty",),
            False,
            None,
            "",
            "",
            4,
            8,
        ),
        _Dialect(
            "openai",
            "a generic OpenAI-compatible server",
            ("top_k", 0),
            True,
            ("repetition_penalty", "repeat_penalty"),
            True,
            1.0,
            "",
            "",
            4,
            4,
            send_off=False,
        ),
    )
}

_SERVER_ALIASES: Mapping[str, str] = {
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "llama-server": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "llama-cpp-python": "llama-cpp-python",
    "llama_cpp_python": "llama-cpp-python",
    "vllm": "vllm",
    "sglang": "sglang",
    "ollama": "ollama",
    "tgi": "tgi",
    "text-generation-inference": "tgi",
    "openai": "openai",
    "generic": "openai",
}

#: The values ``server=`` accepts in the URL fragment.
SERVER_KINDS = tuple(_DIALECTS)

_FINISH: Mapping[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
    "length": "length",
    "max_tokens": "length",
}


# -- the URL -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    """Settings from the URL fragment, over the backend's defaults."""

    model: str = ""
    server: str = ""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    retries: int = DEFAULT_RETRIES


@dataclass(frozen=True, slots=True)
class _Endpoint:
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
        return f"_Endpoint({self.display!r})"


_FRAGMENT_KEYS = ("model", "server", "connect_timeout", "read_timeout", "retries")


def _parse_url(url: str, defaults: _Settings) -> tuple[_Endpoint, _Settings]:
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
    settings = _fragment_settings(parts.fragment, defaults, display)
    return _Endpoint(scheme, host, port, base, parts.query, origin, basic), settings


def _fragment_settings(fragment: str, defaults: _Settings, display: str) -> _Settings:
    if not fragment:
        return defaults
    changes: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(fragment, keep_blank_values=True):
        if key not in _FRAGMENT_KEYS:
            raise ModelLoadError(
                f"{display}: unknown setting {key!r} in the URL fragment; valid: "
                f"{', '.join(_FRAGMENT_KEYS)} (e.g. {display}#model=NAME)",
                path=display,
            )
        if key == "model":
            if not value:
                raise ModelLoadError(f"{display}: model= needs a name", path=display)
            changes["model"] = value
        elif key == "server":
            kind = _SERVER_ALIASES.get(value.strip().lower())
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


# -- failures ------------------------------------------------------------------


class _Failure(Exception):
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


def _describe(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc or type(exc).__name__)


# -- cancelling a blocked read -------------------------------------------------


class _Watchdog:
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
                    _shutdown(conn)
                    self.unwatch(key)
            time.sleep(_WATCH_INTERVAL)


def _shutdown(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


# -- HTTP ----------------------------------------------------------------------


class _Client:
    """Requests to one server: a pool of keep-alive connections, headers,
    error texts, retries with backoff. Thread-safe."""

    def __init__(self, endpoint: _Endpoint, settings: _Settings, api_key: str) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._key = api_key
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self.max_idle = 4
        self.closed = False

    def __repr__(self) -> str:
        return f"<_Client {self.endpoint.display}>"

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
            raise _Failure(
                f"cannot resolve the host name {host!r}: {_describe(exc)}", retriable=True
            ) from None
        except ConnectionRefusedError:
            raise _Failure(
                "connection refused: is the server running and listening there?", retriable=True
            ) from None
        except TimeoutError:
            raise _Failure(
                f"could not connect within {self.settings.connect_timeout:g} s", retriable=True
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise _Failure(
                f"the server's TLS certificate was not accepted: {exc.verify_message or exc}",
                retriable=False,
            ) from None
        except ssl.SSLError as exc:
            raise _Failure(f"TLS failed: {exc}", retriable=False) from None
        except OSError as exc:
            raise _Failure(f"cannot connect: {_describe(exc)}", retriable=True) from None
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
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, int]:
        """Send one request and return its response once the status is OK.

        The connection is watched (see :class:`_Watchdog`) until the caller
        unwatches the returned key. A keep-alive connection that the server
        closed meanwhile is replaced at once, without counting as a retry.
        """
        path = self.endpoint.path(suffix, root=root)
        headers = self.headers(json_body=payload is not None, stream=stream)
        while True:
            conn, reused = self._acquire()
            key = _WATCHDOG.watch(control, conn)
            try:
                if conn.sock is None:
                    self._connect(conn)
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
            except _Failure:
                _WATCHDOG.unwatch(key)
                conn.close()
                if control is not None and control.stop_requested():
                    control.check()
                raise
            except Exception as exc:
                _WATCHDOG.unwatch(key)
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
                    _WATCHDOG.unwatch(key)
                    conn.close()
                raise failure
            _log.debug(
                "%s %s%s: HTTP %d",
                method,
                self.endpoint.origin,
                self.endpoint.path(suffix, root=root, query=False),
                resp.status,
            )
            return conn, resp, key

    def transport_failure(self, exc: BaseException, *, before_answer: bool) -> _Failure:
        import http.client
        import ssl

        if isinstance(exc, _Failure):
            return exc
        if isinstance(exc, TimeoutError):
            what = "answer" if before_answer else "more data"
            return _Failure(
                f"no {what} from the server within {self.settings.read_timeout:g} s (read_timeout)",
                retriable=True,
            )
        if isinstance(exc, http.client.IncompleteRead):
            return _Failure("the connection was cut mid-stream", retriable=True)
        if isinstance(exc, ConnectionError):  # http.client.RemoteDisconnected too
            return _Failure(
                f"the server closed the connection ({type(exc).__name__})", retriable=True
            )
        if isinstance(exc, http.client.HTTPException):
            return _Failure(f"the server's answer is not valid HTTP: {exc!r}", retriable=False)
        if isinstance(exc, ssl.SSLError):
            return _Failure(f"TLS failed: {exc}", retriable=False)
        if isinstance(exc, OSError):
            return _Failure(f"network error: {_describe(exc)}", retriable=True)
        if isinstance(exc, ValueError):  # a read on a connection shut meanwhile
            return _Failure(f"the connection was closed: {exc}", retriable=True)
        return _Failure(f"{type(exc).__name__}: {exc}", retriable=False)

    def status_failure(self, resp: http.client.HTTPResponse) -> _Failure:
        status = resp.status
        try:
            body = resp.read(_MAX_ERROR_BODY)
        except Exception:
            body = b""
        text = self.scrub(_error_text(body))
        head = f"HTTP {status} {resp.reason}".rstrip()
        retry_after = _retry_after(resp.getheader("Retry-After"))
        if status in (401, 403):
            hint = (
                "the API key was not accepted"
                if self._key
                else "no API key was sent: give one with with_api_key(), api_key=, "
                f"or the {env.INFERENCE_API_KEY} or {env.OPENAI_API_KEY} environment variable"
            )
            return _Failure(
                f"the server refused the request ({head}): {text}; {hint}",
                retriable=False,
                status=status,
            )
        return _Failure(
            f"{head}: {text}",
            retriable=status in _RETRIABLE_STATUS,
            status=status,
            retry_after=retry_after,
        )

    def read_body(self, resp: http.client.HTTPResponse, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                data = resp.read(min(_READ_SIZE, limit + 1 - size))
            except Exception as exc:
                raise self.transport_failure(exc, before_answer=False) from None
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            size += len(data)
            if size > limit:
                raise _Failure(f"the server's answer is larger than {limit} bytes", retriable=False)

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
        """One JSON request with retries; raises _Failure when it gives up."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        limit = self.settings.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                conn, resp, key = self.open(
                    method, suffix, payload, control, stream=False, root=root
                )
                try:
                    data = self.read_body(resp, _MAX_JSON_BODY)
                    reusable = not resp.will_close
                finally:
                    _WATCHDOG.unwatch(key)
                if reusable:
                    self.release(conn)
                else:
                    conn.close()
            except _Failure as exc:
                if not exc.retriable or attempt >= limit:
                    if attempt:
                        exc.message += f" (gave up after {attempt + 1} attempts)"
                    raise
                delay = _backoff(attempt, exc.retry_after)
                _log.info(
                    "%s %s%s failed (%s); trying again in %.2f s",
                    method,
                    self.endpoint.origin,
                    self.endpoint.path(suffix, root=root, query=False),
                    exc.message,
                    delay,
                )
                attempt += 1
                _pause(delay, control)
                continue
            try:
                return json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                snippet = self.scrub(data[:200].decode("utf-8", "replace"))
                raise _Failure(
                    f"the answer to {method} {suffix} is not JSON ({exc}): {snippet!r}",
                    retriable=False,
                ) from None


def _error_text(body: bytes) -> str:
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _backoff(attempt: int, retry_after: float | None) -> float:
    delay = min(_BACKOFF * 2.0**attempt, _BACKOFF_CAP) * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, _RETRY_AFTER_CAP))
    return delay


def _pause(seconds: float, control: StreamControl | None) -> None:
    """Sleep, but wake for a cancel or a deadline."""
    end = time.monotonic() + seconds
    while True:
        if control is not None and control.stop_requested():
            control.check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


# -- one call ------------------------------------------------------------------


class _CallState:
    """What one generation has received so far, for retries and metrics."""

    __slots__ = (
        "completion_tokens",
        "end",
        "first",
        "ids_seen",
        "prompt_tokens",
        "received",
        "start",
        "timings",
    )

    def __init__(self) -> None:
        self.start = _perf()
        self.first = 0.0
        self.end = 0.0
        #: Chunks with text or token ids: zero means "failed before its first token".
        self.received = 0
        self.ids_seen = 0
        self.prompt_tokens = 0
        self.completion_tokens: int | None = None
        self.timings: dict[str, Any] = {}

    def take_usage(self, usage: Mapping[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        if _is_int(prompt) and prompt > 0:
            self.prompt_tokens = prompt
        completion = usage.get("completion_tokens")
        if _is_int(completion) and completion >= 0:
            self.completion_tokens = completion

    def metrics(self) -> GenerateMetrics:
        end = self.end or _perf()
        generated = self.completion_tokens
        if generated is None:
            generated = self.ids_seen or self.received
        first = self.first or end
        ttft = max(first - self.start, 0.0) if self.received else 0.0
        t = self.timings
        prefill = _seconds(t.get("prompt_ms"), ttft)
        decode = _seconds(t.get("predicted_ms"), max(end - first, 0.0) if generated else 0.0)
        prefill_rate = _number(t.get("prompt_per_second"))
        if prefill_rate is None:
            prefill_rate = self.prompt_tokens / prefill if prefill > 0 else 0.0
        decode_rate = _number(t.get("predicted_per_second"))
        if decode_rate is None:
            decode_rate = (generated - 1) / decode if generated > 1 and decode > 0 else 0.0
        return GenerateMetrics(
            prompt_tokens=self.prompt_tokens,
            generated_tokens=generated,
            prefill_seconds=prefill,
            decode_seconds=decode,
            total_seconds=max(end - self.start, 0.0),
            time_to_first_token=ttft,
            prefill_tokens_per_second=prefill_rate,
            decode_tokens_per_second=decode_rate,
        )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _seconds(ms: Any, fallback: float) -> float:
    value = _number(ms)
    return value / 1000.0 if value is not None else fallback


def _choice_text(choice: Mapping[str, Any], chat: bool) -> str:
    if chat:
        for key in ("delta", "message"):
            part = choice.get(key)
            if isinstance(part, dict):
                content = part.get("content")
                return content if isinstance(content, str) else ""
        return ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _choice_ids(choice: Mapping[str, Any]) -> list[int]:
    raw = choice.get("token_ids")
    if isinstance(raw, list):
        found = [i for i in raw if _is_int(i)]
        if len(found) == len(raw):
            return found
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
        if isinstance(content, list):
            ids = [e.get("id") for e in content if isinstance(e, dict)]
            found = [i for i in ids if _is_int(i)]
            if found and len(found) == len(ids):
                return found
    return []


# -- the model -----------------------------------------------------------------


class OpenAIModel(ModelState):
    """A model served by a remote OpenAI-compatible server.

    Implements :class:`~inference.TextModel`. Calls from many threads are
    safe and run concurrently: each uses its own connection, and the server
    schedules them. ``batch_generate`` and ``classify`` send up to
    ``parallel_slots`` requests at once.
    """

    backend_name = "openai"

    def __init__(
        self,
        *,
        client: _Client,
        name: str,
        dialect: _Dialect,
        info: ModelInfo,
        slots: int,
    ) -> None:
        self._client = client
        self._name = name
        self._dialect = dialect
        self._init_state(info)
        self._slots = max(1, slots)
        client.max_idle = max(client.max_idle, self._slots)
        self._url = client.endpoint.display
        self._lock = threading.Lock()
        self._active: set[StreamControl] = set()
        self._warned: set[str] = set()

    # -- facts -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The served model's name, as sent in requests."""
        return self._name

    @property
    def server(self) -> str:
        """The kind of server: one of :data:`SERVER_KINDS`."""
        return self._dialect.name

    @property
    def parallel_slots(self) -> int:
        """Requests that ``batch_generate`` and ``classify`` send at once."""
        return self._slots

    # -- TextModel ---------------------------------------------------------------

    def generate(self, prompt: str, *opts: Option | GenerateConfig, **kwargs: Any) -> TokenStream:
        cfg = generate_config(*opts, **kwargs)
        check_prompt_text(prompt)
        self._check_open()
        body = self._body(cfg, chat=False)
        body["prompt"] = prompt
        return self._stream("/completions", body, cfg, prompt)

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *opts: Option | GenerateConfig,
        **kwargs: Any,
    ) -> TokenStream:
        cfg = generate_config(*opts, **kwargs)
        msgs = check_messages(messages)
        self._check_open()
        body = self._body(cfg, chat=True)
        body["messages"] = [m.to_dict() for m in msgs]
        return self._stream("/chat/completions", body, cfg, None)

    def classify(
        self, prompts: Sequence[str], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[ClassifyResult]:
        cfg = generate_config(*opts, **kwargs)
        items = check_prompts(prompts)
        self._check_open()
        if not items:
            return []
        if cfg.return_logits:
            err = GenerationError(
                f"{self._url}: the openai backend cannot return logits: "
                "OpenAI-compatible servers report at most a few log-probabilities per token"
            )
            self._err = err
            raise err
        one = replace(cfg, max_tokens=1)
        results = self._many(items, one)
        for i, res in enumerate(results):
            if res.err is not None:
                failed: BaseException = res.err
                if not isinstance(failed, Cancelled):
                    failed = GenerationError(f"prompt {i}: {res.err}")
                    failed.__cause__ = res.err
                self._err = failed
                raise failed
        self._err = None
        return [
            ClassifyResult(
                token=res.tokens[0] if res.tokens else Token(-1, ""),
                logits=None,
                prompt_tokens=res.metrics.prompt_tokens if res.metrics else 0,
            )
            for res in results
        ]

    def batch_generate(
        self, prompts: Sequence[str], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[BatchResult]:
        cfg = generate_config(*opts, **kwargs)
        items = check_prompts(prompts)
        self._check_open()
        if not items:
            return []
        results = self._many(items, cfg)
        self._err = None
        return results

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Cancel running calls and close the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            active = list(self._active)
        for control in active:
            control.cancel()
        self._client.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<OpenAIModel {self._url!r} model={self._name!r} "
            f"server={self._dialect.name!r} {state}>"
        )

    # -- requests ---------------------------------------------------------------

    def _ignored(self, field: str) -> None:
        if field not in self._warned:
            self._warned.add(field)
            _log.warning(
                "%s: %s ignores %s on its OpenAI endpoints; the server's own setting applies",
                self._url,
                self._dialect.label,
                field,
            )

    def _body(self, cfg: GenerateConfig, *, chat: bool) -> dict[str, Any]:
        """The sampling fields of a request, named as this server wants them."""
        d = self._dialect
        body: dict[str, Any] = {
            "model": self._name,
            "stream": True,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
        }
        if 0.0 < cfg.top_p < 1.0:
            body["top_p"] = cfg.top_p
        elif d.top_p_off is not None:
            body["top_p"] = d.top_p_off
        if d.top_k is not None:
            field, off = d.top_k
            if cfg.top_k > 0:
                body[field] = cfg.top_k
            elif d.send_off:
                body[field] = off
        elif cfg.top_k > 0:
            self._ignored("top_k")
        if d.min_p:
            if cfg.min_p > 0.0 or d.send_off:
                body["min_p"] = cfg.min_p
        elif cfg.min_p > 0.0:
            self._ignored("min_p")
        names = d.repeat_penalty if (d.repeat_on_chat or not chat) else ()
        if names:
            if cfg.repeat_penalty != 1.0 or d.send_off:
                for name in names:
                    body[name] = cfg.repeat_penalty
        elif cfg.repeat_penalty != 1.0:
            self._ignored("repeat_penalty")
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.stop:
            body["stop"] = list(cfg.stop[: d.max_stop] if d.max_stop else cfg.stop)
        if cfg.stop_tokens:
            if d.stop_ids == "native":
                body["stop_token_ids"] = list(cfg.stop_tokens)
            elif d.stop_ids != "client":
                err = GenerationError(
                    f"{self._url}: {d.label} can neither stop on token ids nor report them, "
                    "so stop_tokens cannot be honoured; use stop strings (with_stop) instead"
                )
                self._err = err
                raise err
        if d.token_ids == "n_probs":
            body["n_probs"] = 1
        elif d.token_ids == "token_ids":
            body["return_token_ids"] = True
        body["stream_options"] = {"include_usage": True}
        return body

    def _stream(
        self, suffix: str, body: dict[str, Any], cfg: GenerateConfig, prompt: str | None
    ) -> TokenStream:
        def producer(control: StreamControl) -> Generator[Token, None, FinishReason]:
            with self._one_stream_per_thread():
                return (yield from self._produce(suffix, body, cfg, control, prompt))

        return TokenStream(producer, cancel=cfg.cancel, timeout=cfg.timeout, on_finish=self._record)

    def _track(self, control: StreamControl) -> None:
        with self._lock:
            self._active.add(control)
        if self._closed:
            control.cancel()

    def _untrack(self, control: StreamControl) -> None:
        with self._lock:
            self._active.discard(control)

    def _produce(
        self,
        suffix: str,
        body: dict[str, Any],
        cfg: GenerateConfig,
        control: StreamControl,
        prompt: str | None,
    ) -> Generator[Token, None, FinishReason]:
        """One generation: the request, its retries, its tokens, its metrics."""
        state = _CallState()
        self._track(control)
        try:
            control.check()
            if prompt is not None and not prompt:
                raise GenerationError("the prompt is empty")
            if cfg.max_tokens == 0:
                return "length"
            reason = yield from self._with_retries(suffix, body, cfg, control, state)
            state.end = _perf()
            if self._dialect.count_prompt and prompt and not state.prompt_tokens:
                state.prompt_tokens = self._count_tokens(prompt)
            return reason
        finally:
            self._untrack(control)
            control.metrics = state.metrics()

    def _with_retries(
        self,
        suffix: str,
        body: dict[str, Any],
        cfg: GenerateConfig,
        control: StreamControl,
        state: _CallState,
    ) -> Generator[Token, None, FinishReason]:
        asm = TextAssembler(cfg.stop)
        payload = json.dumps(body).encode("utf-8")
        attempt = 0
        while True:
            control.check()
            try:
                return (yield from self._attempt(suffix, payload, cfg, control, state, asm))
            except _Failure as exc:
                if control.stop_requested():
                    control.check()
                if state.received:
                    raise GenerationError(
                        f"{self._url}: {exc.message} after {state.received} chunks of output; "
                        "not tried again because the stream had started"
                    ) from None
                if not exc.retriable or attempt >= self._client.settings.retries:
                    tries = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                    raise GenerationError(f"{self._url}: {exc.message}{tries}") from None
                delay = _backoff(attempt, exc.retry_after)
                _log.info(
                    "%s%s failed before its first token (%s); trying again in %.2f s",
                    self._url,
                    suffix,
                    exc.message,
                    delay,
                )
                attempt += 1
                _pause(delay, control)

    def _attempt(
        self,
        suffix: str,
        payload: bytes,
        cfg: GenerateConfig,
        control: StreamControl,
        state: _CallState,
        asm: TextAssembler,
    ) -> Generator[Token, None, FinishReason]:
        client = self._client
        conn, resp, key = client.open("POST", suffix, payload, control, stream=True)
        reusable = False
        try:
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json":
                # A server (or proxy) that ignored "stream": one whole answer.
                data = client.read_body(resp, _MAX_JSON_BODY)
                chunk = self._decode(data.decode("utf-8", "replace"))
                reusable = not resp.will_close
                return (yield from self._whole(chunk, suffix, cfg, control, state, asm))
            if ctype and ctype != "text/event-stream":
                snippet = client.scrub(resp.read(200).decode("utf-8", "replace"))
                raise _Failure(
                    f"the server answered with Content-Type {ctype!r}, not an event stream: "
                    f"{' '.join(snippet.split())!r}",
                    retriable=False,
                )
            reason, reusable = yield from self._events(conn, resp, suffix, cfg, control, state, asm)
            return reason
        finally:
            _WATCHDOG.unwatch(key)
            if reusable and not self._closed:
                client.release(conn)
            else:
                conn.close()

    def _decode(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            snippet = self._client.scrub(data[:80])
            raise _Failure(
                f"malformed JSON in the server's stream ({exc.msg}): {snippet!r}", retriable=False
            ) from None
        if not isinstance(chunk, dict):
            raise _Failure(
                f"the server's stream holds {type(chunk).__name__}, not a JSON object",
                retriable=False,
            )
        error = chunk.get("error")
        if error is not None:
            text = self._client.scrub(_error_text(json.dumps(chunk).encode()))
            raise _Failure(f"the server reported an error: {text}", retriable=False)
        return chunk

    def _events(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        suffix: str,
        cfg: GenerateConfig,
        control: StreamControl,
        state: _CallState,
        asm: TextAssembler,
    ) -> Generator[Token, None, tuple[FinishReason, bool]]:
        """Read the event stream; return the finish reason and whether the
        connection can be used again."""
        parser = SSEParser()
        chat = suffix.startswith("/chat")
        stop_ids = frozenset(cfg.stop_tokens)
        finish: FinishReason | None = None
        done = False
        events_seen = 0
        while not done:
            try:
                data = resp.read1(_READ_SIZE)
            except Exception as exc:
                if control.stop_requested():
                    control.check()
                raise self._client.transport_failure(exc, before_answer=False) from None
            if not data:
                break
            try:
                events = parser.feed(data)
            except SSEError as exc:
                raise _Failure(f"malformed event stream: {exc}", retriable=False) from None
            for event in events:
                events_seen += 1
                if not event.data.strip():
                    continue  # an empty keep-alive event
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                if event.event == "error":
                    text = self._client.scrub(_error_text(event.data.encode()))
                    raise _Failure(f"the server reported an error: {text}", retriable=False)
                chunk = self._decode(event.data)
                got, cut = yield from self._chunk(chunk, chat, cfg, control, state, asm, stop_ids)
                if cut is not None:
                    # A stop string, a stop token or max_tokens ended it here:
                    # closing the connection tells the server to stop.
                    state.end = _perf()
                    return cut, False
                if got is not None:
                    finish = got
            if control.stop_requested():
                control.check()
        if control.stop_requested():
            control.check()
        state.end = state.end or _perf()
        parser.close()
        if finish is None:
            if not events_seen and parser.unknown_fields:
                raise _Failure(
                    "the server's answer is not an event stream of completions "
                    f"({parser.unknown_fields} lines in no event-stream field)",
                    retriable=False,
                )
            if parser.incomplete and not done:
                raise _Failure("the stream was cut off in the middle of an event", retriable=True)
            raise _Failure(self._no_finish(state, done), retriable=False)
        if not asm.stopped:
            yield from asm.flush()
        return finish, self._drained(conn, resp, done)

    def _no_finish(self, state: _CallState, done: bool) -> str:
        how = "sent [DONE]" if done else "ended the stream"
        where = f"after {state.received} chunks" if state.received else "before any token"
        hint = ""
        if self._dialect.name == "llama-cpp-python":
            hint = (
                "; llama-cpp-python's server does this when the prompt does not fit its context, "
                "and when another request interrupts this one (start it with "
                "--interrupt_requests False to serve concurrent requests)"
            )
        return f"the server {how} {where} without a finish reason{hint}"

    def _drained(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, done: bool
    ) -> bool:
        """Read what is left of a finished response, so that its connection
        can carry the next request; False if it cannot."""
        if resp.will_close or conn.sock is None:
            return False
        if not done:
            return resp.isclosed()
        sock = conn.sock
        try:
            sock.settimeout(min(1.0, self._client.settings.read_timeout))
            left = _READ_SIZE
            while left > 0:
                data = resp.read1(left)
                if not data:
                    sock.settimeout(self._client.settings.read_timeout)
                    return True
                left -= len(data)
        except Exception:
            return False
        return False

    def _chunk(
        self,
        chunk: Mapping[str, Any],
        chat: bool,
        cfg: GenerateConfig,
        control: StreamControl,
        state: _CallState,
        asm: TextAssembler,
        stop_ids: frozenset[int],
    ) -> Generator[Token, None, tuple[FinishReason | None, FinishReason | None]]:
        """Emit the tokens of one chunk. Return ``(finish, cut)``: the finish
        reason the server gave, if any, and the reason when this client ended
        the generation here (a stop string, a stop token id, max_tokens)."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            state.take_usage(usage)
        timings = chunk.get("timings")
        if isinstance(timings, dict):
            state.timings = timings
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None, None
        choice: Mapping[str, Any] = choices[0]
        text = _choice_text(choice, chat)
        ids = _choice_ids(choice)
        if text or ids:
            cut: FinishReason | None = None
            if not state.received:
                state.first = _perf()
            state.received += 1
            state.ids_seen += len(ids)
            # A chunk's text belongs to its last id: cutting ids drops it.
            if stop_ids:
                for j, tid in enumerate(ids):
                    if tid in stop_ids:
                        ids, text, cut = ids[:j], "", "stop"
                        break
            if ids and state.ids_seen > cfg.max_tokens and cut is None:
                keep = max(len(ids) - (state.ids_seen - cfg.max_tokens), 0)
                ids, text, cut = ids[:keep], "", "length"
                state.ids_seen = cfg.max_tokens
            pieces: list[tuple[int, str]] = []
            if text or (ids and not choice.get("finish_reason")):
                # Ids without text are tokens that end part-way through a
                # character (or were cut above); with a finish reason, they
                # are the end-of-text token, which is never emitted.
                last = ids[-1] if ids else -1
                pieces = [(i, "") for i in ids[:-1]] + [(last, text)]
            for tid, piece in pieces:
                for tok in asm.push(tid, piece.encode("utf-8")):
                    yield tok
                    if control.stop_requested():
                        control.check()
                if asm.stopped:
                    return None, "stop"
            if cut is not None:
                for tok in asm.flush():
                    yield tok
                return None, cut
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            mapped = _FINISH.get(reason.lower())
            if mapped is None:
                if reason.lower() in ("abort", "error", "cancelled"):
                    raise _Failure(
                        f"the server ended the generation with finish_reason {reason!r}",
                        retriable=False,
                    )
                mapped = "stop"
            return mapped, None
        return None, None

    def _whole(
        self,
        chunk: Mapping[str, Any],
        suffix: str,
        cfg: GenerateConfig,
        control: StreamControl,
        state: _CallState,
        asm: TextAssembler,
    ) -> Generator[Token, None, FinishReason]:
        """A non-streamed answer, emitted as one token."""
        got, cut = yield from self._chunk(
            chunk, suffix.startswith("/chat"), cfg, control, state, asm, frozenset(cfg.stop_tokens)
        )
        state.end = _perf()
        if cut is not None:
            return cut
        yield from asm.flush()
        if got is None:
            raise _Failure("the server's answer has no finish reason", retriable=False)
        return got

    def _count_tokens(self, prompt: str) -> int:
        """The prompt's length from llama-cpp-python's tokenizer endpoint."""
        try:
            doc = self._client.fetch_json(
                "POST",
                "/extras/tokenize/count",
                {"input": prompt, "model": self._name},
                root=True,
                retries=0,
            )
        except _Failure as exc:
            _log.debug("%s: could not count the prompt's tokens: %s", self._url, exc.message)
            return 0
        count = doc.get("count") if isinstance(doc, dict) else None
        return count if _is_int(count) and count > 0 else 0

    # -- several prompts ----------------------------------------------------------

    def _many(self, prompts: list[str], cfg: GenerateConfig) -> list[BatchResult]:
        """Run one generation per prompt, ``parallel_slots`` at a time."""
        body = self._body(cfg, chat=False)
        deadline = StreamControl(cancel=cfg.cancel, timeout=cfg.timeout).deadline
        start = _perf()

        def one(prompt: str) -> BatchResult:
            control = StreamControl(cancel=cfg.cancel, timeout=cfg.timeout)
            control.deadline = deadline
            gen = self._produce("/completions", {**body, "prompt": prompt}, cfg, control, prompt)
            tokens: list[Token] = []
            err: BaseException | None = None
            try:
                while True:
                    tokens.append(next(gen))
            except StopIteration as stop:
                reason: FinishReason = stop.value or "stop"
            except Cancelled as exc:
                reason, err = "cancelled", exc
            except InferenceError as exc:
                reason, err = "error", exc
            except Exception as exc:
                reason, err = "error", GenerationError(f"generation failed: {exc}")
                err.__cause__ = exc
            finally:
                gen.close()
            return BatchResult(
                tokens=tuple(tokens),
                text="".join(t.text for t in tokens),
                finish_reason=reason,
                err=err,
                metrics=control.metrics,
            )

        results = _map(one, prompts, self._slots)
        self._metrics = _aggregate(results, start, _perf())
        return results


def _map(fn: Callable[[_T], _R], items: list[_T], width: int) -> list[_R]:
    width = min(width, len(items))
    if width <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="inference-openai") as pool:
        return list(pool.map(fn, items))


def _aggregate(results: Sequence[BatchResult], start: float, end: float) -> GenerateMetrics:
    done = [r.metrics for r in results if r.metrics is not None]
    prompt = sum(m.prompt_tokens for m in done)
    generated = sum(m.generated_tokens for m in done)
    firsts = [m.time_to_first_token for m in done if m.generated_tokens]
    ttft = min(firsts, default=0.0)
    total = max(end - start, 0.0)
    decode = max(total - ttft, 0.0) if generated else 0.0
    return GenerateMetrics(
        prompt_tokens=prompt,
        generated_tokens=generated,
        prefill_seconds=ttft,
        decode_seconds=decode,
        total_seconds=total,
        time_to_first_token=ttft,
        prefill_tokens_per_second=prompt / ttft if ttft > 0 else 0.0,
        decode_tokens_per_second=(generated - len(firsts)) / decode
        if generated > len(firsts) and decode > 0
        else 0.0,
    )


# -- loading -------------------------------------------------------------------


def _model_cards(doc: Any) -> list[dict[str, Any]]:
    """The model entries of a ``GET /v1/models`` answer, whatever its shape."""
    items: Any = None
    if isinstance(doc, dict):
        if isinstance(doc.get("data"), list):
            items = doc["data"]
        elif isinstance(doc.get("id"), str):
            items = [doc]  # TGI answers with one model object
    elif isinstance(doc, list):
        items = doc
    if items is None:
        raise _Failure("the answer to GET /models is not a list of models", retriable=False)
    return [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


def _detect(card: Mapping[str, Any], single_object: bool) -> str:
    """The kind of server, from what its model list says about a model."""
    owner = str(card.get("owned_by") or "").lower()
    ident = str(card.get("id"))
    if owner in ("llamacpp", "llama.cpp"):
        return "llama.cpp"
    if owner == "vllm":
        return "vllm"
    if owner == "sglang":
        return "sglang"
    if owner == "me":
        return "llama-cpp-python"
    if single_object:
        return "tgi"
    if owner in ("library", "ollama"):
        return "ollama"
    name, _, tag = ident.rpartition(":")
    if name and tag and "/" not in tag and owner == name.partition("/")[0].lower() and "/" in name:
        return "ollama"
    return "openai"


def _load(url: str, cfg: LoadConfig, defaults: _Settings) -> OpenAIModel:
    endpoint, settings = _parse_url(url, defaults)
    where = endpoint.display
    if cfg.adapter_path:
        raise ModelLoadError(
            f"{where}: the openai backend cannot apply a LoRA adapter; load it on the server "
            "(vLLM --lora-modules, llama-server --lora) and name it with #model=NAME",
            path=where,
        )
    key = (
        cfg.api_key
        or os.environ.get(env.INFERENCE_API_KEY, "")
        or os.environ.get(env.OPENAI_API_KEY, "")
    )
    client = _Client(endpoint, settings, key)
    try:
        doc: Any = client.fetch_json("GET", "/models")
        cards = _model_cards(doc)
    except _Failure as exc:
        if exc.status == 404 and settings.model:
            doc, cards = None, []
            _log.info("%s: the server has no /models list; using model %r", where, settings.model)
        else:
            client.close()
            raise ModelLoadError(f"{where}: {exc.message}", path=where) from None
    card = _pick(cards, settings.model, where, client)
    name = settings.model or str(card.get("id"))
    single = isinstance(doc, dict) and "data" not in doc
    kind = settings.server or (_detect(card, single) if card else "openai")
    dialect = _DIALECTS[kind]
    meta: dict[str, Any] = card["meta"] if isinstance(card.get("meta"), dict) else {}
    context = _first_int(meta.get("n_ctx"), card.get("max_model_len"), card.get("context_length"))
    vocab = _first_int(meta.get("n_vocab"))
    hidden = _first_int(meta.get("n_embd"))
    bits = _quant_bits(meta.get("ftype"))
    slots = cfg.parallel_slots
    if not slots and dialect.name == "llama.cpp":
        slots = _llama_server_slots(client)
    slots = slots or dialect.slots
    notes = [f"server: {dialect.label}", f"model: {name}", f"parallel_slots: {slots}"]
    if cfg.gpu_layers != -1:
        notes.append("gpu_layers is ignored: the server decides")
    if not context and cfg.context_len:
        context = cfg.context_len
        notes.append("context_length as given by context_len (the server does not report it)")
    quoted = urllib.parse.quote(name, safe="/:@")
    info = ModelInfo(
        architecture="remote",
        vocab_size=vocab,
        hidden_size=hidden,
        context_length=context,
        quant_bits=bits,
        backend="openai",
        path=f"{where}#model={quoted}",
        notes=tuple(notes),
    )
    _log.debug("%s: model %r on %s, %d parallel slots", where, name, dialect.label, slots)
    return OpenAIModel(client=client, name=name, dialect=dialect, info=info, slots=slots)


def _pick(cards: list[dict[str, Any]], wanted: str, where: str, client: _Client) -> dict[str, Any]:
    names = [str(c["id"]) for c in cards]
    listing = ", ".join(repr(n) for n in names[:50]) + (" ..." if len(names) > 50 else "")
    if wanted:
        for card in cards:
            aliases = card.get("aliases")
            if card["id"] == wanted or (isinstance(aliases, list) and wanted in aliases):
                return card
        if not cards:
            return {}
        client.close()
        raise ModelLoadError(
            f"{where}: the server serves no model named {wanted!r}; it serves {listing}",
            path=where,
        )
    if len(cards) == 1:
        return cards[0]
    client.close()
    if not cards:
        raise ModelLoadError(
            f"{where}: the server lists no models; name one in the URL: {where}#model=NAME",
            path=where,
        )
    raise ModelLoadError(
        f"{where}: the server serves {len(cards)} models; name one in the URL, "
        f"e.g. {where}#model={urllib.parse.quote(names[0], safe='/:@')}. It serves {listing}",
        path=where,
    )


def _quant_bits(ftype: Any) -> int:
    """Bits per weight from a llama.cpp file type such as "Q4_K_M" or "F16"."""
    if not isinstance(ftype, str):
        return 0
    match = re.match(r"(?i)(?:I?Q|BF|F)(\d+)", ftype.strip())
    return int(match.group(1)) if match else 0


def _first_int(*values: Any) -> int:
    for value in values:
        if _is_int(value) and value > 0:
            return int(value)
    return 0


def _llama_server_slots(client: _Client) -> int:
    """llama-server's ``--parallel``, from ``GET /props``; 0 if unknown."""
    try:
        props = client.fetch_json("GET", "/props", root=True, retries=0)
    except _Failure as exc:
        _log.debug("%s: no /props (%s)", client.endpoint.display, exc.message)
        return 0
    total = props.get("total_slots") if isinstance(props, dict) else None
    return int(total) if _is_int(total) and total > 0 else 0


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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{label} must be a number of seconds > 0; got {value!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0; got {retries!r}")
        self._defaults = _Settings(
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
        return _load(text, cfg, self._defaults)
