"""Loading for MLX: an MLX or Hugging Face model folder through
``mlx_lm.load`` (a local path only; nothing is fetched), or a GGUF file
through :mod:`inference_mlx.gguf_loader` after the core's header check; and
what the loaded model and its tokenizer say about themselves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inference import env
from inference.errors import InferenceError, ModelLoadError, UnsupportedOptionError
from inference.gguf import read_header
from inference.hf_config import config_facts, read_config
from inference.options import LoadConfig
from inference.types import ModelInfo

from .detect import INSTALL_HINT, MlxDevice, detect

__all__ = ["DEFAULT_BATCH", "Loaded", "info_from_config", "load"]

#: Sequences decoded together when ``parallel_slots`` is 0.
DEFAULT_BATCH = 16


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model loaded into MLX, before it is wrapped: mlx-lm's module and
    tokenizer wrapper, its facts, and where it runs."""

    model: Any
    wrapper: Any
    info: ModelInfo
    device: str
    batch_size: int
    cpu_only: bool
    cfg: LoadConfig


def load(path: str, cfg: LoadConfig, *, device: MlxDevice | None = None) -> Loaded:
    """Load the folder or GGUF file at ``path``; ModelLoadError on failure."""
    env.configure_logging()
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory", path=path)
    if cfg.adapter_path and not os.path.exists(cfg.adapter_path):
        raise ModelLoadError(f"{cfg.adapter_path}: no such adapter folder", path=cfg.adapter_path)
    if cfg.threads:
        raise UnsupportedOptionError(
            "threads: MLX sets its own CPU threads; this backend cannot choose them",
            option="threads",
            backend="mlx",
        )
    if cfg.flash_attention is not None:
        raise UnsupportedOptionError(
            "flash_attention: MLX chooses its own attention kernel (its fused scaled "
            "dot-product attention); this backend cannot turn it on or off",
            option="flash_attention",
            backend="mlx",
        )
    if cfg.pooling in ("rank", "cls"):
        raise UnsupportedOptionError(
            f"pooling={cfg.pooling!r}: this backend pools a decoder's hidden states by "
            "their mean or the last token's",
            option="pooling",
            backend="mlx",
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
    return Loaded(
        model=model,
        wrapper=wrapper,
        info=info_from_config(config, path=path, context_len=cfg.context_len, notes=notes),
        device=found.device,
        batch_size=cfg.parallel_slots or DEFAULT_BATCH,
        cpu_only=cfg.gpu_layers == 0,
        cfg=cfg,
    )


def info_from_config(
    config: Mapping[str, Any], *, path: str, context_len: int = 0, notes: Sequence[str] = ()
) -> ModelInfo:
    """A :class:`ModelInfo` from a Hugging Face / mlx-lm ``config.json``
    (read as :func:`inference.hf_config.config_facts` reads it, as
    ``inference discover`` does). ``context_len`` (the load option)
    overrides the trained context length when given."""
    facts = config_facts(config)
    return replace(
        facts,
        context_length=context_len or facts.context_length,
        backend="mlx",
        path=path,
        notes=tuple(notes),
    )


def eos_ids(wrapper: Any, tokenizer: Any) -> set[int]:
    ids = {int(i) for i in (getattr(wrapper, "eos_token_ids", None) or ())}
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    return ids


def chat_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates
        template = template.get("default") or next(iter(template.values()), None)
    return template if isinstance(template, str) and template else None


def vocabulary(tokenizer: Any) -> Mapping[str, int]:
    """The tokenizer's token strings (for choosing a chat family)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        return {}
    return vocab if isinstance(vocab, Mapping) else {}


def adds_bos(tokenizer: Any) -> bool:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_folder(path: str, cfg: LoadConfig) -> tuple[Any, Any, dict[str, Any], tuple[str, ...]]:
    folder = Path(path).resolve()
    if not (folder / "config.json").exists():
        raise ModelLoadError(
            f"{path}: a directory with no config.json (expected an MLX or Hugging Face "
            "model folder: config.json, *.safetensors and the tokenizer files)",
            path=path,
        )
    config = read_config(folder)
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
