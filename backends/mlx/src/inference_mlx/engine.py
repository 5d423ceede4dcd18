"""The MLX engine: a model run through mlx-lm on MLX's device.

:class:`MlxModel` is an :class:`inference.BaseTextModel` (and, through
:class:`inference.scoring.ScoringTextModel`, an :class:`inference.Scorer`) with a dedicated
engine thread (MLX streams belong to the thread that uses them), so every
MLX call of a model runs there, one at a time. What it adds:

- loading: an MLX / Hugging Face model folder through ``mlx_lm.load`` (a
  local path only; nothing is fetched), or a GGUF file through
  :mod:`inference_mlx.gguf_loader` after the core's header check;
- streams batched together (:mod:`inference_mlx.batching`): each stream's
  ``_generate_ids`` hands its sequence to one mlx-lm ``BatchGenerator``
  stepped on the engine thread, with mlx-lm's own sampler and logits
  processors, cancellable between prefill chunks and between tokens,
  reusing the last call's prompt cache: a call whose prompt shares a prefix
  with the last one (the next turn of a chat) prefills only the rest (not
  with a repeat penalty, which would see a different history); a prompt of
  ``batch_generate`` that needs the single-sequence path (logprobs, a
  constraint) runs on ``mlx_lm.generate.generate_step``;
- ``_classify_ids`` as one batched forward pass over right-padded prompts in
  the model's batched caches (``BatchKVCache``...), the padding masked, as
  mlx-lm's batch generator does;
- ``_generate_batch`` on ``mlx_lm.generate.BatchGenerator``;
- token text from a byte table (:mod:`inference_mlx.tokens`), not from
  mlx-lm's detokenisers, so a stream's texts add up to the generated text.
"""

from __future__ import annotations

import array
import gc
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

from inference import env
from inference.errors import GenerationError, InferenceError, ModelLoadError
from inference.gguf import read_header
from inference.options import GenerateConfig, LoadConfig
from inference.scoring import IdPair, ScoringTextModel
from inference.stream import StreamControl
from inference.types import ModelInfo

from .batching import Scheduler, SeqState, keyed_sampler
from .detect import INSTALL_HINT, MlxDevice, detect
from .tokens import TokenTable, _unwrap

__all__ = ["DEFAULT_BATCH", "PENALTY_LAST_N", "PREFILL_STEP_SIZE", "MlxModel"]

_log = logging.getLogger("inference.mlx")

#: Prompt tokens run through the model per step of a prefill. A call can be
#: cancelled between steps; mlx-lm's own default is 2048.
PREFILL_STEP_SIZE = 512
#: Tokens the repeat penalty looks back over (as the llama.cpp backend).
PENALTY_LAST_N = 64
#: Sequences decoded together by ``batch_generate`` when ``parallel_slots`` is 0.
DEFAULT_BATCH = 16
#: Padded tokens per forward pass when scoring (the pass holds their logits).
SCORE_BATCH_TOKENS = 1024


def _log_softmax(logits: Any) -> Any:
    import mlx.core as mx

    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def info_from_config(
    config: Mapping[str, Any], *, path: str, context_len: int = 0, notes: Sequence[str] = ()
) -> ModelInfo:
    """A :class:`ModelInfo` from a Hugging Face / mlx-lm ``config.json``.

    Multimodal configs keep the language model's facts under ``text_config``,
    which is read when the top level does not say. ``context_len`` (the load
    option) overrides the trained context length when given.
    """
    text = config.get("text_config")
    inner: Mapping[str, Any] = text if isinstance(text, Mapping) else {}

    def pick(*keys: str) -> int:
        for source in (config, inner):
            for key in keys:
                value = _int(source.get(key))
                if value > 0:
                    return value
        return 0

    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = _int(quant.get("bits")) if isinstance(quant, Mapping) else 0
    group = _int(quant.get("group_size")) if isinstance(quant, Mapping) else 0
    trained = pick("max_position_embeddings", "max_sequence_length", "seq_length", "n_ctx")
    model_type = config.get("model_type") or inner.get("model_type") or ""
    return ModelInfo(
        architecture=str(model_type),
        vocab_size=pick("vocab_size"),
        layers=pick("num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=pick("hidden_size", "n_embd", "d_model"),
        context_length=context_len or trained,
        quant_bits=bits,
        quant_group_size=group,
        backend="mlx",
        path=path,
        notes=tuple(notes),
    )


def _eos_ids(wrapper: Any, tokenizer: Any) -> set[int]:
    ids = {int(i) for i in (getattr(wrapper, "eos_token_ids", None) or ())}
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    return ids


def _chat_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates
        template = template.get("default") or next(iter(template.values()), None)
    return template if isinstance(template, str) and template else None


def _vocabulary(tokenizer: Any) -> Mapping[str, int]:
    """The tokenizer's token strings (for choosing a chat family)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        return {}
    return vocab if isinstance(vocab, Mapping) else {}


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front when asked for special tokens."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if not isinstance(bos, int):
        return False
    try:
        with_special = tokenizer.encode("a", add_special_tokens=True)
        without = tokenizer.encode("a", add_special_tokens=False)
    except Exception:
        return False
    return bool(with_special) and with_special[0] == bos and with_special[:1] != without[:1]


class MlxModel(ScoringTextModel):
    """A model loaded into MLX. Use :meth:`load` (or ``inference.load_model``)."""

    backend_name: ClassVar[str] = "mlx"

    def __init__(
        self,
        *,
        model: Any,
        wrapper: Any,
        info: ModelInfo,
        device: str,
        batch_size: int = DEFAULT_BATCH,
        cpu_only: bool = False,
    ) -> None:
        self._batch_size = max(1, batch_size)
        tokenizer = _unwrap(wrapper)
        bos = getattr(tokenizer, "bos_token", None)
        eos = getattr(tokenizer, "eos_token", None)
        template = _chat_template(tokenizer)
        super().__init__(
            info=info,
            eog_ids=_eos_ids(wrapper, tokenizer),
            chat_template=template,
            vocabulary=() if template else _vocabulary(tokenizer),
            bos_token=bos if isinstance(bos, str) else "",
            eos_token=eos if isinstance(eos, str) else "",
            add_bos=_adds_bos(tokenizer),
            engine_thread=True,
            stream_width=self._batch_size,
        )
        self._model: Any = model
        self._wrapper: Any = wrapper
        self._tokenizer: Any = tokenizer
        bos_id = getattr(tokenizer, "bos_token_id", None)
        self._bos_id: int | None = bos_id if isinstance(bos_id, int) else None
        #: The last single-sequence call's KV cache and the tokens it holds.
        self._prompt_cache: Any = None
        self._cached: list[int] = []
        self._step_logprobs: Any = None  # the log-probabilities of the token just yielded
        self._table = TokenTable(tokenizer)
        self._device = device
        self._cpu_only = cpu_only
        self._mx_stream: Any = None  # made on first use
        self._scheduler = Scheduler(
            self, width=self._batch_size, prefill_step_size=PREFILL_STEP_SIZE
        )

    # -- loading ----------------------------------------------------------

    @classmethod
    def load(cls, path: str, cfg: LoadConfig, *, device: MlxDevice | None = None) -> MlxModel:
        """Load the folder or GGUF file at ``path``; ModelLoadError on failure."""
        env.configure_logging()
        if not os.path.exists(path):
            raise ModelLoadError(f"{path}: no such file or directory", path=path)
        if cfg.adapter_path and not os.path.exists(cfg.adapter_path):
            raise ModelLoadError(
                f"{cfg.adapter_path}: no such adapter folder", path=cfg.adapter_path
            )
        found = device or detect()  # imports mlx.core and asks it for the device
        if not found.available:
            raise ModelLoadError(f"cannot load {path} with MLX: {found.reason}", path=path)
        try:
            import mlx_lm  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot load {path}: mlx-lm cannot be imported ({exc}); {INSTALL_HINT}",
                path=path,
            ) from exc
        if os.path.isdir(path):
            model, wrapper, config, notes = _load_folder(path, cfg)
        else:
            model, wrapper, config, notes = _load_gguf_file(path, cfg)
        if found.device:
            used = "cpu" if cfg.gpu_layers == 0 else found.device
            notes = (*notes, f"MLX device: {used}")
        info = info_from_config(config, path=path, context_len=cfg.context_len, notes=notes)
        return cls(
            model=model,
            wrapper=wrapper,
            info=info,
            device=found.device,
            batch_size=cfg.parallel_slots or DEFAULT_BATCH,
            cpu_only=cfg.gpu_layers == 0,
        )

    # -- primitives -----------------------------------------------------------

    def _encode(self, text: str, add_bos: bool) -> list[int]:
        ids = [int(i) for i in self._tokenizer.encode(text, add_special_tokens=False)]
        if add_bos and self._bos_id is not None and (not ids or ids[0] != self._bos_id):
            ids.insert(0, self._bos_id)
        return ids

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

    def _sampling(self, cfg: GenerateConfig) -> tuple[Any, list[Any]]:
        """mlx-lm's sampler and logits processors for ``cfg``; a seeded
        sampler draws from its own key (see :func:`.batching.keyed_sampler`)."""
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        vocab = self._info.vocab_size
        top_k = cfg.top_k if not vocab or cfg.top_k < vocab else 0
        if cfg.temperature > 0 and cfg.seed is not None:
            sampler = keyed_sampler(cfg, top_k)
        else:
            sampler = make_sampler(
                temp=cfg.temperature, top_p=cfg.top_p, min_p=cfg.min_p, top_k=top_k
            )
        processors = make_logits_processors(
            repetition_penalty=cfg.repeat_penalty if cfg.repeat_penalty != 1.0 else None,
            repetition_context_size=PENALTY_LAST_N,
        )
        return sampler, processors

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
        if self._on_engine_thread():
            # A call that already runs on the engine thread (one prompt of
            # batch_generate): the single-sequence path.
            yield from self._generate_alone(ids, cfg, control, limit)
            return
        stop_ids = self._eog_ids | frozenset(cfg.stop_tokens)
        yield from self._scheduler.generate(
            ids, control, limit=limit, stop_ids=stop_ids, logprobs=cfg.logprobs, state=SeqState(cfg)
        )

    def _on_engine_thread(self) -> bool:
        engine = self._engine
        return engine is not None and engine.is_current()

    def _generate_alone(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl, limit: int
    ) -> Iterator[int]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, wired_limit

        model = self._live()
        stream = self._stream_for_engine()
        sampler, processors = self._sampling(cfg)
        self._seed(cfg)
        raw: deque[Any] = deque()
        if control.guide is not None:
            processors = [*processors, _masker(control.guide)]
        if cfg.logprobs is not None and processors:
            # The logits before the repeat penalty: generate_step's own
            # log-probabilities come after its processors.
            def capture(_tokens: Any, logits: Any) -> Any:
                raw.append(logits)
                return logits

            processors = [capture, *processors]

        def progress(done: int, total: int) -> None:
            # Called before the prefill, after each prefill step and at the
            # first token: the places where a long prompt can be stopped.
            if control.stop_requested():
                control.check()

        cache, reused = self._reuse_cache(model, ids, cfg)
        fed = list(ids)
        steps = generate_step(
            mx.array(fed[reused:]),
            model,
            stream,
            max_tokens=limit,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_cache=cache,
            prefill_step_size=PREFILL_STEP_SIZE,
            prompt_progress_callback=progress,
        )
        with wired_limit(model, [stream]):
            try:
                for token, logprobs in steps:
                    tid = int(token)
                    fed.append(tid)  # generate_step fed it to the cache before yielding it
                    if cfg.logprobs is not None:
                        # One step ahead is already queued, so the oldest
                        # captured logits are this token's.
                        self._step_logprobs = _log_softmax(raw.popleft()) if raw else logprobs
                    yield tid
            finally:
                steps.close()
                self._keep_cache(cache, fed)

    def _guidance_tokenizer(self) -> Any:
        import llguidance.hf

        return llguidance.hf.from_tokenizer(
            self._tokenizer, n_vocab=self._info.vocab_size or None, eos_token=sorted(self._eog_ids)
        )

    def _token_logprobs(self, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        if not self._on_engine_thread():
            return self._scheduler.last_logprobs()  # worked out on the engine thread
        return self._logprobs_of(token_id, k, None, self._step_logprobs)

    def _logprobs_of(
        self, token_id: int, k: int, raw: Any, logprobs: Any
    ) -> tuple[float, list[tuple[int, float]]]:
        """The log-probability of ``token_id`` and the ``k`` most likely
        tokens, from the raw logits of its step when kept (``raw``: before
        the logits processors), else from ``logprobs``."""
        import mlx.core as mx

        if raw is not None:
            logprobs = _log_softmax(raw)
        logprobs = logprobs.reshape(-1).astype(mx.float32)
        chosen = float(logprobs[token_id].item())
        if k <= 0:
            return chosen, []
        ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
        values = logprobs[ids]
        pairs = zip(
            cast("list[int]", ids.tolist()), cast("list[float]", values.tolist()), strict=True
        )
        return chosen, sorted(pairs, key=lambda p: (-p[1], p[0]))

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

    def _reuse_cache(self, model: Any, ids: Sequence[int], cfg: GenerateConfig) -> tuple[Any, int]:
        """The KV cache for a call on ``ids``, and how many of them it holds
        already: the last call's cache trimmed to the prefix the two share
        (the next turn of a chat prefills only its new tokens), else a new one.

        Not with a repeat penalty: mlx-lm's penalty sees only the tokens fed
        in this call, so a reused prefix would change the answer.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        cache, cached = self._prompt_cache, self._cached
        self._prompt_cache, self._cached = None, []  # invalid until this call ends well
        if cache is not None and cfg.repeat_penalty == 1.0 and can_trim_prompt_cache(cache):
            limit = min(len(cached), len(ids) - 1)  # at least one token is fed
            common = 0
            while common < limit and cached[common] == ids[common]:
                common += 1
            extra = len(cached) - common
            trimmed: Any = trim_prompt_cache(cache, extra)  # an int, whatever its annotation says
            if common and trimmed == extra:
                return cache, common
        return make_prompt_cache(model), 0

    def _keep_cache(self, cache: Any, fed: list[int]) -> None:
        """Keep ``cache`` for the next call if it holds exactly ``fed`` (a
        call cancelled mid-prefill leaves it holding fewer)."""
        offsets = {getattr(layer, "offset", None) for layer in cache}
        if offsets == {len(fed)}:
            self._prompt_cache, self._cached = cache, fed

    def _classify_ids(
        self, batch: Sequence[Sequence[int]], cfg: GenerateConfig, control: StreamControl
    ) -> list[tuple[int, Sequence[float] | None]]:
        import mlx.core as mx
        from mlx_lm.generate import wired_limit

        model = self._live()
        stream = self._stream_for_engine()
        sampler, processors = self._sampling(cfg)
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

    def _generate_batch(
        self,
        batch: Sequence[Sequence[int]],
        cfg: GenerateConfig,
        control: StreamControl,
        finished: set[int],
    ) -> Iterator[tuple[int, int]]:
        from mlx_lm.generate import BatchGenerator

        model = self._live()
        stream = self._stream_for_engine()
        sampler, processors = self._sampling(cfg)
        self._seed(cfg)
        stop_ids = sorted(self._eog_ids | frozenset(cfg.stop_tokens))
        limits = []
        for ids in batch:
            budget = self._remaining(len(ids))
            limits.append(cfg.max_tokens if budget < 0 else max(1, min(cfg.max_tokens, budget)))
        size = min(self._batch_size, len(batch))
        gen: Any = BatchGenerator(
            model,
            max_tokens=cfg.max_tokens,
            stop_tokens=[[t] for t in stop_ids],
            sampler=sampler,
            logits_processors=processors or None,
            completion_batch_size=size,
            prefill_batch_size=size,
            prefill_step_size=PREFILL_STEP_SIZE,
            stream=stream,
        )
        try:
            uids = gen.insert([list(ids) for ids in batch], max_tokens=limits)
            index = {uid: i for i, uid in enumerate(uids)}
            removed: set[int] = set()
            while len(finished) < len(batch):
                gone = [i for i in finished if i not in removed]
                if gone:
                    gen.remove([uids[i] for i in gone])
                    removed.update(gone)
                control.check()
                prompt_responses, responses = gen.next()
                if not responses and not prompt_responses:
                    return
                for r in responses:
                    i = index[r.uid]
                    if i in finished:
                        continue
                    yield i, int(r.token)
                    if r.finish_reason is not None and i not in finished:
                        # The engine's own limit (the context is full): the
                        # caller did not end it, so it ends as "length".
                        finished.add(i)
                        removed.add(i)
        finally:
            gen.close()

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
        self._prompt_cache, self._cached = None, []
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


def _masker(guide: Any) -> Any:
    """An mlx-lm logits processor that applies ``guide``'s mask.

    mlx-lm calls it for each step with the tokens so far: from the second
    call on, the last of them is the token just sampled, which the guide
    consumes before it gives the next mask. (generate_step runs one step
    ahead, so a token is consumed before it is yielded.)
    """
    import mlx.core as mx
    import numpy as np

    started = False

    def constrain(tokens: Any, logits: Any) -> Any:
        nonlocal started
        if started:
            guide.consume(int(tokens[-1].item()))
        started = True
        if guide.stopped:  # the step after the end: its token is never used
            return logits
        allowed = guide.allowed()
        width = logits.shape[-1]
        if len(allowed) < width:
            allowed = np.concatenate([allowed, np.zeros(width - len(allowed), dtype=bool)])
        return mx.where(mx.array(allowed[:width]), logits, -mx.inf)

    return constrain


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


# --------------------------------------------------------------------------
# loading


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except FileNotFoundError:
        raise ModelLoadError(
            f"{path}: a directory with no config.json (expected an MLX or Hugging Face "
            "model folder: config.json, *.safetensors and the tokenizer files)",
            path=path,
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}/config.json: cannot read ({exc})", path=path) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/config.json: not a JSON object", path=path)
    return config


def _load_folder(path: str, cfg: LoadConfig) -> tuple[Any, Any, dict[str, Any], tuple[str, ...]]:
    folder = Path(path).resolve()
    config = _read_config(str(folder))
    if not any(folder.glob("model*.safetensors")):
        raise ModelLoadError(f"{path}: no model*.safetensors weights in this folder", path=path)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ModelLoadError(
            f"{path}: no tokenizer (tokenizer.json or tokenizer.model) in this folder",
            path=path,
        )
    from mlx_lm.utils import load

    try:
        # A local folder never reaches the hub in mlx-lm, and the tokenizer
        # is told to stay local too: nothing process-wide (os.environ) is set.
        loaded_all: Any = load(
            str(folder),
            tokenizer_config={"local_files_only": True},
            adapter_path=cfg.adapter_path or None,
            return_config=True,
            trust_remote_code=False,
        )
        model, wrapper, loaded = loaded_all
    except InferenceError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: mlx-lm cannot load this model ({type(exc).__name__}: {_first_line(exc)})",
            path=path,
        ) from exc
    merged = {**config, **(loaded if isinstance(loaded, dict) else {})}
    notes: list[str] = []
    source = config.get("gguf_source")
    if isinstance(source, Mapping):
        notes.append(f"converted from GGUF file {source.get('file', '?')}")
        notes.extend(str(n) for n in source.get("notes", ()) if isinstance(n, str))
    if cfg.adapter_path:
        notes.append(f"LoRA adapter {cfg.adapter_path}")
    return model, wrapper, merged, tuple(notes)


def _load_gguf_file(path: str, cfg: LoadConfig) -> tuple[Any, Any, dict[str, Any], tuple[str, ...]]:
    # The core's reader checks every count and length against the file, so
    # a corrupt or truncated file is refused before MLX maps it.
    header = read_header(path, load_arrays=False)
    from .gguf_loader import load_gguf

    try:
        model, wrapper, config, notes = load_gguf(path)
    except InferenceError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: the MLX GGUF loader failed ({type(exc).__name__}: {_first_line(exc)})",
            path=path,
        ) from exc
    extra = [f"GGUF {header.quantisation[0] or 'unknown type'} file, version {header.version}"]
    if cfg.adapter_path:
        try:
            from mlx_lm.utils import load_adapters

            model = load_adapters(model, cfg.adapter_path)
            model.eval()
        except Exception as exc:
            raise ModelLoadError(
                f"{cfg.adapter_path}: cannot apply the adapter ({_first_line(exc)})",
                path=cfg.adapter_path,
            ) from exc
        extra.append(f"LoRA adapter {cfg.adapter_path}")
    return model, wrapper, dict(config), (*extra, *notes)
