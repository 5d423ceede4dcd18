"""llama.cpp's thread count: fixed by ``threads=``, or following the
machine's load (inference_llamacpp.threads), checked on step times given
to it, so that no timing of this machine decides the test."""

from __future__ import annotations

import pytest
from inference_llamacpp import threads
from inference_llamacpp.threads import ThreadTuner

import inference


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(tuner: ThreadTuner, clock: Clock, seconds_at: dict[int, float], steps: int) -> None:
    """``steps`` decode steps of width 1, each taking ``seconds_at[n]`` at n threads."""
    for _ in range(steps):
        tuner.before(timed=True)
        n = tuner._applied
        clock.now += seconds_at[n]
        tuner.after(1, seconds_at[n])


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch) -> tuple[ThreadTuner, Clock, list[int]]:
    clock = Clock()
    monkeypatch.setattr(threads.time, "monotonic", clock)
    applied: list[int] = []
    monkeypatch.setattr(threads.lc, "llama_set_n_threads", lambda _ctx, n, _b: applied.append(n))
    return ThreadTuner(ctx=None, cores=2), clock, applied


def test_alone_it_keeps_a_thread_per_core_and_probes_rarely(
    tuned: tuple[ThreadTuner, Clock, list[int]],
) -> None:
    tuner, clock, applied = tuned
    alone = {2: 0.0075, 1: 0.011}  # 133 and 91 tokens/s, as measured here
    run(tuner, clock, alone, 2000)  # 15 s of decoding
    assert tuner.threads == 2
    probes = applied.count(1)
    assert 1 <= probes <= 4  # at 2, 6 and 14 s: each lost, so the next waits longer
    assert probes * threads.PROBE_STEPS / 2000 < 0.02  # under 2% of the steps slower


def test_beside_another_process_it_drops_to_one_thread_and_comes_back(
    tuned: tuple[ThreadTuner, Clock, list[int]],
) -> None:
    tuner, clock, _ = tuned
    run(tuner, clock, {2: 0.0075, 1: 0.011}, 300)
    run(tuner, clock, {2: 0.047, 1: 0.011}, 300)  # a second process: 21 vs 91 tokens/s
    assert tuner.threads == 1
    run(tuner, clock, {2: 0.0075, 1: 0.011}, 800)  # it ended: back within 8 s and a probe
    assert tuner.threads == 2


def test_a_sudden_slowdown_is_answered_at_once(
    tuned: tuple[ThreadTuner, Clock, list[int]],
) -> None:
    tuner, clock, applied = tuned
    run(tuner, clock, {2: 0.0075, 1: 0.011}, 50)
    run(tuner, clock, {2: 0.047, 1: 0.011}, 1)  # one hiccup (a page fault, the GC)
    run(tuner, clock, {2: 0.0075, 1: 0.011}, 50)  # under 1 s in all: no probe due yet
    assert 1 not in applied  # a lone slow step tried nothing
    before = clock.now
    run(tuner, clock, {2: 0.047, 1: 0.011}, 8)
    assert tuner.threads == 1 and clock.now - before < 0.5  # well before the next 2 s


def test_prefill_and_scoring_steps_run_at_the_current_count(
    tuned: tuple[ThreadTuner, Clock, list[int]],
) -> None:
    tuner, clock, applied = tuned
    clock.now = 10.0  # a probe is due
    tuner.before(timed=True)
    assert applied[-1] == 1 and tuner.probing  # the probe's count, for a timed step
    tuner.before(timed=False)
    assert applied[-1] == 2 and not tuner.probing  # a prefill amid the probe: the current count


def test_threads_fixes_the_count(model_path: str) -> None:
    with inference.load_model(model_path, backend="llama_cpp", threads=1) as m:
        assert m._tuner is None  # type: ignore[attr-defined]
        assert m.generate("Hello", max_tokens=4, temperature=0).text()
    with inference.load_model(model_path, backend="llama_cpp") as m:
        assert isinstance(m._tuner, ThreadTuner)  # type: ignore[attr-defined]
