"""The llama.cpp engine: a GGUF model run in-process through llama-cpp-python.

Built on llama.cpp's own C API as llama-cpp-python binds it (``llama_cpp``
module): model and context, batches, the native sampler chain, the KV cache
and the abort callback. Nothing here is specific to a device, so the ROCm
backend runs the same class on an AMD GPU.

What the engine adds to :class:`inference.BaseTextModel` (through
:class:`inference.scoring.ScoringTextModel`, so a model is also a
:class:`inference.Scorer`):

- continuous batching (:mod:`inference_llamacpp.batching`): concurrent
  streams, up to ``parallel_slots``, share one ``llama_decode`` per step;
- prompt-prefix reuse: a call whose prompt starts with tokens already in a
  slot's KV cells (the next turn of a chat, a common system prompt)
  prefills only the new tokens;
- ``classify`` puts several sequences into one ``llama_decode`` call;
  ``batch_generate``'s prompts are streams of the scheduler like any other;
- ``logprobs=k`` reads the logits each token was sampled from (the sampler
  chain works on a copy), and scoring asks ``llama_decode`` for logits only
  at the positions that predict a continuation token: the context is never
  created with ``logits_all``;
- prefill can be cancelled part-way through, through llama.cpp's abort
  callback; decoding stops within one token;
- llama.cpp's own log goes to the ``inference.llama_cpp`` logger and is
  silent unless ``INFERENCE_LOG=debug`` or that logger is at DEBUG.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import llama_cpp as lc
import numpy as np

from inference import env
from inference.capabilities import Capabilities, embedding_only
from inference.disk_cache import DiskCache, fingerprint
from inference.embeddings import Embeddings, EmbedInput, Ranked, Ranking, finish
from inference.errors import Cancelled, GenerationError, ModelLoadError, UnsupportedOptionError
from inference.gguf import GGUFHeader, read_header
from inference.options import GenerateConfig, LoadConfig
from inference.scoring import IdPair, ScoringTextModel
from inference.speculation import DEFAULT_DRAFT_MAX
from inference.stream import StreamControl
from inference.types import ModelInfo

from . import preflight
from .batching import Batch, Scheduler, SeqState, Speculation, log_softmax
from .embedding import (
    EMBED_CONTEXT_CAP,
    POOLING_TYPES,
    EmbeddingContext,
    EmbedQueue,
)
from .host_cache import HostCache
from .speculative import Drafter
from .threads import ThreadTuner

__all__ = ["DEFAULT_CONTEXT_CAP", "DEFAULT_SEQUENCES", "LlamaCppModel", "sequences"]

_log = logging.getLogger("inference.llama_cpp")

#: ``context_len=0`` uses the model's trained length, capped at this.
DEFAULT_CONTEXT_CAP = 4096
#: Sequences one context holds at once with ``parallel_slots`` 0: concurrent
#: streams, and the prompts of one classify or batch_generate step. Each
#: has its own KV cells for the whole context.
DEFAULT_SEQUENCES = 4


def sequences(cfg: LoadConfig) -> int:
    """The sequences a context is made for: ``parallel_slots``, or
    :data:`DEFAULT_SEQUENCES`, within what llama.cpp allows."""
    return min(
        max(cfg.parallel_slots or DEFAULT_SEQUENCES, 1), int(lc.llama_max_parallel_sequences())
    )


#: Tokens the repeat penalty looks back over.
_PENALTY_LAST_N = 64

_LEVELS = {
    0: logging.CRITICAL,
    1: logging.INFO,
    2: logging.WARNING,
    3: logging.ERROR,
    4: logging.DEBUG,
    5: logging.DEBUG,
}


def default_threads() -> int:
    """The CPU threads llama.cpp computes with unless ``threads`` says: one
    per core this process may run on (its affinity, so ``taskset`` and
    cgroup CPU sets are honoured)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def flash_attn_type(cfg: LoadConfig) -> int:
    """llama.cpp's ``flash_attn_type`` for the ``flash_attention`` option,
    for every context the model makes (generation, the draft model's,
    embedding): llama.cpp's own choice (auto) unless the option says."""
    if cfg.flash_attention is None:
        return int(lc.LLAMA_FLASH_ATTN_TYPE_AUTO)
    if cfg.flash_attention:
        return int(lc.LLAMA_FLASH_ATTN_TYPE_ENABLED)
    return int(lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)


def _wanted(level: int) -> bool:
    """Whether a llama.cpp log line at ``level`` goes out: only when asked for,
    by ``INFERENCE_LOG=debug`` or by giving the ``inference.llama_cpp``
    logger a level."""
    if not _log.isEnabledFor(level):
        return False
    return _log.level != logging.NOTSET or env.engine_logs_enabled()


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    lvl = _LEVELS.get(level, logging.DEBUG)
    if _wanted(lvl):
        _log.log(lvl, "%s", text.decode("utf-8", "replace").rstrip())


_NO_ABORT = lc.ggml_abort_callback()  # a NULL callback
_init_lock = threading.Lock()
_initialised = False


def _init_backend() -> None:
    """Route llama.cpp's log to ``logging`` and initialise it, once."""
    global _initialised
    with _init_lock:
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        if not _initialised:
            lc.llama_backend_init()
            _initialised = True


def _rss() -> tuple[int | None, int | None]:
    """(current, peak) resident memory of this process in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/statm", "rb") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        current = None
    return current, peak


class LlamaCppModel(ScoringTextModel):
    """A GGUF model loaded into llama.cpp. Use :meth:`load`."""

    backend_name: ClassVar[str] = "llama_cpp"

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], cfg: LoadConfig, *, header: GGUFHeader | None = None
    ) -> LlamaCppModel:
        """Validate ``path`` with the core's GGUF reader, then load it."""
        text = os.fspath(path)
        header = header or read_header(text)
        if cfg.adapter_path:
            read_header(cfg.adapter_path)  # a corrupt adapter must not reach llama.cpp
        return cls(text, header, cfg)

    def __init__(
        self, path: str, header: GGUFHeader, cfg: LoadConfig, *, main_gpu: int | None = None
    ) -> None:
        """Load ``path``. ``main_gpu``: the device index that holds the whole
        model (no split across devices), where the build offloads; None lets
        llama.cpp place it."""
        preflight.check(header, path)  # what llama.cpp would abort on, refused first
        _init_backend()
        self._main_gpu = main_gpu
        self._path = path
        self._model: Any = None
        self._ctx: Any = None
        self._adapter: Any = None
        self._batch: Batch | None = None
        self._scheduler: Scheduler | None = None
        self._abort_cb: Any = None
        self._abort_for: StreamControl | None = None
        self._tuner: ThreadTuner | None = None
        self._embedding: EmbeddingContext | None = None  # made on the first embed
        self._drafter: Drafter | None = None
        try:
            self._open(header, cfg)
        except BaseException:
            self._free()
            raise

    def _open(self, header: GGUFHeader, cfg: LoadConfig) -> None:
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if cfg.gpu_layers < 0 else cfg.gpu_layers
        if self._main_gpu is not None and lc.llama_supports_gpu_offload():
            mparams.split_mode = lc.LLAMA_SPLIT_MODE_NONE
            mparams.main_gpu = self._main_gpu
        self._model = lc.llama_model_load_from_file(self._path.encode(), mparams)
        if not self._model:
            raise ModelLoadError(
                f"{self._path}: llama.cpp could not load the model "
                "(set INFERENCE_LOG=debug for its log)",
                path=self._path,
            )
        self._vocab = lc.llama_model_get_vocab(self._model)
        n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        trained = lc.llama_model_n_ctx_train(self._model)
        self._choose_pooling(header, cfg)
        self._embed_ctx = min(trained or EMBED_CONTEXT_CAP, EMBED_CONTEXT_CAP)
        self._embed_queue = EmbedQueue(self._embed_ctx, self._run_embedding)
        n_ctx = cfg.context_len or min(trained or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP)
        n_seq = sequences(cfg)
        cparams = lc.llama_context_default_params()
        # One KV stream per sequence, each of the whole context: a sequence's
        # cells stay in position order, so its output is what it is alone
        # (see inference_llamacpp.batching).
        cparams.n_ctx = n_ctx * n_seq
        # A step holds a token of every sequence: at least n_seq, whatever
        # the context (a 2-token context with 4 slots aborted llama.cpp).
        cparams.n_batch = max(min(n_ctx, 512), n_seq)
        cparams.n_ubatch = max(min(n_ctx, 512), n_seq)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False
        # A sliding-window model's window layers keep only their window's
        # cells, as llama.cpp's server does (Gemma 3: a sixth of the KV);
        # the prefix cache checkpoints its prompts instead of trimming them.
        #: Speculative decoding: one of inference.options.SPECULATION, or "".
        self._speculation = cfg.speculation
        if self._speculation and (
            lc.llama_model_is_recurrent(self._model) or lc.llama_model_is_hybrid(self._model)
        ):
            raise UnsupportedOptionError(
                f"{self._path}: speculative decoding needs a cache that can drop rejected "
                "guesses, and this model's recurrent state cannot",
                option="draft_model" if cfg.draft_model else "speculative",
                backend=self.backend_name,
            )
        # Speculation trims rejected guesses from every layer's cache: a
        # sliding-window model then keeps its whole cache, as llama-server
        # must with --swa-full.
        cparams.swa_full = bool(self._speculation)
        threads = cfg.threads or default_threads()
        self._threads = threads
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.flash_attn_type = self._flash_attn = flash_attn_type(cfg)
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError(
                f"{self._path}: llama.cpp could not create a context of {n_ctx} tokens "
                "(out of memory? try a smaller context_len)",
                path=self._path,
            )
        if cfg.adapter_path:
            self._adapter = lc.llama_adapter_lora_init(self._model, cfg.adapter_path.encode())
            if not self._adapter:
                raise ModelLoadError(
                    f"{cfg.adapter_path}: llama.cpp could not load the LoRA "
                    "adapter (is it for this model?)",
                    path=cfg.adapter_path,
                )
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            scales = (ctypes.c_float * 1)(1.0)
            if lc.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
                raise ModelLoadError(
                    f"{cfg.adapter_path}: the LoRA adapter could not be applied",
                    path=cfg.adapter_path,
                )
        self._n_ctx = lc.llama_n_ctx_seq(self._ctx)  # per sequence
        self._n_batch = lc.llama_n_batch(self._ctx)
        self._n_seq = n_seq
        if cfg.draft_model:  # a draft with another vocabulary is refused before the rest
            self._drafter = Drafter(
                cfg.draft_model,
                header,
                n_ctx=self._n_ctx,
                n_seq=n_seq,
                threads=threads,
                flash_attn=self._flash_attn,
            )
        self._n_vocab = n_vocab
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = Batch(self._n_batch, n_seq)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        eog = [t for t in range(n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)]
        bos = lc.llama_vocab_bos(self._vocab)
        eos = lc.llama_vocab_eos(self._vocab)
        quant_name, bits, group = header.quantisation
        super().__init__(
            info=ModelInfo(
                architecture=header.architecture or "unknown",
                vocab_size=n_vocab,
                layers=lc.llama_model_n_layer(self._model),
                hidden_size=lc.llama_model_n_embd(self._model),
                context_length=self._n_ctx,
                quant_bits=bits,
                quant_group_size=group,
                quant_type=quant_name,
                bits_per_weight=round(header.bits_per_weight, 2),
                backend=self.backend_name,
                path=self._path,
                notes=(f"trained context {trained}",),
            ),
            eog_ids=eog,
            chat_template=header.chat_template,
            vocabulary=() if header.chat_template else header.get("tokenizer.ggml.tokens") or (),
            bos_token=self._piece(bos, special=True).decode("utf-8", "replace") if bos >= 0 else "",
            eos_token=self._piece(eos, special=True).decode("utf-8", "replace") if eos >= 0 else "",
            add_bos=bool(lc.llama_vocab_get_add_bos(self._vocab)),
            stream_width=n_seq,
            load=cfg,
            # Every llama.cpp computation of the model on one thread: ggml's
            # OpenMP team belongs to the thread that calls it, and libgomp
            # throttles its barriers (a decode ran 3x slower here) once two
            # threads' teams exist in the process.
            engine_thread=True,
        )
        assert self._engine is not None
        # threads=N fixes the count; otherwise it follows the machine's load.
        self._tuner = None if cfg.threads else ThreadTuner(self._ctx, threads)
        self._scheduler = Scheduler(
            self._ctx,
            n_ctx=self._n_ctx,
            n_batch=self._n_batch,
            n_seq=n_seq,
            n_vocab=n_vocab,
            engine=self._engine,
            tuner=self._tuner,
            host=HostCache(cfg.cache_host_mib << 20) if cfg.cache_host_mib else None,
            disk=self._disk_cache(cfg, cparams, n_ctx),
            n_swa=0 if cparams.swa_full else max(lc.llama_model_n_swa(self._model), 0),
            recurrent=bool(
                lc.llama_model_is_recurrent(self._model) or lc.llama_model_is_hybrid(self._model)
            ),
            drafter=self._drafter,
        )

    def _disk_cache(self, cfg: LoadConfig, cparams: Any, n_ctx: int) -> DiskCache | None:
        """The prefix cache's disk tier, keyed by all that shapes the KV (the
        model file, the engine build and device, the KV's types and layout),
        or None when no folder is given."""
        folder = env.kv_cache_dir(cfg.cache_dir)
        if not folder:
            return None
        key = {
            "format": 1,
            "model": fingerprint(self._path),
            "adapter": fingerprint(cfg.adapter_path) if cfg.adapter_path else None,
            "engine": f"llama.cpp {lc.__version__}",
            "system": lc.llama_print_system_info().decode("utf-8", "replace"),
            "gpu_layers": cfg.gpu_layers,
            "main_gpu": self._main_gpu,
            "type_k": int(cparams.type_k),
            "type_v": int(cparams.type_v),
            "flash_attn": int(cparams.flash_attn_type),
            "swa_full": bool(cparams.swa_full),
            "n_ctx": n_ctx,
        }
        return DiskCache(folder, key, cfg.cache_disk_mib << 20)

    # -- primitives ------------------------------------------------------------

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = self._piece_buf
        n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _bytes_per_token_bound(self) -> int:
        if self._token_bound is None:  # special tokens' text counts too (it is parsed)
            self._token_bound = max(
                (len(self._piece(i, special=True)) for i in range(self._n_vocab)), default=256
            )
        return self._token_bound

    def _token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            if not 0 <= token_id < self._n_vocab:
                return b""
            piece = self._pieces[token_id] = self._piece(token_id, special=False)
        return piece

    def _encode(self, text: str, add_bos: bool) -> list[int]:
        return self._tokenize(text, add_bos, special=True)

    def _encode_literal(self, text: str) -> list[int]:
        return self._tokenize(text, False, special=False)

    def _tokenize(self, text: str, add_bos: bool, *, special: bool) -> list[int]:
        """llama.cpp's tokens of ``text``; ``special`` reads special-token text as those tokens."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
            if n < 0:
                raise GenerationError("llama.cpp could not tokenise the prompt")
        return buf[:n]

    def _sampler(self, cfg: GenerateConfig) -> Any:
        """The native sampler chain for ``cfg``: penalties, filters, then pick."""
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lc.llama_sampler_chain_add
        if cfg.repeat_penalty != 1.0:
            add(
                chain,
                lc.llama_sampler_init_penalties(
                    self._n_vocab, _PENALTY_LAST_N, cfg.repeat_penalty, 0.0, 0.0
                ),
            )
        if cfg.temperature <= 0.0:
            add(chain, lc.llama_sampler_init_greedy())
            return chain
        if cfg.top_k > 0:
            add(chain, lc.llama_sampler_init_top_k(cfg.top_k))
        if 0.0 < cfg.top_p < 1.0:
            add(chain, lc.llama_sampler_init_top_p(cfg.top_p, 1))
        if cfg.min_p > 0.0:
            add(chain, lc.llama_sampler_init_min_p(cfg.min_p, 1))
        add(chain, lc.llama_sampler_init_temp(cfg.temperature))
        seed = lc.LLAMA_DEFAULT_SEED if cfg.seed is None else cfg.seed & 0xFFFFFFFF
        add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _decode(self, batch: Batch, control: StreamControl | None) -> None:
        """Run ``llama_decode``; abortable through ``control`` when given."""
        if control is not None:
            if self._abort_cb is None:
                self._abort_cb = lc.ggml_abort_callback(lambda _data: self._stop_now())
            self._abort_for = control
            lc.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        try:
            batch.raw.n_tokens = batch.n
            if self._tuner is not None:
                self._tuner.before(timed=False)
            rc = lc.llama_decode(self._ctx, batch.raw)
        finally:
            if control is not None:
                lc.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
                self._abort_for = None
        if rc == 0:
            return
        self._clear_memory()
        if rc == 2 and control is not None:
            control.check()
            raise Cancelled("the call was cancelled during prefill")
        if rc == 1:
            raise GenerationError(
                "llama.cpp found no room in the KV cache for the batch "
                f"(context {self._n_ctx} tokens); load with a larger context_len"
            )
        raise GenerationError(f"llama_decode failed with code {rc}")

    def _stop_now(self) -> bool:
        control = self._abort_for
        return control is not None and control.stop_requested()

    def _generate_ids(
        self, ids: Sequence[int], cfg: GenerateConfig, control: StreamControl
    ) -> Iterator[int]:
        scheduler = self._scheduler
        assert scheduler is not None
        sampler = self._sampler(cfg)
        if cfg.repeat_penalty != 1.0:
            for t in ids[-_PENALTY_LAST_N:]:
                lc.llama_sampler_accept(sampler, t)
        spec = None
        if self._speculation and cfg.speculative is not False:
            spec = Speculation(self._speculation, draft_max=cfg.draft_max or DEFAULT_DRAFT_MAX)
        yield from scheduler.generate(
            ids,
            control,
            limit=cfg.max_tokens,
            stop_ids=self._eog_ids | frozenset(cfg.stop_tokens),
            logprobs=cfg.logprobs,
            state=SeqState(sampler, len(ids), spec),
        )

    def _clear_memory(self) -> None:
        """Empty the KV cache (no stream runs: the caller holds the gate alone)."""
        lc.llama_memory_clear(self._mem, True)
        if self._scheduler is not None:
            self._scheduler.forget()

    def _guidance_tokenizer(self) -> Any:
        import warnings

        import llguidance.llamacpp

        with warnings.catch_warnings():
            # It asks each token's attributes through a name llama-cpp-python deprecates.
            warnings.simplefilter("ignore", DeprecationWarning)
            return llguidance.llamacpp.lltokenizer_from_vocab(
                self._vocab, n_vocab=self._n_vocab, eos_token=sorted(self._eog_ids)
            )

    def _classify_ids(
        self, batch: Sequence[Sequence[int]], cfg: GenerateConfig, control: StreamControl
    ) -> list[tuple[int, Sequence[float] | None]]:
        out: list[tuple[int, Sequence[float] | None]] = []
        for group in self._groups(batch):
            self._clear_memory()
            rows = self._prefill_many([batch[i] for i in group], control)
            sampler = self._sampler(cfg)
            try:
                for row in rows:
                    logits = None
                    if cfg.return_logits:
                        ptr = lc.llama_get_logits_ith(self._ctx, row)
                        logits = array("f", bytes(self._n_vocab * 4))
                        ctypes.memmove(logits.buffer_info()[0], ptr, self._n_vocab * 4)
                    tok = lc.llama_sampler_sample(sampler, self._ctx, row)
                    lc.llama_sampler_reset(sampler)
                    out.append((tok, logits))
            finally:
                lc.llama_sampler_free(sampler)
            control.check()
        self._clear_memory()
        return out

    def _logits_row(self, row: int) -> Any:
        """The logits of output ``row`` of the last decode, as a NumPy view (no copy)."""
        return np.ctypeslib.as_array(
            lc.llama_get_logits_ith(self._ctx, row), shape=(self._n_vocab,)
        )

    def _token_logprobs(self, token_id: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        # Read by the scheduler from the logits the token was sampled from,
        # before penalties, temperature and a constraint's mask.
        assert self._scheduler is not None
        return self._scheduler.last_logprobs()

    def _score_ids(
        self, pairs: Sequence[IdPair], control: StreamControl
    ) -> list[tuple[list[float], bool]]:
        """Each pair's tokens as one sequence of a batch, with logits asked
        for only at the positions that predict a continuation token."""
        batch = self._batch
        assert batch is not None
        out: list[tuple[list[float], bool]] = [([], True) for _ in pairs]
        fed = [ids[:-1] for ids, _ in pairs]
        for group in self._groups(fed):
            self._clear_memory()
            # (sequence, position, token, the pair's index, the target or -1)
            items: list[tuple[int, int, int, int, int]] = []
            for s, i in enumerate(group):
                ids, n = pairs[i]
                first = len(ids) - 1 - n
                items.extend(
                    (s, p, ids[p], i, ids[p + 1] if p >= first else -1) for p in range(len(ids) - 1)
                )
            for start in range(0, len(items), batch.capacity):
                chunk = items[start : start + batch.capacity]
                batch.clear()
                for s, p, t, _, target in chunk:
                    batch.add(t, p, s, target >= 0)
                self._decode(batch, control)
                for row, (_, _, _, i, target) in enumerate(chunk):
                    if target < 0:
                        continue
                    logits = self._logits_row(row)
                    logprobs, greedy = out[i]
                    logprobs.append(float(log_softmax(logits)[target]))
                    out[i] = (logprobs, greedy and int(logits.argmax()) == target)
                control.check()
        self._clear_memory()
        return out

    def _groups(self, batch: Sequence[Sequence[int]]) -> Iterator[list[int]]:
        """Split prompts into groups of at most one per sequence."""
        for start in range(0, len(batch), self._n_seq):
            yield list(range(start, min(start + self._n_seq, len(batch))))

    def _prefill_many(self, prompts: Sequence[Sequence[int]], control: StreamControl) -> list[int]:
        """Prefill each prompt as its own sequence, packing them into batches.

        Returns, per prompt, the row of its last token's logits in the final
        decode call (each prompt's last token lands in the last batch).
        """
        batch = self._batch
        assert batch is not None
        # Flatten (seq, pos, token); the last token of every sequence goes last,
        # so that all the logits we need come from the final decode call.
        body = [(s, p, t) for s, ids in enumerate(prompts) for p, t in enumerate(ids[:-1])]
        tails = [(s, len(ids) - 1, ids[-1]) for s, ids in enumerate(prompts)]
        room = min(len(body), batch.capacity - len(tails))
        cut = len(body) - room
        self._feed(body[:cut], control)
        rows = [0] * len(prompts)
        batch.clear()
        for s, p, t in body[cut:]:
            batch.add(t, p, s, False)
        for s, p, t in tails:
            rows[s] = batch.n
            batch.add(t, p, s, True)
        self._decode(batch, control)
        return rows

    def _feed(self, chunk: list[tuple[int, int, int]], control: StreamControl) -> None:
        batch = self._batch
        assert batch is not None
        for start in range(0, len(chunk), batch.capacity):
            batch.clear()
            for s, p, t in chunk[start : start + batch.capacity]:
                batch.add(t, p, s, False)
            self._decode(batch, control)
            control.check()

    # -- embeddings and reranking ----------------------------------------------

    def _choose_pooling(self, header: GGUFHeader, cfg: LoadConfig) -> None:
        """How ``embed`` and ``rerank`` pool (``pooling=``; else the file's; else
        ``rank`` for a classifier, the mean for any other), and whether the model
        is for embedding only: its file names a pooling (a BERT, a
        Qwen3-Embedding) or says its attention is not causal, so it does not
        generate."""
        arch = header.architecture
        declared = header.get(f"{arch}.pooling_type")
        known = isinstance(declared, int) and declared > lc.LLAMA_POOLING_TYPE_NONE
        head = any(t.name.startswith("cls.") for t in header.tensors)  # llama.cpp's cls.*
        classifier = head and bool(header.get(f"{arch}.classifier.output_labels"))
        self._embedding_only = known or header.get(f"{arch}.attention.causal") is False
        if cfg.pooling:
            self._pooling = POOLING_TYPES[cfg.pooling]
        elif known:
            self._pooling = int(declared)
        else:
            self._pooling = lc.LLAMA_POOLING_TYPE_RANK if classifier else lc.LLAMA_POOLING_TYPE_MEAN
        if self._pooling == lc.LLAMA_POOLING_TYPE_RANK and not head:
            raise ModelLoadError(
                f"{self._path}: pooling='rank' needs a classification head, "
                "and this model has none (a cross-encoder reranker has one)",
                path=self._path,
            )

    def _capabilities(self) -> Capabilities:
        caps = super()._capabilities()
        rank = self._pooling == lc.LLAMA_POOLING_TYPE_RANK
        caps = replace(
            caps,
            embed=not rank,
            embedding_dimensions=0 if rank else lc.llama_model_n_embd(self._model),
            rerank=True,
            speculative=self._speculation,
        )
        return embedding_only(caps) if self._embedding_only else caps

    def _embed(
        self, texts: list[EmbedInput], normalize: bool, truncate: bool, dimensions: int | None
    ) -> Embeddings:
        ids = [self._embed_ids(text, truncate) for text in texts]
        raw, width = self._pooled(ids)
        vectors = finish(raw, len(texts), normalize=normalize, dimensions=dimensions)
        return Embeddings(vectors, dimensions or width, sum(len(i) for i in ids))

    def _rerank(self, query: str, documents: list[str]) -> Ranking:
        if self._pooling != lc.LLAMA_POOLING_TYPE_RANK:
            return super()._rerank(query, documents)  # a bi-encoder: cosine
        # A cross-encoder reads the pair as one text: [CLS] query [SEP] document [SEP].
        head = self._embed_ids(query, True)
        sep = lc.llama_vocab_sep(self._vocab)
        tail = [sep] if sep >= 0 else []
        pairs = []
        for doc in documents:
            body = self._tokenize(doc, False, special=False) + tail
            pairs.append((head + body)[: self._embed_ctx])
        raw, width = self._pooled(pairs)
        scores = [raw[i * width] for i in range(len(documents))]
        ranked = [
            Ranked(i, float(sc), doc)
            for i, (sc, doc) in enumerate(zip(scores, documents, strict=True))
        ]
        return Ranking(tuple(sorted(ranked, key=lambda r: -r.score)), "classifier")

    def _embed_ids(self, text: EmbedInput, truncate: bool) -> list[int]:
        """``text``'s tokens for the embedding context (with the special tokens
        the model adds, BERT's [CLS] and [SEP]; token ids as they are): cut to
        it, or refused."""
        if isinstance(text, str):
            ids = self._tokenize(text, True, special=False)
        else:
            bad = next((t for t in text if t >= self._n_vocab), None)
            if bad is not None:
                raise GenerationError(
                    f"token id {bad} is not in the vocabulary (0 to {self._n_vocab - 1})"
                )
            ids = list(text)
        limit = self._embed_ctx
        if len(ids) <= limit:
            return ids
        if not truncate:
            raise GenerationError(
                f"a text has {len(ids)} tokens, more than the {limit} one embedding "
                "holds; shorten it, or embed with truncate=True"
            )
        if lc.llama_vocab_get_add_eos(self._vocab):  # keep the end marker ([SEP])
            return ids[: limit - 1] + ids[-1:]
        return ids[:limit]

    def _pooled(self, seqs: list[list[int]]) -> tuple[array, int]:  # type: ignore[type-arg]
        """The pooled vectors of ``seqs``, row after row, and their width:
        batches of the embedding context shared with concurrent callers
        (:class:`~inference_llamacpp.embedding.EmbedQueue`), each run between
        two generation steps."""
        control = StreamControl()
        with self._hold(control, shared=True):
            scheduler = self._scheduler
            assert scheduler is not None
            done = self._embed_queue.put(seqs)
            # Each step is one merged batch; another caller's step may run ours.
            while not done.done():
                scheduler.between_steps(self._embed_queue.step)
            part, width = done.result()
        raw = array("f")
        raw.frombytes(part)
        return raw, width

    def _run_embedding(self, group: list[list[int]]) -> tuple[bytes, int]:
        """On the engine thread: one batch through the embedding context."""
        if self._embedding is None:
            self._embedding = EmbeddingContext(
                self._model,
                n_ctx=self._embed_ctx,
                pooling=self._pooling,
                threads=self._tuner.threads if self._tuner else self._threads,
                flash_attn=self._flash_attn,
                path=self._path,
            )
        return self._embedding.run(group), self._embedding.width

    def _memory(self) -> tuple[int | None, int | None]:
        return _rss()

    def _release(self) -> None:
        self._free()

    def _free(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
        if self._embedding is not None:
            self._embedding.free()
            self._embedding = None
        if self._drafter is not None:
            self._drafter.free()
            self._drafter = None
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._adapter:
            lc.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None
