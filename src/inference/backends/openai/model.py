"""The remote model: a :class:`~inference.TextModel` whose engine is a server.

Each call becomes one request named in the server's dialect; its event
stream is read chunk by chunk into tokens, with stop strings, stop ids and
``max_tokens`` enforced here where the server cannot. A request that fails
before its first token is tried again (:mod:`.retries`); ``batch_generate``
and ``classify`` send ``parallel_slots`` requests at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    pass

from ...capabilities import Capabilities
from ...detok import LogprobAssembler, TextAssembler
from ...embeddings import Embeddings, EmbedInput, Ranking
from ...errors import Cancelled, GenerationError
from ...metrics import batch_metrics
from ...model_state import ModelState
from ...options import MAX_TOP_LOGPROBS, GenerateConfig
from ...producers import drain_many
from ...reply import ReplySplitter, plan_chat, split_reply
from ...stream import Producer, StreamControl, TokenStream
from ...tool_calls import ANY_FORMAT, FORMATS
from ...types import (
    BatchResult,
    ClassifyResult,
    FinishReason,
    Message,
    ModelInfo,
    Token,
    TokenLogprob,
)
from ...values import is_int
from . import embedding
from .dialects import Dialect
from .embedding import Offer
from .retries import Retry
from .sse import SSEError, SSEParser
from .structured import (
    ACCEPTS,
    ToolCallDeltas,
    constraint_fields,
    generic_call_constraint,
    tool_choice_field,
)
from .transport import MAX_JSON_BODY, READ_SIZE, Client, Failure, Response, error_text
from .wire import (
    FINISH,
    CallState,
    choice_ids,
    choice_logprobs,
    choice_text,
    covering,
    token_texts,
)

__all__ = ["OpenAIModel"]

_log = logging.getLogger(__name__)
_perf = time.perf_counter
_T = TypeVar("_T")
_R = TypeVar("_R")


def _pieces(choice: Mapping[str, Any], text: str, ids: list[int]) -> list[tuple[int, bytes]]:
    """The tokens of one chunk, each with its text. A chunk that lists each
    token's text (its log-probabilities) is split by it, so that a chunk of
    several tokens gives each its own; on the chunk that ends the
    generation, tokens past its text are the end's and are left out.
    Otherwise the chunk's text belongs to its last id (ids before it end
    part-way through a character), and a last chunk of ids alone is the
    end-of-text token, never emitted."""
    data = text.encode("utf-8")
    finish = bool(choice.get("finish_reason"))
    parts = token_texts(choice)
    if parts and (not ids or len(ids) == len(parts)):
        n = covering(parts, data)
        if n is not None and (n == len(parts) or finish):
            tids = ids or [-1] * len(parts)
            return list(zip(tids[:n], parts[:n], strict=True))
    if not (text or (ids and not finish)):
        return []
    last = ids[-1] if ids else -1
    return [(i, b"") for i in ids[:-1]] + [(last, data)]


class OpenAIModel(ModelState):
    """A model served by a remote OpenAI-compatible server.

    Implements :class:`~inference.TextModel`; where the server can score,
    the model is a :class:`~.scoring.ScoringOpenAIModel`, also a
    :class:`~inference.Scorer`. Calls from many threads are
    safe and run concurrently: each uses its own connection, and the server
    schedules them. ``batch_generate`` and ``classify`` send up to
    ``parallel_slots`` requests at once.
    """

    backend_name = "openai"

    def __init__(
        self,
        *,
        client: Client,
        name: str,
        dialect: Dialect,
        info: ModelInfo,
        slots: int,
        native_tools: bool = True,
        offer: Offer | None = None,
    ) -> None:
        self._client = client
        self._offer = offer or Offer()
        self._name = name
        self._dialect = dialect
        #: Whether tools go to the server as ``tools`` (else: the generic format).
        self._native_tools = dialect.tools and native_tools
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

    def _capabilities(self) -> Capabilities:
        """What this kind of server does on its OpenAI endpoints."""
        d = self._dialect
        kinds = ACCEPTS.get(d.structured, frozenset())
        return Capabilities(
            logprobs=d.logprobs,
            top_logprobs=MAX_TOP_LOGPROBS if d.logprobs else 0,
            scoring=not d.no_scoring,
            constraints=kinds,
            # Tools go natively, or in the generic format held to a call by
            # the server's JSON-schema field.
            tools=self._native_tools or "json_schema" in kinds,
            reasoning=d.template_kwargs,
            seeded_sampling=True,
            token_ids=bool(d.token_ids),
            alternative_ids=d.alternative_ids,
            stop_tokens=bool(d.stop_ids),
            parallel_streams=self._slots,
            context_length=self._info.context_length,
            embed=self._offer.dimensions > 0,
            embedding_dimensions=self._offer.dimensions,
            rerank=self._offer.rerank or self._offer.dimensions > 0,
        )

    def _embed(
        self, texts: list[EmbedInput], normalize: bool, truncate: bool, dimensions: int | None
    ) -> Embeddings:
        # The server cuts a long text (or refuses it) as it was told to at start.
        return embedding.embed(
            self._client, self._name, texts, normalize=normalize, dimensions=dimensions
        )

    def _rerank(self, query: str, documents: list[str]) -> Ranking:
        if not self._offer.rerank:
            return super()._rerank(query, documents)  # by the embeddings' cosine
        return embedding.rerank(self._client, self._name, query, documents)

    def _refusal_names(self) -> tuple[str, str]:
        return self._dialect.name, f"{self._url} ({self._dialect.label})"

    # -- the seams behind ModelState's front door ---------------------------------

    def _generate(self, prompt: str, cfg: GenerateConfig) -> TokenStream:
        body = self._body(cfg, chat=False)
        body["prompt"] = prompt
        return self._stream("/completions", body, cfg, prompt)

    def _chat(self, messages: list[Message], cfg: GenerateConfig) -> TokenStream:
        body = self._body(cfg, chat=True)
        splitter = None
        if cfg.tools and cfg.tool_choice != "none":
            if self._native_tools:
                body["tools"] = [t.to_dict() for t in cfg.tools]
                if self._dialect.strict_tools:
                    # Arguments held to each tool's schema (vLLM otherwise
                    # returns whatever the model wrote), one call when one
                    # tool is named.
                    for tool in body["tools"]:
                        tool["function"]["strict"] = True
                    if cfg.tool_choice.startswith("function:"):
                        body["parallel_tool_calls"] = False
                body["tool_choice"] = tool_choice_field(cfg.tool_choice)
                # A call the server leaves in the text is still read, not shown.
                splitter = ReplySplitter(ANY_FORMAT)
            else:
                plan = plan_chat(messages, cfg, template="", takes_tools=False, constrains=False)
                messages = plan.messages
                splitter = ReplySplitter(FORMATS["generic"])
                if cfg.tool_choice != "auto":
                    forced = cfg.tool_choice.removeprefix("function:")
                    tools = [
                        t for t in cfg.tools if cfg.tool_choice == "required" or t.name == forced
                    ]
                    body.update(constraint_fields(self._dialect, generic_call_constraint(tools)))
        kwargs = dict(cfg.template_vars)
        if cfg.enable_thinking is not None:
            kwargs["enable_thinking"] = cfg.enable_thinking
        if kwargs:
            if self._dialect.template_kwargs:
                body["chat_template_kwargs"] = kwargs
            else:
                self._ignored("enable_thinking and template_vars")
        body["messages"] = [m.to_dict() for m in messages]
        return self._stream("/chat/completions", body, cfg, None, splitter)

    def _classify(self, prompts: list[str], cfg: GenerateConfig) -> list[ClassifyResult]:
        one = replace(cfg, max_tokens=1)
        results = self._many(prompts, one)
        for i, res in enumerate(results):
            if res.err is not None:
                failed: BaseException = res.err
                if not isinstance(failed, Cancelled):
                    failed = GenerationError(f"prompt {i}: {res.err}")
                    failed.__cause__ = res.err
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

    def _batch_generate(self, prompts: list[str], cfg: GenerateConfig) -> list[BatchResult]:
        results = self._many(prompts, cfg)
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
        """A request's fields for ``cfg``, as this server names them.
        ``max_tokens`` is at most the context (vLLM refuses more, where the
        in-process engines end with "length" when the context is full)."""
        body = self._dialect.request_fields(cfg, chat=chat, ignored=self._ignored)
        context = self._info.context_length
        if context and body.get("max_tokens", 0) > context:
            body["max_tokens"] = context
        return {"model": self._name, **body}

    def _stream(
        self,
        suffix: str,
        body: dict[str, Any],
        cfg: GenerateConfig,
        prompt: str | None,
        splitter: ReplySplitter | None = None,
    ) -> TokenStream:
        def producer(control: StreamControl) -> Generator[Token, None, FinishReason]:
            with self._holders.holding():
                gen = self._produce(suffix, body, cfg, control, prompt)
                if splitter is not None:
                    gen = split_reply(gen, splitter, control)
                return (yield from gen)

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
        state = CallState()
        self._track(control)
        try:
            control.check()
            if prompt is not None and not prompt:
                raise GenerationError("the prompt is empty")
            if cfg.max_tokens == 0:
                return "length"
            reason = yield from self._with_retries(suffix, body, cfg, control, state)
            if state.tool_calls is not None:
                control.tool_calls = state.tool_calls.calls()
                if state.tool_calls.malformed:
                    raise GenerationError(
                        "the server returned a tool call whose arguments are not a JSON "
                        f"object: {'; '.join(state.tool_calls.malformed)}"
                    )
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
        state: CallState,
    ) -> Generator[Token, None, FinishReason]:
        plain = TextAssembler(cfg.stop)
        asm = LogprobAssembler(plain, cfg.logprobs) if cfg.logprobs is not None else plain
        payload = json.dumps(body).encode("utf-8")
        retry = Retry(self._client.settings.retries, control, f"{self._url}{suffix}")
        while True:
            control.check()
            try:
                reason = yield from self._attempt(suffix, payload, cfg, control, state, asm)
                if plain.stopped:  # a stop string this client matched
                    control.stop_sequence = plain.matched
                return reason
            except Failure as exc:
                if control.stop_requested():
                    control.check()
                if state.received:
                    raise GenerationError(
                        f"{self._url}: {exc.message} after {state.received} chunks of output; "
                        "not tried again because the stream had started"
                    ) from None
                try:
                    retry.after(exc)  # before the first token: wait, and try again
                except Failure as final:
                    raise GenerationError(f"{self._url}: {final.message}") from None

    def _attempt(
        self,
        suffix: str,
        payload: bytes,
        cfg: GenerateConfig,
        control: StreamControl,
        state: CallState,
        asm: TextAssembler | LogprobAssembler,
    ) -> Generator[Token, None, FinishReason]:
        client = self._client
        with client.open("POST", suffix, payload, control, stream=True) as answer:
            ctype = answer.content_type
            if ctype == "application/json":
                # A server (or proxy) that ignored "stream": one whole answer,
                # emitted as one token.
                chunk = self._decode(answer.read_all(MAX_JSON_BODY).decode("utf-8", "replace"))
                chat, stop_ids = suffix.startswith("/chat"), frozenset(cfg.stop_tokens)
                got, cut = yield from self._chunk(chunk, chat, cfg, control, state, asm, stop_ids)
                state.end = _perf()
                if cut is not None:
                    return cut
                yield from asm.flush()
                if got is None:
                    raise Failure("the server's answer has no finish reason", retriable=False)
                return got
            if ctype and ctype != "text/event-stream":
                snippet = client.scrub(answer.read1(200).decode("utf-8", "replace"))
                raise Failure(
                    f"the server answered with Content-Type {ctype!r}, not an event stream: "
                    f"{' '.join(snippet.split())!r}",
                    retriable=False,
                )
            return (yield from self._events(answer, suffix, cfg, control, state, asm))

    def _decode(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            snippet = self._client.scrub(data[:80])
            raise Failure(
                f"malformed JSON in the server's stream ({exc.msg}): {snippet!r}", retriable=False
            ) from None
        if not isinstance(chunk, dict):
            raise Failure(
                f"the server's stream holds {type(chunk).__name__}, not a JSON object",
                retriable=False,
            )
        error = chunk.get("error")
        if error is not None:
            text = self._client.scrub(error_text(json.dumps(chunk).encode()))
            raise Failure(f"the server reported an error: {text}", retriable=False)
        return chunk

    def _events(
        self,
        answer: Response,
        suffix: str,
        cfg: GenerateConfig,
        control: StreamControl,
        state: CallState,
        asm: TextAssembler | LogprobAssembler,
    ) -> Generator[Token, None, FinishReason]:
        """Read the event stream; return the finish reason (the answer read
        to its end where it can be)."""
        parser = SSEParser()
        chat = suffix.startswith("/chat")
        stop_ids = frozenset(cfg.stop_tokens)
        finish: FinishReason | None = None
        done = False
        events_seen = 0
        while not done:
            try:
                data = answer.read1(READ_SIZE)
            except Failure:
                if control.stop_requested():
                    control.check()
                raise
            if not data:
                break
            try:
                events = parser.feed(data)
            except SSEError as exc:
                raise Failure(f"malformed event stream: {exc}", retriable=False) from None
            for event in events:
                events_seen += 1
                if not event.data.strip():
                    continue  # an empty keep-alive event
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                if event.event == "error":
                    text = self._client.scrub(error_text(event.data.encode()))
                    raise Failure(f"the server reported an error: {text}", retriable=False)
                chunk = self._decode(event.data)
                got, cut = yield from self._chunk(chunk, chat, cfg, control, state, asm, stop_ids)
                if cut is not None:
                    # A stop string, a stop token or max_tokens ended it here:
                    # closing the connection tells the server to stop.
                    state.end = _perf()
                    return cut
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
                raise Failure(
                    "the server's answer is not an event stream of completions "
                    f"({parser.unknown_fields} lines in no event-stream field)",
                    retriable=False,
                )
            if parser.incomplete and not done:
                raise Failure("the stream was cut off in the middle of an event", retriable=True)
            raise Failure(self._no_finish(state, done), retriable=False)
        if not asm.stopped:
            yield from asm.flush()
        answer.finish(done)
        return finish

    def _no_finish(self, state: CallState, done: bool) -> str:
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

    def _chunk(
        self,
        chunk: Mapping[str, Any],
        chat: bool,
        cfg: GenerateConfig,
        control: StreamControl,
        state: CallState,
        asm: TextAssembler | LogprobAssembler,
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
        if chat:
            yield from self._extras(choice, state)
        text = choice_text(choice, chat)
        ids = choice_ids(choice)
        if text or ids:
            cut: FinishReason | None = None
            if not state.received:
                state.first = _perf()
            state.received += 1
            state.ids_seen += len(ids)
            pieces = _pieces(choice, text, ids)
            tagged = self._tagged(pieces, choice, chat, asm)
            # A stop token id, or max_tokens, ends it here.
            keep = len(pieces)
            if stop_ids:
                for j, (tid, _) in enumerate(pieces):
                    if tid in stop_ids:
                        keep, cut = j, "stop"
                        break
            if ids and state.ids_seen > cfg.max_tokens and cut is None:
                # Pieces are the chunk's ids in order (the end's left out).
                excess = state.ids_seen - cfg.max_tokens
                keep, cut = min(keep, max(len(ids) - excess, 0)), "length"
                state.ids_seen = cfg.max_tokens
            for (tid, data), figures in zip(pieces[:keep], tagged[:keep], strict=True):
                if isinstance(asm, LogprobAssembler):
                    assert figures is not None
                    out = asm.push(tid, data, *figures)
                else:
                    out = asm.push(tid, data)
                for tok in out:
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
        said = choice.get("stop_reason")  # vLLM's: the stop string it matched
        if isinstance(said, str) and said in cfg.stop:
            control.stop_sequence = said
        if isinstance(reason, str) and reason:
            mapped = FINISH.get(reason.lower())
            if mapped is None:
                if reason.lower() in ("abort", "error", "cancelled"):
                    raise Failure(
                        f"the server ended the generation with finish_reason {reason!r}",
                        retriable=False,
                    )
                mapped = "stop"
            return mapped, None
        return None, None

    def _extras(self, choice: Mapping[str, Any], state: CallState) -> Generator[Token, None, None]:
        """A chat chunk's reasoning (as reasoning tokens) and tool-call deltas."""
        delta = choice.get("delta") or choice.get("message")
        if not isinstance(delta, dict):
            return
        calls = delta.get("tool_calls")
        if calls:
            if state.tool_calls is None:
                state.tool_calls = ToolCallDeltas()
            state.tool_calls.add(calls)
            state.received += 1
        thought = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(thought, str) and thought:
            if not state.received:
                state.first = _perf()
            state.received += 1
            yield Token(-1, thought, reasoning=True)

    def _tagged(
        self,
        pieces: list[tuple[int, bytes]],
        choice: Mapping[str, Any],
        chat: bool,
        asm: TextAssembler | LogprobAssembler,
    ) -> list[tuple[float, tuple[TokenLogprob, ...]] | None]:
        """The log-probabilities of each piece of a chunk (None when not
        asked): the server sends one entry per token, in order; on the last
        chunk, those past the pieces are the end's (the end-of-text token,
        a stop string's tokens), which is not emitted."""
        if not isinstance(asm, LogprobAssembler):
            return [None] * len(pieces)
        entries = choice_logprobs(choice, chat)
        if len(entries) < len(pieces) or (
            len(entries) > len(pieces) and not choice.get("finish_reason")
        ):
            raise Failure(
                f"the server sent {len(entries)} log-probabilities for {len(pieces)} "
                "tokens (does it report logprobs? llama-cpp-python's server needs "
                "--logits_all True)",
                retriable=False,
            )
        k = asm.k
        return [(lp, top[:k]) for _, lp, top in entries[: len(pieces)]]  # some send more

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
        except Failure as exc:
            _log.debug("%s: could not count the prompt's tokens: %s", self._url, exc.message)
            return 0
        count = doc.get("count") if isinstance(doc, dict) else None
        return count if is_int(count) and count > 0 else 0

    # -- several prompts ----------------------------------------------------------

    def _many(self, prompts: list[str], cfg: GenerateConfig) -> list[BatchResult]:
        """Run one generation per prompt, ``parallel_slots`` at a time."""
        body = self._body(cfg, chat=False)
        start = _perf()

        def producer(prompt: str) -> Producer:
            fields = {**body, "prompt": prompt}
            return lambda control: self._produce("/completions", fields, cfg, control, prompt)

        results = drain_many([producer(p) for p in prompts], cfg, width=self._slots)
        self._metrics = batch_metrics(results, start, _perf())
        return results
