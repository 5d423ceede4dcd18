"""Tests of inference_mlx.tokens: the token-bytes table, without MLX or a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inference_mlx.tokens import TokenTable, byte_decoder, decoder_kind

from inference.detok import TextAssembler


@dataclass
class _Added:
    content: str
    special: bool


class _Decoder:
    def __init__(self, state: dict[str, Any]) -> None:
        self._state = json.dumps(state)

    def __getstate__(self) -> bytes:
        return self._state.encode()


class _Backend:
    def __init__(self, vocab: list[str], decoder: dict[str, Any] | None) -> None:
        self._vocab = vocab
        self.decoder = _Decoder(decoder) if decoder is not None else None

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return len(self._vocab)

    def id_to_token(self, i: int) -> str | None:
        return self._vocab[i] if 0 <= i < len(self._vocab) else None


class _Tokenizer:
    """The parts of a transformers fast tokenizer that TokenTable reads."""

    def __init__(
        self, vocab: list[str], decoder: dict[str, Any] | None, added: dict[int, _Added]
    ) -> None:
        self.backend_tokenizer = _Backend(vocab, decoder)
        self.added_tokens_decoder = added
        self._n = len(vocab)

    def __len__(self) -> int:
        return self._n


class _Wrapper:
    """Like mlx-lm's TokenizerWrapper: the tokenizer in ``_tokenizer``, and a detokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.detokenizer = object()


def _byte_level(text: bytes) -> str:
    inverse = {b: c for c, b in byte_decoder().items()}
    return "".join(inverse[b] for b in text)


def test_byte_level_table() -> None:
    vocab = [
        "<|im_end|>",
        _byte_level(b" four"),
        _byte_level("é".encode()[:1]),
        _byte_level("é".encode()[1:]),
        _byte_level(b"\n"),
        "<tool>",
    ]
    added = {0: _Added("<|im_end|>", True), 5: _Added("<tool>", False)}
    tok = _Tokenizer(vocab, {"type": "ByteLevel", "add_prefix_space": True}, added)
    table = TokenTable(_Wrapper(tok))  # unwraps mlx-lm's wrapper
    assert table.kind == "byte_level" and not table.strips_leading_space
    assert [table(i) for i in range(6)] == [b"", b" four", b"\xc3", b"\xa9", b"\n", b"<tool>"]
    assert table(99) == b"" and table(-1) == b""
    asm = TextAssembler()
    texts = [t.text for i in (1, 2, 3) for t in asm.push(i, table(i))]
    assert texts == [" four", "", "é"]


def test_sentencepiece_table() -> None:
    decoder = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    vocab = ["<s>", "▁Hello", "<0xE6>", "<0x97>", "<0xA5>", "▁▁x", "</s>"]
    added = {0: _Added("<s>", True), 6: _Added("</s>", True)}
    table = TokenTable(_Tokenizer(vocab, decoder, added))
    assert table.kind == "sentencepiece" and table.strips_leading_space
    assert [table(i) for i in range(7)] == [b"", b" Hello", b"\xe6", b"\x97", b"\xa5", b"  x", b""]
    assert b"".join(table(i) for i in (2, 3, 4)).decode() == "日"


def test_a_fast_tokenizer_is_not_unwrapped() -> None:
    tok = _Tokenizer(["a"], None, {})
    tok._tokenizer = object()  # type: ignore[attr-defined]  # the Rust tokenizer, in transformers
    table = TokenTable(tok)
    assert table(0) == b"a" and table.kind == "plain"


def test_decoder_kinds() -> None:
    assert decoder_kind(None) == ("plain", False)
    assert decoder_kind("not json") == ("plain", False)
    assert decoder_kind(json.dumps({"type": "ByteLevel"})) == ("byte_level", False)
    meta = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    assert decoder_kind(json.dumps(meta)) == ("sentencepiece", True)
    meta["prepend_scheme"] = "never"
    assert decoder_kind(json.dumps(meta)) == ("sentencepiece", False)
    assert decoder_kind(json.dumps({"type": "WordPiece", "prefix": "##"})) == ("plain", False)


def test_byte_decoder_is_a_bijection() -> None:
    table = byte_decoder()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["a"] == ord("a")
