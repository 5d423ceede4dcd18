"""The exact bytes of each token of a Hugging Face tokenizer, as one table.

mlx-lm's streaming detokenisers trim the first token's leading space and
buffer text by characters, so the MLX backend does not use them: it maps
every token id to its raw bytes once and lets the core's
:class:`~inference.detok.TextAssembler` do the incremental UTF-8. The
texts of a stream then concatenate to exactly the generated text, leading
space included, and a character split across tokens never shows as U+FFFD.

Three kinds of vocabulary are told apart by the tokenizer's decoder:

- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): each vocabulary string is
  the GPT-2 ``bytes_to_unicode`` image of the token's bytes, so the inverse
  map gives them back;
- sentencepiece style (Llama 2, Mistral, Gemma): ``▁`` stands for a space and
  ``<0xNN>`` tokens are single bytes;
- anything else: the vocabulary string as UTF-8.

Added tokens are written as their content; special ones (``<|im_end|>``,
``</s>``...) as nothing, as llama.cpp renders them with ``special=False``.

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TokenTable", "byte_decoder", "decoder_kind"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE = "\u2581"  # ▁, sentencepiece's word boundary


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_BYTE_DECODER: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}


def byte_decoder() -> Mapping[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: character -> byte."""
    return _BYTE_DECODER


def _types(tree: Any) -> list[str]:
    """Every ``"type"`` in a tokenizers decoder's JSON, depth first."""
    found: list[str] = []
    if isinstance(tree, dict):
        kind = tree.get("type")
        if isinstance(kind, str):
            found.append(kind)
        for value in tree.values():
            found.extend(_types(value))
    elif isinstance(tree, list):
        for value in tree:
            found.extend(_types(value))
    return found


def decoder_kind(decoder_json: str | None) -> tuple[str, bool]:
    """``(kind, strips_leading_space)`` of a tokenizers decoder given as JSON.

    ``kind`` is ``"byte_level"``, ``"sentencepiece"`` or ``"plain"``; the flag
    says whether the decoder drops the first leading space of a text (the
    ``Strip`` step of sentencepiece tokenizers with a dummy prefix, or a
    ``Metaspace`` decoder that adds a prefix space).
    """
    if not decoder_json:
        return "plain", False
    try:
        tree = json.loads(decoder_json)
    except ValueError:
        return "plain", False
    types = _types(tree)
    if "ByteLevel" in types:
        return "byte_level", False
    spm = "Metaspace" in types or "ByteFallback" in types or _SPACE in decoder_json
    if spm:
        strips = "Strip" in types or _metaspace_prefix(tree)
        return "sentencepiece", strips
    return "plain", False


def _metaspace_prefix(tree: Any) -> bool:
    if isinstance(tree, dict):
        if tree.get("type") == "Metaspace":
            scheme = tree.get("prepend_scheme", "always")
            return bool(tree.get("add_prefix_space", scheme != "never"))
        return any(_metaspace_prefix(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_metaspace_prefix(v) for v in tree)
    return False


def _byte_level(piece: str) -> bytes:
    try:
        return bytes(_BYTE_DECODER[c] for c in piece)
    except KeyError:  # not a byte-level string after all
        return piece.encode("utf-8")


def _sentencepiece(piece: str) -> bytes:
    match = _BYTE_TOKEN.fullmatch(piece)
    if match:
        return bytes((int(match.group(1), 16),))
    return piece.replace(_SPACE, " ").encode("utf-8")


def _plain(piece: str) -> bytes:
    return piece.encode("utf-8")


_CONVERTERS: dict[str, Callable[[str], bytes]] = {
    "byte_level": _byte_level,
    "sentencepiece": _sentencepiece,
    "plain": _plain,
}


@dataclass(frozen=True, slots=True)
class _Table:
    pieces: tuple[bytes, ...]
    kind: str
    strips_leading_space: bool


class TokenTable:
    """Token id -> bytes for one Hugging Face tokenizer, built on first use.

    ``tokenizer`` is a ``transformers`` tokenizer or mlx-lm's
    ``TokenizerWrapper`` around one. Ids outside the vocabulary give ``b""``.
    Safe to use from several threads.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = _unwrap(tokenizer)
        self._table: _Table | None = None
        self._lock = threading.Lock()

    def _get(self) -> _Table:
        table = self._table
        if table is None:
            with self._lock:
                table = self._table
                if table is None:
                    table = self._table = _build(self._tokenizer)
        return table

    def __call__(self, token_id: int) -> bytes:
        pieces = self._get().pieces
        if 0 <= token_id < len(pieces):
            return pieces[token_id]
        return b""

    def __len__(self) -> int:
        return len(self._get().pieces)

    @property
    def kind(self) -> str:
        """``"byte_level"``, ``"sentencepiece"``, ``"plain"`` or ``"decode"``."""
        return self._get().kind

    @property
    def strips_leading_space(self) -> bool:
        """Whether the tokenizer's own decode drops the text's first space."""
        return self._get().strips_leading_space

    def release(self) -> None:
        """Drop the tokenizer reference (the table, once built, is kept)."""
        self._tokenizer = None


def _unwrap(tokenizer: Any) -> Any:
    """The transformers tokenizer inside mlx-lm's ``TokenizerWrapper``.

    (A transformers fast tokenizer has a ``_tokenizer`` too, the Rust one, so
    only a wrapper, which has a ``detokenizer``, is unwrapped.)
    """
    inner = getattr(tokenizer, "_tokenizer", None)
    if inner is not None and hasattr(tokenizer, "detokenizer"):
        return inner
    return tokenizer


def _build(tokenizer: Any) -> _Table:
    if tokenizer is None:
        return _Table((), "plain", False)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    added: Mapping[int, Any] = getattr(tokenizer, "added_tokens_decoder", None) or {}
    try:
        size = len(tokenizer)
    except TypeError:
        size = 0
    if backend is None:
        # A slow tokenizer: ask it for each token's text (a character split
        # across tokens then shows as U+FFFD; no causal LM that loads here
        # ships without a fast tokenizer).
        vocab = max(size, int(getattr(tokenizer, "vocab_size", 0) or 0))
        pieces = []
        for i in range(vocab):
            token = added.get(i)
            if token is not None and getattr(token, "special", False):
                pieces.append(b"")
            else:
                pieces.append(str(tokenizer.decode([i])).encode("utf-8"))
        return _Table(tuple(pieces), "decode", False)

    decoder = backend.decoder
    state = decoder.__getstate__() if decoder is not None else None
    if isinstance(state, bytes):
        state = state.decode("utf-8", "replace")
    kind, strips = decoder_kind(state if isinstance(state, str) else None)
    convert = _CONVERTERS[kind]
    size = max(size, int(backend.get_vocab_size(with_added_tokens=True)))
    out: list[bytes] = []
    for i in range(size):
        token = added.get(i)
        if token is not None:
            content = str(getattr(token, "content", token))
            out.append(b"" if getattr(token, "special", False) else content.encode("utf-8"))
            continue
        piece = backend.id_to_token(i)
        out.append(b"" if piece is None else convert(piece))
    return _Table(tuple(out), kind, strips)
