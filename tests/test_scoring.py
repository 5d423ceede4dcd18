"""Log-probabilities and scoring in the core: the option, the types, the
front door of inference.scoring, on the fake backend (whose distribution is
known: logit 10 for the byte its reply gives next, 0 for every other)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence

import pytest

import inference
from inference import (
    GenerationError,
    RollingScore,
    Scorer,
    ScoreResult,
    Token,
    TokenLogprob,
    UnsupportedOptionError,
    with_logprobs,
)
from inference.base import BaseTextModel
from inference.options import GenerateConfig
from inference.scoring import ScoringState, ScoringTextModel, check_pairs
from inference.stream import StreamControl
from inference.testing import FakeBackend, FakeModel
from inference.testing.fake import ByteTokens

HIGH = 10.0 - math.log(math.exp(10.0) + 256)  # the expected byte's log-probability
LOW = -math.log(math.exp(10.0) + 256)


@pytest.fixture
def model() -> Iterator[FakeModel]:
    with FakeBackend(reply=" Paris.").load_model("fake") as m:
        assert isinstance(m, FakeModel)
        yield m


def test_logprobs_option_is_checked() -> None:
    assert GenerateConfig().logprobs is None
    assert inference.options.generate_config(with_logprobs(3)).logprobs == 3
    assert inference.options.generate_config(logprobs=0).logprobs == 0
    for bad in (-1, 21, 2.5, True, "3"):
        with pytest.raises(ValueError, match="logprobs"):
            with_logprobs(bad)  # type: ignore[arg-type]


def test_token_keeps_its_two_field_form() -> None:
    plain = Token(5, "a")
    assert plain.logprob is None and plain.top_logprobs == ()
    assert plain == Token(5, "a") and hash(plain) == hash(Token(5, "a"))
    rich = Token(5, "a", -0.5, (TokenLogprob(5, "a", -0.5),))
    assert rich != plain and rich.top_logprobs[0].logprob == -0.5
    assert tuple(rich.top_logprobs[0]) == (5, "a", -0.5)  # a triple


def test_streamed_tokens_carry_raw_logprobs(model: FakeModel) -> None:
    tokens = list(model.generate("Q", max_tokens=3, logprobs=2))
    assert [t.text for t in tokens] == [" ", "P", "a"]
    for tok in tokens:
        assert tok.logprob == pytest.approx(HIGH)
        assert tok.top_logprobs[0] == TokenLogprob(tok.id, tok.text, pytest.approx(HIGH))
        assert tok.top_logprobs[1].logprob == pytest.approx(LOW)
    # The raw distribution: sampling at a temperature does not change a token's figure.
    sampled = list(model.generate("Q", max_tokens=3, logprobs=1, temperature=1.0, seed=3))
    assert all(t.logprob == pytest.approx(LOW) for t in sampled if t.text not in " Paris.")


def test_logprobs_survive_stop_strings(model: FakeModel) -> None:
    tokens = list(model.generate("Q", max_tokens=10, logprobs=0, stop=["s."]))
    assert "".join(t.text for t in tokens) == " Pari"
    assert all(t.logprob == pytest.approx(HIGH) for t in tokens)


def test_batches_with_logprobs_give_every_token_its_figures(model: FakeModel) -> None:
    results = model.batch_generate(["a", "b"], max_tokens=2, logprobs=1)
    assert all(r.err is None and all(t.logprob is not None for t in r.tokens) for r in results)


class _NoLogprobs(ByteTokens, BaseTextModel):
    backend_name = "plain"

    def __init__(self) -> None:
        super().__init__(info=inference.ModelInfo(context_length=64, backend="plain"))

    def _generate_ids(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl
    ) -> Iterator[int]:
        yield from b"ok"


def test_a_backend_without_logprobs_refuses_before_the_first_token() -> None:
    m = _NoLogprobs()
    assert not m.capabilities.logprobs and not m.capabilities.scoring
    assert not isinstance(m, Scorer)
    with pytest.raises(UnsupportedOptionError, match="cannot report log-probabilities") as info:
        m.generate("x", logprobs=1)
    assert info.value.option == "logprobs" and info.value.backend == "plain"
    assert isinstance(m.err, UnsupportedOptionError)
    with pytest.raises(UnsupportedOptionError):
        m.batch_generate(["x"], logprobs=0)
    assert m.generate("x", max_tokens=2).text() == "ok"  # still usable


def test_score_follows_the_distribution(model: FakeModel) -> None:
    assert isinstance(model, Scorer) and isinstance(model, ScoringTextModel)
    assert isinstance(model, ScoringState)  # the one front door, shared with openai
    right = model.score("Q", " Paris")
    assert isinstance(right, ScoreResult)
    assert right.is_greedy and right.token_ids == tuple(b" Paris")
    assert right.logprobs == pytest.approx([HIGH] * 6) and right.total == pytest.approx(6 * HIGH)
    wrong = model.score("Q", " Rome")
    assert not wrong.is_greedy and wrong.logprobs[0] == pytest.approx(HIGH)
    assert wrong.logprobs[1] == pytest.approx(LOW)
    # The space that ends a context moves to the continuation (lm-eval's rule).
    assert model.score("Q ", "Paris") == right
    assert model.score_batch([("Q", " Paris"), ("Q", " Rome")]) == [right, wrong]


def test_score_rolling(model: FakeModel) -> None:
    rolling = model.score_rolling(" Paris. Paris.")
    assert isinstance(rolling, RollingScore) and rolling.tokens == 14
    assert rolling.perplexity == pytest.approx(math.exp(-rolling.total / 14))
    empty = model.score_rolling("")
    assert empty.tokens == 0 and empty.total == 0.0 and math.isnan(empty.perplexity)


def test_bad_pairs_and_lengths(model: FakeModel) -> None:
    assert check_pairs([("a", "b")]) == [("a", "b")]
    with pytest.raises(TypeError, match="pair 1"):
        check_pairs([("a", "b"), ("c",)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        model.score_batch("not pairs")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        model.score_batch([("a", 1)])  # type: ignore[list-item]
    with FakeBackend(reply="x", context_length=8).load_model("fake") as small:
        with pytest.raises(GenerationError, match="continuation has 12 tokens"):
            small.score("a", " 0123456789a")
        # A context too long loses its start, as lm-eval's does: still scored.
        assert len(small.score("a long, long context", "xx").logprobs) == 2
        assert small.score("a", "x").is_greedy  # and the model is ready


def test_a_cancelled_score_leaves_the_model_ready(model: FakeModel) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(inference.Cancelled):
        model.score_batch([("Q", " Paris")] * 3, cancel=cancel)
    assert isinstance(model.err, inference.Cancelled)
    assert model.score("Q", " Paris").is_greedy
    assert model.err is None
