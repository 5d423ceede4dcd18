"""BaseTextModel: the whole TextModel built from a few engine primitives.

A backend author subclasses :class:`BaseTextModel` and writes only what the
engine does:

- ``_encode(text, add_bos)``: token ids of a prompt (special tokens parsed);
- ``_token_bytes(id)``: the raw bytes of one token;
- ``_generate_ids(ids, cfg, control)``: a generator of sampled token ids
  after prefilling ``ids``, honouring the sampling fields of ``cfg``;

and, optionally, ``_classify_ids`` (one batched forward pass, with logits),
``_token_logprobs``, ``_guidance_tokenizer``, ``_memory`` and ``_release``:
each primitive a backend writes is a capability its models state in
:attr:`~ModelState.capabilities`. The base class supplies the rest: options
and keyword settings, chat templates (sandboxed), stop tokens and stop
strings, ``max_tokens``, incremental UTF-8, cancellation, deadlines,
metrics, ``err``, a :class:`~inference.gate.Gate` so that concurrent calls
never interleave inside the engine, and an optional dedicated engine thread
for engines whose state is thread-bound.

There is one decode path: a stream, and each prompt of ``batch_generate``
(:func:`drain_many`), is a producer run in its reader's thread, holding the
gate, its tokens from ``_generate_ids``. An engine that decodes concurrent
streams together (continuous batching, :mod:`inference.batching`) passes
``stream_width`` (1 or more): up to that many producers then hold the gate
at once and the engine shares its decode steps among them. ``classify`` and
scoring run alone, as does every stream of an engine that cannot batch.
Either way a caller beyond the width waits in one fair queue, honouring its
cancel.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from . import compile_guard
from .capabilities import Capabilities
from .chat_families import family_for
from .chat_template import Prompt, keep_content_literal, render_chat, template_takes
from .compile_guard import Limits
from .constraints import KINDS, Constraint, constraint_of
from .detok import LogprobAssembler, TextAssembler
from .engine_thread import EngineThread
from .errors import GenerationError, InferenceError, ModelClosedError
from .gate import Gate
from .metrics import batch_metrics, call_metrics
from .model_state import ModelState, check_messages, check_prompt_text, check_prompts
from .options import MAX_TOP_LOGPROBS, GenerateConfig, LoadConfig
from .producers import drain, drain_many, map_concurrently
from .protocols import Scorer
from .reply import THINK, ReplySplitter, plan_chat, split_reply
from .stream import HELD, Producer, StreamControl, TokenStream
from .types import (
    BatchResult,
    ClassifyResult,
    FinishReason,
    GenerateMetrics,
    Message,
    ModelInfo,
    Token,
    TokenLogprob,
)

__all__ = [
    "BaseTextModel",
    "ModelState",
    "check_messages",
    "check_prompt_text",
    "check_prompts",
    "drain",
    "drain_many",
    "map_concurrently",
]

_T = TypeVar("_T")

_perf = time.perf_counter

#: Seconds ``close()`` waits for the calls it cancelled to end before it
#: leaves the freeing to the last of them.
CLOSE_WAIT = 2.0
_log = logging.getLogger(__name__)


class BaseTextModel(ModelState):
    """Implements :class:`~inference.TextModel` and :class:`~inference.Tokenizer`
    over engine primitives. See the module docstring."""

    #: Set by subclasses: the backend name shown in errors and ``info``.
    backend_name: ClassVar[str] = ""

    @property
    def chat_template(self) -> str:
        """The Jinja chat template ``chat`` renders (the model file's, or its
        family's documented format when the file ships none)."""
        return self._chat_template or ""

    def __init__(
        self,
        *,
        info: ModelInfo,
        eog_ids: Iterable[int] = (),
        chat_template: str | None = None,
        bos_token: str = "",
        eos_token: str = "",
        add_bos: bool = False,
        engine_thread: bool = False,
        vocabulary: Collection[str] = (),
        stream_width: int = 0,
        load: LoadConfig | None = None,
    ) -> None:
        if not chat_template:
            # The model ships none: its family's documented format, chosen by
            # the turn markers in its vocabulary, then its architecture.
            family = family_for(info.architecture, _lookup(vocabulary))
            chat_template = family.template
            note = f"chat template: the {family.name} format (the model ships none)"
            info = replace(info, notes=(*info.notes, note))
        self._init_state(info)
        self._eog_ids = frozenset(eog_ids)
        self._chat_template = chat_template
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._add_bos = add_bos
        self._released = False
        self._release_asked = False
        #: Whether the engine batches concurrent streams (``stream_width``
        #: given). Every call takes the gate in its caller's thread, never on
        #: the engine thread, which only runs the engine's work.
        self._batches = stream_width > 0
        if engine_thread and not self._batches:
            # A stream's reader would have to run its engine work through the
            # thread one token at a time: an engine bound to a thread hands
            # its streams to a scheduler (inference.batching) instead.
            raise ValueError("engine_thread=True needs stream_width (a batching engine)")
        self._gate = Gate(stream_width, on_empty=self._release_if_closed)
        self._lltokenizer: Any = None  # llguidance's view of the vocabulary, made on first use
        cfg = load or LoadConfig()
        self._constraint_limits = Limits(cfg.constraint_timeout, cfg.constraint_memory_mib << 20)
        self._token_bound: int | None = None  # see _bytes_per_token_bound
        self._engine = (
            EngineThread(f"inference-{self.backend_name or 'engine'}", on_exit=self._engine_exit)
            if engine_thread
            else None
        )

    # -- engine primitives (override) -----------------------------------

    def _encode(self, text: str, add_bos: bool) -> list[int]:
        raise NotImplementedError

    def _token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def _encode_literal(self, text: str) -> list[int] | None:
        """Token ids of ``text`` with any special-token text in it as plain
        characters (no BOS), or None if the engine cannot tokenise so (then
        chat content is tokenised as the rest of the prompt is). Override
        where the vocabulary has special tokens written as text."""
        return None

    def _generate_ids(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl
    ) -> Iterator[int]:
        raise NotImplementedError

    def _classify_ids(
        self, batch: Sequence[Sequence[int]], cfg: GenerateConfig, control: StreamControl
    ) -> list[tuple[int, Sequence[float] | None]]:
        """Next token (and logits if asked) after each prompt, in one batched
        forward pass. Without it, ``classify`` decodes one token of each
        prompt on the decode path, and returns no logits."""
        raise NotImplementedError

    def _token_logprobs(self, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        """The raw log-probability of the token ``_generate_ids`` has just
        yielded, and the ``k`` most likely tokens at that step as ``(id,
        log-probability)``, most likely first. Called (under ``logprobs=k``)
        before the generator is resumed. Override to support ``logprobs``."""
        raise NotImplementedError

    def _guidance_tokenizer(self) -> Any:
        """The model's vocabulary as an ``llguidance.LLTokenizer``, with the
        end-of-generation tokens as its EOS. Override, together with masking
        ``control.guide`` in ``_generate_ids`` (set the logits of the tokens
        ``guide.allowed()`` forbids to -inf before each sample, then
        ``guide.consume(token)``), to support structured output."""
        raise NotImplementedError

    def _memory(self) -> tuple[int | None, int | None]:
        """(active, peak) memory in bytes, where the backend can tell."""
        return None, None

    def _release(self) -> None:
        """Free the engine's memory; called once, with the lock held."""

    def _engine_exit(self) -> None:
        """Run on the engine thread as it ends (``engine_thread=True`` only):
        free what the engine keeps per thread."""

    def _render_chat(
        self, messages: Sequence[Message], variables: Mapping[str, Any] | None = None
    ) -> str:
        return render_chat(
            self._chat_template,
            messages,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
            variables=variables,
        )

    # -- capabilities and structured output ---------------------------------------

    def _capabilities(self) -> Capabilities:
        """What the engine's primitives give: a primitive the backend wrote
        is a capability it has."""
        import importlib.util

        cls = type(self)
        guided = cls._guidance_tokenizer is not BaseTextModel._guidance_tokenizer
        kinds = (
            frozenset(KINDS) if guided and importlib.util.find_spec("llguidance") else frozenset()
        )
        logprobs = cls._token_logprobs is not BaseTextModel._token_logprobs
        return Capabilities(
            logprobs=logprobs,
            top_logprobs=MAX_TOP_LOGPROBS if logprobs else 0,
            logits=cls._classify_ids is not BaseTextModel._classify_ids,
            scoring=isinstance(self, Scorer),
            constraints=kinds,
            tools="grammar" in kinds,
            reasoning=THINK[0] in (self._chat_template or ""),
            seeded_sampling=True,
            parallel_streams=self._gate.width,
            context_length=self._info.context_length,
        )

    def _guide(self, constraint: Constraint | None, cancel: threading.Event | None = None) -> Any:
        """A fresh guide for ``constraint`` (None for none), in the caller's
        thread; ConstraintError, with llguidance's message or the limit it
        overran (compiled first in a bounded worker: inference.compile_guard),
        if it does not compile, or if ``cancel`` is set first."""
        if constraint is None:
            return None
        from . import guidance  # llguidance: only when a call is constrained

        grammar = guidance.grammar_for(constraint)
        compile_guard.check(grammar, self._constraint_limits, cancel)
        if self._lltokenizer is None:  # about a second, once per model
            self._lltokenizer = self._guidance_tokenizer()
        tokenizer = self._lltokenizer
        return guidance.guide(tokenizer, grammar, self._info.vocab_size or tokenizer.vocab_size)

    def _is_special(self, text: str) -> bool:
        """Whether ``text`` is one token of the vocabulary (a marker such as ``<tool_call>``)."""
        return len(self._encode(text, False)) == 1

    # -- the seams, over the engine primitives ------------------------------------

    def _generate(self, prompt: str, cfg: GenerateConfig) -> TokenStream:
        return self._stream(
            self._producer(prompt, cfg, self._add_bos, constraint=constraint_of(cfg)), cfg
        )

    def _chat(self, messages: list[Message], cfg: GenerateConfig) -> TokenStream:
        # The messages' text alone already too long for the context: refused
        # before the template renders them all.
        self._check_prompt_size("".join(m.content for m in messages))
        template = self._chat_template or ""
        plan = plan_chat(
            messages,
            cfg,
            template=template,
            takes_tools="tools" in template_takes(template),
            special=self._is_special,
            constrains="grammar" in self.capabilities.constraints,
        )
        # Message content is text: special-token text in it never becomes a
        # marker (a user's "<|im_end|>" cannot open a system turn).
        prompt = keep_content_literal(
            lambda ms: self._render_chat(ms, plan.variables), plan.messages, self._holds_markers
        )
        text = prompt if isinstance(prompt, str) else prompt.text
        add_bos = self._add_bos and not (self._bos_token and text.startswith(self._bos_token))
        constraint = plan.constraint or constraint_of(cfg)
        splitter = None
        if plan.tool_format is not None or plan.thinks:
            # A template that opens the reasoning block in the prompt
            # (DeepSeek-R1) starts the reply inside it, unless a constraint
            # holds the reply to its answer from the first token.
            opened = text.rfind("<think>")
            thinking = plan.thinks and opened >= 0 and text.find("</think>", opened) < 0
            splitter = ReplySplitter(
                plan.tool_format, thinks=plan.thinks, thinking=thinking and constraint is None
            )
        producer = self._producer(prompt, cfg, add_bos, constraint=constraint, splitter=splitter)
        return self._stream(producer, cfg)

    def _holds_markers(self, content: str) -> bool:
        """Whether ``content`` holds text the tokenizer would read as a
        special token (its tokens differ read literally)."""
        literal = self._encode_literal(content)
        return literal is not None and literal != self._encode(content, False)

    def _encode_prompt(self, prompt: str | Prompt, add_bos: bool) -> list[int]:
        """The prompt's token ids: a :class:`Prompt`'s literal parts as plain text."""
        if isinstance(prompt, str):
            return self._encode(prompt, add_bos)
        ids: list[int] = []
        for n, (text, literal) in enumerate(prompt.parts):
            if literal:
                ids += self._encode_literal(text) or []
            elif text or (n == 0 and add_bos):
                ids += self._encode(text, add_bos and n == 0)
        return ids

    def _classify(self, prompts: list[str], cfg: GenerateConfig) -> list[ClassifyResult]:
        if not self.capabilities.logits:  # no batched forward pass: decode one token each
            return self._classify_by_decoding(prompts, cfg)
        return self._run(lambda control: self._do_classify(prompts, cfg, control), cfg)

    def _batch_generate(self, prompts: list[str], cfg: GenerateConfig) -> list[BatchResult]:
        """Each prompt a sequence on the one decode path, as a stream of its
        own: up to the engine's width at once, decoded together with each
        other and with any other caller's streams."""
        self._refuse_if_held()
        constraint = constraint_of(cfg)
        producers = [self._producer(p, cfg, self._add_bos, constraint=constraint) for p in prompts]
        start = _perf()
        results = drain_many(producers, cfg, width=self._gate.width)
        self._record(None, batch_metrics(results, start, _perf(), memory=self._memory()))
        return results

    # -- Tokenizer ----------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS; special-token text is parsed."""
        self._check_open()
        return self._encode(text, False)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        self._check_open()
        return b"".join(self._token_bytes(i) for i in ids).decode("utf-8", "replace")

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Free the model. Idempotent; running calls are cancelled first, and
        waited for up to :data:`CLOSE_WAIT` seconds; one still running then (a
        stream nobody reads) frees the model as it ends."""
        if self._closed:
            return
        self._closed = True
        if self._gate.held_here():
            return  # inside our own stream: released when the last call ends
        for control in self._gate.controls():
            control.cancel()
        # The cancelled calls end within a token if anyone reads them. The
        # engine is freed now if none runs; else as the last one ends (the
        # gate's on_empty), so that a stream nobody reads any more does not
        # hold close() up.
        self._gate.wait_idle(CLOSE_WAIT)
        self._gate.if_idle(self._release_if_closed)
        if self._release_asked and self._engine is not None:
            self._engine.stop()  # wait for it: it frees its thread's state as it ends

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._info.path or self._info.architecture!r} {state}>"

    # -- machinery -----------------------------------------------------------

    def _release_once(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    def _release_if_closed(self) -> None:
        """Free the engine once the model is closed and no call runs (the
        gate runs this as its last holder leaves, and ``close()`` when none
        runs)."""
        if not self._closed or self._release_asked:
            return
        self._release_asked = True
        engine = self._engine
        if engine is None:
            self._release_once()
        else:  # the engine's memory belongs to its thread: free it there
            engine.submit(self._release_once)
            engine.stop(timeout=0)

    @contextlib.contextmanager
    def _hold(self, control: StreamControl, *, shared: bool = False) -> Iterator[None]:
        """Hold the gate, alone or (``shared``) beside other batched streams,
        waiting in a way that honours cancellation."""
        try:
            with self._gate.hold(control, shared=shared):
                if self._closed:
                    raise ModelClosedError("the model is closed")
                yield
        finally:
            engine = self._engine
            if self._release_asked and engine is not None and not engine.is_current():
                engine.stop()  # the last call out waits for the engine to be freed

    def _stream(self, producer: Producer, cfg: GenerateConfig) -> TokenStream:
        return TokenStream(producer, cancel=cfg.cancel, timeout=cfg.timeout, on_finish=self._record)

    def _producer(
        self,
        text: str | Prompt,
        cfg: GenerateConfig,
        add_bos: bool,
        *,
        constraint: Constraint | None = None,
        splitter: ReplySplitter | None = None,
    ) -> Producer:
        """The one decode path of a prompt, for a stream or one prompt of a
        batch: run in its reader's thread, holding the gate (beside other
        streams where the engine batches), its tokens from ``_generate_ids``."""
        guide = self._guide(constraint, cfg.cancel)  # a bad one fails here, before the stream
        markers = self._marker_bytes(splitter)

        def produce(control: StreamControl) -> Generator[Token, None, FinishReason]:
            control.guide = guide
            gen = self._produce(text, add_bos, cfg, control, markers)
            return gen if splitter is None else split_reply(gen, splitter, control)

        return produce

    def _produce(
        self,
        text: str | Prompt,
        add_bos: bool,
        cfg: GenerateConfig,
        control: StreamControl,
        markers: Mapping[int, bytes] | None = None,
    ) -> Generator[Token, None, FinishReason]:
        self._check_prompt_size(text if isinstance(text, str) else text.text)  # before the gate
        with self._hold(control, shared=self._batches):
            start = _perf()
            ids = self._check_prompt(self._encode_prompt(text, add_bos))
            return (yield from self._produce_ids(ids, cfg, control, start, markers))

    def _check_prompt_size(self, text: str) -> None:
        """Refuse, before tokenising it, a text that cannot fit the context:
        longer than the context times the longest token's bytes. (Tokenising
        with special-token parsing costs time quadratic in the markers a text
        holds: a text that could never fit is not worth any of it.)"""
        ctx = self._info.context_length
        if not ctx or len(text) * 4 <= ctx * self._bytes_per_token_bound():
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        limit = ctx * self._bytes_per_token_bound()
        if size > limit:
            raise GenerationError(
                f"the prompt has {size} bytes, more than its context of {ctx} tokens can hold "
                f"(at most {limit} bytes: {limit // ctx} a token); shorten it"
            )

    def _bytes_per_token_bound(self) -> int:
        """The most bytes of text one token can stand for (the longest piece
        of the vocabulary; worked out once). Engines whose special tokens'
        text differs from their piece override it."""
        if self._token_bound is None:
            vocab = self._info.vocab_size
            pieces = (len(self._token_bytes(i)) for i in range(vocab))
            self._token_bound = max(pieces, default=0) or 256
        return self._token_bound

    def _marker_bytes(self, splitter: ReplySplitter | None) -> dict[int, bytes] | None:
        """The ids of the reply's markers that are single tokens, with their
        text: such tokens are often control tokens whose text the engine
        does not show, and the splitter must see them."""
        if splitter is None:
            return None
        out: dict[int, bytes] = {}
        for marker in splitter.markers:
            ids = self._encode(marker, False)
            if len(ids) == 1:
                out[ids[0]] = marker.encode()
        return out or None

    def _check_prompt(self, ids: list[int]) -> list[int]:
        """Refuse an empty prompt or one that does not fit the context."""
        if not ids:
            raise GenerationError("the prompt is empty: it encodes to no tokens")
        ctx = self._info.context_length
        if ctx and len(ids) >= ctx:
            raise GenerationError(
                f"the prompt has {len(ids)} tokens but the context holds {ctx}; "
                "shorten it or load the model with a larger context_len"
            )
        return ids

    def _measure(
        self,
        prompt_tokens: int,
        generated: int,
        start: float,
        first: float,
        end: float,
        control: StreamControl | None = None,
    ) -> GenerateMetrics:
        return call_metrics(
            prompt_tokens,
            generated,
            start,
            first,
            end,
            memory=self._memory(),
            cached_tokens=control.cached_tokens if control is not None else 0,
            cache_tier=control.cache_tier if control is not None else "",
            drafted_tokens=control.drafted_tokens if control is not None else 0,
            accepted_tokens=control.accepted_tokens if control is not None else 0,
        )

    def _run(self, fn: Callable[[StreamControl], _T], cfg: GenerateConfig) -> _T:
        """Run a non-streaming call alone on the model (on its engine thread,
        if it has one), recording err and metrics."""
        control = StreamControl(cancel=cfg.cancel, timeout=cfg.timeout)
        engine = self._engine
        try:
            with self._hold(control):  # in this thread; the engine thread only works
                result = fn(control) if engine is None else engine.call(lambda: fn(control))
        except InferenceError as exc:
            self._record(exc, control.metrics)
            raise
        except Exception as exc:
            wrapped = GenerationError(f"{self.backend_name or 'the engine'} failed: {exc}")
            self._record(wrapped, control.metrics)
            raise wrapped from exc
        self._record(None, control.metrics)
        return result

    def _refuse_if_held(self) -> None:
        """A caller that holds an unfinished stream of this model and asks for
        a call that waits for others would wait for itself: refused."""
        if self._gate.held_here():
            raise GenerationError(HELD)

    def _classify_by_decoding(
        self, prompts: list[str], cfg: GenerateConfig
    ) -> list[ClassifyResult]:
        """Each prompt's next token from ``_generate_ids``, on the decode path
        a stream takes (up to the engine's width at once)."""
        self._refuse_if_held()
        one = replace(cfg, max_tokens=1)
        deadline = StreamControl(timeout=cfg.timeout).deadline
        start = _perf()

        def first(item: tuple[int, str]) -> ClassifyResult:
            i, prompt = item
            control = StreamControl(cancel=cfg.cancel, timeout=cfg.timeout)
            control.deadline = deadline
            with self._hold(control, shared=self._batches):
                try:
                    ids = self._check_prompt(self._encode(prompt, self._add_bos))
                except GenerationError as exc:
                    raise GenerationError(f"prompt {i}: {exc}") from exc
                engine = iter(self._generate_ids(ids, one, control))
                try:
                    tid = next(engine, None)
                finally:
                    _close(engine)
            if tid is None:
                control.check()
                raise GenerationError(f"prompt {i}: the engine gave no token")
            text = self._token_bytes(tid).decode("utf-8", "replace")
            return ClassifyResult(token=Token(tid, text), logits=None, prompt_tokens=len(ids))

        try:
            out = map_concurrently(first, list(enumerate(prompts)), self._gate.width)
        except InferenceError as exc:
            self._record(exc, None)
            raise
        end = _perf()
        prompt_tokens = sum(r.prompt_tokens for r in out)
        self._record(None, self._measure(prompt_tokens, len(out), start, end, end))
        return out

    def _do_classify(
        self, prompts: list[str], cfg: GenerateConfig, control: StreamControl
    ) -> list[ClassifyResult]:
        start = _perf()
        batch = []
        for i, prompt in enumerate(prompts):
            try:
                batch.append(self._check_prompt(self._encode(prompt, self._add_bos)))
            except GenerationError as exc:
                raise GenerationError(f"prompt {i}: {exc}") from exc
        control.check()
        picked = self._classify_ids(batch, cfg, control)
        end = _perf()
        total_prompt = sum(len(ids) for ids in batch)
        control.metrics = self._measure(total_prompt, len(batch), start, end, end)
        return [
            ClassifyResult(
                token=Token(tid, self._token_bytes(tid).decode("utf-8", "replace")),
                logits=logits,
                prompt_tokens=len(ids),
            )
            for (tid, logits), ids in zip(picked, batch, strict=True)
        ]

    def _produce_ids(
        self,
        ids: Sequence[int],
        cfg: GenerateConfig,
        control: StreamControl,
        start: float,
        markers: Mapping[int, bytes] | None = None,
    ) -> Generator[Token, None, FinishReason]:
        """The per-token loop: stop tokens, stop strings, max_tokens, checks,
        the end of a constraint.

        The caller holds the lock; ``start`` is when the call began;
        ``markers`` gives the text of tokens the engine would not show.
        """
        if cfg.max_tokens == 0:
            control.metrics = self._measure(len(ids), 0, start, start, _perf())
            return "length"
        if control.stop_requested():  # cancelled or out of time before it began
            control.metrics = self._measure(len(ids), 0, start, start, _perf())
            control.check()
        stop_ids = self._eog_ids | frozenset(cfg.stop_tokens)
        asm = TextAssembler(cfg.stop)
        push: Callable[[int, bytes], list[Token]] = asm.push
        flush: Callable[[], list[Token]] = asm.flush
        if cfg.logprobs is not None:
            push, flush = self._with_logprobs(asm, cfg.logprobs)
        token_bytes: Callable[[int], bytes] = self._token_bytes
        if markers:
            plain = token_bytes

            def token_bytes(tid: int) -> bytes:
                return markers.get(tid) or plain(tid)

        guide = control.guide
        # A batching engine consumes tokens on its own thread, ahead of this
        # reader, and ends the sequence itself when its constraint is
        # complete: the guide is read once the sequence has ended. An engine
        # that runs in this thread is watched token by token.
        watch_guide = guide is not None and not self._batches
        stop_requested = control.stop_requested
        max_tokens = cfg.max_tokens
        n = 0
        first = 0.0
        reason: FinishReason = "length"
        engine = self._generate_ids(ids, cfg, control)
        try:
            for tid in engine:
                n += 1
                if n == 1:
                    first = _perf()
                if tid in stop_ids:
                    reason = "stop"
                    break
                yield from push(tid, token_bytes(tid))
                if asm.stopped or (watch_guide and guide.stopped):
                    reason = "stop"
                    break
                if n >= max_tokens:  # the engine gives no more: its state is final
                    reason = "stop" if guide is not None and guide.stopped else "length"
                    break
                if stop_requested():
                    control.check()
            else:  # the engine ended the sequence
                if guide is not None and guide.stopped:
                    reason = "stop"
        finally:
            _close(engine)
            control.metrics = self._measure(len(ids), n, start, first or _perf(), _perf(), control)
        if asm.stopped:
            control.stop_sequence = asm.matched
        else:
            yield from flush()
        return reason

    def _with_logprobs(
        self, asm: TextAssembler, k: int
    ) -> tuple[Callable[[int, bytes], list[Token]], Callable[[], list[Token]]]:
        """``asm.push`` and ``asm.flush`` that give each token its
        log-probabilities, from ``_token_logprobs``."""
        tagged = LogprobAssembler(asm, k)
        token_bytes = self._token_bytes

        def push(token_id: int, data: bytes) -> list[Token]:
            chosen, top = self._token_logprobs(token_id, k)
            alternatives = tuple(
                TokenLogprob(i, token_bytes(i).decode("utf-8", "replace"), lp) for i, lp in top
            )
            return tagged.push(token_id, data, chosen, alternatives)

        return push, tagged.flush


def _lookup(tokens: Collection[str]) -> Collection[str]:
    """``tokens`` in a form with a fast ``in``."""
    return tokens if isinstance(tokens, (set, frozenset, Mapping)) else frozenset(tokens)


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()
