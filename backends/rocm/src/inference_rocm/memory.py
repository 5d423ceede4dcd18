"""Estimate how much GPU memory llama.cpp will take for a GGUF model.

The estimate has three parts, each computed only from the GGUF header:

Weights
    The sizes of the tensors that llama.cpp places on the GPU.  It numbers
    ``block_count + 1`` layers: the repeating blocks (``blk.N.*``) and the
    output layer (``output_norm`` and ``output``).  With ``n_gpu_layers = k``
    it offloads the *last* ``min(k, block_count)`` blocks, and the output
    layer only when ``k > block_count`` ("offloaded 31/31 layers" for a
    30-block model); ``k = -1`` means all of them.  The input embedding
    (``token_embd``) always stays on the CPU.  A model without an
    ``output.weight`` ties it to ``token_embd``, and llama.cpp then loads a
    copy of ``token_embd`` as the output layer, so that copy is counted.
    (llama.cpp ``src/llama-model.cpp``, ``load_tensors``: ``i_gpu_start``,
    ``act_gpu_layers``, ``dev_input`` on the CPU, ``TENSOR_DUPLICATED``.)

KV cache
    For each offloaded block: ``cells * head_count_kv * (key_length +
    value_length) * kv_bytes_per_element``, where ``cells = context_len *
    parallel_slots`` (each slot gets the full context, so llama.cpp's
    ``n_ctx`` must be that product) and the key and value lengths come from
    ``<arch>.attention.key_length`` / ``value_length``, else
    ``embedding_length / head_count``.  With ``head_dim`` for both that is
    ``2 * layers * context * head_count_kv * head_dim * bytes``.
    ``kv_bytes_per_element`` is 2 for llama.cpp's default f16 cache.

Compute buffer
    The scratch memory for one forward pass of a micro-batch of
    ``batch = min(512, cells)`` tokens (llama.cpp's default ``n_ubatch``),
    with ollama's formulas for llama-style models (``fs/ggml/ggml.go``,
    ``GraphSize``), E = embedding, V = vocabulary, H = heads,
    Hkv = KV heads, d = key length, c = cells, all f32 (4 bytes)::

        all layers offloaded:  max(4*batch*(1 + 4E + c*(1 + H)),   # attention scores
                                   4*batch*(E + V))                # logits
        some offloaded:        4*batch*E + max(
                                   4*batch*(1 + E + max(c, E)) + E*E*9/16
                                       + 4*c*(batch*H + d*Hkv),
                                   4*batch*(E + V) + E*V*105/128)
        none offloaded:        0

    The first term grows with the context (the KQ matrix of a batch against
    every cached token), the second with the vocabulary (the logits).  A
    partial offload costs more because activations cross between the CPU
    and the GPU and the output matrix is handled on the way.

Not counted: the HIP runtime's own context (a few hundred MiB that
``mem_info_vram_used`` shows once a process has started), and flash
attention, which shrinks the attention term.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from inference.errors import ModelLoadError
from inference.values import whole_number

from .detect import AmdGpu

__all__ = ["HeaderLike", "MemoryEstimate", "TensorLike", "check_fits", "estimate"]

DEFAULT_UBATCH = 512
"""llama.cpp's default micro-batch (``n_ubatch``)."""

CONTEXT_STEP = 256
"""Suggested context lengths are multiples of this (llama.cpp pads ``n_ctx`` to 256)."""

_GIB = float(1 << 30)
_BLOCK = re.compile(r"blk\.(\d+)\.")


class TensorLike(Protocol):
    """What :func:`estimate` reads of ``inference.gguf.TensorInfo``."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def n_bytes(self) -> int: ...


class HeaderLike(Protocol):
    """What :func:`estimate` reads of ``inference.gguf.GGUFHeader``."""

    @property
    def architecture(self) -> object: ...

    @property
    def metadata(self) -> Mapping[str, object]: ...

    @property
    def tensors(self) -> Sequence[TensorLike]: ...

    @property
    def context_length(self) -> object: ...

    @property
    def block_count(self) -> object: ...

    @property
    def embedding_length(self) -> object: ...

    @property
    def head_count(self) -> object: ...

    @property
    def head_count_kv(self) -> object: ...

    @property
    def vocab_size(self) -> object: ...


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """GPU memory for one model load, in bytes.  See the module docstring."""

    weights_bytes: int
    """All tensors of the model, wherever they go."""
    offloaded_weights_bytes: int
    """The tensors placed on the GPU."""
    kv_cache_bytes: int
    """KV cache of the offloaded blocks."""
    compute_bytes: int
    total_bytes: int
    """``offloaded_weights_bytes + kv_cache_bytes + compute_bytes``."""
    layers: int
    """Layers as llama.cpp counts them: ``block_count + 1`` (the output layer)."""
    offloaded_layers: int
    context_len: int
    """Context per slot (the model's trained length when 0 was asked for)."""
    parallel_slots: int = 1
    kv_bytes_per_element: int = 2
    header: HeaderLike | None = field(default=None, repr=False, compare=False)
    """Kept so :func:`check_fits` can work out settings that fit."""


@dataclass(frozen=True, slots=True)
class _Model:
    """The numbers of a header that the estimate needs, extracted once."""

    blocks: tuple[int, ...]
    """Weight bytes of each block ``blk.N``."""
    output: int
    """Weight bytes of the output layer (a copy of ``token_embd`` if tied)."""
    total: int
    trained_context: int
    embedding: int
    heads: int
    kv_heads: tuple[int, ...]
    """KV heads of each block (one value repeated, unless the model varies it)."""
    key_length: int
    value_length: int
    vocab: int

    @classmethod
    def of(cls, header: HeaderLike) -> _Model:
        tensors = list(header.tensors)
        by_block: dict[int, int] = {}
        output = 0
        output_weight: int | None = None
        token_embd = 0
        vocab_from_shape = 0
        for t in tensors:
            match = _BLOCK.match(t.name)
            if match:
                by_block[int(match.group(1))] = by_block.get(int(match.group(1)), 0) + t.n_bytes
            elif t.name.startswith(("output.", "output_norm.")):
                output += t.n_bytes
                if t.name == "output.weight":
                    output_weight = t.n_bytes
                    vocab_from_shape = _last_dim(t) or vocab_from_shape
            elif t.name == "token_embd.weight":
                token_embd = t.n_bytes
                vocab_from_shape = vocab_from_shape or _last_dim(t)
        if output_weight is None:
            output += token_embd  # tied embeddings: llama.cpp duplicates token_embd
        n_layer = whole_number(header.block_count) or (max(by_block) + 1 if by_block else 0)
        blocks = tuple(by_block.get(i, 0) for i in range(n_layer))

        embedding = whole_number(header.embedding_length) or 0
        heads = whole_number(header.head_count) or 0
        if n_layer <= 0 or embedding <= 0 or heads <= 0:
            raise ValueError(
                "the GGUF header lacks block_count, embedding_length or head_count; "
                "cannot estimate memory"
            )
        arch = header.architecture if isinstance(header.architecture, str) else ""
        meta = header.metadata
        # The header's head_count_kv is one number (the largest, if the model
        # gives one per block); the raw key keeps the per-block values.
        kv_heads = _per_layer(
            meta.get(f"{arch}.attention.head_count_kv"),
            n_layer,
            whole_number(header.head_count_kv) or heads,
        )
        head_dim = embedding // heads
        key_length = whole_number(meta.get(f"{arch}.attention.key_length")) or head_dim
        value_length = whole_number(meta.get(f"{arch}.attention.value_length")) or head_dim
        return cls(
            blocks=blocks,
            output=output,
            total=sum(t.n_bytes for t in tensors),
            trained_context=whole_number(header.context_length) or 0,
            embedding=embedding,
            heads=heads,
            kv_heads=kv_heads,
            key_length=key_length,
            value_length=value_length,
            vocab=whole_number(header.vocab_size) or vocab_from_shape,
        )

    @property
    def n_layer(self) -> int:
        return len(self.blocks)

    def estimate(
        self, context_len: int, gpu_layers: int, parallel_slots: int, kv_bytes: int
    ) -> MemoryEstimate:
        n = self.n_layer
        layers = n + 1
        k = layers if gpu_layers < 0 else min(gpu_layers, layers)
        on_gpu = range(n - min(k, n), n)  # llama.cpp offloads the last blocks
        weights = sum(self.blocks[i] for i in on_gpu) + (self.output if k > n else 0)
        cells = context_len * parallel_slots
        kv = sum(
            cells * self.kv_heads[i] * (self.key_length + self.value_length) * kv_bytes
            for i in on_gpu
        )
        compute = self._compute(cells, k, layers)
        return MemoryEstimate(
            weights_bytes=self.total,
            offloaded_weights_bytes=weights,
            kv_cache_bytes=kv,
            compute_bytes=compute,
            total_bytes=weights + kv + compute,
            layers=layers,
            offloaded_layers=k,
            context_len=context_len,
            parallel_slots=parallel_slots,
            kv_bytes_per_element=kv_bytes,
        )

    def _compute(self, cells: int, offloaded: int, layers: int) -> int:
        if offloaded <= 0:
            return 0
        batch = min(DEFAULT_UBATCH, cells)
        e, v, h = self.embedding, self.vocab, self.heads
        h_kv = max(self.kv_heads)
        logits = 4 * batch * (e + v)
        if offloaded >= layers:
            attention = 4 * batch * (1 + 4 * e + cells * (1 + h))
            return max(attention, logits)
        attention = (
            4 * batch * (1 + e + max(cells, e))
            + e * e * 9 // 16
            + 4 * cells * (batch * h + self.key_length * h_kv)
        )
        return 4 * batch * e + max(attention, logits + e * v * 105 // 128)


def _last_dim(tensor: TensorLike) -> int:
    """Rows of a matrix: GGUF lists dimensions innermost first."""
    shape = tensor.shape
    return int(shape[-1]) if len(shape) >= 2 else 0


def _per_layer(value: object, n_layer: int, default: int) -> tuple[int, ...]:
    """``head_count_kv`` as one value per block (some models give an array)."""
    single = whole_number(value)
    if single is not None:
        return (single or default,) * n_layer
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        values = [whole_number(v) for v in value]
        if len(values) == n_layer and all(v is not None for v in values):
            return tuple(v or 0 for v in values)
    return (default,) * n_layer


def _check_args(context_len: int, parallel_slots: int, kv_bytes_per_element: int) -> None:
    if context_len < 0:
        raise ValueError(f"context_len must be 0 (the model's own) or more, not {context_len}")
    if parallel_slots < 1:
        raise ValueError(f"parallel_slots must be at least 1, not {parallel_slots}")
    if kv_bytes_per_element < 1:
        raise ValueError(f"kv_bytes_per_element must be at least 1, not {kv_bytes_per_element}")


def estimate(
    header: HeaderLike,
    *,
    context_len: int,
    gpu_layers: int = -1,
    parallel_slots: int = 1,
    kv_bytes_per_element: int = 2,
) -> MemoryEstimate:
    """Estimate the GPU memory of loading ``header``'s model with these settings.

    ``context_len`` is per slot; 0 takes the model's trained
    ``context_length``.  ``gpu_layers`` is llama.cpp's ``n_gpu_layers``
    (-1: everything).  See the module docstring for the formulas.
    """
    _check_args(context_len, parallel_slots, kv_bytes_per_element)
    model = _Model.of(header)
    context = context_len or model.trained_context
    if context <= 0:
        raise ValueError("the model does not state its context_length; pass context_len")
    est = model.estimate(context, gpu_layers, parallel_slots, kv_bytes_per_element)
    return replace(est, header=header)


def _fitting_context(model: _Model, est: MemoryEstimate, free: int) -> int | None:
    """The largest multiple of 256 below ``est.context_len`` that fits, if any."""
    top = (est.context_len - 1) // CONTEXT_STEP
    low, high, best = 1, top, None
    while low <= high:  # total memory only grows with the context
        mid = (low + high) // 2
        trial = model.estimate(
            mid * CONTEXT_STEP, est.offloaded_layers, est.parallel_slots, est.kv_bytes_per_element
        )
        if trial.total_bytes <= free:
            best, low = mid * CONTEXT_STEP, mid + 1
        else:
            high = mid - 1
    return best


def _fitting_layers(model: _Model, est: MemoryEstimate, free: int) -> int | None:
    """The most layers below ``est.offloaded_layers`` that fit, if any."""
    for layers in range(est.offloaded_layers - 1, 0, -1):
        trial = model.estimate(
            est.context_len, layers, est.parallel_slots, est.kv_bytes_per_element
        )
        if trial.total_bytes <= free:
            return layers
    return None


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f}"


def check_fits(est: MemoryEstimate, gpu: AmdGpu, *, path: str = "") -> None:
    """Raise :class:`ModelLoadError` if ``est`` needs more than ``gpu`` has free.

    The message gives the figures in GiB and settings that would fit,
    found by estimating again: the largest ``context_len`` (a multiple of
    256) with the same layers, and the most ``gpu_layers`` with the same
    context.
    """
    free = gpu.vram_free
    if est.total_bytes <= free:
        return
    what = os.path.basename(path) if path else "the model"
    message = (
        f"not enough GPU memory for {what}: need {_gib(est.total_bytes)} GiB "
        f"(weights {_gib(est.offloaded_weights_bytes)}, KV cache {_gib(est.kv_cache_bytes)}, "
        f"compute {_gib(est.compute_bytes)}), free {_gib(free)} of {_gib(gpu.vram_total)} GiB "
        f"on {gpu.name}"
    )
    options: list[str] = []
    if est.header is not None:
        model = _Model.of(est.header)
        context = _fitting_context(model, est, free)
        if context is not None:
            options.append(f"context_len={context}")
        layers = _fitting_layers(model, est, free)
        if layers is not None:
            options.append(f"gpu_layers={layers}")
    if options:
        message += "; try " + " or ".join(options)
    else:
        message += "; no smaller context or layer count fits: use a smaller model or gpu_layers=0"
    raise ModelLoadError(message, path=path)
