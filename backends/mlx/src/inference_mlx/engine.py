"""The MLX engine: a model run through mlx-lm on MLX's device.

:class:`MlxModel` is an :class:`inference.BaseTextModel` (and, through
:class:`inference.scoring.ScoringTextModel`, an :class:`inference.Scorer`) with a dedicated
engine thread (MLX streams belong to the thread that uses them), so every
MLX call of a model runs there, one at a time. What it adds:

- loading (:mod:`inference_mlx.loading`): an MLX / Hugging Face model
  folder, or a GGUF file;
- streams batched together (:mod:`inference_mlx.batching`): each stream's
  ``_generate_ids`` hands its sequence to one mlx-lm ``BatchGenerator``
  stepped on the engine thread, with mlx-lm's own sampler and logits
  processors (:mod:`inference_mlx.sampling`), cancellable between prefill
  chunks and between tokens, reusing the last sequence's KV cache
  (:mod:`inference_mlx.prompt_cache`): a call whose prompt shares a prefix
  with it (the next turn of a chat) prefills only the rest, from a running
  sequence's cache, a kept one, or (with ``cache_dir``) one on disk; each
  prompt of ``batch_generate`` is such a stream too; with
  ``speculative="ngram"`` or ``draft_model=``, a stream decoding alone has
  guesses checked (:mod:`inference_mlx.speculative`);
- ``_classify_ids`` as one batched forward pass over right-padded prompts in
  the model's batched caches (``BatchKVCache``...), the padding masked, as
  mlx-lm's batch generator does;
- token text from a byte table (:mod:`inference_mlx.tokens`), not from
  mlx-lm's detokenisers, so a stream's texts add up to the generated text.
"""

from __future__ import annotations

import array
import functools
import gc
import importlib.metadata
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar, cast

from inference import env
from inference.capabilities import Capabilities
from inference.disk_cache import DiskCache, fingerprint
from inference.embeddings import Embeddings, EmbedInput, finish
from inference.errors import GenerationError, UnsupportedOptionError
from inference.options import GenerateConfig, LoadConfig
from inference.scoring import IdPair, ScoringTextModel
from inference.speculation import DEFAULT_DRAFT_MAX
from inference.stream import StreamControl

from . import loading
from .batching import Scheduler, SeqState
from .detect import MlxDevice
from .prompt_cache import PromptCache
from .sampling import sampling
from .speculative import Drafter, Speculation
from .tokens import TokenTable, _unwrap

__all__ = ["PREFILL_STEP_SIZE", "MlxModel"]

_log = logging.getLogger("inference.mlx")

#: Prompt tokens run through the model per step of a prefill. A call can be
#: cancelled between steps; mlx-lm's own default is 2048.
PREFILL_STEP_SIZE = 512
#: Padded tokens per forward pass when scoring (the pass holds their logits).
SCORE_BATCH_TOKENS = 1024


def _score_groups(lengths: Sequence[int], budget: int) -> Iterator[list[int]]:
    """Indices of ``lengths`` in groups whose padded size stays within ``budget``
    (a longer sequence goes alone), longest first, so that padding is small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    group: list[int] = []
    for i in order:
        width = lengths[group[0]] if group else lengths[i]
        if group and width * (len(group) + 1) > budget:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


class MlxModel(ScoringTextModel):
    """A model loaded into MLX. Use :meth:`load` (or ``inference.load_model``)."""

    backend_name: ClassVar[str] = "mlx"

    def __init__(self, loaded: loading.Loaded, draft: Any = None) -> None:
        """Wrap a model :func:`inference_mlx.loading.load` loaded (and the
        draft model's module, with ``draft_model=``)."""
        info, wrapper = loaded.info, loaded.wrapper
        width = max(1, loaded.batch_size)
        tokenizer = _unwrap(wrapper)
        bos = getattr(tokenizer, "bos_token", None)
        eos = getattr(tokenizer, "eos_token", None)
        template = loading.chat_template(tokenizer)
        super().__init__(
            info=info,
            eog_ids=loading.eos_ids(wrapper, tokenizer),
            chat_template=template,
            vocabulary=() if template else loading.vocabulary(tokenizer),
            bos_token=bos if isinstance(bos, str) else "",
            eos_token=eos if isinstance(eos, str) else "",
            add_bos=loading.adds_bos(tokenizer),
            engine_thread=True,
            stream_width=width,
            load=loaded.cfg,
        )
        self._model: Any = loaded.model
        self._wrapper: Any = wrapper
        self._tokenizer: Any = tokenizer
        bos_id = getattr(tokenizer, "bos_token_id", None)
        self._bos_id: int | None = bos_id if isinstance(bos_id, int) else None
        #: Finished sequences' KV caches and the tokens each holds.
        self._prompt_cache = PromptCache(loaded.cfg.cache_host_mib << 20, _disk_cache(loaded))
        self._table = TokenTable(tokenizer)
        self._device = loaded.device
        self._cpu_only = loaded.cpu_only
        self._mx_stream: Any = None  # made on first use
        self._last_token_pooling = loaded.cfg.pooling == "last"
        #: Speculative decoding: one of inference.options.SPECULATION, or "".
        self._speculation = loaded.cfg.speculation
        drafter = Drafter(draft, prefill_step_size=PREFILL_STEP_SIZE) if draft else None
        assert self._engine is not None
        self._scheduler = Scheduler(
            engine=self._engine,
            model=self._live,
            stream=self._stream_for_engine,
            cache=self._prompt_cache,
            vocab_size=info.vocab_size,
            width=width,
            prefill_step_size=PREFILL_STEP_SIZE,
            drafter=drafter,
        )

    # -- loading ----------------------------------------------------------

    @classmethod
    def load(cls, path: str, cfg: LoadConfig, *, device: MlxDevice | None = None) -> MlxModel:
        """Load the folder or GGUF file at ``path`` (and the draft model
        ``cfg.draft_model`` names); ModelLoadError on failure, and
        UnsupportedOptionError for speculation the model cannot do."""
        loaded = loading.load(path, cfg, device=device)
        if not (cfg.speculative or cfg.draft_model):
            return cls(loaded)
        from inference.speculation import check_vocabulary

        from .speculative import tokens_by_id, unable

        why = unable(loaded.model)
        if why:
            raise UnsupportedOptionError(
                f"{path} cannot decode speculatively: {why}",
                option="draft_model" if cfg.draft_model else "speculative",
                backend="mlx",
            )
        if not cfg.draft_model:
            return cls(loaded)
        plain = replace(cfg, draft_model="", speculative="", adapter_path="", cache_dir="")
        draft = loading.load(cfg.draft_model, plain, device=device)
        check_vocabulary(
            tokens_by_id(loading.vocabulary(_unwrap(loaded.wrapper))),
            tokens_by_id(loading.vocabulary(_unwrap(draft.wrapper))),
            cfg.draft_model,
            "mlx",
        )
        why = unable(draft.model)
        if why:
            raise UnsupportedOptionError(
                f"{cfg.draft_model} cannot be the draft model: {why}",
                option="draft_model",
                backend="mlx",
            )
        return cls(loaded, draft.model)

    # -- primitives -----------------------------------------------------------

    def _encode(self, text: str, add_bos: bool) -> list[int]:
        ids = [int(i) for i in self._tokenizer.encode(text, add_special_tokens=False)]
        if add_bos and self._bos_id is not None and (not ids or ids[0] != self._bos_id):
            ids.insert(0, self._bos_id)
        return ids

    def _encode_literal(self, text: str) -> list[int]:
        # Hugging Face's tokenizers read special-token text as those tokens
        # unless asked to split it like any other text.
        ids = self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        return [int(i) for i in ids]

    def _token_bytes(self, token_id: int) -> bytes:
        return self._table(token_id)

    @property
    def device(self) -> str:
        """The MLX device the model runs on: ``"metal"``, ``"cuda"`` or ``"cpu"``."""
        return "cpu" if self._cpu_only else self._device

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, as the tokenizer itself decodes it.

        Sentencepiece tokenizers with a dummy prefix drop the space their
        first word carries, so ``decode(encode(text)) == text``; the streamed
        token texts keep it, as llama.cpp's do.
        """
        text = super().decode(ids)
        if self._table.strips_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    def _stream_for_engine(self) -> Any:
        """The MLX stream this model's work runs on.

        mlx-lm's own generation stream (thread-local, on the default device),
        or one on the CPU device when the model was loaded with
        ``gpu_layers=0``.
        """
        if self._mx_stream is None:
            import mlx.core as mx
            from mlx_lm.generate import generation_stream

            if self._cpu_only and mx.default_device() != mx.cpu:
                self._mx_stream = mx.new_thread_local_stream(mx.cpu)
            else:
                self._mx_stream = generation_stream
        return self._mx_stream

    def _remaining(self, prompt_len: int) -> int:
        ctx = self._info.context_length
        return max(ctx - prompt_len, 0) if ctx else -1

    def _seed(self, cfg: GenerateConfig) -> None:
        if cfg.seed is not None:
            import mlx.core as mx

            mx.random.seed(cfg.seed)

    def _generate_ids(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl
    ) -> Iterator[int]:
        budget = self._remaining(len(ids))
        limit = cfg.max_tokens if budget < 0 else min(cfg.max_tokens, budget)
        if limit <= 0:
            return
        stop_ids = self._eog_ids | frozenset(cfg.stop_tokens)
        spec = None
        if self._speculation and cfg.speculative is not False:
            spec = Speculation(self._speculation, draft_max=cfg.draft_max or DEFAULT_DRAFT_MAX)
        state = SeqState(cfg, spec)
        yield from self._scheduler.generate(
            ids, control, limit=limit, stop_ids=stop_ids, logprobs=cfg.logprobs, state=state
        )

    def _guidance_tokenizer(self) -> Any:
        import llguidance.hf

        return llguidance.hf.from_tokenizer(
            self._tokenizer, n_vocab=self._info.vocab_size or None, eos_token=sorted(self._eog_ids)
        )

    def _token_logprobs(self, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        return self._scheduler.last_logprobs()  # worked out on the engine thread

    def _score_ids(
        self, pairs: Sequence[IdPair], control: StreamControl
    ) -> list[tuple[list[float], bool]]:
        """Right-padded groups of pairs through the model in one forward pass
        each, without a KV cache; the log-softmax is taken only at the
        positions that predict a continuation token."""
        import mlx.core as mx
        from mlx_lm.generate import wired_limit

        model = self._live()
        stream = self._stream_for_engine()
        out: list[tuple[list[float], bool]] = [([], True) for _ in pairs]
        order = [i for i, (ids, n) in enumerate(pairs) if n and len(ids) > 1]
        with wired_limit(model, [stream]), mx.stream(stream):
            for group in _score_groups([len(pairs[i][0]) - 1 for i in order], SCORE_BATCH_TOKENS):
                members = [order[j] for j in group]
                fed = [list(pairs[i][0][:-1]) for i in members]
                width = max(len(f) for f in fed)
                logits = model(mx.array([f + [0] * (width - len(f)) for f in fed]))
                picked = []
                for row, i in enumerate(members):
                    ids, n = pairs[i]
                    start = len(ids) - 1 - n
                    rows = logits[row, start : start + n].astype(mx.float32)
                    targets = mx.array(list(ids[len(ids) - n :]))
                    logprobs = rows - mx.logsumexp(rows, axis=-1, keepdims=True)
                    chosen = mx.take_along_axis(logprobs, targets[:, None], axis=-1).reshape(-1)
                    greedy = mx.all(mx.argmax(rows, axis=-1) == targets)
                    picked.append((chosen, greedy))
                mx.eval(picked)
                for i, (chosen, greedy) in zip(members, picked, strict=True):
                    out[i] = (cast("list[float]", chosen.tolist()), bool(greedy.item()))
                del logits
                control.check()
        mx.clear_cache()
        return out

    def _classify_ids(
        self, batch: Sequence[Sequence[int]], cfg: GenerateConfig, control: StreamControl
    ) -> list[tuple[int, Sequence[float] | None]]:
        import mlx.core as mx
        from mlx_lm.generate import wired_limit

        model = self._live()
        stream = self._stream_for_engine()
        sampler, processors = sampling(cfg, self._info.vocab_size)
        self._seed(cfg)
        heads = [list(ids[:-1]) for ids in batch]
        lengths = [len(h) for h in heads]
        longest = max(lengths)
        # As mlx-lm's batch generator does: right-padded, so that every
        # padding query still sees real keys; finalize() rolls the padding to
        # the left, where the batch cache masks it for the last step.
        cache = _batch_cache(model, len(batch))
        out: list[tuple[int, Sequence[float] | None]] = []
        with wired_limit(model, [stream]), mx.stream(stream):
            if longest:
                padding = [longest - n for n in lengths]
                tokens = mx.array([h + [0] * p for h, p in zip(heads, padding, strict=True)])
                if max(padding):
                    for c in cache:
                        c.prepare(lengths=lengths, right_padding=padding)
                done = 0
                while done < longest:
                    control.check()
                    step = min(PREFILL_STEP_SIZE, longest - done)
                    model(tokens[:, done : done + step], cache=cache)
                    mx.eval([c.state for c in cache])
                    done += step
                if max(padding):
                    for c in cache:
                        c.finalize()
                    mx.eval([c.state for c in cache])
            control.check()
            last = mx.array([[ids[-1]] for ids in batch])
            logits = model(last, cache=cache)[:, -1, :].astype(mx.float32)
            picked = []
            for row, ids in enumerate(batch):
                row_logits = logits[row : row + 1]
                if processors:
                    context = mx.array(list(ids))
                    for processor in processors:
                        row_logits = processor(context, row_logits)
                logprobs = row_logits - mx.logsumexp(row_logits, axis=-1, keepdims=True)
                picked.append(sampler(logprobs).reshape(-1)[0])
            mx.eval(logits, *picked)
            for row, token in enumerate(picked):
                values: Sequence[float] | None = None
                if cfg.return_logits:
                    values = array.array("f")
                    values.frombytes(bytes(memoryview(logits[row])))
                out.append((int(token.item()), values))
        del cache
        mx.clear_cache()
        return out

    # -- embeddings -------------------------------------------------------------

    def _capabilities(self) -> Capabilities:
        caps = replace(super()._capabilities(), speculative=self._speculation)
        inner = getattr(self._model, "model", None)  # mlx-lm's decoder, before the head
        if not callable(inner):
            return caps
        return replace(caps, embed=True, embedding_dimensions=self._info.hidden_size, rerank=True)

    def _embed(
        self, texts: list[EmbedInput], normalize: bool, truncate: bool, dimensions: int | None
    ) -> Embeddings:
        seqs = [self._embed_ids(t, truncate) for t in texts]
        raw = array.array("f")
        for ids in seqs:  # each between two generation steps, on the engine thread
            raw.frombytes(self._scheduler.between_steps(functools.partial(self._pool, ids)))
        width = len(raw) // len(seqs)
        vectors = finish(raw, len(seqs), normalize=normalize, dimensions=dimensions)
        return Embeddings(vectors, dimensions or width, sum(len(s) for s in seqs))

    def _embed_ids(self, text: EmbedInput, truncate: bool) -> list[int]:
        if isinstance(text, str):
            ids = self._encode_literal(text)
            if self._add_bos and self._bos_id is not None:
                ids.insert(0, self._bos_id)
        else:
            bad = next((t for t in text if t >= self._info.vocab_size), None)
            if bad is not None:
                raise GenerationError(f"token id {bad} is not in the vocabulary")
            ids = list(text)
        limit = self._info.context_length or len(ids)
        if len(ids) > limit:
            if not truncate:
                raise GenerationError(
                    f"a text has {len(ids)} tokens, more than the model's context of "
                    f"{limit}; shorten it, or embed with truncate=True"
                )
            ids = ids[:limit]
        return ids

    def _pool(self, ids: list[int]) -> bytes:
        """On the engine thread: the decoder's final hidden states of ``ids``
        (after its last norm), pooled by their mean or the last token's."""
        import mlx.core as mx

        inner = self._live().model
        with mx.stream(self._stream_for_engine()):
            states = inner(mx.array([ids]))[0].astype(mx.float32)
            pooled = states[-1] if self._last_token_pooling else states.mean(axis=0)
            mx.eval(pooled)
        return bytes(memoryview(pooled))

    def _memory(self) -> tuple[int | None, int | None]:
        try:
            import mlx.core as mx

            get_active = getattr(mx, "get_active_memory", None) or mx.metal.get_active_memory
            get_peak = getattr(mx, "get_peak_memory", None) or mx.metal.get_peak_memory
            return int(get_active()), int(get_peak())
        except Exception:
            return None, None

    def _release(self) -> None:
        self._scheduler.close()
        self._prompt_cache.clear()
        self._model = None
        self._wrapper = None
        self._tokenizer = None
        self._table.release()
        gc.collect()
        try:
            import mlx.core as mx

            clear = getattr(mx, "clear_cache", None) or mx.metal.clear_cache
            clear()
        except Exception as exc:  # pragma: no cover - nothing to free then
            _log.debug("mx.clear_cache failed: %s", exc)

    def _engine_exit(self) -> None:
        """Free this engine thread's MLX streams as it ends.

        MLX keeps a thread-local stream (and, on the CPU device, a worker
        thread for it) for each thread that runs work; torn down while the
        interpreter exits, they can abort the process ("terminate called
        without an active exception"). ``close()`` joins the engine thread,
        so they are gone before it returns.
        """
        import mlx.core as mx

        mx.synchronize()
        mx.clear_streams()

    # -- helpers ----------------------------------------------------------------

    def _live(self) -> Any:
        model = self._model
        if model is None:
            raise GenerationError("the model is closed")
        return model


def _batch_cache(model: Any, size: int) -> list[Any]:
    """The model's own per-layer caches for ``size`` sequences, merged into
    their batched forms (``KVCache`` into ``BatchKVCache``, and so on)."""
    from mlx_lm.models.cache import make_prompt_cache

    per_sequence = [make_prompt_cache(model) for _ in range(size)]
    merged: list[Any] = []
    for layer in zip(*per_sequence, strict=True):
        merge = getattr(layer[0], "merge", None)
        if merge is None:
            raise GenerationError(
                f"the model's {type(layer[0]).__name__} cannot be batched by mlx-lm"
            )
        merged.append(merge(list(layer)))
    return merged


def _disk_cache(loaded: loading.Loaded) -> DiskCache | None:
    """The prefix cache's disk tier, keyed by all that shapes the KV (the
    model's files, an adapter's, MLX, mlx-lm and this backend's versions,
    the device), or None when no folder is given."""
    cfg = loaded.cfg
    folder = env.kv_cache_dir(cfg.cache_dir)
    if not folder:
        return None
    key = {
        "format": 1,
        "backend": "mlx " + _version("inference-mlx"),
        "model": fingerprint(loaded.info.path),
        "adapter": fingerprint(cfg.adapter_path) if cfg.adapter_path else None,
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "device": loaded.device,
    }
    return DiskCache(folder, key, cfg.cache_disk_mib << 20)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"
