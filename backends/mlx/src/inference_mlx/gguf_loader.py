"""Load a llama.cpp GGUF file straight into mlx-lm, or convert it once to an MLX folder.

The header is read first, by the core's reader (``inference.gguf.read_header``,
every length bounded by the file size), so that an architecture or a tensor
type MLX cannot handle is refused before any weights are read. ``mx.load`` then reads
the tensors. It hands Q4_0 and Q4_1 tensors back as MLX 4-bit affine triples
(``weight``, ``scales``, ``biases``, group size 32) and Q8_0 as 8-bit ones,
which mlx-lm's quantised layers use as they are. Q2_K and Q6_K come back
dequantised to float16; those matrices are quantised again here (to 4 and 8
bits, group size 32) so that memory stays near the file's size, and the notes
say so. Q4_K is refused while ``mx.load`` decodes it wrongly (mlx 0.32), and so
are the types it cannot read at all (Q5_*, Q3_K, Q5_K, IQ*, ...).

What llama.cpp's converter changed is undone: tensor names go back to the
Hugging Face ones, the rows of Q and K that it permuted for its interleaved
RoPE (llama only) go back to the rotate-half order, and a ``rope_freqs`` tensor
goes back to a ``llama3`` rope-scaling entry. The tokenizer is rebuilt from the
``tokenizer.ggml.*`` metadata by transformers' GGUF tokenizer mapping, which
needs only the ``tokenizers`` package, not torch.

Importing this module is cheap: mlx, mlx-lm and transformers are imported
when a file is loaded, so :func:`cached_convert` answers from its cache
without them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from inference import env
from inference.errors import ModelLoadError
from inference.gguf import GGML_TYPES, read_header

if TYPE_CHECKING:
    import mlx.core as mx
    from mlx.nn.layers.base import Module
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TRANSFORMERS",
    "cached_convert",
    "convert_gguf",
    "load_gguf",
    "mx_load_reads_q4_k",
    "refusal",
]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

#: The transformers releases whose GGUF tokenizer mapping this module uses.
SUPPORTED_TRANSFORMERS = ">=5,<6"

#: Bumped whenever a conversion written by an older version of this module
#: would differ, so that :func:`cached_convert` does not serve a stale folder.
CONVERTER_VERSION = 1

_GROUP_SIZE = 32  # the block size of every type mx.load keeps packed

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

#: ggml's float and integer types: loaded unquantised.
_PLAIN_TYPES = frozenset({0, 1, 24, 25, 26, 27, 28, 30})


def _requantise_bits(ggml_type: int) -> int:
    """The MLX bits a type that ``mx.load`` dequantises is quantised to again:
    4 for types of 4 bits or fewer, 8 for the 5- to 8-bit ones (rather than
    down to 4); 0 for float, integer and unknown types (kept unquantised)."""
    known = GGML_TYPES.get(ggml_type)
    if known is None or ggml_type in _PLAIN_TYPES:
        return 0
    return 4 if known.bits <= 4 else 8


#: The ggml types ``mx.load`` reads correctly (checked on mlx 0.32): F32, F16,
#: BF16 (as float16), Q4_0, Q4_1 and Q8_0 (kept packed), Q2_K and Q6_K
#: (dequantised to float16), and the integer types. It fails on most others,
#: silently drops the tensors of some newer ones, and dequantises Q4_K wrongly
#: (the odd 32-element sub-blocks get their neighbour's scale and minimum), so
#: files holding those are refused before it sees them. Q4_K is let through
#: when :func:`mx_load_reads_q4_k` finds the installed mlx gets it right.
#: (Q4_1 came back corrupted before mlx 0.32.0.)
MLX_READABLE_TYPES = frozenset({0, 1, 2, 3, 8, 10, 14, 24, 25, 26, 30})
_Q4_K = 12


def _type_name(ggml_type: int) -> str:
    known = GGML_TYPES.get(ggml_type)
    return known.name if known is not None else f"type {ggml_type}"


# GGUF leaf names -> Hugging Face module paths inside a decoder layer.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Tensors llama.cpp writes that the model does not hold as weights.
_SKIPPED = {"rope_freqs"}

# llama.cpp pre-tokenizer names whose split transformers' mapping does not
# know, and which split digits one by one before the GPT-2 regex (llama.cpp's
# llama-vocab.cpp gives these the pair of expressions "\p{N}" and GPT-2's).
_DIGIT_SPLIT_PRE = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
)
# Ones that are plain GPT-2 byte-level splitting, the builder's default.
_GPT2_PRE = frozenset({"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"})

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(slots=True)
class _Loaded:
    model: Module
    tokenizer: PreTrainedTokenizerFast
    wrapper: TokenizerWrapper
    config: dict[str, Any]
    notes: tuple[str, ...]


# --------------------------------------------------------------------------
# public API


def load_gguf(
    path: str,
) -> tuple[Module, TokenizerWrapper, dict[str, Any], tuple[str, ...]]:
    """Load a GGUF model file into mlx-lm.

    Returns ``(model, tokenizer, config, notes)``: the mlx-lm model with its
    weights evaluated, an mlx-lm ``TokenizerWrapper``, the Hugging Face style
    config the model was built from (with its ``quantization`` entry), and
    notes on what the loader did, for example which tensors it kept packed
    and which it had to quantise again.

    Raises :class:`~inference.errors.ModelLoadError` for an architecture or a
    tokenizer it does not support, and for any failure reading the file.
    The caller is expected to have checked that ``path`` is a GGUF file.
    """
    loaded = _load(path)
    return loaded.model, loaded.wrapper, loaded.config, loaded.notes


def convert_gguf(path: str, out_dir: str) -> str:
    """Write the GGUF model at ``path`` as an MLX model folder ``out_dir``.

    The folder holds ``config.json``, ``model.safetensors`` and the tokenizer
    files, and loads with ``mlx_lm.load(out_dir)``. The quantised tensors are
    written as they were loaded, so the folder is about the size of the file.
    Returns ``out_dir``.
    """
    loaded = _load(path)
    _write_folder(loaded, Path(out_dir), path)
    return out_dir


def cached_convert(path: str, cache_dir: str | None = None) -> str:
    """Convert ``path`` once into a cache folder and return that folder.

    The folder is named after the file and a key made of its size, its
    modification time in nanoseconds and a hash of its first MiB, so a
    changed file gets a new folder. ``cache_dir`` defaults to
    :func:`default_cache_dir`: ``$INFERENCE_CACHE_DIR/mlx``, else
    ``$XDG_CACHE_HOME/inference/mlx`` (``~/.cache/inference/mlx``). The
    conversion is written to a temporary folder beside it and renamed into
    place, so a folder that exists is complete; a second call only stats and
    reads the first MiB of the file.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        key = _cache_key(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}", path=path) from exc
    final = root / f"{_safe_stem(path)}-{key}"
    if _is_complete(final):
        return str(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    except OSError as exc:
        raise ModelLoadError(
            f"cannot create the MLX cache folder {root}: {exc}", path=path
        ) from exc
    try:
        loaded = _load(path)
        _write_folder(loaded, tmp, path)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same conversion first: use its folder.
            if not _is_complete(final):
                raise
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the MLX conversion of {path} to {final}: {exc}", path=path
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def default_cache_dir() -> Path:
    """``$INFERENCE_CACHE_DIR/mlx``; without it ``$XDG_CACHE_HOME/inference/mlx``
    or ``~/.cache/inference/mlx`` (:func:`inference.env.cache_dir`)."""
    return env.cache_dir("mlx")


# --------------------------------------------------------------------------
# loading


def _load(path: str) -> _Loaded:
    try:
        import mlx.core as mx
    except ImportError as exc:  # pragma: no cover - the backend checks first
        raise ModelLoadError(f"cannot load {path}: mlx is not installed", path=path) from exc
    # The core's reader (every length bounded by the file size): before mx.load
    # sees the file, and because mx.load does not say which tensors it
    # dequantised. It raises ModelLoadError for a malformed header.
    header = read_header(path, load_arrays=False)
    architecture = header.architecture
    tensor_types = {t.name: t.ggml_type for t in header.tensors}
    refused = refusal(architecture, tensor_types.values())
    if refused:
        raise ModelLoadError(
            f"GGUF file {path}: {refused}; use the llama_cpp backend for this file, "
            "or an MLX model folder",
            path=path,
        )
    try:
        weights, metadata = cast(
            "tuple[dict[str, mx.array], dict[str, Any]]", mx.load(path, return_metadata=True)
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}", path=path) from exc
    try:
        return _build(path, architecture, weights, metadata, tensor_types)
    except ModelLoadError:
        raise
    except Exception as exc:
        detail = str(exc)
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise ModelLoadError(
            f"cannot load GGUF file {path} with MLX: {type(exc).__name__}: {detail}",
            path=path,
        ) from exc


def refusal(architecture: str, tensor_types: Iterable[int]) -> str | None:
    """Why the MLX backend cannot load a GGUF file of this architecture and
    these tensor types, in one line; None when it can. Reads no weights."""
    if architecture not in SUPPORTED_ARCHITECTURES:
        return (
            f"architecture {architecture or '(none)'!r} has no MLX loader "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    types = list(tensor_types)
    readable = MLX_READABLE_TYPES
    if _Q4_K in types and mx_load_reads_q4_k():
        readable = readable | {_Q4_K}
    unreadable = Counter(_type_name(t) for t in types if t not in readable)
    if unreadable:
        listed = ", ".join(f"{n} ({c} tensors)" for n, c in sorted(unreadable.items()))
        return f"tensor types that mlx {_mlx_version()} cannot read correctly: {listed}"
    return None


def _mlx_version() -> str:
    try:
        return importlib.metadata.version("mlx")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _build(
    path: str,
    architecture: str,
    weights: dict[str, mx.array],
    metadata: Mapping[str, Any],
    types: Mapping[str, int],
) -> _Loaded:
    import mlx.core as mx
    from mlx.nn.layers.quantized import quantize

    meta = {key: _plain(value) for key, value in metadata.items()}
    config, notes = _config(path, architecture, meta, weights)
    mapped, per_module, weight_notes = _map_weights(architecture, config, weights, types)
    quantization = _quantization_config(per_module)
    notes.extend(weight_notes)
    config["quantization"] = quantization
    config["quantization_config"] = dict(quantization)

    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = module.Model(module.ModelArgs.from_dict(config))

    def predicate(module_path: str, _module: Module) -> bool | dict[str, Any]:
        value = per_module.get(module_path, False)
        return dict(value) if isinstance(value, dict) else False

    quantize(model, class_predicate=predicate)
    model.load_weights(list(mapped.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()

    tokenizer, wrapper, tokenizer_notes = _tokenizer(path, architecture, meta)
    notes.extend(tokenizer_notes)
    eos_ids = sorted(wrapper.eos_token_ids)
    config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if tokenizer.bos_token_id is not None:
        config["bos_token_id"] = tokenizer.bos_token_id
    return _Loaded(model, tokenizer, wrapper, config, tuple(notes))


def _plain(value: Any) -> Any:
    """An mx.array metadata value as a Python scalar or list."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _config(
    path: str,
    arch: str,
    meta: Mapping[str, Any],
    weights: Mapping[str, mx.array],
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise ModelLoadError(f"GGUF file {path} has no {full!r} metadata", path=path)
        return meta[full]

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ModelLoadError(
            f"GGUF file {path} rotates {rope_dims} of {head_dim} head dimensions; "
            "partial RoPE is not supported by the MLX GGUF loader: use the "
            "llama_cpp backend for this file, or an MLX model folder",
            path=path,
        )
    value_dim = int(meta.get(f"{arch}.attention.value_length", head_dim))
    if value_dim != head_dim:
        raise ModelLoadError(
            f"GGUF file {path} has value heads of {value_dim} and key heads of "
            f"{head_dim}; the MLX GGUF loader needs them equal",
            path=path,
        )
    embedding = weights.get("token_embd.weight")
    if embedding is None:
        raise ModelLoadError(f"GGUF file {path} has no token_embd.weight tensor", path=path)
    vocab = int(embedding.shape[0])
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) != vocab:
        notes.append(f"token list has {len(tokens)} entries, embedding {vocab} rows")

    config: dict[str, Any] = {
        "model_type": arch,
        "architectures": [_HF_ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "num_hidden_layers": int(need("block_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get(f"{arch}.context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in weights,
    }
    if arch == "qwen2":
        if head_dim != hidden // heads:
            raise ModelLoadError(
                f"GGUF file {path}: qwen2 with head size {head_dim} != "
                f"{hidden}/{heads} is not supported by mlx-lm's qwen2 model",
                path=path,
            )
        del config["head_dim"]
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in weights
        config["mlp_bias"] = "blk.0.ffn_up.bias" in weights
    if config["tie_word_embeddings"]:
        notes.append("no output tensor: lm_head is tied to token_embd")

    scaling = _rope_scaling(path, arch, meta, weights, config)
    if scaling is not None:
        config["rope_scaling"] = scaling
        notes.append(f"rope scaling {scaling['type']} x{scaling['factor']:g}")
    return config, notes


def _rope_scaling(
    path: str,
    arch: str,
    meta: Mapping[str, Any],
    weights: Mapping[str, mx.array],
    config: Mapping[str, Any],
) -> dict[str, Any] | None:
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    freqs = weights.get("rope_freqs.weight")
    if freqs is not None:
        factors = [float(x) for x in _plain(freqs)]
        scaling = fit_llama3_rope(
            factors,
            base=float(config["rope_theta"]),
            dims=int(
                config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
            ),
            original_context=int(original) if original else 8192,
        )
        if scaling is None and any(abs(f - 1.0) > 1e-6 for f in factors):
            raise ModelLoadError(
                f"GGUF file {path} has rope_freqs that match no llama3 rope scaling; "
                "use the llama_cpp backend for this file",
                path=path,
            )
        return scaling
    kind = str(meta.get(f"{arch}.rope.scaling.type", "none"))
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind == "none" or factor is None or float(factor) in (0.0, 1.0):
        return None
    if kind == "linear":
        return {"type": "linear", "factor": float(factor)}
    if kind == "yarn":
        yarn: dict[str, Any] = {"type": "yarn", "factor": float(factor)}
        if original:
            yarn["original_max_position_embeddings"] = int(original)
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = meta.get(f"{arch}.rope.scaling.{key}")
            if value is not None:
                yarn[name] = float(value)
        return yarn
    raise ModelLoadError(
        f"GGUF file {path} uses rope scaling {kind!r}, which the MLX GGUF loader "
        "does not support; use the llama_cpp backend for this file",
        path=path,
    )


def llama3_rope_factors(
    *, base: float, dims: int, factor: float, low: float, high: float, original_context: int
) -> list[float]:
    """The per-frequency factors llama.cpp writes as ``rope_freqs`` for llama3 scaling.

    Each is the multiple of the plain RoPE wavelength, as in mlx-lm's
    ``Llama3RoPE``: ``factor`` for long wavelengths, 1 for short ones, and a
    smooth blend between.
    """
    low_wavelen = original_context / low
    high_wavelen = original_context / high
    out = []
    for i in range(0, dims, 2):
        wavelen = 2 * math.pi * base ** (i / dims)
        if wavelen > low_wavelen:
            out.append(factor)
        elif wavelen > high_wavelen:
            smooth = (original_context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
        else:
            out.append(1.0)
    return out


def fit_llama3_rope(
    factors: list[float], *, base: float, dims: int, original_context: int = 8192
) -> dict[str, Any] | None:
    """A ``llama3`` rope-scaling config that reproduces ``factors``, or None.

    Only the ratios of ``original_context`` to the low and high frequency
    factors enter the result, so ``original_context`` is taken as given and
    the two factors are fitted: Llama 3's own (1 and 4) are tried first, then
    a straight-line fit through the blended frequencies.
    """
    if len(factors) != dims // 2 or not factors:
        return None
    factor = max(factors)
    if factor <= 1.0 + 1e-6:
        return None
    candidates = [(1.0, 4.0)]
    xs: list[float] = []
    ys: list[float] = []
    for i, f in enumerate(factors):
        if 1.0 + 1e-4 < f < factor - 1e-4:
            wavelen = 2 * math.pi * base ** (2 * i / dims)
            xs.append(original_context / wavelen)
            ys.append((1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor))
    if len(xs) >= 2:
        n = len(xs)
        mean_x, mean_y = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mean_x) ** 2 for x in xs)
        if sxx > 0:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
            if slope > 0:
                intercept = mean_y - slope * mean_x
                low = -intercept / slope
                candidates.append((low, low + 1.0 / slope))
    for low, high in candidates:
        if not 0 < low < high:
            continue
        expected = llama3_rope_factors(
            base=base,
            dims=dims,
            factor=factor,
            low=low,
            high=high,
            original_context=original_context,
        )
        if all(math.isclose(a, b, rel_tol=2e-3) for a, b in zip(expected, factors, strict=True)):
            return {
                "type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original_context,
            }
    return None


def _target(name: str) -> tuple[str, str] | None:
    """``(module path, parameter)`` for a GGUF tensor name, or None to skip it."""
    stem, _, param = name.rpartition(".")
    if stem in _SKIPPED:
        return None
    if stem in _TOP_NAMES:
        return _TOP_NAMES[stem], param
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}", param
    raise ValueError(f"unexpected tensor {name!r}")


def _map_weights(
    arch: str,
    config: Mapping[str, Any],
    weights: Mapping[str, mx.array],
    types: Mapping[str, int],
) -> tuple[dict[str, mx.array], dict[str, dict[str, int] | bool], list[str]]:
    import mlx.core as mx

    mapped: dict[str, mx.array] = {}
    per_module: dict[str, dict[str, int] | bool] = {}
    kept: dict[tuple[str, int], list[str]] = {}
    requantised: dict[tuple[str, int], list[str]] = {}
    plain: dict[str, list[str]] = {}
    matrices = {"token_embd", "output"} | {
        f"blk.{i}.{leaf}"
        for i in range(int(config["num_hidden_layers"]))
        for leaf in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    }
    unpermute = {}
    if arch == "llama":
        # llama.cpp's convert_hf_to_gguf.py permutes Q and K rows for its
        # interleaved RoPE; qwen2 and qwen3 use NeoX RoPE and are left alone.
        for i in range(int(config["num_hidden_layers"])):
            unpermute[f"blk.{i}.attn_q"] = int(config["num_attention_heads"])
            unpermute[f"blk.{i}.attn_k"] = int(config["num_key_value_heads"])

    for name, tensor in weights.items():
        target = _target(name)
        if target is None:
            continue
        module_path, param = target
        stem = name.rpartition(".")[0]
        if stem in unpermute and param in ("weight", "scales", "biases", "bias"):
            tensor = _unpermute(tensor, unpermute[stem])
        if param == "weight" and stem in matrices:
            ggml_type = types.get(name, -1)
            type_name = _type_name(ggml_type)
            scales = weights.get(f"{stem}.scales")
            if scales is not None:
                in_features = int(scales.shape[-1]) * _GROUP_SIZE
                bits = int(tensor.shape[-1]) * 32 // in_features
                per_module[module_path] = {"group_size": _GROUP_SIZE, "bits": bits}
                kept.setdefault((type_name, bits), []).append(stem)
            elif not _requantise_bits(ggml_type):
                per_module[module_path] = False
                plain.setdefault(type_name, []).append(stem)
            else:
                bits = _requantise_bits(ggml_type)
                if tensor.ndim == 2 and tensor.shape[-1] % _GROUP_SIZE == 0:
                    packed, q_scales, q_biases = mx.quantize(
                        tensor, group_size=_GROUP_SIZE, bits=bits
                    )
                    mapped[f"{module_path}.weight"] = packed
                    mapped[f"{module_path}.scales"] = q_scales
                    mapped[f"{module_path}.biases"] = q_biases
                    mx.eval(packed, q_scales, q_biases)
                    per_module[module_path] = {"group_size": _GROUP_SIZE, "bits": bits}
                    requantised.setdefault((type_name, bits), []).append(stem)
                    continue
                per_module[module_path] = False
                plain.setdefault(f"{type_name} (dequantised)", []).append(stem)
        mapped[f"{module_path}.{param}"] = tensor

    return mapped, per_module, _notes(kept, requantised, plain)


def _unpermute(tensor: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's ``permute`` of Q/K rows (works on packed rows too)."""
    rows = int(tensor.shape[0])
    rest = tuple(int(d) for d in tensor.shape[1:])
    return tensor.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def _quantization_config(per_module: Mapping[str, dict[str, int] | bool]) -> dict[str, Any]:
    """mlx-lm's ``quantization`` entry: the commonest setting, and per-path exceptions.

    Each module that differs from the default is listed under its path, a
    plain (unquantised) one as ``False``, as mlx-lm's ``load_model`` reads it.
    """
    settings = Counter(
        (v["group_size"], v["bits"]) for v in per_module.values() if isinstance(v, dict)
    )
    group_size, bits = settings.most_common(1)[0][0] if settings else (_GROUP_SIZE, 4)
    default = {"group_size": group_size, "bits": bits}
    quantization: dict[str, Any] = dict(default)
    for path in sorted(per_module):
        if per_module[path] != default:
            quantization[path] = per_module[path]
    return quantization


def _notes(
    kept: Mapping[tuple[str, int], list[str]],
    requantised: Mapping[tuple[str, int], list[str]],
    plain: Mapping[str, list[str]],
) -> list[str]:
    notes = []
    for (type_name, bits), stems in sorted(kept.items()):
        if len(stems) == 1:
            notes.append(f"{stems[0]} {type_name} kept as {bits}-bit")
        else:
            notes.append(f"{len(stems)} tensors of type {type_name} kept as {bits}-bit")
    for (type_name, bits), stems in sorted(requantised.items()):
        if len(stems) == 1:
            notes.append(f"{stems[0]} {type_name} re-quantised to {bits}-bit")
        else:
            notes.append(f"{len(stems)} tensors of type {type_name} re-quantised to {bits}-bit")
    for type_name, stems in sorted(plain.items()):
        subject = stems[0] if len(stems) == 1 else f"{len(stems)} tensors of type"
        notes.append(f"{subject} {type_name} kept unquantised")
    return notes


# --------------------------------------------------------------------------
# tokenizer


#: Where transformers 5 keeps its GGUF tokenizer mapping.
TOKENIZER_MAPPING_MODULE = "transformers.integrations.gguf.gguf_tokenizer_mapping"


def _tokenizer_api() -> tuple[
    Callable[..., Any], Mapping[str, Mapping[str, str]], Mapping[str, str]
]:
    try:
        mapping = importlib.import_module(TOKENIZER_MAPPING_MODULE)
        convert = mapping.convert_gguf_tokenizer
        renames = mapping.GGUF_TOKENIZER_MAPPING
        splits = getattr(mapping, "GGUF_PRE_TOKENIZER_SPLITS", {})
    except (ImportError, AttributeError) as exc:
        try:
            version = importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        raise ModelLoadError(
            "the MLX GGUF loader builds the tokenizer with transformers' GGUF mapping "
            f"({TOKENIZER_MAPPING_MODULE}), which it supports for transformers "
            f"{SUPPORTED_TRANSFORMERS}; found transformers {version}"
        ) from exc
    return convert, renames, splits


def _tokenizer(
    path: str, arch: str, meta: Mapping[str, Any]
) -> tuple[PreTrainedTokenizerFast, TokenizerWrapper, list[str]]:
    try:
        convert, renames, splits = _tokenizer_api()
    except ModelLoadError as exc:
        raise ModelLoadError(str(exc), path=path) from exc
    from mlx_lm.tokenizer_utils import (
        BPEStreamingDetokenizer,
        NaiveStreamingDetokenizer,
        SPMStreamingDetokenizer,
        TokenizerWrapper,
    )
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    notes: list[str] = []
    spec = {
        name: meta[f"tokenizer.{key}"]
        for key, name in renames["tokenizer"].items()
        if f"tokenizer.{key}" in meta
    }
    model_type = spec.get("tokenizer_type")
    tokens = spec.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelLoadError(f"GGUF file {path} has no tokenizer.ggml.tokens", path=path)
    try:
        backend, _ = convert(arch, spec)
    except ValueError as exc:
        raise ModelLoadError(
            f"GGUF file {path} has a tokenizer of type {model_type!r} that the MLX "
            f"GGUF loader cannot rebuild ({exc}); use the llama_cpp backend for "
            "this file, or an MLX model folder",
            path=path,
        ) from exc

    pre = spec.get("pre_tokenizer_type")
    if model_type == "gpt2" and pre not in splits:
        if pre in _DIGIT_SPLIT_PRE:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        elif pre is not None and pre not in _GPT2_PRE:
            notes.append(f"pre-tokenizer {pre!r} not known: splitting text as GPT-2 does")

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(index, int) and 0 <= index < len(tokens):
            return str(tokens[index])
        return None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model_type == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    # llama.cpp adds BOS/EOS exactly as these flags say; state it explicitly
    # so the builder's own default post-processor does not decide.
    ids = {t: backend.token_to_id(t) for t in (bos, eos) if t}
    head = [bos] if add_bos and bos and ids.get(bos) is not None else []
    tail = [eos] if add_eos and eos and ids.get(eos) is not None else []
    backend.post_processor = processors.TemplateProcessing(
        single=[*head, "$A", *tail],
        pair=[*head, "$A", *tail, *(f"{t}:1" for t in head), "$B:1", *(f"{t}:1" for t in tail)],
        special_tokens=[(t, ids[t]) for t in dict.fromkeys([*head, *tail])],
    )

    kwargs: dict[str, Any] = {}
    for name in ("bos", "eos", "unknown", "padding"):
        value = token(f"{name}_token_id")
        if value is not None:
            kwargs[{"unknown": "unk", "padding": "pad"}.get(name, name) + "_token"] = value
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        kwargs["chat_template"] = template
    context = meta.get(f"{arch}.context_length")
    if isinstance(context, int) and context > 0:
        kwargs["model_max_length"] = context
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)  # type: ignore[no-untyped-call]

    eos_ids = {
        int(meta[f"tokenizer.ggml.{key}"])
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if isinstance(meta.get(f"tokenizer.ggml.{key}"), int)
    }
    decoder = backend.decoder
    detokenizer: Any = NaiveStreamingDetokenizer
    if isinstance(decoder, decoders.ByteLevel):
        detokenizer = _exact_bpe_detokenizer(BPEStreamingDetokenizer)
    elif decoder is not None:
        shape = json.loads(decoder.__getstate__())
        steps = [d.get("type") for d in shape.get("decoders", [])]
        if steps[:3] == ["Replace", "ByteFallback", "Fuse"]:
            detokenizer = SPMStreamingDetokenizer if "Strip" in steps else _spm_no_trim
    wrapper = TokenizerWrapper(tokenizer, detokenizer, eos_token_ids=sorted(eos_ids))
    return tokenizer, wrapper, notes


def _exact_bpe_detokenizer(base: type) -> type:
    """mlx-lm's byte-level detokenizer, minus its trimming of the first space.

    mlx-lm drops the leading space of the first generated token, so a raw
    continuation such as " four" would stream as "four"; llama.cpp, and the
    contract that streamed texts concatenate to the generated text, keep it.
    """

    class ExactBPEStreamingDetokenizer(base):  # type: ignore[misc]
        def _maybe_trim_space(self, current_text: str) -> str:
            return current_text

    return ExactBPEStreamingDetokenizer


def _spm_no_trim(tokenizer: Any) -> Any:
    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer

    return SPMStreamingDetokenizer(tokenizer, trim_space=False)  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------
# writing


def _write_folder(loaded: _Loaded, out: Path, source: str) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out.mkdir(parents=True, exist_ok=True)
    params = dict(tree_flatten(loaded.model.parameters()))  # type: ignore[no-untyped-call]
    mx.save_safetensors(str(out / "model.safetensors"), params, metadata={"format": "mlx"})
    loaded.tokenizer.save_pretrained(str(out))
    config = dict(loaded.config)
    config["gguf_source"] = {
        "file": os.path.basename(source),
        "converter_version": CONVERTER_VERSION,
        "notes": list(loaded.notes),
    }
    # config.json last: a folder with it is a finished folder.
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / "config.json")


def _is_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and all((folder / name).is_file() for name in _TOKENIZER_FILES)
    )


def _cache_key(path: str) -> str:
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
    key = f"{stat.st_size}:{stat.st_mtime_ns}:{digest.hexdigest()}:{CONVERTER_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _safe_stem(path: str) -> str:
    stem = Path(path).name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-5]
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return cleaned[:64] or "model"


# --------------------------------------------------------------------------
# Q4_K probe


def _q4_k_block() -> bytes:
    """One Q4_K super-block whose eight sub-blocks all have different scales and mins."""
    header = struct.pack("<ee", 0.5, 0.25)
    scales = bytes([0x41, 0x83, 0xC5, 0x07, 0x49, 0x8B, 0xCD, 0x0F, 0x21, 0x43, 0x65, 0x87])
    quants = bytes((i * 7 + 3) % 256 for i in range(128))
    return header + scales + quants


def _decode_q4_k(block: bytes) -> list[float]:
    """ggml's reference dequantisation of one Q4_K super-block."""
    d, dmin = struct.unpack_from("<ee", block, 0)
    sc, qs = block[4:16], block[16:144]
    out: list[float] = []
    for pair in range(4):
        for half in range(2):
            j = 2 * pair + half
            if j < 4:
                scale, low = sc[j] & 63, sc[j + 4] & 63
            else:
                scale = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4)
                low = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
            for q in qs[32 * pair : 32 * pair + 32]:
                nibble = (q >> 4) if half else (q & 0xF)
                out.append(d * scale * nibble - dmin * low)
    return out


@functools.cache
def mx_load_reads_q4_k() -> bool:
    """Whether the installed ``mx.load`` dequantises Q4_K tensors correctly.

    Writes a one-block GGUF file to a temporary folder, loads it and compares
    it with ggml's reference decoding. (mlx 0.32 does not.)
    """
    import mlx.core as mx

    block = _q4_k_block()
    name = b"probe.weight"
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQQIQ", 2, 256, 1, _Q4_K, 0)
    blob = head + info
    blob += b"\0" * (-len(blob) % 32) + block
    expected = _decode_q4_k(block)
    try:
        with tempfile.TemporaryDirectory(prefix="inference-mlx-probe-") as folder:
            probe = os.path.join(folder, "q4_k.gguf")
            with open(probe, "wb") as fh:
                fh.write(blob)
            arrays = cast("dict[str, mx.array]", mx.load(probe))
            weight = arrays["probe.weight"]
            if "probe.scales" in arrays:
                weight = mx.dequantize(
                    weight, arrays["probe.scales"], arrays["probe.biases"], group_size=32, bits=4
                )
            got = [float(x) for x in cast("list[float]", weight.reshape(-1).tolist())]
    except Exception:
        return False
    return len(got) == len(expected) and all(
        abs(a - b) <= 1e-2 * max(1.0, abs(b)) for a, b in zip(got, expected, strict=True)
    )
