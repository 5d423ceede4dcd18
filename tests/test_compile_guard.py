"""Compiling a constraint is bounded in memory and time, off the caller's
process, cancellable, and refused with the limit it overran."""

from __future__ import annotations

import json
import resource
import threading

import pytest

from inference import ConstraintError
from inference import compile_guard as cg
from inference.compile_guard import Limits
from inference.constraints import Constraint

pytest.importorskip("llguidance")

from inference import guidance


def exploding(patterns: int) -> str:
    """The fault-finding pass's schema: an ``allOf`` of ``.*N.*`` patterns,
    whose compilation about doubles its memory with each one (18: 2.4 GB)."""
    schema = {"allOf": [{"type": "string", "pattern": f".*{i}.*"} for i in range(patterns)]}
    return guidance.grammar_for(Constraint("json_schema", schema))


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10


def test_a_schema_that_outgrows_the_memory_limit_is_refused() -> None:
    before = peak_mib()
    with pytest.raises(ConstraintError, match="needed more than 256 MiB"):
        cg.check(exploding(22), Limits(seconds=600, memory=256 << 20))
    assert peak_mib() - before < 100  # the work was the worker's, not ours


def test_a_schema_that_outruns_the_deadline_is_refused() -> None:
    with pytest.raises(ConstraintError, match=r"did not compile within 0\.5 s"):
        cg.check(exploding(22), Limits(seconds=0.5, memory=64 << 30))
    # Not remembered: under less load it might compile in time.
    assert not any(v.startswith(cg._LATE) for v in cg._guard._verdicts.values())


def test_a_check_ends_when_its_caller_gives_up() -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(ConstraintError, match="cancelled"):
        cg.check(exploding(22), Limits(seconds=600, memory=64 << 30), cancel)


def test_good_grammars_pass_bad_ones_name_the_fault_and_verdicts_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []
    real = cg._Guard._compile

    def counting(self: cg._Guard, grammar: str, *rest: object) -> str:
        compiled.append(grammar)
        return real(self, grammar, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(cg._Guard, "_compile", counting)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7919}}}
    good = guidance.grammar_for(Constraint("json_schema", schema))
    limits = Limits()
    cg.check(good, limits)
    cg.check(good, limits)  # from the cache
    bad = json.dumps({"grammars": [{"lark_grammar": "start: missing"}]})
    for _ in range(2):
        with pytest.raises(ConstraintError) as err:
            cg.check(bad, limits)
        assert "missing" in str(err.value)
    assert compiled == [good, bad]


def test_the_limits_are_load_options() -> None:
    from inference.options import load_config

    cfg = load_config(constraint_timeout=2.5, constraint_memory_mib=64)
    assert (cfg.constraint_timeout, cfg.constraint_memory_mib) == (2.5, 64)
    with pytest.raises(ValueError, match="constraint_timeout"):
        load_config(constraint_timeout=0)
    from inference.options import CONSTRAINT_MEMORY_MIB, CONSTRAINT_SECONDS

    default = load_config()
    assert Limits() == Limits(default.constraint_timeout, default.constraint_memory_mib << 20)
    assert (CONSTRAINT_SECONDS, CONSTRAINT_MEMORY_MIB) == (10.0, 1024)  # docs/server.md says so


def test_an_idle_worker_killed_from_outside_is_not_taken_for_a_verdict() -> None:
    schema = {"type": "object", "properties": {"k": {"type": "string", "pattern": "^x+$"}}}
    grammar = guidance.grammar_for(Constraint("json_schema", schema))
    cg.check(grammar, Limits(seconds=30, memory=512 << 20))  # leaves a worker idle
    idle = [w for w in cg._guard._idle if w.memory == 512 << 20]
    assert idle
    for w in idle:
        w.proc.kill()
        w.proc.wait()
    other = guidance.grammar_for(Constraint("regex", "[a-z]{1,7}q"))
    cg.check(other, Limits(seconds=30, memory=512 << 20))  # a fresh worker, no false refusal
