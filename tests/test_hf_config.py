"""One reader of a Hugging Face config.json, shared by discovery and the MLX backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference import ModelInfo
from inference.errors import ModelLoadError
from inference.hf_config import MAX_CONFIG_BYTES, config_facts, read_config
from inference.values import is_int, is_number, whole_number


def test_facts_from_the_top_level_and_text_config() -> None:
    assert config_facts(
        {
            "model_type": "llama",
            "max_position_embeddings": 8192.0,  # a whole float counts
            "vocab_size": 32000,
            "num_hidden_layers": 22,
            "hidden_size": 2048,
            "quantization": {"bits": 4, "group_size": 64},
        }
    ) == ModelInfo("llama", 32000, 22, 2048, 8192, 4, 64)
    # A multimodal config keeps the language model's facts under text_config.
    facts = config_facts(
        {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": {"model_type": "gemma3_text", "max_position_embeddings": 131072},
            "quantization_config": {"bits": 8, "group_size": 128},
        }
    )
    assert facts.architecture == "gemma3_text" and facts.context_length == 131072
    assert (facts.quant_bits, facts.quant_group_size) == (8, 128)
    # Other names for the context; the architecture from `architectures`.
    other = config_facts({"architectures": ["GPT2LMHeadModel"], "n_ctx": 1024, "n_embd": 768})
    assert (other.architecture, other.context_length, other.hidden_size) == (
        "GPT2LMHeadModel",
        1024,
        768,
    )


def test_values_of_the_wrong_type_count_as_not_said() -> None:
    facts = config_facts(
        {
            "model_type": 7,
            "max_position_embeddings": True,  # JSON's true is not 1
            "vocab_size": "32000",
            "num_hidden_layers": 2.5,
            "hidden_size": -4,
            "quantization": {"bits": -4},
            "quantization_config": "8-bit",
            "text_config": [1, 2],
        }
    )
    assert facts == ModelInfo()


def test_read_config_refuses_what_is_not_a_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert read_config(tmp_path) == {"model_type": "qwen2"}
    for body, why in (
        ("[1, 2]", "expected a JSON object, found list"),
        ("{ nope", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nesting past the recursion limit
        (" " * (MAX_CONFIG_BYTES + 1), "larger than 4 MiB"),
    ):
        (tmp_path / "config.json").write_text(body)
        with pytest.raises(ModelLoadError, match=why):
            read_config(tmp_path)
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_config(tmp_path / "missing")


def test_an_int_is_not_a_bool() -> None:
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_number(3) and is_number(2.5) and not is_number(False) and not is_number(None)
    assert whole_number(4096.0) == 4096 and whole_number(7) == 7
    assert whole_number(2.5) is None and whole_number(True) is None and whole_number("7") is None
