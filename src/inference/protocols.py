"""The contract between programs and backends, as typing Protocols.

A program holds a :class:`TextModel`; a backend is a :class:`Backend`.
What a model can do is stated once, in its ``capabilities``
(:class:`~inference.Capabilities`); the optional verbs (such as
:class:`Tokenizer` and :class:`Scorer`) are separate protocols, and
``isinstance(model, Scorer)`` agrees with ``model.capabilities.scoring``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from .capabilities import Capabilities
    from .embeddings import Embeddings, Ranking
    from .options import GenerateConfig, LoadConfig, Option
    from .stream import TokenStream
    from .types import (
        BatchResult,
        ClassifyResult,
        GenerateMetrics,
        Message,
        ModelInfo,
        RollingScore,
        ScoreResult,
    )

__all__ = ["Backend", "Embedder", "Reranker", "Scorer", "TextModel", "Tokenizer"]


@runtime_checkable
class TextModel(Protocol):
    """A loaded language model that streams tokens.

    Every method takes options from the ``with_*`` builders and the same
    settings as keyword arguments. Calls on one model from many threads are
    safe: they are serialised (or spread over the backend's parallel slots),
    never interleaved inside the engine.
    """

    def generate(self, prompt: str, *opts: Option | GenerateConfig, **kwargs: Any) -> TokenStream:
        """Stream the continuation of a raw text prompt."""
        ...

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *opts: Option | GenerateConfig,
        **kwargs: Any,
    ) -> TokenStream:
        """Stream the assistant's reply, through the model's own chat template."""
        ...

    def classify(
        self, prompts: Sequence[str], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[ClassifyResult]:
        """One forward pass per prompt: the next token (and logits when asked)."""
        ...

    def batch_generate(
        self, prompts: Sequence[str], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[BatchResult]:
        """Generate for several prompts; each result carries its own error."""
        ...

    @property
    def model_type(self) -> str:
        """Architecture family, e.g. "llama" or "qwen3"."""
        ...

    @property
    def info(self) -> ModelInfo:
        """Facts about the loaded model."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What the model can do; a call asking for anything else is refused
        with UnsupportedOptionError before any work."""
        ...

    @property
    def metrics(self) -> GenerateMetrics | None:
        """Metrics of the last finished call, or None before the first."""
        ...

    @property
    def err(self) -> BaseException | None:
        """The exception of the last call, or None if it succeeded."""
        ...

    def close(self) -> None:
        """Free the model's memory. Idempotent; later calls raise."""
        ...

    def __enter__(self) -> TextModel: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Optional capability: the model's own tokenizer."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS; special-token text is parsed."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Optional capability: the log-likelihood of text, without generating.

    The token boundary between ``context`` and ``continuation`` follows
    lm-evaluation-harness: spaces that end the context move to the start of
    the continuation, the whole text is tokenised once, and the continuation's
    tokens are those after the context's own tokens; an empty context scores
    the continuation after the BOS (or EOS) token. Failures raise
    :class:`~inference.InferenceError` subclasses, and leave the model ready.
    """

    def score(self, context: str, continuation: str) -> ScoreResult:
        """The log-probabilities of ``continuation``'s tokens after ``context``."""
        ...

    def score_batch(self, pairs: Sequence[tuple[str, str]]) -> list[ScoreResult]:
        """:meth:`score` of many ``(context, continuation)`` pairs, batched
        where the engine batches; results in the order of ``pairs``."""
        ...

    def score_rolling(self, text: str) -> RollingScore:
        """The log-likelihood of all of ``text``, in windows of the context length."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """Optional capability: vectors for texts (``capabilities.embed``).

    Every model of this library has the verb; one whose capabilities lack
    ``embed`` refuses it with :class:`~inference.UnsupportedOptionError`.
    """

    def embed(
        self,
        texts: str | Sequence[str | Sequence[int]],
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """One vector per text, in order (one string is one text; a text may
        be its token ids, embedded as they are): pooled as
        the model says, cut to ``dimensions`` and normalised to unit length
        unless told not to; a text longer than the context is cut to it
        (``truncate``) or refused."""
        ...


@runtime_checkable
class Reranker(Protocol):
    """Optional capability: documents ordered by relevance to a query
    (``capabilities.rerank``); refused as :class:`Embedder` is."""

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None) -> Ranking:
        """The documents best first (the ``top_n`` best), each with its index,
        score and text, and how they were scored."""
        ...


@runtime_checkable
class Backend(Protocol):
    """An engine that loads models.

    Beyond these three members the registry reads optional attributes,
    documented in ``docs/backends.md``: ``priority`` (int, higher wins),
    ``formats`` (e.g. ``("gguf",)``), ``reason`` (one line: why it is or is
    not available, read after :meth:`available`), ``aliases``, ``extra``
    (the ``pip install 'inference[extra]'`` that installs it) and
    ``check_model(path, header)``: a cheap look at a model before any weights
    are read (``header`` is the file's :class:`~inference.gguf.GGUFHeader`
    for GGUF files, else None) that returns None when the backend would load
    it, or a one-line reason why not, so that ``load_model`` tries the next.
    """

    name: str

    def available(self) -> bool:
        """Whether this backend can run here, now. Must be cheap and never raise."""
        ...

    def load_model(
        self,
        path: str | os.PathLike[str],
        *opts: Option | LoadConfig,
        **kwargs: Any,
    ) -> TextModel:
        """Load the model at ``path``; raise ModelLoadError on failure."""
        ...
