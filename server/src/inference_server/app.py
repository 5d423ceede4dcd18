"""The HTTP server: models behind OpenAI's, Anthropic's and Ollama's
endpoints (Starlette), each picked by the request's ``model``
(:mod:`inference_server.served`).

- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed
  as server-sent events or whole, with usage), ``POST /v1/responses`` and
  its kept responses (:mod:`inference_server.responses`), ``GET /v1/models``
  and ``/v1/models/{id}``, ``POST /v1/embeddings``, ``POST /v1/rerank``;
- Anthropic: ``POST /v1/messages`` and ``/v1/messages/count_tokens``
  (:mod:`inference_server.anthropic`);
- Ollama: ``POST /api/chat``, ``POST /api/generate`` (streamed as NDJSON by
  default), ``POST /api/embed``, ``GET /api/tags``, ``POST /api/show``,
  ``GET /api/ps``, ``GET /api/version``;
- ``GET /health`` and ``GET /metrics`` (Prometheus text).

Limits (docs/server.md lists them with their defaults): request bodies are
bounded in size (413) and time (408), ``max_tokens`` is capped; beyond
``parallel`` running requests on each model and ``queue`` waiting the answer
is 429 with ``Retry-After``; malformed JSON, unknown fields and bad values
get 400, an unknown model 404, and a path no route serves 404 (405 for a
method), each in the error shape of its API. A request's stream (and its
constraint, compiled in :mod:`inference.compile_guard`'s bounded worker) is
made before it takes a slot. A client that disconnects cancels its
generation within one token (the stream's own cancellation), or its compile
or its wait. With an API key, every route but ``/health`` needs
``Authorization: Bearer KEY`` or ``x-api-key: KEY``, compared in constant
time. Prompts are never logged unless asked. The connection-level limits
(request heads, idle and open connections) are
:mod:`inference_server.connections`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import inference
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
from .anthropic import count_reply, error_body, message_events, message_whole, messages_call
from .anthropic import new_id as new_message_id
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
from .responses import NotStored, ResponseStore, response_events, response_whole, responses_call
from .responses import new_id as new_response_id
from .served import Catalogue, Served, UnknownModel

__all__ = ["Settings", "create_app"]

_log = logging.getLogger("inference.server")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    """How the server admits and bounds requests."""

    #: The name a lone model is served under (``create_app(model)``).
    name: str = "model"
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
    #: Origins a browser may call from (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    #: MiB of recent Responses-API responses kept for previous_response_id.
    responses_store_mib: int = 64


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
    def __init__(self, models: Mapping[str, TextModel], settings: Settings) -> None:
        self.served = Catalogue(models, settings.parallel)
        self.s = settings
        self.metrics = ServerMetrics(self.served.names)
        #: Requests running and waiting, over every model, before a 429.
        self.capacity = max(1, settings.parallel) * len(self.served) + settings.queue
        # Streams are made off the event loop (a constraint compiles, the
        # first constrained call builds the engine's view of the vocabulary),
        # one thread for each request admitted, so none waits behind another's.
        self.starting = ThreadPoolExecutor(
            max_workers=self.capacity, thread_name_prefix="inference-start"
        )
        self.created = int(time.time())
        self.store = ResponseStore(settings.responses_store_mib << 20)

    # -- admission ------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        """Whether the request carries the key: ``Authorization: Bearer KEY``
        (OpenAI's and Ollama's clients) or ``x-api-key: KEY`` (Anthropic's)."""
        if not self.s.api_key:
            return True
        key = self.s.api_key.encode()
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # Starlette decodes a header's bytes as latin-1: encoded back, they
        # are what the client sent, so a UTF-8 key can match too.
        sent = token.strip().encode("latin-1", "replace")
        bearer = hmac.compare_digest(sent, key) and scheme.lower() == "bearer"
        other = request.headers.get("x-api-key", "").strip().encode("latin-1", "replace")
        return bearer | hmac.compare_digest(other, key)  # both compared, in constant time

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
    async def _slot(
        self, served: Served, prepare: Callable[[threading.Event], _T], *, hold: bool = True
    ) -> AsyncIterator[_T]:
        """Admit a request (429 when ``parallel`` run on each model and
        ``queue`` wait), run ``prepare`` off the event loop while it waits (a
        stream is made there: its constraint compiles holding no slot; the
        event it is given is set if the client leaves meanwhile), then hold
        one of ``served``'s slots while the request runs (unless ``hold`` is
        False: work that never waits for the engine, such as counting a
        prompt's tokens)."""
        m = self.metrics
        if m.active + m.waiting >= self.capacity:
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
            if hold:
                await served.slots.acquire()
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
            if hold:
                served.slots.release()

    async def _admitted(self, served: Served, work: Callable[[], _T]) -> _T:
        """Run blocking ``work`` (an embedding, a ranking) on ``served`` as
        one admitted request, off the event loop."""
        async with self._slot(served, lambda _cancel: None):
            return await asyncio.get_running_loop().run_in_executor(self.starting, work)

    def _start(self, served: Served, call: Call, cancel: threading.Event) -> TokenStream:
        if self.s.log_prompts:
            _log.info("prompt: %s", call.messages if call.chat else call.prompt)
        model = served.model
        try:
            if call.chat:
                return model.chat(call.messages, cancel=cancel, **call.options)
            return model.generate(call.prompt, cancel=cancel, **call.options)
        except (UnsupportedOptionError, ConstraintError, ValueError, TypeError) as exc:
            raise BadRequest(str(exc)) from None

    def _count(self, served: Served, stream: TokenStream) -> None:
        """Add ``stream``'s tokens and times to ``served``'s metrics once it
        has ended: a stream its client left ends in its own thread, within a
        token of the cancel, and is counted then."""
        stream.cancel()  # a no-op for a stream that has ended
        if stream.done:
            self.metrics.finished(served.name, stream.metrics)
            return

        def when_done() -> None:
            deadline = time.monotonic() + _COUNT_WAIT
            while not stream.done and time.monotonic() < deadline:
                time.sleep(0.01)
            self.metrics.finished(served.name, stream.metrics)

        with contextlib.suppress(RuntimeError):  # shutting down: no one reads them now
            self.starting.submit(when_done)

    # -- the generation, streamed or whole ---------------------------------------

    async def _tokens(
        self, served: Served, call: Call, *, wait: bool = True
    ) -> tuple[TokenStream, AsyncIterator[Token], Token | None, contextlib.AsyncExitStack]:
        """Admit, start, and wait for the first token (so that a failure before
        it is an HTTP error, not a broken stream), unless ``wait`` is False
        (the API's stream answers at once: Anthropic's pings while it waits)."""
        stack = contextlib.AsyncExitStack()
        stream = await stack.enter_async_context(
            self._slot(served, functools.partial(self._start, served, call))
        )
        try:
            tokens = stream.__aiter__()
            stack.push_async_callback(_aclose, tokens)
            first = await shapes.next_token(tokens) if wait else None
        except GenerationError as exc:  # before any token: the prompt, mostly
            await stack.aclose()
            raise BadRequest(str(exc)) from None
        except BaseException:  # the client left during the prefill, mostly
            await stack.aclose()
            self._count(served, stream)  # what it cost is still counted
            raise
        return stream, tokens, first, stack

    async def generation(
        self,
        request: Request,
        served: Served,
        call: Call,
        route: str,
        shape: Callable[[TokenStream, AsyncIterator[Token], Token | None], AsyncIterator[str]],
        whole: Callable[[TokenStream, list[Token]], dict[str, Any]],
        media: str,
        *,
        early: bool = False,
    ) -> Response:
        """Run ``call`` on ``served``: streamed through ``shape`` (from the
        first token; with ``early``, at once, ``shape`` awaiting the first
        token itself) or answered whole through ``whole``."""
        # From admission to the first token (waiting in the queue, the
        # prefill), a client that leaves takes its work with it.
        admitted: list[tuple[TokenStream, AsyncIterator[Token], Token | None, Any]] = []
        wait = not (early and call.stream)

        async def admit() -> None:
            admitted.append(await self._tokens(served, call, wait=wait))

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
                    self._count(served, stream)
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
            self._count(served, stream)
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
                        "a valid API key is required (Authorization: Bearer KEY, or x-api-key)",
                        "authentication_error",
                        headers={"WWW-Authenticate": 'Bearer realm="inference"'},
                    )
                response = await handler(request)
                status = response.status_code
                return response
            except BadRequest as exc:
                status = 400
                return self._fail(api, 400, str(exc), "invalid_request_error", exc.param)
            except UnknownModel as exc:
                status = 404
                return self._fail(api, 404, str(exc), "not_found_error", "model")
            except NotStored as exc:
                status = 404
                return self._fail(api, 404, str(exc), "not_found_error")
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
        if api == "anthropic":
            return JSONResponse(error_body(status, message), status_code=status, headers=headers)
        return _error(status, message, kind, param, headers)

    async def unrouted(self, request: Request, exc: Exception) -> Response:
        """A path no route serves (404) or a method it does not take (405),
        in the error shape of the API the path belongs to."""
        status = getattr(exc, "status_code", 404)
        path = request.url.path
        api = _api_of(path)
        if status == 405:
            message, kind = f"{request.method} is not allowed on {path}", "invalid_request_error"
            route = path  # a served route: a bounded label
        else:
            message, kind, route = f"there is no route {path}", "not_found_error", "(unrouted)"
        self.metrics.request(route, status)
        headers = dict(getattr(exc, "headers", None) or {})
        return self._fail(api, status, message, kind, headers=headers)

    async def openai(self, request: Request, *, chat: bool) -> Response:
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "generate")
        call = openai_call(body, chat=chat, **self._bounds())
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        name = served.name
        return await self.generation(
            request,
            served,
            call,
            "/v1/chat/completions" if chat else "/v1/completions",
            lambda s, t, f: shapes.openai_events(s, t, f, call, cid, name, chat),
            lambda s, toks: shapes.openai_whole(s, toks, call, cid, name, chat),
            "text/event-stream",
        )

    async def ollama(self, request: Request, *, chat: bool) -> Response:
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "generate")
        caps = served.model.capabilities
        call = ollama_call(
            body,
            chat=chat,
            reasons=caps.reasoning,
            context=caps.context_length or served.model.info.context_length,
            **self._bounds(),
        )
        name = served.name
        return await self.generation(
            request,
            served,
            call,
            "/api/chat" if chat else "/api/generate",
            lambda s, t, f: shapes.ollama_lines(s, t, f, call, name, chat),
            lambda s, toks: shapes.ollama_whole(s, toks, call, name, chat),
            "application/x-ndjson",
        )

    async def messages(self, request: Request) -> Response:
        """Anthropic's ``POST /v1/messages``."""
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "generate")
        reasons = served.model.capabilities.reasoning
        asked = messages_call(body, reasons=reasons, max_tokens_cap=self.s.max_tokens_cap)
        mid, name = new_message_id(), served.name
        return await self.generation(
            request,
            served,
            asked.call,
            "/v1/messages",
            lambda s, t, _first: message_events(s, t, mid, name),
            lambda s, toks: message_whole(s, toks, mid, name),
            "text/event-stream",
            early=True,
        )

    async def responses(self, request: Request) -> Response:
        """OpenAI's ``POST /v1/responses``."""
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "generate")
        asked = responses_call(
            body,
            reasons=served.model.capabilities.reasoning,
            max_tokens_cap=self.s.max_tokens_cap,
            default_max=self.s.default_max_tokens,
            store=self.store,
        )
        rid, name, store = new_response_id(), served.name, self.store
        return await self.generation(
            request,
            served,
            asked.call,
            "/v1/responses",
            lambda s, t, first: response_events(s, t, first, asked, rid, name, store),
            lambda s, toks: response_whole(s, toks, asked, rid, name, store),
            "text/event-stream",
        )

    async def stored_response(self, request: Request) -> Response:
        """``GET`` or ``DELETE /v1/responses/{id}``: a kept response."""
        rid = request.path_params["rid"]
        if request.method == "DELETE":
            self.store.delete(rid)
            return JSONResponse({"id": rid, "object": "response.deleted", "deleted": True})
        return JSONResponse(self.store.get(rid).response)

    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's ``POST /v1/messages/count_tokens``: the prompt's tokens,
        the template and tools included, without generating."""
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "generate")
        reasons = served.model.capabilities.reasoning
        call = messages_call(
            body, reasons=reasons, max_tokens_cap=self.s.max_tokens_cap, count=True
        ).call

        def count(cancel: threading.Event) -> dict[str, int]:
            return count_reply(self._start(served, call, cancel))

        async with self._slot(served, count, hold=False) as counted:
            return JSONResponse(counted)

    async def embeddings(self, request: Request, *, api: str) -> Response:
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "embed")
        call = embed_call(body, api=api)
        texts = call.inputs
        model = served.model
        assert isinstance(model, Embedder)

        def work() -> Embeddings:
            try:
                return model.embed(texts, truncate=call.truncate, dimensions=call.dimensions)
            except InferenceError as exc:  # the input, or a model that cannot embed
                raise BadRequest(str(exc)) from None

        got = await self._admitted(served, work)
        self.metrics.embedded(served.name, got.tokens)
        if api == "openai":
            return JSONResponse(openai_embed_reply(got, served.name, as_base64=call.base64))
        return JSONResponse(ollama_embed_reply(got, served.name, legacy=call.legacy))

    async def rerank(self, request: Request) -> Response:
        body = await self._body(request)
        served = self.served.pick(body.get("model"), "rerank")
        call = rerank_call(body)
        model = served.model
        assert isinstance(model, Reranker)

        def work() -> Ranking:
            try:
                return model.rerank(call.query, call.documents, top_n=call.top_n)
            except InferenceError as exc:
                raise BadRequest(str(exc)) from None

        ranking = await self._admitted(served, work)
        return JSONResponse(rerank_reply(ranking, call, served.name))

    def _bounds(self) -> dict[str, int]:
        return {"max_tokens_cap": self.s.max_tokens_cap, "default_max": self.s.default_max_tokens}

    async def models(self, request: Request) -> Response:
        cards = [served.card(self.created) for served in self.served]
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request) -> Response:
        served = self.served.find(request.path_params["name"])
        return JSONResponse(served.card(self.created))

    def _tag(self, served: Served) -> dict[str, Any]:
        info = served.model.info
        size = os.path.getsize(info.path) if os.path.isfile(info.path) else 0
        return {
            "name": served.name,
            "model": served.name,
            "modified_at": datetime.fromtimestamp(self.created, timezone.utc).isoformat(),
            "size": size,
            "digest": "",
            "details": served.details(),
        }

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": [self._tag(served) for served in self.served]})

    async def running(self, request: Request) -> Response:
        """Ollama's ``/api/ps``: every served model is loaded, and stays so."""
        models = []
        for served in self.served:
            tag = self._tag(served)
            del tag["modified_at"]
            models.append({**tag, "expires_at": _NEVER, "size_vram": 0})
        return JSONResponse({"models": models})

    async def show(self, request: Request) -> Response:
        """Ollama's ``/api/show``: a model's details, template and capabilities."""
        body = await self._body(request)
        asked = body.get("model", body.get("name"))
        if not isinstance(asked, str) or not asked:
            raise BadRequest("model must name a served model", "model")
        served = self.served.find(asked)
        info = served.model.info
        arch = info.architecture or "unknown"
        model_info = {
            "general.architecture": arch,
            f"{arch}.context_length": served.model.capabilities.context_length
            or info.context_length,
            f"{arch}.embedding_length": info.hidden_size,
            f"{arch}.block_count": info.layers,
            "tokenizer.ggml.vocab_size": info.vocab_size,
        }
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": str(getattr(served.model, "chat_template", "")),
                "details": served.details(),
                "model_info": model_info,
                "capabilities": served.abilities(),
                "modified_at": datetime.fromtimestamp(self.created, timezone.utc).isoformat(),
            }
        )

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": inference.__version__})

    async def health(self, request: Request) -> Response:
        first = self.served.first
        return JSONResponse(
            {
                "status": "ok",
                "model": first.name,
                "backend": first.model.info.backend,
                "models": self.served.names,
            }
        )

    async def prometheus(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")


def _api_of(path: str) -> str:
    """The API a path belongs to, whose error shape its errors take."""
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


#: When a loaded model is unloaded, as ``/api/ps`` says it: never.
_NEVER = "9999-12-31T23:59:59Z"


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
    models: TextModel | Mapping[str, TextModel], settings: Settings | None = None
) -> Starlette:
    """The Starlette app serving ``models`` (by name; a lone model is served
    as ``settings.name``)."""
    s = settings or Settings()
    served = {s.name: models} if isinstance(models, TextModel) else dict(models)
    server = _Server(served, s)

    def route(
        path: str, handler: Callable[[Request], Awaitable[Response]], method: str, api: str
    ) -> Route:
        return Route(path, server.guarded(path, handler, api=api), methods=[method])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        quiet_accept_errors(asyncio.get_running_loop())
        yield
        server.starting.shutdown(wait=False, cancel_futures=True)

    middleware = []
    if s.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(s.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
            )
        )
    app = Starlette(
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={404: server.unrouted, 405: server.unrouted},
        routes=[
            route("/v1/chat/completions", lambda r: server.openai(r, chat=True), "POST", "openai"),
            route("/v1/completions", lambda r: server.openai(r, chat=False), "POST", "openai"),
            route("/v1/messages", server.messages, "POST", "anthropic"),
            route("/v1/messages/count_tokens", server.count_tokens, "POST", "anthropic"),
            route("/v1/responses", server.responses, "POST", "openai"),
            Route(
                "/v1/responses/{rid}",
                server.guarded("/v1/responses/{id}", server.stored_response, api="openai"),
                methods=["GET", "DELETE"],
            ),
            route("/v1/models", server.models, "GET", "openai"),
            route("/v1/models/{name:path}", server.model, "GET", "openai"),
            route("/api/chat", lambda r: server.ollama(r, chat=True), "POST", "ollama"),
            route("/api/generate", lambda r: server.ollama(r, chat=False), "POST", "ollama"),
            route("/api/tags", server.tags, "GET", "ollama"),
            route("/api/show", server.show, "POST", "ollama"),
            route("/api/ps", server.running, "GET", "ollama"),
            route("/api/version", server.version, "GET", "ollama"),
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
