"""The HTTP server: one model behind OpenAI's and Ollama's endpoints (Starlette).

- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed
  as server-sent events or whole, with usage), ``GET /v1/models``;
- Ollama: ``POST /api/chat``, ``POST /api/generate`` (streamed as NDJSON by
  default), ``GET /api/tags``;
- ``GET /health`` and ``GET /metrics`` (Prometheus text).

Limits (docs/server.md lists them with their defaults): request bodies are
bounded in size (413) and time (408), ``max_tokens`` is capped; beyond
``parallel`` running and ``queue`` waiting requests the answer is 429 with
``Retry-After``; malformed JSON, unknown fields and bad values get 400 with
an OpenAI-style error body. A request's stream (and its constraint, compiled
in :mod:`inference.compile_guard`'s bounded worker) is made before it takes
a slot. A client that disconnects cancels its generation within one token
(the stream's own cancellation), or its compile or its wait. With an API
key, every route but ``/health`` needs ``Authorization: Bearer KEY``,
compared in constant time. Prompts are never logged unless asked. The
connection-level limits (request heads, idle and open connections) are
:mod:`inference_server.connections`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from inference import (
    ConstraintError,
    Embedder,
    Embeddings,
    GenerationError,
    InferenceError,
    Ranking,
    Reranker,
    TextModel,
    Token,
    TokenStream,
    UnsupportedOptionError,
)

from . import shapes
from .connections import quiet_accept_errors
from .embedding import (
    embed_call,
    ollama_embed_reply,
    openai_embed_reply,
    rerank_call,
    rerank_reply,
)
from .metrics import ServerMetrics
from .requests import BadRequest, Call, ollama_call, openai_call

__all__ = ["Settings", "create_app"]

_log = logging.getLogger("inference.server")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    """How the server admits and bounds requests."""

    name: str = "model"
    #: The name ``/v1/models`` gives the embedding model (``--embed-model``).
    embed_name: str = "embedder"
    api_key: str = ""
    parallel: int = 1
    queue: int = 128
    max_body_bytes: int = 4 << 20
    max_tokens_cap: int = 8192
    default_max_tokens: int = 512
    log_prompts: bool = False
    #: Seconds a client has to send a request's head (then 408 and close).
    header_timeout: float = 10.0
    #: Seconds a client has to send a request's whole body (then 408).
    body_timeout: float = 30.0
    #: Seconds an idle connection stays open between requests.
    keep_alive_timeout: float = 5.0
    #: Open connections beyond which a new one is answered 503 and closed.
    max_connections: int = 512


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


def _error(
    status: int, message: str, kind: str, param: str = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param or None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


#: Seconds the metrics wait for an abandoned stream to end (within a token).
_COUNT_WAIT = 60.0

#: The deepest a request body may nest (schemas, tool parameters and
#: arguments included): every later step that walks it stays far from
#: Python's recursion limit.
MAX_JSON_DEPTH = 64


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (walked without recursion)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
    return False


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (a lone surrogate a client sent
    in a field name) escaped, so that an error can always be sent back."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Server:
    def __init__(
        self, model: TextModel, settings: Settings, embedder: TextModel | None = None
    ) -> None:
        self.model = model
        #: The model the embedding and rerank routes use (``--embed-model``).
        self.embedder = embedder or model
        self.s = settings
        self.metrics = ServerMetrics()
        self.slots = asyncio.Semaphore(max(1, settings.parallel))
        # Streams are made off the event loop (a constraint compiles, the
        # first constrained call builds the engine's view of the vocabulary),
        # one thread for each request admitted, so none waits behind another's.
        self.starting = ThreadPoolExecutor(
            max_workers=max(1, settings.parallel) + settings.queue,
            thread_name_prefix="inference-start",
        )
        self.created = int(time.time())

    # -- admission ------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        if not self.s.api_key:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # Starlette decodes a header's bytes as latin-1: encoded back, they
        # are what the client sent, so a UTF-8 key can match too.
        sent = token.strip().encode("latin-1", "replace")
        ok = hmac.compare_digest(sent, self.s.api_key.encode())
        return ok and scheme.lower() == "bearer"

    async def _body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        too_large = _Refused(
            413, f"the request body exceeds {self.s.max_body_bytes} bytes", "invalid_request_error"
        )
        if declared and declared.isdigit() and int(declared) > self.s.max_body_bytes:
            raise too_large
        data = bytearray()

        async def read() -> None:
            async for part in request.stream():
                data.extend(part)
                if len(data) > self.s.max_body_bytes:
                    raise too_large

        try:
            await asyncio.wait_for(read(), self.s.body_timeout)
        except ClientDisconnect:  # gone mid-body: nobody is left to answer
            raise _Refused(400, "the client disconnected", "invalid_request_error") from None
        except asyncio.TimeoutError:
            raise _Refused(
                408,
                f"the request body did not arrive within {self.s.body_timeout:g} s",
                "invalid_request_error",
                {"Connection": "close"},
            ) from None
        try:
            # Standard JSON: NaN and Infinity are not numbers a client may send.
            body = json.loads(data, parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        if _too_deep(body, MAX_JSON_DEPTH):
            raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
        return body

    @contextlib.asynccontextmanager
    async def _slot(self, prepare: Callable[[threading.Event], _T]) -> AsyncIterator[_T]:
        """Admit a request (429 when ``parallel`` run and ``queue`` wait),
        run ``prepare`` off the event loop while it waits (a stream is made
        there: its constraint compiles holding no slot; the event it is given
        is set if the client leaves meanwhile), then hold a slot while the
        request runs."""
        m = self.metrics
        if m.active + m.waiting >= self.s.parallel + self.s.queue:
            m.rejected += 1
            raise _Refused(
                429,
                "the server is busy: its queue is full",
                "rate_limit_error",
                {"Retry-After": "1"},
            )
        m.waiting += 1
        cancel = threading.Event()
        try:
            loop = asyncio.get_running_loop()
            made = await loop.run_in_executor(self.starting, prepare, cancel)
            await self.slots.acquire()
        except BaseException:
            cancel.set()
            raise
        finally:
            m.waiting -= 1
        m.active += 1
        try:
            yield made
        finally:
            m.active -= 1
            self.slots.release()

    async def _admitted(self, work: Callable[[], _T]) -> _T:
        """Run blocking ``work`` (an embedding, a ranking) as one admitted
        request, off the event loop."""
        async with self._slot(lambda _cancel: None):
            return await asyncio.get_running_loop().run_in_executor(self.starting, work)

    def _start(self, call: Call, cancel: threading.Event) -> TokenStream:
        if self.s.log_prompts:
            _log.info("prompt: %s", call.messages if call.chat else call.prompt)
        try:
            if call.chat:
                return self.model.chat(call.messages, cancel=cancel, **call.options)
            return self.model.generate(call.prompt, cancel=cancel, **call.options)
        except (UnsupportedOptionError, ConstraintError, ValueError, TypeError) as exc:
            raise BadRequest(str(exc)) from None

    def _count(self, stream: TokenStream) -> None:
        """Add ``stream``'s tokens and times to the metrics once it has ended:
        a stream its client left ends in its own thread, within a token of
        the cancel, and is counted then."""
        stream.cancel()  # a no-op for a stream that has ended
        if stream.done:
            self.metrics.finished(stream.metrics)
            return

        def when_done() -> None:
            deadline = time.monotonic() + _COUNT_WAIT
            while not stream.done and time.monotonic() < deadline:
                time.sleep(0.01)
            self.metrics.finished(stream.metrics)

        with contextlib.suppress(RuntimeError):  # shutting down: no one reads them now
            self.starting.submit(when_done)

    # -- the generation, streamed or whole ---------------------------------------

    async def _tokens(
        self, request: Request, call: Call
    ) -> tuple[TokenStream, AsyncIterator[Token], Token | None, contextlib.AsyncExitStack]:
        """Admit, start, and wait for the first token (so that a failure before
        it is an HTTP error, not a broken stream)."""
        stack = contextlib.AsyncExitStack()
        stream = await stack.enter_async_context(self._slot(functools.partial(self._start, call)))
        try:
            tokens = stream.__aiter__()
            stack.push_async_callback(_aclose, tokens)
            first = await _next(tokens)
        except GenerationError as exc:  # before any token: the prompt, mostly
            await stack.aclose()
            raise BadRequest(str(exc)) from None
        except BaseException:  # the client left during the prefill, mostly
            await stack.aclose()
            self._count(stream)  # what it cost is still counted
            raise
        return stream, tokens, first, stack

    async def generation(
        self,
        request: Request,
        call: Call,
        route: str,
        shape: Callable[[TokenStream, AsyncIterator[Token], Token | None], AsyncIterator[str]],
        whole: Callable[[TokenStream, list[Token]], dict[str, Any]],
        media: str,
    ) -> Response:
        # From admission to the first token (waiting in the queue, the
        # prefill), a client that leaves takes its work with it.
        admitted: list[tuple[TokenStream, AsyncIterator[Token], Token | None, Any]] = []

        async def admit() -> None:
            admitted.append(await self._tokens(request, call))

        if not await _until_disconnect(request, admit()):
            return Response(status_code=499)  # nobody will read it
        stream, tokens, first, stack = admitted[0]
        if call.stream:

            async def body() -> AsyncIterator[str]:
                sent = False
                try:
                    async for piece in shape(stream, tokens, first):
                        yield piece
                    sent = True
                finally:
                    await stack.aclose()
                    self._count(stream)
                    # A stream its client abandoned is a 499 in the metrics,
                    # though its head already said 200.
                    self.metrics.request(route, 200 if sent else 499)

            return StreamingResponse(body(), media_type=media)
        try:
            collected = [first] if first is not None else []
            got = await _until_disconnect(request, _collect(tokens, collected))
            if not got:
                stream.cancel()
                return Response(status_code=499)
        finally:
            await stack.aclose()
            self._count(stream)
        if stream.finish_reason == "error":
            raise _Refused(500, f"the generation failed: {stream.err}", "server_error")
        self.metrics.request(route, 200)
        return JSONResponse(whole(stream, collected))

    # -- routes ------------------------------------------------------------------

    def guarded(
        self, route: str, handler: Callable[[Request], Awaitable[Response]], *, api: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            status = 500
            try:
                if route != "/health" and not self._authorised(request):
                    status = 401
                    return self._fail(
                        api,
                        401,
                        "a valid API key is required (Authorization: Bearer KEY)",
                        "authentication_error",
                    )
                response = await handler(request)
                status = response.status_code
                return response
            except BadRequest as exc:
                status = 400
                return self._fail(api, 400, str(exc), "invalid_request_error", exc.param)
            except _Refused as exc:
                status = exc.status
                return self._fail(api, exc.status, str(exc), exc.kind, headers=exc.headers)
            except GenerationError as exc:
                status = 500
                return self._fail(api, 500, f"the generation failed: {exc}", "server_error")
            finally:
                if status != 200:
                    self.metrics.request(route, status)
                _log.info(
                    "%s %s %d %.3f s", request.method, route, status, time.perf_counter() - start
                )

        return endpoint

    def _fail(
        self,
        api: str,
        status: int,
        message: str,
        kind: str,
        param: str = "",
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        message, param = _encodable(message), _encodable(param)
        if api == "ollama":
            return JSONResponse({"error": message}, status_code=status, headers=headers)
        return _error(status, message, kind, param, headers)

    async def openai(self, request: Request, *, chat: bool) -> Response:
        call = openai_call(await self._body(request), chat=chat, **self._bounds())
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        name = self.s.name
        return await self.generation(
            request,
            call,
            "/v1/chat/completions" if chat else "/v1/completions",
            lambda s, t, f: shapes.openai_events(s, t, f, call, cid, name, chat),
            lambda s, toks: shapes.openai_whole(s, toks, call, cid, name, chat),
            "text/event-stream",
        )

    async def ollama(self, request: Request, *, chat: bool) -> Response:
        call = ollama_call(await self._body(request), chat=chat, **self._bounds())
        name = self.s.name
        return await self.generation(
            request,
            call,
            "/api/chat" if chat else "/api/generate",
            lambda s, t, f: shapes.ollama_lines(s, t, f, name, chat),
            lambda s, toks: shapes.ollama_whole(s, toks, name, chat),
            "application/x-ndjson",
        )

    async def embeddings(self, request: Request, *, api: str) -> Response:
        call = embed_call(await self._body(request), api=api)
        texts = call.inputs

        model = self.embedder
        if not isinstance(model, Embedder):
            raise BadRequest("this model cannot embed text")

        def work() -> Embeddings:
            try:
                return model.embed(texts, truncate=call.truncate, dimensions=call.dimensions)
            except InferenceError as exc:  # the input, or a model that cannot embed
                raise BadRequest(str(exc)) from None

        got = await self._admitted(work)
        self.metrics.embedded(got.tokens)
        if api == "openai":
            return JSONResponse(openai_embed_reply(got, self.s.name, as_base64=call.base64))
        return JSONResponse(ollama_embed_reply(got, self.s.name, legacy=call.legacy))

    async def rerank(self, request: Request) -> Response:
        call = rerank_call(await self._body(request))

        model = self.embedder
        if not isinstance(model, Reranker):
            raise BadRequest("this model cannot rerank documents")

        def work() -> Ranking:
            try:
                return model.rerank(call.query, call.documents, top_n=call.top_n)
            except InferenceError as exc:
                raise BadRequest(str(exc)) from None

        ranking = await self._admitted(work)
        return JSONResponse(rerank_reply(ranking, call, self.s.name))

    def _bounds(self) -> dict[str, int]:
        return {"max_tokens_cap": self.s.max_tokens_cap, "default_max": self.s.default_max_tokens}

    async def models(self, request: Request) -> Response:
        names = [self.s.name]
        if self.embedder is not self.model:
            names.append(self.s.embed_name)
        cards = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "inference"}
            for name in names
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def tags(self, request: Request) -> Response:
        served = [(self.s.name, self.model)]
        if self.embedder is not self.model:
            served.append((self.s.embed_name, self.embedder))
        models = []
        for name, model in served:
            info = model.info
            details = {
                "format": "gguf" if info.path.endswith(".gguf") else "",
                "family": info.architecture,
                "families": [info.architecture],
                "parameter_size": "",
                "quantization_level": f"Q{info.quant_bits}" if info.quant_bits else "",
            }
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": datetime.fromtimestamp(self.created, timezone.utc).isoformat(),
                    "size": 0,
                    "digest": "",
                    "details": details,
                }
            )
        return JSONResponse({"models": models})

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "model": self.s.name, "backend": self.model.info.backend}
        )

    async def prometheus(self, request: Request) -> Response:
        return PlainTextResponse(
            self.metrics.render(self.s.name), media_type="text/plain; version=0.0.4"
        )


async def _next(tokens: AsyncIterator[Token]) -> Token | None:
    try:
        return await tokens.__anext__()
    except StopAsyncIteration:
        return None


async def _aclose(tokens: AsyncIterator[Token]) -> None:
    close = getattr(tokens, "aclose", None)
    if close is not None:
        await close()


async def _collect(tokens: AsyncIterator[Token], into: list[Token]) -> None:
    async for tok in tokens:
        into.append(tok)


async def _until_disconnect(request: Request, work: Awaitable[None]) -> bool:
    """Run ``work`` unless the client goes first; True if it finished."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def create_app(
    model: TextModel, settings: Settings | None = None, *, embedder: TextModel | None = None
) -> Starlette:
    """The Starlette app serving ``model`` (and ``embedder`` on the embedding
    and rerank routes, when given)."""
    s = settings or Settings()
    server = _Server(model, s, embedder)

    def route(
        path: str, handler: Callable[[Request], Awaitable[Response]], method: str, api: str
    ) -> Route:
        return Route(path, server.guarded(path, handler, api=api), methods=[method])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        quiet_accept_errors(asyncio.get_running_loop())
        yield
        server.starting.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        lifespan=lifespan,
        routes=[
            route("/v1/chat/completions", lambda r: server.openai(r, chat=True), "POST", "openai"),
            route("/v1/completions", lambda r: server.openai(r, chat=False), "POST", "openai"),
            route("/v1/models", server.models, "GET", "openai"),
            route("/api/chat", lambda r: server.ollama(r, chat=True), "POST", "ollama"),
            route("/api/generate", lambda r: server.ollama(r, chat=False), "POST", "ollama"),
            route("/api/tags", server.tags, "GET", "ollama"),
            route("/v1/embeddings", lambda r: server.embeddings(r, api="openai"), "POST", "openai"),
            route("/api/embed", lambda r: server.embeddings(r, api="ollama"), "POST", "ollama"),
            route(
                "/api/embeddings",
                lambda r: server.embeddings(r, api="ollama-legacy"),
                "POST",
                "ollama",
            ),
            route("/v1/rerank", server.rerank, "POST", "openai"),
            route("/rerank", server.rerank, "POST", "openai"),
            route("/health", server.health, "GET", "openai"),
            route("/metrics", server.prometheus, "GET", "openai"),
        ],
    )
    app.state.server = server
    return app
