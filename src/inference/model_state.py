"""ModelState: the front door every TextModel shares.

The four verbs' contract plumbing, written once for every backend: options
folded and checked, prompts and messages checked, the model open, anything
the model's :class:`~inference.Capabilities` lack refused with
:class:`~inference.UnsupportedOptionError`, an error raised before the
first token kept in ``err``; then one seam per verb. The model's facts, the
last call's ``err`` and ``metrics``, the closed flag and the
context-manager protocol. :class:`inference.base.BaseTextModel` implements
the seams over engine primitives; the remote ``openai`` backend over HTTP.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .capabilities import Capabilities, refuse_unsupported
from .constraints import constraint_of
from .embeddings import (
    Embeddings,
    EmbedInput,
    Ranking,
    check_documents,
    check_texts,
    cosine_ranking,
)
from .errors import InferenceError, ModelClosedError, UnsupportedOptionError
from .options import GenerateConfig, Option, generate_config
from .stream import StreamHolders, TokenStream
from .types import BatchResult, ClassifyResult, GenerateMetrics, Message, ModelInfo
from .values import is_int

__all__ = ["ModelState", "check_messages", "check_prompt_text", "check_prompts"]

_T = TypeVar("_T")
_A = TypeVar("_A")
_M = TypeVar("_M", bound="ModelState")


class ModelState:
    """The front door every TextModel shares: the four verbs' contract
    plumbing (options folded and checked, prompts and messages checked, the
    model open, an error before the first token kept in ``err``), its facts,
    the last call's ``err`` and ``metrics``, the closed flag and the
    context-manager protocol.

    Behind the door, one seam per verb: :meth:`_generate`, :meth:`_chat`,
    :meth:`_classify` and :meth:`_batch_generate`, given checked arguments
    and a folded config. :class:`BaseTextModel` implements them over engine
    primitives; the remote ``openai`` backend over HTTP. Subclasses call
    :meth:`_init_state` and implement the seams and ``close()``.
    """

    _info: ModelInfo

    def _init_state(self, info: ModelInfo) -> None:
        self._info = info
        self._closed = False
        self._err: BaseException | None = None
        self._metrics: GenerateMetrics | None = None
        self._holders = StreamHolders()
        self._caps: Capabilities | None = None

    # -- the four verbs -----------------------------------------------------

    def generate(self, prompt: str, *opts: Option | GenerateConfig, **kwargs: Any) -> TokenStream:
        """Stream the continuation of a raw text prompt."""
        cfg = generate_config(*opts, **kwargs)
        text = check_prompt_text(prompt)
        _chat_only(cfg, "generate")
        self._check_open()
        return self._door(self._generate, text, cfg)

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *opts: Option | GenerateConfig,
        **kwargs: Any,
    ) -> TokenStream:
        """Stream the assistant's reply, through the model's chat template."""
        cfg = generate_config(*opts, **kwargs)
        msgs = check_messages(messages)
        self._check_open()
        return self._door(self._chat, msgs, cfg)

    def classify(
        self, prompts: Sequence[str], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[ClassifyResult]:
        """One forward pass per prompt: the next token (and logits when asked)."""
        cfg = generate_config(*opts, **kwargs)
        if constraint_of(cfg) is not None:
            raise ValueError("classify takes no structured-output option")
        return self._prompts_door("classify", self._classify, prompts, cfg)

    def batch_generate(
        self, prompts: Sequence[str], *opts: Option | GenerateConfig, **kwargs: Any
    ) -> list[BatchResult]:
        """Generate for several prompts; each result carries its own error."""
        cfg = generate_config(*opts, **kwargs)
        return self._prompts_door("batch_generate", self._batch_generate, prompts, cfg)

    # -- embeddings and reranking ------------------------------------------------

    def embed(
        self,
        texts: str | Sequence[str | Sequence[int]],
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """One vector per text, in order (see :class:`~inference.Embedder`);
        a text may also be given as its token ids, embedded as they are.

        All the texts are embedded in one call, batched by the engine (many
        texts a forward pass); for more texts than fit in memory at once,
        :meth:`embed_batches` takes an iterable."""
        items = check_texts(texts)
        self._check_open()
        caps = self._embedding_caps("embed", "cannot embed text")
        if not isinstance(normalize, bool) or not isinstance(truncate, bool):
            raise InferenceError("normalize and truncate must be True or False")
        if dimensions is not None and (
            not is_int(dimensions) or not 1 <= dimensions <= caps.embedding_dimensions
        ):
            raise InferenceError(
                f"dimensions must be an integer from 1 to the model's "
                f"{caps.embedding_dimensions}; got {dimensions!r}"
            )
        if not items:
            return Embeddings(array("f"), dimensions or caps.embedding_dimensions, 0)
        return self._kept(lambda: self._embed(items, normalize, truncate, dimensions))

    def embed_batches(
        self, texts: Iterable[str], *, batch_size: int = 256, **options: Any
    ) -> Iterator[Embeddings]:
        """:meth:`embed` of ``texts`` ``batch_size`` at a time, as they are read
        from the iterable: a million texts never sit in memory at once."""
        if not is_int(batch_size) or batch_size < 1:
            raise InferenceError(f"batch_size must be a positive integer; got {batch_size!r}")
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == batch_size:
                yield self.embed(batch, **options)
                batch = []
        if batch:
            yield self.embed(batch, **options)

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None) -> Ranking:
        """The documents best first (see :class:`~inference.Reranker`)."""
        q, docs = check_documents(query, documents, top_n)
        self._check_open()
        self._embedding_caps("rerank", "cannot rerank documents")
        ranking = self._kept(lambda: self._rerank(q, docs))
        if top_n is None or top_n >= len(ranking):
            return ranking
        return Ranking(ranking.results[:top_n], ranking.method)

    def _embedding_caps(self, verb: str, why: str) -> Capabilities:
        caps = self.capabilities
        if not getattr(caps, verb):
            backend, label = self._refusal_names()
            refused = UnsupportedOptionError(f"{label} {why}", option=verb, backend=backend)
            self._err = refused
            raise refused
        return caps

    def _kept(self, work: Callable[[], _T]) -> _T:
        """``work()``, its InferenceError kept in ``err``."""
        try:
            return work()
        except InferenceError as exc:
            self._err = exc
            raise

    def _prompts_door(
        self,
        verb: str,
        seam: Callable[[list[str], GenerateConfig], list[_T]],
        prompts: Sequence[str],
        cfg: GenerateConfig,
    ) -> list[_T]:
        """The front door of a verb over several raw prompts."""
        items = check_prompts(prompts)
        _chat_only(cfg, verb)
        self._check_open()
        return self._door(seam, items, cfg) if items else []

    def _door(self, seam: Callable[[_A, GenerateConfig], _T], arg: _A, cfg: GenerateConfig) -> _T:
        """Check what the model can honour, then call a seam; an error raised
        at once (before any stream) is kept in ``err``."""
        try:
            self._check_options(cfg)
            return seam(arg, cfg)
        except InferenceError as exc:
            self._err = exc
            raise

    @property
    def capabilities(self) -> Capabilities:
        """What this model can do (:class:`~inference.Capabilities`), fixed
        when it was loaded; a call that asks for anything else is refused
        with :class:`~inference.UnsupportedOptionError` before any work."""
        caps = self._caps
        if caps is None:
            caps = self._caps = self._capabilities()
        return caps

    def _capabilities(self) -> Capabilities:
        """Work out :attr:`capabilities` (once). Override."""
        return Capabilities(context_length=self._info.context_length)

    def _refusal_names(self) -> tuple[str, str]:
        """How a refusal names the model: its backend (or server kind), and
        the label its message shows."""
        backend = self._info.backend or "this backend"
        return backend, backend

    def _check_options(self, cfg: GenerateConfig) -> None:
        """Refuse, before anything runs, what this model cannot honour."""
        backend, label = self._refusal_names()
        refuse_unsupported(cfg, self.capabilities, backend, label=label)

    # -- the seams (implement) -------------------------------------------------

    def _generate(self, prompt: str, cfg: GenerateConfig) -> TokenStream:
        raise NotImplementedError

    def _chat(self, messages: list[Message], cfg: GenerateConfig) -> TokenStream:
        raise NotImplementedError

    def _classify(self, prompts: list[str], cfg: GenerateConfig) -> list[ClassifyResult]:
        raise NotImplementedError

    def _batch_generate(self, prompts: list[str], cfg: GenerateConfig) -> list[BatchResult]:
        raise NotImplementedError

    def _embed(
        self, texts: list[EmbedInput], normalize: bool, truncate: bool, dimensions: int | None
    ) -> Embeddings:
        raise NotImplementedError

    def _rerank(self, query: str, documents: list[str]) -> Ranking:
        """A bi-encoder's ranking: cosine similarity of the embeddings.
        Override where the model has a classification head."""
        got = self._embed([query, *documents], True, True, None)
        vectors = got.vectors
        return Ranking(tuple(cosine_ranking(vectors[0], vectors[1:], documents)), "cosine")

    # -- facts -------------------------------------------------------------------

    @property
    def model_type(self) -> str:
        return self._info.architecture

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def metrics(self) -> GenerateMetrics | None:
        return self._metrics

    @property
    def err(self) -> BaseException | None:
        return self._err

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the model is closed")

    def _record(self, err: BaseException | None, metrics: GenerateMetrics | None) -> None:
        """Keep the outcome of a finished call as ``err`` and ``metrics``."""
        self._err = err
        if metrics is not None:
            self._metrics = metrics


def _chat_only(cfg: GenerateConfig, verb: str) -> None:
    """ValueError for the options that only ``chat`` takes."""
    if cfg.tools or cfg.enable_thinking is not None or cfg.template_vars:
        raise ValueError(f"tools, thinking and template_vars apply to chat(), not {verb}()")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a list, or TypeError for a lone str or a non-str item."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, not a single str")
    items = list(prompts)
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be str; got {type(p).__name__}")
    return items


def check_messages(messages: Iterable[Message | Mapping[str, Any]]) -> list[Message]:
    """``messages`` as Messages (dicts are converted); ValueError if none or invalid."""
    msgs = [Message.coerce(m) for m in messages]
    if not msgs:
        raise ValueError("chat needs at least one message")
    return msgs


def check_prompt_text(prompt: object) -> str:
    """``prompt`` itself, or TypeError if it is not a str."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str; got {type(prompt).__name__}")
    return prompt
