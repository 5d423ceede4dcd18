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
from inference.gguf import read_header

from .gguf_tokenizer import gguf_tokenizer
from .rope import fit_llama3_rope
from .tensor_types import refusal, requantise_bits
from .tensor_types import type_name as ggml_type_name

if TYPE_CHECKING:
    import mlx.core as mx
    from mlx.nn.layers.base import Module
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

__all__ = ["cached_convert", "convert_gguf", "default_cache_dir", "load_gguf"]

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

    tokenizer, wrapper, tokenizer_notes = gguf_tokenizer(path, architecture, meta)
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
            type_name = ggml_type_name(ggml_type)
            scales = weights.get(f"{stem}.scales")
            if scales is not None:
                in_features = int(scales.shape[-1]) * _GROUP_SIZE
                bits = int(tensor.shape[-1]) * 32 // in_features
                per_module[module_path] = {"group_size": _GROUP_SIZE, "bits": bits}
                kept.setdefault((type_name, bits), []).append(stem)
            elif not requantise_bits(ggml_type):
                per_module[module_path] = False
                plain.setdefault(type_name, []).append(stem)
            else:
                bits = requantise_bits(ggml_type)
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
