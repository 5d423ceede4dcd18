"""The conformance suite every backend runs: one class, or one call.

With pytest, subclass it and say how to load your model::

    from inference.testing import TextModelConformance

    class TestMyBackend(TextModelConformance):
        @classmethod
        def make_model(cls):
            return inference.load_model(PATH, backend="mine")

Or run every check with one call, from any test runner::

    from inference.testing import run_conformance
    run_conformance(lambda: inference.load_model(PATH, backend="mine"))

One model is loaded per class and closed at the end (the close checks load a
fresh one). The checks ask for few tokens, so a slow engine on a CPU still
runs them in seconds. What each check expects comes from the model's own
``capabilities``: what it states it does must work, and what it does not
must be refused with :class:`~inference.UnsupportedOptionError` before the
first token. Class attributes tune only the prompts, lengths and tolerances.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from ..capabilities import Capabilities
from ..constraints import KINDS
from ..errors import (
    Cancelled,
    DeadlineExceeded,
    GenerationError,
    InferenceError,
    ModelClosedError,
    UnsupportedOptionError,
)
from ..options import with_max_tokens, with_stop, with_temperature
from ..protocols import Scorer, TextModel, Tokenizer
from ..stream import TokenStream
from ..types import BatchResult, ClassifyResult, GenerateMetrics, Message, Token, ToolCall
from .threads import cancel_after, together, wait_for

__all__ = ["TextModelConformance", "run_conformance"]


class TextModelConformance:
    """Checks that a :class:`~inference.TextModel` keeps the contract."""

    #: A prompt with an obvious greedy continuation.
    prompt: ClassVar[str] = "Count: one, two, three,"
    #: A second, different prompt.
    other_prompt: ClassVar[str] = "The capital of France is"
    #: Tokens per generation in most checks.
    max_tokens: ClassVar[int] = 6
    #: Threads in the concurrency check.
    threads: ClassVar[int] = 8
    #: Tokens within which the model ends a short chat answer by itself
    #: (0: it never does, as a fake that repeats its reply forever).
    eos_within: ClassVar[int] = 64
    #: How far ``score()`` may be from the streamed log-probabilities of the
    #: same tokens (engines batch differently when scoring).
    logprob_tolerance: ClassVar[float] = 1e-3
    #: For a model set to check every guess it is offered: prompts on which
    #: it checks some and keeps some within twice ``max_tokens`` tokens, one
    #: for each source of guesses it has (prompt lookup's a prompt that
    #: repeats itself, a draft model's one it is sure how to go on with);
    #: () checks only that the output is unchanged.
    guessing_prompts: ClassVar[tuple[str, ...]] = ()
    _model: ClassVar[TextModel | None] = None

    @classmethod
    def make_model(cls) -> TextModel:
        """Load the model under test. Override this."""
        raise NotImplementedError("override make_model() to load your model")

    @classmethod
    def setup_class(cls) -> None:
        cls._model = None

    @classmethod
    def teardown_class(cls) -> None:
        if cls._model is not None:
            cls._model.close()
            cls._model = None

    @property
    def model(self) -> TextModel:
        cls = type(self)
        if cls._model is None:
            cls._model = cls.make_model()
        return cls._model

    @property
    def caps(self) -> Capabilities:
        return self.model.capabilities

    def _refused(self, option: str, call: Callable[[], object]) -> None:
        """``call`` must raise UnsupportedOptionError naming ``option``
        before any token, and leave the model usable."""
        try:
            call()
        except UnsupportedOptionError as exc:
            assert exc.option == option, (exc.option, option)
            assert exc.backend, "the refusal names no backend"
        else:
            raise AssertionError(f"{option}= is not in the capabilities, so it must be refused")
        assert self._greedy(self.prompt, 1)  # still usable

    def _greedy(self, prompt: str | None = None, n: int | None = None) -> list[Token]:
        stream = self.model.generate(prompt or self.prompt, max_tokens=n or self.max_tokens)
        return list(stream)

    # -- streaming -------------------------------------------------------

    def test_is_text_model(self) -> None:
        assert isinstance(self.model, TextModel)
        assert isinstance(self.model.model_type, str) and self.model.model_type
        assert self.model.info.architecture == self.model.model_type

    def test_streams_tokens(self) -> None:
        stream = self.model.generate(self.prompt, max_tokens=self.max_tokens)
        assert isinstance(stream, TokenStream)
        tokens = list(stream)
        assert 0 < len(tokens) <= self.max_tokens
        for tok in tokens:
            assert isinstance(tok, Token)
            assert isinstance(tok.id, int) and isinstance(tok.text, str)
            if self.caps.token_ids:
                assert tok.id >= 0
        assert "".join(t.text for t in tokens).strip(), "the stream produced no text"
        assert stream.finish_reason in ("stop", "length")
        assert stream.err is None

    def test_greedy_is_deterministic(self) -> None:
        first = self._greedy()
        second = self._greedy()
        assert [t.id for t in first] == [t.id for t in second]
        assert "".join(t.text for t in first) == "".join(t.text for t in second)

    def test_text_matches_tokens(self) -> None:
        tokens = self._greedy()
        text = self.model.generate(self.prompt, max_tokens=self.max_tokens).text()
        assert text == "".join(t.text for t in tokens)

    def test_options_and_keywords_agree(self) -> None:
        by_kw = self.model.generate(self.prompt, max_tokens=3, temperature=0.0).text()
        by_opt = self.model.generate(self.prompt, with_max_tokens(3), with_temperature(0.0)).text()
        assert by_kw == by_opt

    def test_unknown_keyword_is_type_error(self) -> None:
        try:
            self.model.generate(self.prompt, max_tokenz=3)
        except TypeError as exc:
            assert "max_tokens" in str(exc), "the error should list the valid names"
        else:
            raise AssertionError("an unknown keyword must raise TypeError")

    def test_max_tokens(self) -> None:
        for n in (1, 3):
            stream = self.model.generate(self.prompt, max_tokens=n)
            tokens = list(stream)
            assert len(tokens) <= n
            if stream.finish_reason == "length":
                assert stream.metrics is not None
                assert stream.metrics.generated_tokens == n

    def test_capabilities_are_data(self) -> None:
        caps = self.caps
        assert isinstance(caps, Capabilities)
        assert caps is self.model.capabilities  # fixed at load
        assert caps.generate
        assert caps.constraints <= set(KINDS)
        assert caps.parallel_streams >= 1
        assert caps.context_length == self.model.info.context_length
        assert caps.top_logprobs >= (1 if caps.logprobs else 0)
        assert isinstance(self.model, Scorer) == caps.scoring
        assert json.loads(json.dumps(caps.as_dict()))["constraints"] == [
            k for k in KINDS if k in caps.constraints
        ]

    def test_seed_repeats_sampling(self) -> None:
        if not self.caps.seeded_sampling:
            return
        a = self.model.generate(
            self.prompt, max_tokens=self.max_tokens, temperature=1.0, seed=7
        ).text()
        b = self.model.generate(
            self.prompt, max_tokens=self.max_tokens, temperature=1.0, seed=7
        ).text()
        assert a == b

    def test_stop_string_is_not_emitted(self) -> None:
        full = self.model.generate(self.prompt, max_tokens=self.max_tokens).text()
        stripped = full.strip()
        if len(stripped) < 4:
            raise AssertionError(f"greedy output too short to test stop strings: {full!r}")
        # Stop on a piece from the middle of the output.
        start = full.index(stripped) + len(stripped) // 2
        stop = full[start : start + 2]
        stream = self.model.generate(self.prompt, with_max_tokens(self.max_tokens), with_stop(stop))
        text = stream.text()
        assert stop not in text
        assert text == full[: full.index(stop)]
        assert stream.finish_reason == "stop"
        # The stream says which stop string ended it (the earliest of several);
        # a server that does not say gives None, never a wrong one.
        never = "\x00never\x00"
        stream = self.model.generate(self.prompt, max_tokens=self.max_tokens, stop=[never, stop])
        stream.text()
        assert stream.stop_sequence in (stop, None)
        if self.model.info.backend != "openai":
            assert stream.stop_sequence == stop
        ended = self.model.generate(self.prompt, max_tokens=2, stop=[never])
        ended.text()
        assert ended.finish_reason == "length" and ended.stop_sequence is None

    # -- chat --------------------------------------------------------------

    def test_chat(self) -> None:
        stream = self.model.chat(
            [
                Message("user", "Say hello."),
                {"role": "assistant", "content": "Hello!"},
                Message("user", "Again."),
            ],
            max_tokens=self.max_tokens,
        )
        assert stream.text()
        assert stream.finish_reason in ("stop", "length")

    def test_chat_rejects_bad_messages(self) -> None:
        for bad in ([], [{"role": "wizard", "content": "x"}], [{"role": "user"}]):
            try:
                self.model.chat(bad, max_tokens=1)
            except ValueError:
                continue
            raise AssertionError(f"chat({bad!r}) must raise ValueError")

    # -- classify and batches ----------------------------------------------

    def test_classify(self) -> None:
        prompts = [self.prompt, self.other_prompt]
        results = self.model.classify(prompts)
        assert len(results) == 2
        for res, prompt in zip(results, prompts, strict=True):
            assert isinstance(res, ClassifyResult)
            assert res.logits is None
            first = self._greedy(prompt, 1)
            if first:
                assert res.token.id == first[0].id
                assert res.token.text == first[0].text or not self.caps.token_ids

    def test_classify_logits(self) -> None:
        if not self.caps.logits:
            self._refused(
                "return_logits", lambda: self.model.classify([self.prompt], return_logits=True)
            )
            return
        (res,) = self.model.classify([self.prompt], return_logits=True)
        assert res.logits is not None
        logits = list(res.logits)
        if self.model.info.vocab_size:
            assert len(logits) >= self.model.info.vocab_size
        assert max(range(len(logits)), key=logits.__getitem__) == res.token.id

    def test_batch_generate(self) -> None:
        prompts = [self.prompt, self.other_prompt, self.prompt]
        results = self.model.batch_generate(prompts, max_tokens=self.max_tokens)
        assert len(results) == 3
        for res in results:
            assert isinstance(res, BatchResult)
            assert res.err is None, res.err
            assert res.finish_reason in ("stop", "length")
            assert 0 < len(res.tokens) <= self.max_tokens
            assert res.text == "".join(t.text for t in res.tokens)
        single = self._greedy(self.prompt)
        assert results[0].tokens[0].id == single[0].id
        assert results[0].text == results[2].text

    def test_batch_of_one_or_with_logprobs_equals_generate(self) -> None:
        """A batch of one prompt, or one asking for log-probabilities, gives
        each prompt what a stream of it gives."""
        alone = [t.text for t in self._greedy(self.prompt)]
        (one,) = self.model.batch_generate([self.prompt], max_tokens=self.max_tokens)
        assert one.err is None, one.err
        assert [t.text for t in one.tokens] == alone
        if self.caps.logprobs:
            first, second = self.model.batch_generate(
                [self.prompt, self.other_prompt], max_tokens=self.max_tokens, logprobs=2
            )
            assert first.err is None and second.err is None, (first.err, second.err)
            assert [t.text for t in first.tokens] == alone
            assert all(t.logprob is not None and len(t.top_logprobs) == 2 for t in first.tokens)

    def test_batch_keeps_errors_per_prompt(self) -> None:
        ctx = self.model.info.context_length
        if not ctx or ctx > 32768:
            return
        too_long = " a" * (ctx + 64)
        results = self.model.batch_generate([self.prompt, too_long], max_tokens=2)
        assert results[0].err is None and results[0].text
        assert results[1].err is not None and results[1].finish_reason == "error"

    # -- stopping ------------------------------------------------------------

    def test_cancel_mid_stream_then_reuse(self) -> None:
        expected = self.model.generate(self.prompt, max_tokens=3).text()
        stream = self.model.generate(self.prompt, max_tokens=10_000)
        got = cancel_after(stream, 2)
        assert 2 <= len(got) <= 4, f"cancel took effect after {len(got)} tokens"
        assert stream.finish_reason == "cancelled"
        assert isinstance(stream.err, Cancelled)
        assert self.model.generate(self.prompt, max_tokens=3).text() == expected

    def test_break_releases_model(self) -> None:
        for _tok in self.model.generate(self.prompt, max_tokens=10_000):
            break
        # A stream abandoned with break must not block the next call.
        done = threading.Event()
        out: list[str] = []

        def other() -> None:
            out.append(self.model.generate(self.prompt, max_tokens=2).text())
            done.set()

        threading.Thread(target=other, daemon=True).start()
        assert done.wait(120), "the model stayed locked after break"
        assert out[0]

    def test_second_stream_on_the_same_thread(self) -> None:
        """A thread that holds an unfinished stream and opens another on the
        same model gets GenerationError (never a hang), and the model stays
        usable. Run in a worker, so that a backend that hangs fails here."""
        outcome: dict[str, Any] = {}

        def body() -> None:
            first = self.model.generate(self.prompt, max_tokens=10_000)
            next(first)
            try:
                second = self.model.generate(self.other_prompt, max_tokens=2)
                try:
                    second.text()
                    outcome["second"] = "no error"
                except GenerationError as exc:
                    outcome["second"] = exc
                    outcome["err"] = second.err
            finally:
                first.close()
            outcome["after"] = self.model.generate(self.prompt, max_tokens=2).text()

        worker = threading.Thread(target=body, daemon=True)
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), "a second stream on the same thread hung"
        assert isinstance(outcome.get("second"), GenerationError), outcome.get("second")
        assert outcome["err"] is outcome["second"]
        assert outcome["after"]

    def test_cancel_event_option(self) -> None:
        event = threading.Event()
        event.set()
        stream = self.model.generate(self.prompt, max_tokens=10_000, cancel=event)
        tokens = list(stream)
        assert len(tokens) <= 1
        assert stream.finish_reason == "cancelled"

    def test_timeout(self) -> None:
        stream = self.model.generate(self.prompt, max_tokens=10_000, timeout=1e-6)
        tokens = list(stream)
        assert len(tokens) <= 1
        assert stream.finish_reason == "cancelled"
        assert isinstance(stream.err, DeadlineExceeded)
        assert isinstance(stream.err, TimeoutError)
        assert isinstance(self.model.err, DeadlineExceeded)
        assert self.model.generate(self.prompt, max_tokens=2).text()
        assert self.model.err is None

    def test_close_stream_early(self) -> None:
        stream = self.model.generate(self.prompt, max_tokens=10_000)
        next(stream)
        stream.close()
        assert stream.finish_reason == "cancelled"
        assert self.model.generate(self.prompt, max_tokens=2).text()

    def test_async_iteration(self) -> None:
        async def collect() -> str:
            parts = []
            async for tok in self.model.generate(self.prompt, max_tokens=self.max_tokens):
                parts.append(tok.text)
            return "".join(parts)

        expected = self.model.generate(self.prompt, max_tokens=self.max_tokens).text()
        assert asyncio.run(collect()) == expected

    def test_async_task_cancel(self) -> None:
        async def run() -> TokenStream:
            stream = self.model.generate(self.prompt, max_tokens=10_000)
            started = asyncio.Event()

            async def consume() -> None:
                async for _ in stream:
                    started.set()

            task = asyncio.create_task(consume())
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({task, waiter}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():  # a stream that failed before its first token fails at once
                task.result()
                raise AssertionError("the stream of 10,000 tokens ended by itself")
            assert started.is_set(), "no token within 120 s"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return stream

        stream = asyncio.run(run())
        assert stream.finish_reason == "cancelled"
        assert self.model.generate(self.prompt, max_tokens=2).text()

    # -- threads ---------------------------------------------------------------

    def test_concurrent_calls(self) -> None:
        expected = self.model.generate(self.prompt, max_tokens=4).text()
        results = together(
            [lambda: self.model.generate(self.prompt, max_tokens=4).text()] * self.threads
        )
        assert results == [expected] * self.threads, results

    def test_classify_beside_a_running_stream(self) -> None:
        """``classify`` from another thread while a stream runs gives what it
        gives alone, and the stream goes on undisturbed: an in-process engine
        (which clears its cache for it) queues it behind the stream."""
        prompts = [self.prompt, self.other_prompt]
        expected = [r.token.id for r in self.model.classify(prompts)]
        alone = self.model.generate(self.prompt, max_tokens=self.max_tokens).text()
        out: list[list[ClassifyResult]] = []
        with self.model.generate(self.prompt, max_tokens=self.max_tokens) as stream:
            first = next(stream)
            worker = threading.Thread(target=lambda: out.append(self.model.classify(prompts)))
            worker.start()
            gate = getattr(self.model, "_gate", None)
            if gate is not None:
                wait_for(lambda: gate.waiting == 1, "classify to queue behind the stream")
                assert not out
            rest = "".join(t.text for t in stream)
        worker.join(300)
        assert first.text + rest == alone
        assert out and [r.token.id for r in out[0]] == expected

    def test_concurrent_streams_equal_their_sequential_runs(self) -> None:
        """``threads`` calls at once, each with its own prompt and options
        (greedy or seeded sampling, stop strings, lengths, chat or raw), give
        each exactly what it gives alone."""
        prompts = [self.prompt, self.other_prompt, "Once upon a time", "def add(a, b):"]

        def call(i: int) -> str:
            options: dict[str, Any] = {"max_tokens": 3 + i % 4}
            if self.caps.seeded_sampling and i % 2:
                options.update(temperature=0.8, seed=100 + i)
            if i % 3 == 2:
                options["stop"] = ["\n"]
            prompt = prompts[i % len(prompts)]
            if i % 4 == 3:
                return self.model.chat([Message("user", prompt)], **options).text()
            return self.model.generate(prompt, **options).text()

        alone = [call(i) for i in range(self.threads)]
        at_once = together([functools.partial(call, i) for i in range(self.threads)])
        assert at_once == alone

    def test_speculation_changes_no_output(self) -> None:
        """A model that decodes speculatively gives, greedy (and with a
        seed), exactly the tokens it gives with speculation off, and counts
        its guesses; one that does not refuses to be asked for it, and
        takes its being turned off."""
        prompt = "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Again: 1, 2, 3, 4,"
        if not self.caps.speculative:
            self._refused("speculative", lambda: self.model.generate(prompt, speculative=True))
            self._refused("draft_max", lambda: self.model.generate(prompt, draft_max=4))
            text = self.model.generate(prompt, max_tokens=4, speculative=False).text()
            assert text == self.model.generate(prompt, max_tokens=4).text()
            return
        runs: list[dict[str, Any]] = [{}]
        if self.caps.seeded_sampling:
            runs.append({"temperature": 0.8, "seed": 11})
        for options in runs:
            on = self.model.generate(prompt, max_tokens=24, **options)
            with_guesses = [(t.id, t.text) for t in on]
            off = self.model.generate(prompt, max_tokens=24, speculative=False, **options)
            assert with_guesses == [(t.id, t.text) for t in off], options
            m, m_off = on.metrics, off.metrics
            assert m is not None and m_off is not None
            assert 0 <= m.accepted_tokens <= m.drafted_tokens
            assert m_off.drafted_tokens == m_off.accepted_tokens == 0
        for prompt in self.guessing_prompts:
            stream = self.model.generate(prompt, max_tokens=2 * self.max_tokens)
            assert stream.text()
            m = stream.metrics
            assert m is not None and 0 < m.accepted_tokens <= m.drafted_tokens, prompt

    # -- errors, metrics, lifecycle ---------------------------------------------

    def test_errors_surface(self) -> None:
        try:
            self.model.generate(123)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            raise AssertionError("a non-str prompt must raise TypeError")
        ctx = self.model.info.context_length
        if ctx and ctx <= 32768:
            stream = self.model.generate(" a" * (ctx + 64), max_tokens=2)
            try:
                stream.text()
            except GenerationError as exc:
                assert stream.err is exc
                assert self.model.err is exc
                assert stream.finish_reason == "error"
            else:
                raise AssertionError("a prompt longer than the context must fail")
        assert self.model.generate(self.prompt, max_tokens=2).text()
        assert self.model.err is None

    def test_metrics(self) -> None:
        stream = self.model.generate(self.prompt, max_tokens=self.max_tokens)
        assert stream.metrics is None
        tokens = list(stream)
        m = stream.metrics
        assert isinstance(m, GenerateMetrics)
        assert m.prompt_tokens > 0
        assert m.generated_tokens >= len(tokens) > 0
        assert m.total_seconds > 0 and m.time_to_first_token > 0
        assert m.total_seconds >= m.time_to_first_token
        assert self.model.metrics == m

    def test_tokenizer_capability(self) -> None:
        if not isinstance(self.model, Tokenizer):
            return
        ids = self.model.encode("Hello, world!")
        assert ids and all(isinstance(i, int) for i in ids)
        assert self.model.decode(ids) == "Hello, world!"

    # -- probabilities -------------------------------------------------------

    def test_tokens_carry_no_logprobs_unless_asked(self) -> None:
        for tok in self._greedy(self.prompt, 2):
            assert tok.logprob is None and tok.top_logprobs == ()
            assert tok == Token(tok.id, tok.text)

    def test_logprobs_option(self) -> None:
        if not self.caps.logprobs:
            self._refused("logprobs", lambda: self.model.generate(self.prompt, logprobs=2))
            self._refused("logprobs", lambda: self.model.batch_generate([self.prompt], logprobs=0))
            return
        if self.caps.top_logprobs < 20:
            too_many = self.caps.top_logprobs + 1
            self._refused("logprobs", lambda: self.model.generate(self.prompt, logprobs=too_many))
        tokens = list(self.model.generate(self.prompt, max_tokens=self.max_tokens, logprobs=3))
        assert tokens
        greedy = self._greedy(self.prompt)
        assert [t.text for t in tokens] == [t.text for t in greedy]  # asking changes nothing
        for tok in tokens:
            assert tok.logprob is not None and tok.logprob <= 1e-6
            assert len(tok.top_logprobs) == 3
            values = [alt.logprob for alt in tok.top_logprobs]
            assert values == sorted(values, reverse=True)
            # Greedy picks the most likely token, which is the first alternative.
            assert abs(values[0] - tok.logprob) <= self.logprob_tolerance
            if self.caps.token_ids and self.caps.alternative_ids:
                assert tok.top_logprobs[0].id == tok.id
        (zero,) = list(self.model.generate(self.prompt, max_tokens=1, logprobs=0))
        assert zero.logprob is not None and zero.top_logprobs == ()

    def test_logprobs_when_a_stop_string_ends_the_generation(self) -> None:
        """The generation ends on a stop string: every token given has its
        log-probability, and the text is the greedy text before the stop."""
        if not self.caps.logprobs:
            return
        greedy = self._greedy(self.prompt)
        text = "".join(t.text for t in greedy)
        stop = greedy[-1].text.strip() or greedy[-1].text
        if not stop or text.index(stop) == 0:
            return  # no stop string that ends it part-way
        stream = self.model.generate(
            self.prompt, max_tokens=self.max_tokens, stop=[stop], logprobs=1
        )
        tokens = list(stream)
        assert stream.finish_reason == "stop"
        assert "".join(t.text for t in tokens) == text[: text.index(stop)]
        assert all(t.logprob is not None and len(t.top_logprobs) == 1 for t in tokens)

    def test_logprobs_when_the_model_ends_the_generation(self) -> None:
        """The model ends by itself (its end-of-text token): every token given
        has its log-probability, and the end token is not among them."""
        if not self.caps.logprobs or not self.eos_within:
            return
        ask = [Message("user", "Say hello.")]
        stream = self.model.chat(ask, max_tokens=self.eos_within, logprobs=1)
        tokens = list(stream)
        assert stream.finish_reason == "stop", "the model did not end within eos_within tokens"
        assert tokens and all(t.logprob is not None for t in tokens)
        plain = self.model.chat(ask, max_tokens=self.eos_within)
        assert "".join(t.text for t in tokens) == plain.text()

    def test_scorer_capability(self) -> None:
        model = self.model
        assert isinstance(model, Scorer) == self.caps.scoring
        if not isinstance(model, Scorer):
            return
        tokens = list(self.model.generate(self.prompt, max_tokens=self.max_tokens, logprobs=0))
        text = "".join(t.text for t in tokens)
        result = model.score(self.prompt, text)
        assert result.is_greedy
        assert abs(result.total - sum(r for r in result.logprobs)) < 1e-9
        if self.caps.logprobs and len(result.logprobs) == len(tokens):
            streamed = sum(t.logprob or 0.0 for t in tokens)
            assert abs(result.total - streamed) <= self.logprob_tolerance * len(tokens)
        wrong = model.score(self.prompt, " zebra zebra")
        assert not wrong.is_greedy and wrong.total < result.total
        assert all(lp <= 1e-6 for lp in wrong.logprobs)
        batch = model.score_batch([(self.prompt, text), (self.other_prompt, " zebra")])
        assert abs(batch[0].total - result.total) <= self.logprob_tolerance * len(tokens)
        assert batch[1].logprobs and not batch[1].is_greedy
        assert model.score_batch([]) == []
        rolling = model.score_rolling(self.prompt + text)
        assert rolling.tokens > 0 and rolling.total < 0 and rolling.perplexity > 1

    # -- structured output and tools -------------------------------------------

    #: One value of each constraint kind, and the pattern its output must match.
    _CONSTRAINTS: ClassVar[dict[str, tuple[Any, str]]] = {
        "json_schema": (
            {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            "",
        ),
        "json_object": (True, ""),
        "regex": (r"[0-9]{3}", r"[0-9]{3}"),
        "choice": (["yes", "no"], r"yes|no"),
        "grammar": ('start: "A" | "B"', r"A|B"),
    }

    def test_constraints_capability(self) -> None:
        accepted = self.caps.constraints
        messages = [Message("user", "Answer with three digits, or yes or no, or JSON.")]
        for kind, (value, pattern) in self._CONSTRAINTS.items():
            if kind not in accepted:
                self._refused(kind, functools.partial(self.model.chat, messages, **{kind: value}))
                continue
            max_tokens = 48 if kind.startswith("json") else 8
            stream = self.model.chat(messages, max_tokens=max_tokens, **{kind: value})
            text = stream.text()
            if pattern:
                assert re.fullmatch(pattern, text), f"{kind}: {text!r} does not match"
            elif stream.finish_reason == "stop":
                assert isinstance(json.loads(text), dict), f"{kind}: {text!r}"
        assert self._greedy(self.prompt, 1)  # still usable

    def test_embed_and_rerank_capabilities(self) -> None:
        """A model that embeds gives unit vectors of its dimensions, the same
        for the same text, and ranks a near copy of the query first; one that
        does not refuses both, and stays usable."""
        model: Any = self.model
        texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A cat sat."]
        if not self.caps.embed:
            self._refused("embed", lambda: model.embed(texts))
        else:
            got = model.embed(texts)
            dims = self.caps.embedding_dimensions
            assert got.dimensions == dims and len(got.vectors) == len(texts)
            for v in got.vectors:
                assert len(v) == dims and abs(sum(x * x for x in v) - 1.0) < 1e-3
            again = model.embed(texts[0]).vectors[0]
            assert max(abs(a - b) for a, b in zip(again, got.vectors[0], strict=True)) < 1e-4
            assert len(model.embed([])) == 0
            short = model.embed(texts[0], dimensions=min(8, dims))
            assert short.dimensions == min(8, dims)
        if not self.caps.rerank:
            self._refused("rerank", lambda: model.rerank(texts[0], texts[1:]))
            return
        ranking = model.rerank(texts[0], [texts[1], texts[0]])
        assert [r.index for r in ranking] == [1, 0], ranking
        assert ranking.method in ("classifier", "cosine")

    def test_tool_calls(self) -> None:
        weather = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 40}},
                    "required": ["city"],
                },
            },
        }
        ask = [Message("user", "What is the weather in Paris?")]
        if not self.caps.tools:
            self._refused(
                "tool_choice",
                lambda: self.model.chat(ask, tools=[weather], tool_choice="required"),
            )
            stream = self.model.chat(ask, tools=[weather], max_tokens=8)  # offered, not held
            stream.text()
            assert all(isinstance(c, ToolCall) for c in stream.tool_calls)
            return
        stream = self.model.chat(ask, tools=[weather], tool_choice="required", max_tokens=48)
        assert stream.tool_calls == ()  # not before the end
        text = stream.text()
        calls: tuple[ToolCall, ...] = stream.tool_calls
        assert calls, f"tool_choice='required' gave no call (text {text!r})"
        call = calls[0]
        assert isinstance(call, ToolCall) and call.name == "get_weather" and call.id
        assert isinstance(call.arguments.get("city"), str)
        # The conversation goes on with the call and its result.
        history = [
            *ask,
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", "18 degrees and sunny", tool_call_id=call.id),
        ]
        reply = self.model.chat(history, tools=[weather], tool_choice="none", max_tokens=8)
        reply.text()
        assert reply.finish_reason in ("stop", "length") and reply.tool_calls == ()

    def test_close_twice_and_use_after_close(self) -> None:
        model = type(self).make_model()
        with model:
            assert model.generate(self.prompt, max_tokens=1).text() is not None
        model.close()
        for call in (
            lambda: model.generate(self.prompt),
            lambda: model.chat([Message("user", "hi")]),
            lambda: model.classify([self.prompt]),
            lambda: model.batch_generate([self.prompt]),
        ):
            try:
                call()
            except ModelClosedError:
                continue
            raise AssertionError("a closed model must raise ModelClosedError")


def run_conformance(make_model: Callable[[], TextModel], **settings: Any) -> list[str]:
    """Run every check against models from ``make_model``; return their names.

    ``settings`` override the class attributes (``max_tokens=4``...). The
    first failing check raises its AssertionError (or error) with its name.
    """
    suite: type[TextModelConformance] = type(
        "Conformance",
        (TextModelConformance,),
        {"make_model": classmethod(lambda cls: make_model()), **settings},
    )
    names = sorted(n for n in dir(suite) if n.startswith("test_"))
    suite.setup_class()
    try:
        case = suite()
        for name in names:
            try:
                getattr(case, name)()
            except (AssertionError, InferenceError, Exception) as exc:
                raise AssertionError(f"conformance check {name} failed: {exc!r}") from exc
    finally:
        suite.teardown_class()
    return names
