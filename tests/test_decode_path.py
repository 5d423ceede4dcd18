"""One decode path: streams and every prompt of ``batch_generate`` are
sequences of the one scheduler, on a toy batching engine (the real engines'
own tests run the same checks on llama.cpp and MLX)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from inference import Capabilities, GenerationError, ModelInfo, UnsupportedOptionError
from inference.base import BaseTextModel, drain_many, map_concurrently
from inference.batching import Logprobs, Scheduler
from inference.batching import Sequence as Seq
from inference.options import GenerateConfig, generate_config
from inference.stream import StreamControl
from inference.testing import together, wait_for
from inference.testing.fake import ByteTokens
from inference.types import Token

WIDTH = 3


class _Steps(Scheduler):
    """Each step gives every ready sequence one token: a letter chosen by
    the sum of its tokens so far, so a sequence's text depends on its own
    prompt only, never on its neighbours."""

    def __init__(self, model: _Toy) -> None:
        super().__init__(name="toy", engine=model._engine)
        self.admitted = 0
        #: Cleared, the loop waits in its next step (so newcomers queue up).
        self.go = threading.Event()
        self.go.set()

    def waiting(self) -> int:
        with self._cond:
            return len(self._inbox)

    def _admit(self, seq: Seq) -> bool:
        if len(self._running) >= WIDTH:
            return False
        seq.state = list(seq.prompt)
        self.admitted += 1
        return True

    def _step(self, ready: list[Seq]) -> None:
        self.go.wait(60)
        for seq in ready:
            tok = 97 + sum(seq.state) % 26
            seq.state.append(tok)
            lp: Logprobs | None = None
            if seq.logprobs is not None:
                lp = (-0.5, [(tok, -0.5), (32, -1.5)][: seq.logprobs])
            seq.give(tok, lp)


class _Toy(ByteTokens, BaseTextModel):
    backend_name = "toy"

    def __init__(self) -> None:
        super().__init__(
            info=ModelInfo(architecture="toy", context_length=256, backend="toy"),
            engine_thread=True,
            stream_width=WIDTH,
        )
        self.steps = _Steps(self)

    def _generate_ids(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl
    ) -> Iterator[int]:
        yield from self.steps.generate(
            ids,
            control,
            limit=cfg.max_tokens,
            stop_ids=frozenset(cfg.stop_tokens),
            logprobs=cfg.logprobs,
        )

    def _token_logprobs(self, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        return self.steps.last_logprobs()

    def _release(self) -> None:
        self.steps.close()


@pytest.fixture
def toy() -> Iterator[_Toy]:
    model = _Toy()
    yield model
    model.close()


PROMPTS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]


def test_batch_generate_is_sequences_of_the_scheduler(toy: _Toy) -> None:
    alone = [toy.generate(p, max_tokens=6).text() for p in PROMPTS]
    admitted, steps = toy.steps.admitted, toy.steps.steps
    toy.steps.go.clear()  # the first step waits until the width is filled

    def release() -> None:
        # Every place of the width taken: admitted (the first is held in its
        # step) or queued behind it.
        wait_for(
            lambda: toy.steps.admitted - admitted + toy.steps.waiting() >= WIDTH,
            "the batch to fill the width",
        )
        toy.steps.go.set()

    results, _ = together([lambda: toy.batch_generate(PROMPTS, max_tokens=6), release])
    assert not isinstance(results, BaseException), results
    assert [r.text for r in results] == alone
    assert all(r.err is None and r.finish_reason == "length" for r in results)
    assert toy.steps.admitted - admitted == len(PROMPTS)  # each one a sequence
    assert toy.steps.widest == WIDTH  # decoded together, up to the width
    assert toy.steps.steps - steps < 6 * len(PROMPTS)  # fewer steps than one by one
    assert toy.metrics is not None and toy.metrics.generated_tokens == 6 * len(PROMPTS)


def test_a_batch_shares_steps_with_streams_from_other_callers(toy: _Toy) -> None:
    alone = [toy.generate(p, max_tokens=4).text() for p in PROMPTS[:2]]
    stream = toy.generate("outside", max_tokens=200)
    first = next(stream)  # this thread now holds one place at the gate
    (batch,) = together([lambda: toy.batch_generate(PROMPTS[:2], max_tokens=4)])
    assert not isinstance(batch, BaseException), batch
    assert [r.text for r in batch] == alone
    rest = stream.text()
    assert first.text + rest == toy.generate("outside", max_tokens=200).text()


def test_logprobs_stop_ids_and_errors_per_prompt(toy: _Toy) -> None:
    too_long = "x" * 300  # the context holds 256
    first, bad, second = toy.batch_generate(["alpha", too_long, "beta"], max_tokens=4, logprobs=1)
    assert isinstance(bad.err, GenerationError) and bad.finish_reason == "error"
    assert "context holds 256" in str(bad.err)
    for res, prompt in ((first, "alpha"), (second, "beta")):
        alone = list(toy.generate(prompt, max_tokens=4, logprobs=1))
        assert res.tokens == tuple(alone)
        assert all(t.logprob == -0.5 and len(t.top_logprobs) == 1 for t in res.tokens)
    stop = ord(toy.generate("alpha", max_tokens=3).text()[2])
    (cut,) = toy.batch_generate(["alpha"], max_tokens=8, stop_tokens=[stop])
    assert cut.finish_reason == "stop" and len(cut.text) == 2


def test_a_cancelled_batch_ends_every_prompt_and_leaves_the_model_ready(toy: _Toy) -> None:
    cancel = threading.Event()
    hold = toy.generate("first", max_tokens=10_000)
    next(hold)  # one slot taken: the batch runs two prompts, the rest wait
    before = toy.steps.admitted
    got: list[list[str]] = []

    def run() -> None:
        results = toy.batch_generate(PROMPTS, max_tokens=10_000, cancel=cancel)
        got.append([r.finish_reason for r in results])

    toy.steps.go.clear()  # no step runs: the admitted prompts cannot finish first
    worker = threading.Thread(target=run)
    worker.start()
    wait_for(
        lambda: toy.steps.admitted - before + toy.steps.waiting() >= 2,
        "two of the batch's prompts to take the places left",
    )
    cancel.set()
    toy.steps.go.set()
    worker.join(60)
    assert not worker.is_alive()
    assert got == [["cancelled"] * len(PROMPTS)]
    assert toy.steps.admitted - before <= 2  # the rest never started
    assert hold.text()[:1]  # the other caller's stream goes on undisturbed
    hold.close()
    wait_for(lambda: not toy.steps.busy, "the scheduler to let every sequence go")
    (again,) = toy.batch_generate(["alpha"], max_tokens=3)
    assert again.text == toy.generate("alpha", max_tokens=3).text()


def test_a_thread_holding_a_stream_is_refused_a_batch(toy: _Toy) -> None:
    stream = toy.generate("alpha", max_tokens=50)
    next(stream)
    with pytest.raises(GenerationError, match="already has a call running"):
        toy.batch_generate(["beta"], max_tokens=2)
    stream.close()
    assert toy.batch_generate(["beta"], max_tokens=2)[0].text


def test_a_stream_is_never_read_on_the_engine_thread(toy: _Toy) -> None:
    engine = toy._engine
    assert engine is not None

    def inside() -> str:
        ids = toy.encode("alpha")
        return "".join(
            map(chr, toy._generate_ids(ids, generate_config(max_tokens=2), StreamControl()))
        )

    with pytest.raises(GenerationError, match="cannot be read on its model's engine thread"):
        engine.call(inside)
    assert toy.generate("alpha", max_tokens=2).text()  # still ready


def test_capabilities_come_from_the_primitives(toy: _Toy) -> None:
    caps = toy.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.logprobs and caps.top_logprobs == 20
    assert not caps.logits and not caps.scoring and caps.constraints == frozenset()
    assert not caps.tools and not caps.reasoning
    assert caps.parallel_streams == WIDTH and caps.context_length == 256
    for option, kwargs in (
        ("return_logits", {"return_logits": True}),
        ("regex", {"regex": "[a-z]+"}),
    ):
        with pytest.raises(UnsupportedOptionError) as info:
            if option == "return_logits":
                toy.classify(["alpha"], **kwargs)
            else:
                toy.generate("alpha", **kwargs)
        assert info.value.option == option and info.value.backend == "toy"
    # classify without logits runs through the fallback, one token per prompt
    (res,) = toy.classify(["alpha"])
    assert res.token == Token(ord(toy.generate("alpha", max_tokens=1).text()), res.token.text)


def test_engine_thread_needs_a_batching_engine() -> None:
    with pytest.raises(ValueError, match="needs stream_width"):
        BaseTextModel(info=ModelInfo(), engine_thread=True)


def test_drain_many_bounds_the_width_and_keeps_order() -> None:
    live = {"now": 0, "most": 0}
    lock = threading.Lock()

    def producer(i: int):  # type: ignore[no-untyped-def]
        def produce(control: StreamControl):  # type: ignore[no-untyped-def]
            with lock:
                live["now"] += 1
                live["most"] = max(live["most"], live["now"])
            try:
                yield Token(i, str(i))
            finally:
                with lock:
                    live["now"] -= 1
            return "stop"

        return produce

    results = drain_many([producer(i) for i in range(9)], generate_config(), width=3)
    assert [r.text for r in results] == [str(i) for i in range(9)]
    assert 1 <= live["most"] <= 3
    assert map_concurrently(lambda x: x * 2, [1, 2, 3], 2) == [2, 4, 6]
    stopped: list[bool] = []

    def boom(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError):
        map_concurrently(boom, [1, 2], 2, on_abort=lambda: stopped.append(True))
    assert stopped == [True]


def test_a_failing_admission_ends_the_calls_not_the_engine(toy: _Toy) -> None:
    """The step loop itself failing (an engine's admission raising) ends the
    calls it holds with an error, at once; the next call runs as usual."""
    real = toy.steps._admit
    broken = True

    def admit(seq: Seq) -> bool:
        if broken:
            raise RuntimeError("an engine bug")
        return real(seq)

    toy.steps._admit = admit  # type: ignore[method-assign]
    with pytest.raises(GenerationError, match="the engine failed"):
        toy.generate("alpha", max_tokens=3).text()
    broken = False
    again = toy.generate("alpha", max_tokens=3)
    assert len(again.text()) == 3 and again.err is None
