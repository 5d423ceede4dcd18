"""Encoder models on MLX (BERT, XLM-RoBERTa, ModernBERT): loaded and run by
``mlx-embeddings``, the field's MLX library for them, pooled here.

A folder whose ``config.json`` names an encoder architecture
(:data:`ENCODERS`) loads as an :class:`MlxEncoder`: it embeds and reranks
(by cosine similarity), says in its capabilities that it does not generate,
and refuses ``generate`` and ``chat`` the way every backend does. Its
pooling follows the load option, else the folder's sentence-transformers
``1_Pooling/config.json``, else the mean. Texts run in padded batches of
similar length on the model's own engine thread (MLX's streams belong to
the thread that made them).

Nothing here imports ``mlx`` until a model is loaded.
"""

from __future__ import annotations

import array
import functools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from inference.base import BaseTextModel
from inference.capabilities import Capabilities, embedding_only
from inference.embeddings import Embeddings, EmbedInput, finish
from inference.errors import GenerationError, ModelLoadError, UnsupportedOptionError
from inference.options import LoadConfig
from inference.stream import StreamControl

from .loading import info_from_config

__all__ = ["ENCODERS", "MlxEncoder", "encoder_config"]

#: The ``model_type`` values of the encoders mlx-embeddings runs.
ENCODERS = frozenset({"bert", "xlm-roberta", "modernbert"})
#: The most texts, and padded tokens, one forward pass holds.
BATCH_TEXTS = 32
BATCH_TOKENS = 8192
INSTALL_HINT = "pip install mlx-embeddings (or '.[mlx]' from this checkout)"


def encoder_config(path: str) -> dict[str, Any] | None:
    """The ``config.json`` of the encoder folder at ``path``, or None when
    ``path`` is not such a folder."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and config.get("model_type") in ENCODERS:
        return config
    return None


def _folder_pooling(path: str) -> str:
    """The pooling a sentence-transformers folder declares ("" if none)."""
    try:
        with open(os.path.join(path, "1_Pooling", "config.json"), encoding="utf-8") as f:
            declared = json.load(f)
    except (OSError, ValueError):
        return ""
    for key, name in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_lasttoken", "last"),
        ("pooling_mode_mean_tokens", "mean"),
    ):
        if isinstance(declared, dict) and declared.get(key):
            return name
    return ""


class MlxEncoder(BaseTextModel):
    """An encoder loaded by mlx-embeddings. Use :meth:`load`."""

    backend_name: ClassVar[str] = "mlx"

    def __init__(
        self, model: Any, tokenizer: Any, config: Mapping[str, Any], path: str, cfg: LoadConfig
    ) -> None:
        info = info_from_config(config, path=path, context_len=cfg.context_len)
        super().__init__(info=info, engine_thread=True, stream_width=1, load=cfg)
        self._model: Any = model
        self._tokenizer: Any = tokenizer
        self._pooling = cfg.pooling or _folder_pooling(path) or "mean"
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad = pad if isinstance(pad, int) else 0
        limit = int(config.get("max_position_embeddings") or 512)
        self._limit = min(info.context_length or limit, limit)

    @classmethod
    def load(cls, path: str, cfg: LoadConfig) -> MlxEncoder:
        config = encoder_config(path)
        if config is None:
            raise ModelLoadError(f"{path}: not an encoder folder", path=path)
        if cfg.threads:
            raise UnsupportedOptionError(
                "threads: MLX sets its own CPU threads; this backend cannot choose them",
                option="threads",
                backend="mlx",
            )
        if cfg.pooling == "rank":
            raise UnsupportedOptionError(
                "pooling='rank': this backend does not run an encoder's classification head; "
                "it ranks by cosine similarity",
                option="pooling",
                backend="mlx",
            )
        try:
            from mlx_embeddings import load as load_encoder
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot load {path}: mlx-embeddings cannot be imported ({exc}); {INSTALL_HINT}",
                path=path,
            ) from exc
        try:
            model, wrapper = load_encoder(path)
        except Exception as exc:
            raise ModelLoadError(
                f"{path}: mlx-embeddings could not load it: {exc}", path=path
            ) from exc
        return cls(model, getattr(wrapper, "_tokenizer", wrapper), config, path, cfg)

    # -- what it can do -----------------------------------------------------------

    def _capabilities(self) -> Capabilities:
        caps = embedding_only(super()._capabilities())
        return replace(caps, embed=True, embedding_dimensions=self._info.hidden_size, rerank=True)

    # -- tokens -------------------------------------------------------------------

    def _encode(self, text: str, add_bos: bool) -> list[int]:
        return [int(i) for i in self._tokenizer.encode(text, add_special_tokens=False)]

    def _token_bytes(self, token_id: int) -> bytes:
        return str(self._tokenizer.decode([token_id])).encode("utf-8")

    # -- embeddings ---------------------------------------------------------------

    def _embed(
        self, texts: list[EmbedInput], normalize: bool, truncate: bool, dimensions: int | None
    ) -> Embeddings:
        seqs = [self._embed_ids(t, truncate) for t in texts]
        rows: list[bytes] = [b""] * len(seqs)
        with self._hold(StreamControl(), shared=True):
            engine = self._engine
            assert engine is not None
            for group in _groups([len(s) for s in seqs]):
                pooled = engine.call(functools.partial(self._pool, [seqs[i] for i in group]))
                size = len(pooled) // len(group)
                for k, i in enumerate(group):
                    rows[i] = pooled[k * size : (k + 1) * size]
        raw = array.array("f")
        raw.frombytes(b"".join(rows))
        width = len(raw) // len(seqs)
        vectors = finish(raw, len(seqs), normalize=normalize, dimensions=dimensions)
        return Embeddings(vectors, dimensions or width, sum(len(s) for s in seqs))

    def _embed_ids(self, text: EmbedInput, truncate: bool) -> list[int]:
        """``text``'s tokens with the model's special tokens ([CLS] ... [SEP]),
        cut to the model's positions or refused; token ids as they are."""
        if isinstance(text, str):
            ids = [int(i) for i in self._tokenizer.encode(text, add_special_tokens=True)]
        else:
            bad = next((t for t in text if t >= self._info.vocab_size), None)
            if bad is not None:
                raise GenerationError(f"token id {bad} is not in the vocabulary")
            ids = list(text)
        if len(ids) <= self._limit:
            return ids
        if not truncate:
            raise GenerationError(
                f"a text has {len(ids)} tokens, more than the {self._limit} the model "
                "holds; shorten it, or embed with truncate=True"
            )
        return ids[: self._limit - 1] + ids[-1:]  # keep the end marker ([SEP])

    def _pool(self, seqs: list[list[int]]) -> bytes:
        """On the engine thread: one padded forward pass, pooled per text."""
        import mlx.core as mx

        model = self._model
        if model is None:
            raise GenerationError("the model is closed")
        width = max(len(s) for s in seqs)
        ids = mx.array([s + [self._pad] * (width - len(s)) for s in seqs], dtype=mx.int32)
        mask = mx.array([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=mx.int32)
        states = model(ids, attention_mask=mask).last_hidden_state.astype(mx.float32)
        if self._pooling == "cls":
            pooled = states[:, 0]
        elif self._pooling == "last":
            pooled = states[mx.arange(len(seqs)), mx.array([len(s) - 1 for s in seqs])]
        else:
            weights = mask.astype(mx.float32)[..., None]
            pooled = (states * weights).sum(axis=1) / weights.sum(axis=1)
        mx.eval(pooled)
        return bytes(memoryview(pooled))

    # -- lifetime -----------------------------------------------------------------

    def _release(self) -> None:
        self._model = None  # the engine thread is stopped after this

    def _engine_exit(self) -> None:
        import mlx.core as mx

        mx.synchronize()
        mx.clear_streams()


def _groups(lengths: list[int]) -> Iterator[list[int]]:
    """Indices of texts in batches of similar length (least padding): at
    most :data:`BATCH_TEXTS` texts and :data:`BATCH_TOKENS` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    group: list[int] = []
    for i in order:
        width = lengths[group[0]] if group else lengths[i]
        if group and (len(group) == BATCH_TEXTS or width * (len(group) + 1) > BATCH_TOKENS):
            yield group
            group = []
        group.append(i)
    if group:
        yield group
