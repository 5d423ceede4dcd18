"""Optional: the constraint engine of the in-process backends, on llguidance.

Imports ``llguidance`` and ``numpy`` (dependencies of the backend
distributions, never of the core). One grammar per call
(:func:`grammar_for`), one :class:`Guide` per stream: before each step it
gives the mask of the tokens the constraint allows, and it consumes each
sampled token. Every in-process backend (``llama_cpp``, ``rocm``, ``mlx``)
builds its guides here, over the model's own vocabulary as llguidance reads
it (``llguidance.llamacpp`` from llama.cpp's vocabulary, ``llguidance.hf``
from a Hugging Face tokenizer), so multi-byte characters split across
tokens are allowed exactly where they complete, and special tokens are
never allowed inside the text.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import numpy as np

from .constraints import JSON_LAYOUT, Constraint
from .errors import ConstraintError, GenerationError

__all__ = ["Guide", "grammar_for", "guide"]


def grammar_for(constraint: Constraint) -> str:
    """llguidance's grammar for ``constraint``; ConstraintError with
    llguidance's own message when the schema, pattern or grammar is bad."""
    kind, value = constraint.kind, constraint.value
    try:
        if kind == "json_schema":
            schema = json.dumps(dict(value))
            return str(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_LAYOUT))
        if kind == "json_object":
            schema = '{"type": "object"}'
            return str(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_LAYOUT))
        if kind == "regex":
            return str(llguidance.LLMatcher.grammar_from_regex(value))
        if kind == "choice":
            lark = "start: " + " | ".join(json.dumps(x) for x in value)
            return str(llguidance.LLMatcher.grammar_from_lark(lark))
        if kind == "grammar":
            return str(llguidance.LLMatcher.grammar_from_lark(value))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConstraintError(f"{kind}: {exc}") from None
    raise ConstraintError(f"unknown constraint {kind!r}")


_LAYOUT: Any = JSON_LAYOUT  # llguidance's JsonCompileOptions
#: llguidance's default limits, with errors that name the fault but never
#: the grammar or the parser's state (another caller's schema, in a batch).
_QUIET: Any = llguidance.LLParserLimits(verbose_errors=False)


class Guide:
    """One stream's constraint state over a vocabulary of ``n_vocab`` tokens.

    ``allowed()`` is the boolean mask of the next step (a NumPy array of
    ``n_vocab``); ``mask(logits)`` sets every other logit to -inf in place;
    ``consume(token)`` advances past a sampled token; ``stopped`` is True
    once the constraint is complete and nothing but the end may follow.
    """

    __slots__ = ("_bits", "_bool", "_matcher", "_n_vocab", "failure", "steps", "stopped")

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._bits = np.zeros(((n_vocab + 31) // 32,), dtype=np.int32)
        self._bool = np.zeros(n_vocab, dtype=bool)
        self.steps = 0
        #: True once the constraint is complete. A plain attribute, set by
        #: the thread that consumes tokens, so that another thread may read
        #: it without touching the matcher (which allows one borrower).
        self.stopped = False
        #: The error that ended this constraint, where an engine records it
        #: rather than raising inside a step shared with other sequences.
        self.failure: GenerationError | None = None

    def allowed(self) -> Any:
        """The tokens allowed next, as a bool array (shared: copy to keep it)."""
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if m.is_error():
            raise GenerationError(f"the constraint engine failed: {_first_line(m.get_error())}")
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
        np.not_equal(bits[: self._n_vocab], 0, out=self._bool)
        return self._bool

    def mask(self, logits: Any) -> None:
        """Set the logits of every token the constraint forbids to -inf."""
        allowed = self.allowed()
        n = min(len(logits), self._n_vocab)
        np.putmask(logits[:n], ~allowed[:n], -np.inf)
        if len(logits) > n:
            logits[n:] = -np.inf

    def consume(self, token: int) -> None:
        """Advance past ``token``; GenerationError if the constraint forbids it."""
        self.steps += 1
        m = self._matcher
        if not m.consume_token(token):
            why = _first_line(m.get_error())
            raise GenerationError(f"the constraint engine refused token {token}: {why}")
        self.stopped = bool(m.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self._matcher.is_accepting())


def _first_line(error: str) -> str:
    """llguidance's error without the parser state it dumps after it (which
    holds the grammar and the tokens so far: not for a client's eyes)."""
    return error.strip().splitlines()[0] if error.strip() else "unknown error"


def guide(tokenizer: Any, grammar: str, n_vocab: int) -> Guide:
    """A fresh :class:`Guide` for ``grammar`` over llguidance ``tokenizer``;
    ConstraintError with llguidance's message if the grammar does not compile."""
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=_QUIET)
    if matcher.is_error():
        raise ConstraintError(matcher.get_error())
    return Guide(matcher, n_vocab)
