"""The Hugging Face tokenizer of a GGUF file, built from its ``tokenizer.ggml.*`` metadata.

transformers' GGUF tokenizer mapping does the conversion (it needs the
``tokenizers`` package, not torch); what it gets wrong for llama.cpp's
pre-tokenizers and detokenisers is set right here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from inference.errors import ModelLoadError

if TYPE_CHECKING:
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

__all__ = ["SUPPORTED_TRANSFORMERS", "TOKENIZER_MAPPING_MODULE", "gguf_tokenizer"]

#: The transformers releases whose GGUF tokenizer mapping this module uses.
SUPPORTED_TRANSFORMERS = ">=5,<6"

# llama.cpp pre-tokenizer names whose split transformers' mapping does not
# know, and which split digits one by one before the GPT-2 regex (llama.cpp's
# llama-vocab.cpp gives these the pair of expressions "\p{N}" and GPT-2's).
_DIGIT_SPLIT_PRE = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
)
# Ones that are plain GPT-2 byte-level splitting, the builder's default.
_GPT2_PRE = frozenset({"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"})


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


def gguf_tokenizer(
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
