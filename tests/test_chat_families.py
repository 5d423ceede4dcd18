"""The built-in chat formats for model files that ship no template."""

from __future__ import annotations

import pytest

pytest.importorskip("jinja2")

from inference.chat_families import FAMILIES, ChatFamily, family_for
from inference.chat_template import render_chat
from inference.types import Message

CONVERSATION = [
    Message("system", "You are brief."),
    Message("user", "Hello"),
    Message("assistant", "Hi there."),
    Message("user", "Name a large animal."),
]

#: Each family's documented format, written out by hand for CONVERSATION.
EXPECTED = {
    # Meta's Llama 3 instruct format.
    "llama3": (
        "<|begin_of_text|>",
        "",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a large animal.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    # Google's Gemma format: user and model turns; the system text opens the first user turn.
    "gemma": (
        "<bos>",
        "",
        "<bos><start_of_turn>user\nYou are brief.\n\nHello<end_of_turn>\n"
        "<start_of_turn>model\nHi there.<end_of_turn>\n"
        "<start_of_turn>user\nName a large animal.<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    # Microsoft's Phi-3 format.
    "phi3": (
        "",
        "<|endoftext|>",
        "<|system|>\nYou are brief.<|end|>\n<|user|>\nHello<|end|>\n"
        "<|assistant|>\nHi there.<|end|>\n<|user|>\nName a large animal.<|end|>\n<|assistant|>\n",
    ),
    # Mistral's v1 instruct format.
    "mistral": (
        "<s>",
        "</s>",
        "<s>[INST] You are brief.\n\nHello [/INST] Hi there.</s>"
        "[INST] Name a large animal. [/INST]",
    ),
    # ChatML (Qwen, SmolLM2 and many others).
    "chatml": (
        "",
        "",
        "<|im_start|>system\nYou are brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there.<|im_end|>\n<|im_start|>user\nName a large animal."
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
}


def test_every_family_is_checked() -> None:
    assert {f.name for f in FAMILIES} == set(EXPECTED)
    assert all(isinstance(f, ChatFamily) and f.markers for f in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_renders_its_documented_format(family) -> None:  # type: ignore[no-untyped-def]
    bos, eos, expected = EXPECTED[family.name]
    got = render_chat(family.template, CONVERSATION, bos_token=bos, eos_token=eos)
    assert got == expected


def test_a_single_user_message_without_system() -> None:
    gemma = next(f for f in FAMILIES if f.name == "gemma")
    got = render_chat(gemma.template, [Message("user", "Hi")], bos_token="<bos>")
    assert got == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    mistral = next(f for f in FAMILIES if f.name == "mistral")
    assert render_chat(mistral.template, [Message("user", "Hi")], bos_token="<s>") == (
        "<s>[INST] Hi [/INST]"
    )


@pytest.mark.parametrize(
    ("architecture", "tokens", "family"),
    [
        ("llama", {"<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"}, "llama3"),
        ("gemma2", {"<start_of_turn>", "<end_of_turn>", "<bos>"}, "gemma"),
        ("gemma3", set(), "gemma"),  # by architecture alone
        ("phi3", {"<|user|>", "<|end|>", "<|assistant|>"}, "phi3"),
        ("phi3", set(), "phi3"),
        ("llama", {"<s>", "</s>", "[INST]", "[/INST]"}, "mistral"),
        ("qwen2", {"<|im_start|>", "<|im_end|>"}, "chatml"),
        ("llama", {"<s>", "</s>"}, "chatml"),  # nothing says: ChatML, as llama.cpp does
        # Markers win over the architecture name.
        ("gemma", {"<|im_start|>", "<|im_end|>"}, "chatml"),
    ],
)
def test_the_family_is_chosen_by_tokens_then_architecture(
    architecture: str, tokens: set[str], family: str
) -> None:
    assert family_for(architecture, tokens).name == family
