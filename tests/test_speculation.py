"""Speculative decoding's engine-free parts: prompt lookup, acceptance, pacing,
and the options and refusals of the contract."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import inference
from inference import (
    GenerateConfig,
    LoadConfig,
    UnsupportedOptionError,
    with_draft_max,
    with_draft_model,
    with_speculative,
)
from inference.capabilities import Capabilities, refuse_unsupported
from inference.options import SPECULATION
from inference.registry import load_model, register_backend
from inference.speculation import Acceptance, Lookup, Pacer, check_vocabulary, expected_tokens
from inference.testing import FakeBackend


def test_lookup_guesses_what_followed_the_last_ngram_before() -> None:
    lookup = Lookup()
    tokens = [1, 2, 3, 4, 5, 9, 2, 3]
    assert lookup.guess(tokens, 3) == [4, 5, 9]
    # The latest earlier occurrence wins, and the sequence grows between calls.
    tokens += [7, 8, 2, 3]
    assert lookup.guess(tokens, 2) == [7, 8]
    # A longer n-gram is preferred to a shorter, more recent one.
    tokens = [5, 6, 7, 1, 9, 6, 7, 2, 5, 6, 7]
    assert Lookup().guess(tokens, 1) == [1]
    # Up to five tokens long: the occurrence whose context is the sequence's own.
    tokens = [1, 2, 3, 4, 5, 8, 9, 3, 4, 5, 7, 1, 2, 3, 4, 5]
    assert Lookup().guess(tokens, 2) == [8, 9]
    assert Lookup().guess([1, 2, 3], 4) == []  # nothing seen twice
    assert Lookup().guess([4, 4, 4], 0) == []


def test_lookup_indexes_only_new_tokens() -> None:
    """Each call indexes the tokens added since the last, and the guesses
    are those a fresh index gives."""
    grown: list[int] = []
    lookup = Lookup()
    for i in range(300):
        grown.append((i * 7) % 13)
        assert lookup.guess(grown, 5) == Lookup().guess(list(grown), 5)


def _acceptance(rate: float) -> Acceptance:
    """An Acceptance whose guesses were right at ``rate``, wherever they came."""
    a = Acceptance()
    a._counts = [[rate * 100, (1 - rate) * 100], [rate * 100, (1 - rate) * 100]]
    return a


def test_acceptance_counts_each_guess_up_to_the_first_wrong() -> None:
    a = Acceptance()
    assert a.rate(False) == a.rate(True) == 0.5  # the prior
    a.observe([1, 2, 3], [1, 2, 4])  # right (after none), right (after right), wrong
    after_wrong, after_right = a.rate(False), a.rate(True)
    assert after_wrong > 0.5  # one right after nothing
    # After a right one: a right one, then (decayed) a wrong one.
    assert after_right == pytest.approx((1.9 * 0.9) / (1.9 * 0.9 + 0.9 * 0.9 + 1))
    a.observe([9, 8], [9, 9])
    # The last guess was wrong, so the next step's first is judged by after-wrong.
    assert a.expected(1) == pytest.approx(1 + a.rate(False))
    before = (a.rate(False), a.rate(True))
    a.observe([], [5])  # nothing to compare
    assert (a.rate(False), a.rate(True)) == before
    for _ in range(40):
        a.observe([9], [8])
    assert a.rate(False) < 0.05  # decays towards what it sees


def test_a_run_of_right_guesses_predicts_more() -> None:
    """Copying, guesses come right in runs: after a right one, the next
    step expects many; after a wrong one, few."""
    a = Acceptance()
    for _ in range(30):
        a.observe(list(range(8)), list(range(8)))  # a run of right guesses
        for _ in range(3):
            a.observe([5], [6])  # then new text: wrong ones
    assert a.rate(True) > 0.8 and a.rate(False) < 0.4
    cold = a.expected(8)  # the last guess was wrong
    a.observe([1, 2], [1, 2])
    assert cold < 3 and a.expected(8) > 4


def test_expected_tokens() -> None:
    assert expected_tokens(0.5, 0.5, 0) == 1
    assert expected_tokens(0.5, 0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(0.1, 1.0, 4) == pytest.approx(1.4)
    assert expected_tokens(1.0, 1.0, 4) == 5


def test_pacer_guesses_only_where_guesses_pay() -> None:
    pacer = Pacer()
    # A CPU where a decode of n tokens costs n single ones: nothing pays.
    for n in (1, 2, 5, 9, 17):
        pacer.record(n, 0.01 * n)
    assert pacer.plan(1, 1, [(_acceptance(0.9), 16)], room=500) == 0
    # Where extra tokens are cheap (a GPU), a sequence that guesses well guesses.
    cheap = Pacer()
    for n in (1, 2, 5, 9, 17):
        cheap.record(n, 0.01 + 0.001 * (n - 1))
    assert cheap.plan(1, 1, [(_acceptance(0.9), 16)], room=500) >= 8
    # ... but not one whose guesses are seldom right.
    assert cheap.plan(1, 1, [(_acceptance(0.02), 16)], room=500) == 0
    # Never more than the batch takes, nor more than a sequence offers.
    assert cheap.plan(1, 1, [(_acceptance(0.99), 16)], room=3) <= 3
    assert cheap.plan(1, 1, [(_acceptance(0.99), 2)], room=500) == 2
    cheap.fixed = True
    assert cheap.plan(1, 1, [(_acceptance(0.0), 7)], room=500) == 7


def test_pacer_counts_the_draft_models_decodes() -> None:
    pacer = Pacer()
    for n in (1, 2, 5, 9, 17):
        pacer.record(n, 0.01 + 0.001 * (n - 1))
    pacer.record(1, 0.0005, draft=True)  # a draft model far faster than the model
    assert pacer.plan(1, 1, [(_acceptance(0.8), 8)], room=500, drafting=True) > 0
    pacer.record(1, 0.009, draft=True)
    pacer.record(1, 0.009, draft=True)
    pacer.record(1, 0.009, draft=True)
    pacer.record(1, 0.009, draft=True)
    pacer.record(1, 0.009, draft=True)
    pacer.record(1, 0.009, draft=True)
    # Nearly as slow as the model: its guesses cost more than they save.
    assert pacer.plan(1, 1, [(_acceptance(0.8), 8)], room=500, drafting=True) == 0


def test_pacer_estimates_widths_it_has_not_measured() -> None:
    pacer = Pacer()
    assert pacer.time(4) > pacer.time(1)  # the prior, before anything is measured
    pacer.record(3, 1.3)  # in seconds: the prior scales to them
    one = 1.3 / (1 + 2 * Pacer.PRIOR_SLOPE)  # a single token's, inferred through the prior
    assert pacer.time(1) == pytest.approx(one)
    assert pacer.time(5) == pytest.approx(1.3 + 2 * Pacer.PRIOR_SLOPE * one)
    pacer = Pacer()
    pacer.record(1, 1.0)
    pacer.record(5, 3.0)
    # Past one token, at the prior slope until two wider widths are measured
    # (a CPU's step from one token to two is a change of kernel)...
    assert pacer.time(9) == pytest.approx(3.0 + 4 * Pacer.PRIOR_SLOPE)
    pacer.record(3, 2.5)
    assert pacer.time(9) == pytest.approx(3.0 + 4 * 0.25)  # ... then on the line through them
    assert pacer.time(4) == pytest.approx(2.75)
    assert pacer.time(1) == pytest.approx(1.0)


def test_pacer_times_are_positive_before_a_single_token_is_measured() -> None:
    """A line through two noisy wide decodes (the second slowed) crosses zero
    short of one token; no estimate may follow it there (a plan divides by
    the time of the step's tokens)."""
    pacer = Pacer()
    pacer.record(2, 0.010)
    pacer.record(3, 0.030)
    assert pacer.time(1) == pytest.approx(0.010 / 2)  # 2 tokens take no longer than 2 single ones
    assert pacer.plan(1, 1, [(_acceptance(0.9), 16)], room=500) >= 0
    draft = Pacer()
    draft.record(1, 0.010)
    draft.record(2, 0.001, draft=True)
    draft.record(3, 0.020, draft=True)
    assert draft.time(1, draft=True) > 0


def test_pacer_plans_within_bounds_whatever_it_measured() -> None:
    """Seeded random decode times (noisy, tiny, huge, any widths, a draft
    model's too) and offers: every estimate stays positive and finite, and
    every plan within what the batch takes and the sequences offer."""
    rng = random.Random(7)
    for _ in range(100):
        pacer = Pacer()
        for _ in range(rng.randrange(0, 40)):
            width = rng.choice((1, 1, 2, 3, rng.randrange(1, 64)))
            seconds = rng.choice((0.0, 1e-9, 1e-6, 0.01 * width, rng.uniform(1e-4, 5.0)))
            pacer.record(width, seconds, draft=rng.random() < 0.2)
            for w in (1, 2, rng.randrange(1, 600)):
                for draft in (False, True):
                    t = pacer.time(w, draft=draft)
                    assert 0 < t < float("inf"), (w, draft, t)
            sequences = rng.randrange(1, 4)
            offers = [(_acceptance(rng.random()), rng.randrange(0, 20)) for _ in range(sequences)]
            room = rng.randrange(0, 40)
            base = rng.randrange(1, 8)
            k = pacer.plan(base, len(offers), offers, room=room, drafting=rng.random() < 0.5)
            assert 0 <= k <= max(n for _, n in offers)
            assert sum(min(k, n) for _, n in offers) <= room


def test_pacer_is_not_misled_by_one_slow_decode() -> None:
    pacer, calm = Pacer(), Pacer()
    for _ in range(3):
        for n in (1, 2, 3, 4, 5):
            pacer.record(n, 0.010 + 0.004 * (n - 1))
            calm.record(n, 0.010 + 0.004 * (n - 1))
    pacer.record(1, 0.3)  # one decode slowed by another process...
    pacer.record(5, 0.3)
    pacer.record(6, 0.3)  # ... even of a width measured once
    assert pacer.time(1) == pytest.approx(0.010)  # ... moves no single token's time
    assert pacer.time(17) == pytest.approx(0.010 + 0.004 * 16)  # nor a wide one's
    offer = [(_acceptance(0.95), 16)]
    assert pacer.plan(1, 1, offer, room=500) == calm.plan(1, 1, offer, room=500) > 0
    for _ in range(50):  # more than it keeps
        pacer.record(1, 0.02)
    assert pacer.time(1) == pytest.approx(0.02)  # a lasting change is followed


def test_options_and_their_builders() -> None:
    assert with_speculative("ngram").target == "load"
    assert with_speculative(False).target == "generate"
    assert with_draft_max(4).value == 4
    assert with_draft_model(Path("/tmp/d.gguf")).value == "/tmp/d.gguf"
    assert LoadConfig(speculative="ngram").speculative == "ngram"
    assert GenerateConfig().speculative is None
    with pytest.raises(ValueError, match="speculative"):
        LoadConfig(speculative="medusa")
    with pytest.raises(ValueError, match="draft_model="):
        LoadConfig(speculative="draft")  # a draft model is named, not asked for
    with pytest.raises(ValueError, match="draft_max"):
        GenerateConfig(draft_max=33)
    assert [
        LoadConfig(draft_model=d, speculative=s).speculation
        for d, s in (("", ""), ("", "ngram"), ("/tmp/d.gguf", ""), ("/tmp/d.gguf", "ngram"))
    ] == ["", "ngram", "draft", "ngram+draft"]
    assert set(SPECULATION) == {"ngram", "draft", "ngram+draft"}
    with pytest.raises(ValueError, match="turned it off"):
        GenerateConfig(draft_max=4, speculative=False)


def test_a_model_that_does_not_speculate_refuses_its_options() -> None:
    plain = Capabilities()
    refuse_unsupported(GenerateConfig(speculative=False), plain, "x")
    refuse_unsupported(GenerateConfig(), plain, "x")
    with pytest.raises(UnsupportedOptionError) as caught:
        refuse_unsupported(GenerateConfig(speculative=True), plain, "x")
    assert caught.value.option == "speculative"
    with pytest.raises(UnsupportedOptionError) as caught:
        refuse_unsupported(GenerateConfig(draft_max=4), plain, "x")
    assert caught.value.option == "draft_max"
    speculating = Capabilities(speculative="ngram")
    refuse_unsupported(GenerateConfig(speculative=True, draft_max=4), speculating, "x")


@pytest.mark.usefixtures("clean_registry")
def test_a_backend_that_cannot_speculate_refuses_it_at_load(tiny_gguf: Path) -> None:
    backend = FakeBackend("plain", priority=100, formats=("gguf",))
    register_backend(backend)
    with pytest.raises(UnsupportedOptionError) as caught:
        load_model(tiny_gguf, speculative="ngram")
    assert caught.value.option == "speculative"
    assert "does not decode speculatively" in str(caught.value)
    with pytest.raises(UnsupportedOptionError) as caught:
        inference.load_model(tiny_gguf, backend="plain", draft_model=str(tiny_gguf))
    assert caught.value.option == "draft_model"
    assert len(backend.loads) == 2  # each was loaded, then closed and refused
    model = load_model(tiny_gguf)
    assert model.capabilities.speculative == ""
    model.close()


def test_the_limits_of_the_options() -> None:
    from inference.options import DRAFT_MAX_LIMIT, SPECULATION
    from inference.speculation import DEFAULT_DRAFT_MAX

    assert "ngram" in SPECULATION and "draft" in SPECULATION
    assert GenerateConfig(draft_max=DRAFT_MAX_LIMIT).draft_max == DRAFT_MAX_LIMIT
    assert 0 < DEFAULT_DRAFT_MAX <= DRAFT_MAX_LIMIT
    with pytest.raises(ValueError):
        GenerateConfig(draft_max=-1)


def test_a_draft_vocabulary_must_be_the_models_token_for_token() -> None:
    check_vocabulary(["<s>", "a", "b"], ["<s>", "a", "b"], "d.gguf", "llama_cpp")
    for theirs, says in (
        (["<s>", "a"], "its vocabulary has 2 tokens, the model's 3"),
        (["<s>", "b", "a"], "token 1 is 'b' in it, 'a' in the model"),
        ([], "lists no tokens"),
    ):
        with pytest.raises(UnsupportedOptionError, match=says) as caught:
            check_vocabulary(["<s>", "a", "b"], theirs, "d.gguf", "mlx")
        assert caught.value.option == "draft_model"
        assert caught.value.backend == "mlx"
        assert str(caught.value).startswith("d.gguf cannot be the draft model")


def test_pacer_widens_the_decodes_it_tries_step_by_step() -> None:
    """Where a decode of n tokens costs n single ones (MLX's CPU device), the
    prior's optimism costs a narrow step or two, never a 17-token decode."""
    pacer, offer, widths = Pacer(), [(_acceptance(0.95), 16)], []
    for _ in range(6):
        k = pacer.plan(1, 1, offer, room=500)
        widths.append(1 + k)
        pacer.record(1 + k, 0.1 * (1 + k))
    assert widths[:2] == [3, 6], widths  # each at most twice the widest before...
    assert widths[2:] == [1, 1, 1, 1]  # ... and once two are measured, none
    cheap = Pacer()
    for _ in range(6):  # where wide decodes are cheap, it reaches every guess in a few steps
        k = cheap.plan(1, 1, offer, room=500)
        cheap.record(1 + k, 0.01 + 0.0005 * k)
    assert k == 16
