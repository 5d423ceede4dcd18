"""Optional: a grammar compiled first in a worker process, within a memory
limit and a deadline, before the model's process compiles it.

llguidance bounds each decoding step (its lexer fuel, its Earley items) but
not the regular-expression analysis it runs while compiling a grammar: a
JSON schema whose ``allOf`` intersects ``.*0.*``, ``.*1.*``, ... about doubles
its memory with each pattern (2.4 GB and 24 s for 18 of them), inside one
call that nothing in the process can interrupt. So :func:`check` compiles
the grammar in a worker process first: one that passes is compiled again in
the process (taking about what it took there), one that overruns is killed
and refused with :class:`~inference.ConstraintError` naming the limit.

The worker is capped with ``RLIMIT_AS`` where the platform enforces it
(Linux); elsewhere only the deadline applies. Idle workers are kept for the
next check, and verdicts are cached by the grammar's digest, so a schema sent
again costs nothing. The wait polls ``cancel``, so a caller that gives up
(a client gone) ends its check at once.

The worker runs ``python -m inference.compile_guard MEMORY``: one JSON
string (a grammar) per line in, one JSON object per line out.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from .errors import ConstraintError
from .options import CONSTRAINT_MEMORY_MIB, CONSTRAINT_SECONDS

__all__ = ["Limits", "check"]

#: Verdicts remembered, by grammar digest.
_CACHE_SIZE = 512
#: Workers compiling at once (a check beyond waits its turn) and kept idle.
_WORKERS = 2
#: The most of llguidance's message a refusal quotes.
_MAX_ERROR = 2000
#: How often a waiting check looks at its deadline and its cancel event.
_POLL = 0.02


@dataclass(frozen=True)
class Limits:
    """What compiling one grammar may cost: ``seconds`` of time and ``memory``
    bytes of address space beyond what the worker holds once started."""

    seconds: float = CONSTRAINT_SECONDS
    memory: int = CONSTRAINT_MEMORY_MIB << 20


class _Worker:
    """One worker process and the thread that reads its answers."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        # The worker imports this very package, wherever it was found.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inference.compile_guard", str(memory)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self.answers: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(
            target=_read_lines, args=(self.proc.stdout, self.answers), daemon=True
        ).start()

    def ask(self, grammar: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(grammar) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _read_lines(pipe: IO[str], into: queue.Queue[str | None]) -> None:
    try:
        for line in pipe:
            into.put(line)
    except (OSError, ValueError):
        pass
    into.put(None)  # the worker ended


class _Guard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._turns = threading.BoundedSemaphore(_WORKERS)
        self._verdicts: collections.OrderedDict[tuple[bytes, Limits], str] = (
            collections.OrderedDict()
        )

    def check(self, grammar: str, limits: Limits, cancel: threading.Event | None) -> None:
        key = (hashlib.sha256(grammar.encode("utf-8", "surrogatepass")).digest(), limits)
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self._verdicts.move_to_end(key)
        if verdict is None:
            verdict = self._run(grammar, limits, cancel)
            if verdict is _CANCELLED:
                raise ConstraintError("the constraint's check was cancelled")
            if not verdict.startswith(_LATE):  # how long it took depends on the load
                with self._lock:
                    self._verdicts[key] = verdict
                    while len(self._verdicts) > _CACHE_SIZE:
                        self._verdicts.popitem(last=False)
        if verdict:
            raise ConstraintError(verdict)

    def _run(self, grammar: str, limits: Limits, cancel: threading.Event | None) -> str:
        """'' if ``grammar`` compiles within ``limits``, else why not."""
        while not self._turns.acquire(timeout=_POLL):
            if cancel is not None and cancel.is_set():
                return _CANCELLED
        try:
            return self._compile(grammar, limits, cancel)
        finally:
            self._turns.release()

    def _compile(self, grammar: str, limits: Limits, cancel: threading.Event | None) -> str:
        worker = self._take(limits.memory)
        try:
            worker.ask(grammar)
        except OSError:  # died since it was last used
            worker.kill()
            worker = _Worker(limits.memory)
            worker.ask(grammar)
        deadline = time.monotonic() + limits.seconds
        while True:
            try:
                line = worker.answers.get(timeout=_POLL)
                break
            except queue.Empty:
                if cancel is not None and cancel.is_set():
                    worker.kill()
                    return _CANCELLED
                if time.monotonic() > deadline:
                    worker.kill()
                    return (
                        f"{_LATE} {limits.seconds:g} s "
                        "(the limit on compiling a constraint); simplify the schema or pattern"
                    )
        if line is None:  # killed by its memory limit, mostly
            worker.kill()
            return (
                f"compiling the constraint needed more than {limits.memory >> 20} MiB "
                "(the limit on compiling a constraint); simplify the schema or pattern"
            )
        self._give_back(worker)
        answer = json.loads(line)
        return str(answer.get("error") or "")

    def _take(self, memory: int) -> _Worker:
        with self._lock:
            for w in [w for w in self._idle if w.proc.poll() is not None]:
                self._idle.remove(w)  # ended while idle (killed from outside)
                w.kill()
            for i, w in enumerate(self._idle):
                if w.memory == memory:
                    return self._idle.pop(i)
        return _Worker(memory)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < _WORKERS:
                self._idle.append(worker)
                return
        worker.kill()


#: A verdict no cache keeps: the caller gave up.
_CANCELLED = "\0cancelled"
#: How a refusal for time begins (not cached: another time it may compile).
_LATE = "the constraint did not compile within"

_guard = _Guard()


def check(grammar: str, limits: Limits, cancel: threading.Event | None = None) -> None:
    """Return if ``grammar`` compiles within ``limits``; ConstraintError with
    the reason (llguidance's message, or the limit it overran) if not, or
    if ``cancel`` is set first."""
    _guard.check(grammar, limits, cancel)


# -- the worker -------------------------------------------------------------------


def _limit_memory(extra: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: the deadline alone bounds it
        return
    held = _address_space()
    if held is None:
        return
    limit = held + extra
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _address_space() -> int | None:
    """This process's address space in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _serve(memory: int) -> None:
    import llguidance

    # Errors name the fault, never the grammar or the parser's state.
    limits: Any = llguidance.LLParserLimits(verbose_errors=False)
    _limit_memory(memory)
    for line in sys.stdin:
        grammar = json.loads(line)
        try:
            error = llguidance.LLMatcher.validate_grammar(grammar, limits=limits)
        except MemoryError:
            sys.exit(1)
        except Exception as exc:
            error = str(exc)
        # The caller's own fault, for the caller: whole, but bounded.
        sys.stdout.write(json.dumps({"error": error.strip()[:_MAX_ERROR]}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
