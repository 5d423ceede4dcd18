"""Speculative decoding on MLX: prompt lookup and a draft model give the
tokens the model gives alone.

The guesses are checked where a sequence decodes alone, in a step that
takes the place of mlx-lm's own (:mod:`inference_mlx.speculative`). Every
test checks every guess offered (``Pacer.fixed``), so that the checking runs
whether or not guesses pay here. Prompt lookup runs on SmolLM2 in float32
(:mod:`fast_cpu`: MLX's CPU build decodes it at about 16 tokens/s), so the
checks ask for few tokens, and the draft-model checks run on a tiny
random-weight model (gguf-py's writer) as its own draft.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from fast_cpu import ROUNDING, smollm2_f32
from inference_mlx import speculative
from tiny_gguf import write_tiny

import inference
from inference import UnsupportedOptionError
from inference.speculation import check_vocabulary
from inference.testing import requires, smollm2_path

pytestmark = requires("mlx", "mlx_lm")

PROMPTS = [
    "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Again: 1, 2, 3, 4,",
    "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat",
]
#: Prompts of the tiny models' words ("w0" to "w63": their only tokens but bytes).
TINY = ["".join(f"w{i * 7 % 64}" for i in range(40)), "".join(f"w{i % 9}" for i in range(30))]


#: Guesses a step checks: on MLX's CPU device each costs nearly a decode.
DRAFT_MAX = 4


def _approx(logprobs: list[float | None]) -> Any:
    """Equal but for the rounding of a pass of several tokens (fast_cpu)."""
    return pytest.approx(logprobs, abs=ROUNDING)


def _checking_every_guess(model: inference.TextModel) -> inference.TextModel:
    model._scheduler._pacer.fixed = True  # type: ignore[attr-defined]
    return model


@pytest.fixture(scope="module")
def ngram() -> Iterator[inference.TextModel]:
    model = inference.load_model(smollm2_f32(), backend="mlx", speculative="ngram")
    yield _checking_every_guess(model)
    model.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny(tmp_path_factory.mktemp("tiny-spec") / "tiny.gguf", "llama", seed=1))


@pytest.fixture(scope="module")
def tiny_plain(tiny: str) -> Iterator[inference.TextModel]:
    model = inference.load_model(tiny, backend="mlx")
    yield model
    model.close()


@pytest.fixture(scope="module")
def drafted(tiny: str) -> Iterator[inference.TextModel]:
    """The tiny model with itself as the draft, guessing whatever its
    confidence (a random model's distribution is nearly flat): greedy, every
    guess is right; sampled at temperature 1, nearly every one is wrong."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speculative, "P_MIN", 0.0)
        model = inference.load_model(tiny, backend="mlx", draft_model=tiny)
        yield _checking_every_guess(model)
        model.close()


@pytest.fixture(scope="module")
def both(tiny: str) -> Iterator[inference.TextModel]:
    """The tiny model with prompt lookup and itself as the draft."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speculative, "P_MIN", 0.0)
        model = inference.load_model(tiny, backend="mlx", speculative="ngram", draft_model=tiny)
        yield _checking_every_guess(model)
        model.close()


def _ids(model: inference.TextModel, prompt: Any, **options: Any) -> tuple[list[int], Any]:
    if model.capabilities.speculative and options.get("speculative") is not False:
        options.setdefault("draft_max", DRAFT_MAX)
    stream = model.generate(prompt, max_tokens=options.pop("max_tokens", 16), **options)
    ids = [t.id for t in stream]
    return ids, stream.metrics


def _tiny(model: inference.TextModel, prompt: str, **options: Any) -> tuple[list[int], Any]:
    options.setdefault("max_tokens", 24)
    return _ids(model, prompt, **options)


def test_prompt_lookup_gives_the_models_own_tokens(
    model: inference.TextModel, ngram: inference.TextModel
) -> None:
    assert ngram.capabilities.speculative == "ngram"
    drafted = accepted = 0
    seeded = {"temperature": 0.9, "top_k": 40, "seed": 3, "repeat_penalty": 1.1}
    for prompt, options in ((PROMPTS[0], {}), (PROMPTS[1], {}), (PROMPTS[1], seeded)):
        ids, m = _ids(ngram, prompt, max_tokens=12, **options)
        assert ids == _ids(model, prompt, max_tokens=12, **options)[0], (prompt, options)
        drafted += m.drafted_tokens
        accepted += m.accepted_tokens
    assert 0 < accepted < drafted  # the penalty turns the seeded reply from the copy
    off, m = _ids(ngram, PROMPTS[0], speculative=False, max_tokens=4)
    assert off == _ids(model, PROMPTS[0], max_tokens=4)[0]
    assert m.drafted_tokens == 0


def test_a_draft_model_gives_the_models_own_tokens(
    tiny_plain: inference.TextModel, drafted: inference.TextModel
) -> None:
    """Rejected guesses are trimmed from the cache, and greedy and seeded
    output equal the target's alone."""
    assert drafted.capabilities.speculative == "draft"
    total = kept = 0
    for prompt in TINY:
        for options in ({}, {"temperature": 1.0, "seed": 5}):
            ids, m = _tiny(drafted, prompt, **options)
            assert ids == _tiny(tiny_plain, prompt, **options)[0], options
            total += m.drafted_tokens
            kept += m.accepted_tokens
    assert 0 < kept < total  # some guesses were right, some wrong


def test_with_both_the_draft_model_guesses_only_where_lookup_has_none(
    tiny_plain: inference.TextModel, both: inference.TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompt lookup's guesses come first (they cost nothing to make): with
    every guess offered checked, the draft model is asked only in steps
    where lookup has none past the pending token, and the tokens are the
    model's own either way."""
    from inference.speculation import Lookup

    assert both.capabilities.speculative == "ngram+draft"
    steps: list[str] = []  # "lookup" (guesses past the pending token), "none", "draft"
    lookup_guess = Lookup.guess

    def looked(self: Lookup, tokens: Any, k: int) -> list[int]:
        out = lookup_guess(self, tokens, k)
        steps.append("lookup" if len(out) > 1 else "none")
        return out

    drafter = both._scheduler._drafter  # type: ignore[attr-defined]
    draft_guess = drafter.guess

    def drafted(tokens: list[int], k: int, pacer: Any) -> list[int]:
        steps.append("draft")
        out: list[int] = draft_guess(tokens, k, pacer)
        return out

    monkeypatch.setattr(Lookup, "guess", looked)
    monkeypatch.setattr(drafter, "guess", drafted)
    checked = 0
    for prompt in TINY:  # the first has no token twice, the second repeats itself
        for options in ({}, {"temperature": 1.0, "seed": 5}):
            ids, m = _tiny(both, prompt, **options)
            assert ids == _tiny(tiny_plain, prompt, **options)[0], options
            checked += m.drafted_tokens
    assert checked > 0
    assert "lookup" in steps and "draft" in steps
    assert all(before == "none" for before, now in pairwise(steps) if now == "draft")


def test_guesses_are_judged_once_the_token_after_them_has_come() -> None:
    """A step's guesses are judged two steps on: the token sampled in place
    of a rejected guess is pending (not yet among the sequence's tokens) at
    the next step, and judged without it, the guess would never count as
    wrong."""
    from inference.speculation import Acceptance

    spec = speculative.Speculation("ngram+draft", draft_max=4)
    fresh = Acceptance()
    # Step 1 guesses 4, 5, 6 after [1, 2, 3]: 4 and 5 are kept, 9 is sampled
    # in place of 6 and waits, pending.
    spec.made.append((spec.draft_acceptance, [4, 5, 6], 3))
    spec.judge([1, 2, 3, 4, 5])  # step 2: nothing judged yet
    assert spec.draft_acceptance.rate(True) == fresh.rate(True)
    spec.judge([1, 2, 3, 4, 5, 9])  # step 3: 9 has come
    fresh.observe([4, 5, 6], [4, 5, 9])
    assert spec.draft_acceptance.rate(True) == fresh.rate(True) < 0.5
    assert spec.acceptance.rate(True) == Acceptance().rate(True)  # lookup's: untouched
    assert spec.made == spec.judging == []


def test_stop_strings_max_tokens_and_logprobs_are_unchanged(
    model: inference.TextModel, ngram: inference.TextModel
) -> None:
    for options in (
        {"stop": ["mat, the"], "logprobs": 3},
        {"max_tokens": 1},
        {"max_tokens": 2, "logprobs": 0},
    ):
        a = ngram.generate(PROMPTS[1], **{"max_tokens": 16, "draft_max": DRAFT_MAX, **options})
        b = model.generate(PROMPTS[1], **{"max_tokens": 16, **options})
        got, want = list(a), list(b)
        assert [(t.id, t.text) for t in got] == [(t.id, t.text) for t in want], options
        assert [t.logprob for t in got] == _approx([t.logprob for t in want])
        for mine, theirs in zip(got, want, strict=True):
            assert [x.id for x in mine.top_logprobs] == [x.id for x in theirs.top_logprobs]
            assert [x.logprob for x in mine.top_logprobs] == _approx(
                [x.logprob for x in theirs.top_logprobs]
            )
        assert (a.finish_reason, a.stop_sequence) == (b.finish_reason, b.stop_sequence)
        if "max_tokens" in options:
            assert len(got) == options["max_tokens"]


def test_a_constraint_rejects_the_guesses_it_forbids(
    model: inference.TextModel, ngram: inference.TextModel
) -> None:
    """The guesses (the prompt's "cat sat" over and over) are checked against
    the constraint's mask like any token."""
    pattern = r"(the (dog|cat) (ran|sat) on the (mat|rug), ){2}"
    a = ngram.generate(PROMPTS[1], regex=pattern, max_tokens=30, draft_max=DRAFT_MAX)
    text = a.text()
    assert text == model.generate(PROMPTS[1], regex=pattern, max_tokens=30).text()
    assert text.count("the ") == 4
    assert a.metrics is not None and a.metrics.drafted_tokens > 0


def test_streams_that_join_and_leave_give_what_they_give_alone(
    tiny_plain: inference.TextModel, drafted: inference.TextModel
) -> None:
    """A stream decoding alone checks guesses; one joining it puts both back
    on the generator's own step, and the one left alone goes on guessing:
    each gives its tokens alone."""
    lengths = [40, 6, 12]
    alone = [_tiny(tiny_plain, TINY[i % 2], max_tokens=n)[0] for i, n in enumerate(lengths)]
    got: list[list[int]] = [[] for _ in lengths]
    metrics: list[Any] = [None for _ in lengths]
    started, joined = threading.Event(), threading.Event()

    def run(i: int) -> None:
        stream = drafted.generate(TINY[i % 2], max_tokens=lengths[i])
        for t in stream:
            got[i].append(t.id)
            if i == 0 and len(got[i]) == 4:
                started.set()
                # The engine holds this stream, a few tokens ahead, till the
                # others are in.
                assert joined.wait(60)
            if i == 1:
                joined.set()
        metrics[i] = stream.metrics

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert started.wait(60)
    others = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join()
    assert got == alone
    assert metrics[0].drafted_tokens > 0


def test_a_cancelled_or_abandoned_stream_leaves_the_model_ready(
    tiny_plain: inference.TextModel, drafted: inference.TextModel
) -> None:
    text = TINY[0]
    stream = drafted.generate(text, max_tokens=30)
    it = iter(stream)
    next(it), next(it)
    stream.close()  # the reader leaves with guesses in the engine
    cancel = threading.Event()
    stream = drafted.generate(text, max_tokens=30, cancel=cancel)
    for i, _ in enumerate(stream):
        if i == 3:
            cancel.set()
    assert stream.finish_reason == "cancelled"
    assert _tiny(drafted, TINY[1])[0] == _tiny(tiny_plain, TINY[1])[0]


def test_a_draft_model_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    source = smollm2_path()
    assert source is not None
    other = write_tiny(tmp_path / "other.gguf", "llama")
    with pytest.raises(UnsupportedOptionError, match="vocabulary") as caught:
        inference.load_model(source, backend="mlx", draft_model=str(other))
    assert caught.value.option == "draft_model"
    with pytest.raises(inference.ModelLoadError):
        inference.load_model(source, backend="mlx", draft_model=str(tmp_path / "missing.gguf"))


def test_a_sliding_window_model_refuses_to_speculate(tmp_path: Path) -> None:
    """Gemma 3's local layers keep a rotating cache, which cannot drop a
    rejected guess once it has wrapped."""
    path = write_tiny(tmp_path / "gemma3.gguf", "gemma3")
    with pytest.raises(UnsupportedOptionError, match="cannot drop rejected guesses"):
        inference.load_model(path, backend="mlx", speculative="ngram")
    with inference.load_model(path, backend="mlx") as plain:
        assert plain.capabilities.speculative == ""


def test_draft_max_caps_the_guesses_a_step_checks(
    tiny_plain: inference.TextModel, drafted: inference.TextModel
) -> None:
    stream = drafted.generate(TINY[0], max_tokens=20, draft_max=2)
    ids = [t.id for t in stream]
    m = stream.metrics
    assert m is not None and 0 < m.drafted_tokens <= 2 * len(ids)
    assert ids == _tiny(tiny_plain, TINY[0], max_tokens=20)[0]


def test_the_draft_models_catching_up_is_timed_for_the_pacer(
    drafted: inference.TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draft model's cache is brought up to the sequence before each
    guess, in a forward pass that gives the first guess: a long one after a
    run of prompt lookup's guesses, on this device dear for a quantised
    draft. The pacer times it; with one guess a step, it is the only pass."""
    from inference.speculation import Pacer

    pacer = Pacer()  # this test's alone, checking every guess as the model's does
    pacer.fixed = True
    monkeypatch.setattr(drafted._scheduler, "_pacer", pacer)  # type: ignore[attr-defined]
    stream = drafted.generate(TINY[0], max_tokens=12, draft_max=1)
    assert [t.id for t in stream]
    m = stream.metrics
    assert m is not None and m.drafted_tokens > 0
    assert pacer._draft.one() is not None  # draft decodes of one sequence, timed


def test_vocabularies_with_gaps_and_stray_ids_are_compared_whole() -> None:
    """A tokenizer file may leave ids unused or give ids past its size: a
    token differing at any id is still found, and the list stays bounded."""
    ours = {"a": 0, "b": 1, "c": 2, "d": 4, "e": 10**9}
    assert speculative.tokens_by_id(ours) == ["a", "b", "c", "", "d", "e (id 1000000000)"]
    theirs = {**ours, "x": 4}
    del theirs["d"]
    with pytest.raises(UnsupportedOptionError, match="token 4 is 'x' in it"):
        check_vocabulary(
            speculative.tokens_by_id(ours), speculative.tokens_by_id(theirs), "d.gguf", "mlx"
        )
