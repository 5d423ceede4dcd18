"""A deterministic fake backend: a real TextModel with no weights and no GPU.

Use it in your own tests::

    from inference.testing import FakeBackend
    model = FakeBackend(reply="Hello there.").load_model("any")
    assert model.generate("Hi").text() == "Hello there."

The fake tokenizer is byte-level (token id = byte value, 256 = end of
generation), so multi-byte UTF-8 really is split across tokens. Greedy
output is ``reply`` (a string, or a function of the prompt); with a
temperature above zero the bytes are drawn from a seeded generator, so the
same seed gives the same output. ``delay`` slows each token down, for tests
of cancellation and timeouts. ``chat_template`` replaces the default one
(a template that writes ``<think>`` makes a model that reasons).

Its distribution, for ``logprobs`` and scoring: at every step the logit of
the byte the reply would give next is 10 and every other logit is 0 (after a
context, the reply to that context comes next, repeated).
"""

from __future__ import annotations

import array
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import GenerationError, ModelLoadError
from ..options import GenerateConfig, LoadConfig, Option, load_config
from ..scoring import ScoringTextModel
from ..stream import StreamControl
from ..types import ModelInfo

if TYPE_CHECKING:
    from ..gguf import GGUFHeader

__all__ = ["EOS_ID", "ByteTokens", "FakeBackend", "FakeModel"]

EOS_ID = 256
VOCAB = 257
_HIGH = 10.0  # the expected byte's logit; every other logit is 0
_LOG_Z = math.log(math.exp(_HIGH) + VOCAB - 1)
DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog. Naïve café, 日本語. "


class ByteTokens:
    """A byte-level vocabulary for test models built on
    :class:`~inference.BaseTextModel` (mix it in first): token id = byte
    value; ids from 256 up have no text."""

    def _encode(self, text: str, add_bos: bool) -> list[int]:
        return list(text.encode("utf-8"))

    def _token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < 256:
            return bytes((token_id,))
        return b""


class FakeModel(ByteTokens, ScoringTextModel):
    """The fake backend's model. See the module docstring."""

    backend_name = "fake"

    def __init__(
        self,
        path: str,
        *,
        reply: str | Callable[[str], str] = DEFAULT_REPLY,
        delay: float = 0.0,
        context_length: int = 4096,
        repeat: bool = True,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(
            info=ModelInfo(
                architecture="fake",
                vocab_size=VOCAB,
                layers=1,
                hidden_size=8,
                context_length=context_length,
                backend="fake",
                path=path,
            ),
            eog_ids=(EOS_ID,),
            chat_template=chat_template,
            bos_token="",
            eos_token="",
        )
        self._reply = reply
        self._delay = delay
        self._repeat = repeat
        self.calls = 0
        self.released = False
        self._expected = EOS_ID  # the most likely token at the step just yielded

    def _reply_bytes(self, ids: Sequence[int]) -> bytes:
        reply = self._reply
        if callable(reply):
            reply = reply(bytes(ids).decode("utf-8", "replace"))
        return reply.encode("utf-8")

    def _generate_ids(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl
    ) -> Iterator[int]:
        if len(ids) > self._info.context_length:
            raise GenerationError(
                f"the prompt has {len(ids)} tokens; the context holds {self._info.context_length}"
            )
        self.calls += 1
        data = self._reply_bytes(ids)
        rng = random.Random(cfg.seed) if cfg.temperature > 0 else None
        produced = 0
        if not data:  # an empty reply: end at once instead of looping forever
            self._expected = EOS_ID
            yield EOS_ID
            return
        while True:
            for byte in data:
                if self._delay:
                    time.sleep(self._delay)
                self._expected = byte
                if rng is not None:
                    byte = rng.randrange(0x20, 0x7F)
                produced += 1
                yield byte
                if len(ids) + produced >= self._info.context_length:
                    return
            if not self._repeat:
                self._expected = EOS_ID
                yield EOS_ID
                return

    def _token_logprobs(self, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        return _logprob(token_id, self._expected), _top(self._expected, k)

    def _score_ids(
        self, pairs: Sequence[tuple[Sequence[int], int]], control: StreamControl
    ) -> list[tuple[list[float], bool]]:
        out = []
        for ids, n in pairs:
            head = list(ids[: len(ids) - n])
            data = list(self._reply_bytes(head)) or [EOS_ID]
            expected = [data[j % len(data)] for j in range(n)]
            tail = ids[len(ids) - n :]
            out.append(
                (
                    [_logprob(t, e) for t, e in zip(tail, expected, strict=True)],
                    list(tail) == expected,
                )
            )
            control.check()
        return out

    def _classify_ids(
        self, batch: Sequence[Sequence[int]], cfg: GenerateConfig, control: StreamControl
    ) -> list[tuple[int, Sequence[float] | None]]:
        out: list[tuple[int, Sequence[float] | None]] = []
        for ids in batch:
            data = self._reply_bytes(ids)
            tid = data[0] if data else EOS_ID
            logits = None
            if cfg.return_logits:
                logits = array.array("f", [0.0]) * VOCAB
                logits[tid] = 10.0
            out.append((tid, logits))
        return out

    def _memory(self) -> tuple[int | None, int | None]:
        return 1024, 2048

    def _release(self) -> None:
        self.released = True


def _logprob(token_id: int, expected: int) -> float:
    return (_HIGH if token_id == expected else 0.0) - _LOG_Z


def _top(expected: int, k: int) -> list[tuple[int, float]]:
    rest = (i for i in range(VOCAB) if i != expected)
    ids = [expected, *(next(rest) for _ in range(max(k - 1, 0)))][:k]
    return [(i, _logprob(i, expected)) for i in ids]


class FakeBackend:
    """A backend whose models are :class:`FakeModel`.

    ``available`` and ``reason`` are what the registry will see; ``formats``
    defaults to ``("fake",)`` so that it never takes a real model file
    unless asked for by name. ``declines`` makes its ``check_model`` refuse
    every model with that reason (``checks`` records what it was shown).
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        available: bool = True,
        reason: str = "always available (fake backend for tests)",
        priority: int = 0,
        formats: tuple[str, ...] = ("fake",),
        reply: str | Callable[[str], str] = DEFAULT_REPLY,
        delay: float = 0.0,
        context_length: int = 4096,
        repeat: bool = True,
        declines: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.name = name
        self.declines = declines
        self.checks: list[tuple[str, GGUFHeader | None]] = []
        self._available = available
        self.reason = reason
        self.priority = priority
        self.formats = formats
        self._model_args: dict[str, Any] = {
            "reply": reply,
            "delay": delay,
            "context_length": context_length,
            "repeat": repeat,
            "chat_template": chat_template,
        }
        self.loads: list[LoadConfig] = []

    def available(self) -> bool:
        return self._available

    def check_model(self, path: str, header: GGUFHeader | None) -> str | None:
        """None (it would load it) unless built with ``declines``."""
        self.checks.append((path, header))
        return self.declines

    def load_model(
        self, path: str | os.PathLike[str], *opts: Option | LoadConfig, **kwargs: Any
    ) -> FakeModel:
        cfg = load_config(*opts, **kwargs)
        text = os.fspath(path)
        if not text:
            raise ModelLoadError("the fake backend needs a non-empty path", path=text)
        self.loads.append(cfg)
        args = dict(self._model_args)
        if cfg.context_len:
            args["context_length"] = cfg.context_len
        return FakeModel(text, **args)
