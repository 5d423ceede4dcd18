"""Load a llama.cpp GGUF file straight into mlx-lm, or convert it once to an MLX folder.

The header is read first, by the core's reader (``inference.gguf.read_header``,
every length bounded by the file size), so that an architecture or a tensor
type the loader cannot handle is refused before any weights are read. The
tensors are then read one at a time (:mod:`.gguf_tensors`): each ggml type is
kept, repacked or quantised again for MLX as :data:`.tensor_types.TENSOR_TYPES`
says, and the notes say what was done.

What llama.cpp's converter changed is undone (:data:`_ARCHITECTURES`): tensor
names go back to the Hugging Face ones, the rows of Q and K that it permuted
for its interleaved RoPE (llama only) go back to the rotate-half order,
Gemma's norm weights lose the 1 the converter added, a ``rope_freqs`` tensor
goes back to a ``llama3`` rope-scaling entry and Phi-3's ``rope_factors_*``
to a LongRoPE one. The hyperparameters llama.cpp keeps as rules rather than
metadata (Gemma's query scale, Gemma 3's local RoPE base) are restated. The
tokenizer is rebuilt from the ``tokenizer.ggml.*`` metadata by transformers'
GGUF tokenizer mapping, which needs only the ``tokenizers`` package, not torch.

Importing this module is cheap: mlx, mlx-lm and transformers are imported
when a file is loaded, so :func:`cached_convert` answers from its cache
without them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from inference import env
from inference.errors import ModelLoadError
from inference.gguf import GGUFHeader, TensorInfo, read_header

from .gguf_tensors import read_tensor
from .gguf_tokenizer import gguf_tokenizer
from .rope import fit_llama3_rope
from .tensor_types import GROUP_SIZE, SUPPORTED_ARCHITECTURES, refusal
from .tensor_types import type_name as ggml_type_name

if TYPE_CHECKING:
    import mlx.core as mx
    from mlx.nn.layers.base import Module
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

__all__ = ["cached_convert", "convert_gguf", "default_cache_dir", "load_gguf"]

#: Bumped whenever a conversion written by an older version of this module
#: would differ, so that :func:`cached_convert` does not serve a stale folder.
CONVERTER_VERSION = 2

_COMMON_LAYER_NAMES = {
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
# Gemma's four norms per layer: llama.cpp's ffn_norm is the pre-feed-forward one.
_GEMMA_LAYER_NAMES = {
    **_COMMON_LAYER_NAMES,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Phi-3 keeps Q, K and V in one matrix and gate and up in another, as mlx-lm does.
_PHI3_LAYER_NAMES = {
    **_COMMON_LAYER_NAMES,
    "attn_qkv": "self_attn.qkv_proj",
    "ffn_up": "mlp.gate_up_proj",
}


@dataclass(frozen=True, slots=True)
class _Architecture:
    """How one GGUF architecture maps onto an mlx-lm model."""

    model_type: str  # the mlx_lm.models module
    hf_class: str
    layer_names: Mapping[str, str]
    #: llama.cpp's converter permutes Q and K rows for its interleaved RoPE.
    unpermute_qk: bool = False
    #: Gemma's converter stores 1 + w for every RMS norm weight; mlx-lm adds the 1.
    norm_offset: float = 0.0


_ARCHITECTURES = {
    "llama": _Architecture("llama", "LlamaForCausalLM", _COMMON_LAYER_NAMES, unpermute_qk=True),
    "qwen2": _Architecture("qwen2", "Qwen2ForCausalLM", _COMMON_LAYER_NAMES),
    "qwen3": _Architecture("qwen3", "Qwen3ForCausalLM", _COMMON_LAYER_NAMES),
    "gemma2": _Architecture("gemma2", "Gemma2ForCausalLM", _GEMMA_LAYER_NAMES, norm_offset=1.0),
    "gemma3": _Architecture(
        "gemma3_text", "Gemma3ForCausalLM", _GEMMA_LAYER_NAMES, norm_offset=1.0
    ),
    "phi3": _Architecture("phi3", "Phi3ForCausalLM", _PHI3_LAYER_NAMES),
}
assert tuple(_ARCHITECTURES) == SUPPORTED_ARCHITECTURES

_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Tensors llama.cpp writes that the model does not hold as weights: they are
# read into the config instead (rope scaling).
_SKIPPED = {"rope_freqs", "rope_factors_long", "rope_factors_short"}

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
        import mlx.core as mx  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the backend checks first
        raise ModelLoadError(f"cannot load {path}: mlx is not installed", path=path) from exc
    # The core's reader (every length bounded by the file size) reads the
    # header; the refusal is decided from it before any weights are read.
    header = read_header(path)
    refused = refusal(header)
    if refused:
        raise ModelLoadError(
            f"GGUF file {path}: {refused}; use the llama_cpp backend for this file, "
            "or an MLX model folder",
            path=path,
        )
    try:
        with open(path, "rb") as fh:
            return _build(path, header, fh.fileno())
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


def _build(path: str, header: GGUFHeader, fd: int) -> _Loaded:
    import mlx.core as mx
    from mlx.nn.layers.quantized import quantize

    arch = _ARCHITECTURES[header.architecture]
    meta = {key: _plain(value) for key, value in header.metadata.items()}
    tensors = {t.name: t for t in header.tensors}
    config, notes = _config(path, header.architecture, meta, tensors, fd, header.data_offset)
    mapped, per_module, weight_notes = _read_weights(fd, header, arch, config)
    notes.extend(weight_notes)
    quantization = _quantization_config(per_module)
    if quantization:  # a file of plain types only is an unquantised model
        config["quantization"] = quantization
        config["quantization_config"] = dict(quantization)

    module = importlib.import_module(f"mlx_lm.models.{arch.model_type}")
    model = module.Model(module.ModelArgs.from_dict(config))
    sanitize = getattr(model, "sanitize", None)
    if callable(sanitize):  # as mlx_lm.load does: drops a tied lm_head, for one
        mapped = sanitize(mapped)

    def predicate(module_path: str, _module: Module) -> bool | dict[str, Any]:
        value = per_module.get(module_path, False)
        return dict(value) if isinstance(value, dict) else False

    quantize(model, class_predicate=predicate)
    model.load_weights(list(mapped.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()

    tokenizer, wrapper, tokenizer_notes = gguf_tokenizer(path, header.architecture, meta)
    notes.extend(tokenizer_notes)
    eos_ids = sorted(wrapper.eos_token_ids)
    config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if tokenizer.bos_token_id is not None:
        config["bos_token_id"] = tokenizer.bos_token_id
    return _Loaded(model, tokenizer, wrapper, config, tuple(notes))


def _plain(value: Any) -> Any:
    """A metadata value as transformers' tokenizer mapping takes it: lists, not tuples."""
    return list(value) if isinstance(value, tuple) else value


def _float_tensor(fd: int, data_offset: int, info: TensorInfo) -> list[float]:
    values = read_tensor(fd, data_offset, info, quantise=False).weight
    return [float(x) for x in cast("list[float]", values.reshape(-1).tolist())]


def _config(
    path: str,
    arch: str,
    meta: Mapping[str, Any],
    tensors: Mapping[str, TensorInfo],
    fd: int,
    data_offset: int,
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise ModelLoadError(f"GGUF file {path} has no {full!r} metadata", path=path)
        return meta[full]

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    layers = int(need("block_count"))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    embedding = tensors.get("token_embd.weight")
    if embedding is None or len(embedding.shape) != 2:
        raise ModelLoadError(f"GGUF file {path} has no token_embd.weight matrix", path=path)
    vocab = int(embedding.shape[1])
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) != vocab:
        notes.append(f"token list has {len(tokens)} entries, embedding {vocab} rows")
    context = int(meta.get(f"{arch}.context_length", 4096))

    config: dict[str, Any] = {
        "model_type": _ARCHITECTURES[arch].model_type,
        "architectures": [_ARCHITECTURES[arch].hf_class],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": context,
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    window = int(meta.get(f"{arch}.attention.sliding_window", 0) or 0)
    # (refusal() has checked what mlx-lm's models cannot express.)
    if arch == "qwen2":
        del config["head_dim"]
    elif arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    elif arch in ("gemma2", "gemma3"):
        # llama.cpp scales queries by 1/sqrt(head size), except for the 27B
        # models (46 and 62 layers), which use 1/sqrt(hidden / heads).
        big = layers == (46 if arch == "gemma2" else 62)
        config["query_pre_attn_scalar"] = hidden / heads if big else head_dim
        if arch == "gemma2":
            for key in ("attn_logit_softcapping", "final_logit_softcapping"):
                value = meta.get(f"{arch}.{key}")
                if value is not None:
                    config[key] = float(value)
        else:
            config["rope_local_base_freq"] = 10000.0  # fixed by llama.cpp for local layers
            config["sliding_window_pattern"] = int(
                meta.get(f"{arch}.attention.sliding_window_pattern", 6) or 6
            )
            if window:
                config["sliding_window"] = window
    elif arch == "phi3":
        del config["head_dim"]
        config["partial_rotary_factor"] = rope_dims / head_dim
    if window and arch in ("gemma2", "phi3") and window < context:
        # mlx-lm's gemma2 and phi3 models attend to the whole context, where
        # llama.cpp slides a window: stay within it, where the two agree.
        config["max_position_embeddings"] = window
        notes.append(
            f"context limited to the {window}-token sliding window, which mlx-lm's "
            f"{arch} model does not implement (trained context {context})"
        )
    if config["tie_word_embeddings"]:
        notes.append("no output tensor: lm_head is tied to token_embd")

    scaling = _rope_scaling(path, arch, meta, tensors, config, fd, data_offset)
    if scaling is not None:
        config["rope_scaling"] = scaling
        factor = scaling.get("factor")
        notes.append(
            f"rope scaling {scaling['type']}" + (f" x{factor:g}" if factor is not None else "")
        )
    return config, notes


def _rope_scaling(
    path: str,
    arch: str,
    meta: Mapping[str, Any],
    tensors: Mapping[str, TensorInfo],
    config: Mapping[str, Any],
    fd: int,
    data_offset: int,
) -> dict[str, Any] | None:
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if "rope_factors_long.weight" in tensors:
        # Phi-3's LongRoPE. mlx-lm's model always rotates by the long factors
        # (llama.cpp uses the short ones for contexts within the original).
        scaling: dict[str, Any] = {
            "type": "longrope",
            "long_factor": _float_tensor(fd, data_offset, tensors["rope_factors_long.weight"]),
            "short_factor": _float_tensor(
                fd,
                data_offset,
                tensors.get("rope_factors_short.weight") or tensors["rope_factors_long.weight"],
            ),
        }
        attn_factor = meta.get(f"{arch}.rope.scaling.attn_factor")
        if attn_factor is not None:
            scaling["long_mscale"] = float(attn_factor)
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    freqs = tensors.get("rope_freqs.weight")
    if freqs is not None:
        factors = _float_tensor(fd, data_offset, freqs)
        fitted = fit_llama3_rope(
            factors,
            base=float(config["rope_theta"]),
            dims=int(
                config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
            ),
            original_context=int(original) if original else 8192,
        )
        if fitted is None and any(abs(f - 1.0) > 1e-6 for f in factors):
            raise ModelLoadError(
                f"GGUF file {path} has rope_freqs that match no llama3 rope scaling; "
                "use the llama_cpp backend for this file",
                path=path,
            )
        return fitted
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


def _target(name: str, arch: _Architecture) -> tuple[str, str] | None:
    """``(module path, parameter)`` for a GGUF tensor name, or None to skip it."""
    stem, _, param = name.rpartition(".")
    if stem in _SKIPPED:
        return None
    if stem in _TOP_NAMES:
        return _TOP_NAMES[stem], param
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in arch.layer_names:
        return f"model.layers.{parts[1]}.{arch.layer_names[parts[2]]}", param
    raise ValueError(f"unexpected tensor {name!r}")


def _read_weights(
    fd: int, header: GGUFHeader, arch: _Architecture, config: Mapping[str, Any]
) -> tuple[dict[str, mx.array], dict[str, dict[str, int] | bool], list[str]]:
    """Every tensor, one at a time, as the model's parameters, with notes."""
    import mlx.core as mx

    mapped: dict[str, mx.array] = {}
    per_module: dict[str, dict[str, int] | bool] = {}
    done: dict[tuple[str, str, int], list[str]] = {}
    unpermute: dict[str, int] = {}
    if arch.unpermute_qk:
        for i in range(int(config["num_hidden_layers"])):
            unpermute[f"blk.{i}.attn_q"] = int(config["num_attention_heads"])
            unpermute[f"blk.{i}.attn_k"] = int(config["num_key_value_heads"])

    for info in header.tensors:
        target = _target(info.name, arch)
        if target is None:
            continue
        module_path, param = target
        stem = info.name.rpartition(".")[0]
        matrix = param == "weight" and len(info.shape) == 2
        tensor = read_tensor(fd, header.data_offset, info, quantise=matrix)
        arrays = {param: tensor.weight}
        if tensor.bits:
            arrays["scales"] = cast("mx.array", tensor.scales)
            arrays["biases"] = cast("mx.array", tensor.biases)
        if stem in unpermute:
            arrays = {k: _unpermute(v, unpermute[stem]) for k, v in arrays.items()}
        if arch.norm_offset and param == "weight" and stem.endswith("norm"):
            arrays[param] = (arrays[param].astype(mx.float32) - arch.norm_offset).astype(
                arrays[param].dtype
            )
        for key, value in arrays.items():
            mapped[f"{module_path}.{key}"] = value
        if matrix:
            bits = tensor.bits
            per_module[module_path] = {"group_size": GROUP_SIZE, "bits": bits} if bits else False
            done.setdefault((ggml_type_name(info.ggml_type), tensor.how, bits), []).append(stem)
    mx.eval(list(mapped.values()))
    return mapped, per_module, _notes(done)


def _unpermute(tensor: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's ``permute`` of Q/K rows (works on packed rows too)."""
    rows = int(tensor.shape[0])
    rest = tuple(int(d) for d in tensor.shape[1:])
    return tensor.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def _quantization_config(per_module: Mapping[str, dict[str, int] | bool]) -> dict[str, Any]:
    """mlx-lm's ``quantization`` entry: the commonest setting, and per-path exceptions.

    Each module that differs from the default is listed under its path, a
    plain (unquantised) one as ``False``, as mlx-lm's ``load_model`` reads it.
    Empty when no module is quantised.
    """
    settings = Counter(
        (v["group_size"], v["bits"]) for v in per_module.values() if isinstance(v, dict)
    )
    if not settings:
        return {}
    group_size, bits = settings.most_common(1)[0][0]
    default = {"group_size": group_size, "bits": bits}
    quantization: dict[str, Any] = dict(default)
    for path in sorted(per_module):
        if per_module[path] != default:
            quantization[path] = per_module[path]
    return quantization


_VERBS = {
    "repacked": "kept as {bits}-bit",
    "requantised": "re-quantised to {bits}-bit",
    "plain": "kept unquantised",
    "dequantised": "dequantised to float16",
}


def _notes(done: Mapping[tuple[str, str, int], list[str]]) -> list[str]:
    notes = []
    for (type_name, how, bits), stems in sorted(done.items(), key=lambda kv: (kv[0][1], kv[0])):
        subject = stems[0] if len(stems) == 1 else f"{len(stems)} tensors of type"
        notes.append(f"{subject} {type_name} {_VERBS[how].format(bits=bits)}")
    return notes


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
