"""The documented chat formats of the major model families, for files that ship no template.

A GGUF file without ``tokenizer.chat_template`` used to get ChatML whatever
its family, so a Gemma or Llama 3 model was prompted in a format it was never
trained on. :func:`family_for` picks the family from the special tokens the
vocabulary holds (the surest sign: a model can only have been trained on
turn markers it has tokens for), then from the architecture, and falls back
to ChatML. Each template is written from its family's documented format and
rendered in the same sandbox as a file's own (:mod:`inference.chat_template`).

========  ==================================  ==========================================
family    recognised by                       format
========  ==================================  ==========================================
llama3    ``<|start_header_id|>``             ``<|start_header_id|>user<|end_header_id|>``
                                              ``\\n\\n…<|eot_id|>``
gemma     ``<start_of_turn>``, gemma*         ``<start_of_turn>user\\n…<end_of_turn>\\n``;
                                              the system text opens the first user turn
phi3      ``<|user|>`` and ``<|end|>``, phi3  ``<|user|>\\n…<|end|>\\n``
mistral   ``[INST]``                          ``[INST] … [/INST]`` (Mistral's v1 format);
                                              the system text opens the first user turn
chatml    ``<|im_start|>``; the fallback      ``<|im_start|>user\\n…<|im_end|>\\n``
========  ==================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .chat_template import CHATML_TEMPLATE

__all__ = ["FAMILIES", "ChatFamily", "family_for"]


@dataclass(frozen=True, slots=True)
class ChatFamily:
    """One family's chat format and how to recognise its models."""

    name: str
    #: A Jinja template, rendered like a model's own (``messages``,
    #: ``bos_token``, ``eos_token``, ``add_generation_prompt``).
    template: str
    #: Tokens that, all in the vocabulary, identify the family.
    markers: tuple[str, ...]
    #: ``general.architecture`` values (prefixes) of the family's models.
    architectures: tuple[str, ...] = ()


_LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Gemma has no system role: its documented template puts the system text at
# the start of the first user turn, then a blank line.
_GEMMA = (
    "{{ bos_token }}"
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set system.text = system.text + message['content'] | trim + '\\n\\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + system.text + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{% set system.text = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

_PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Mistral's v1 instruct format: no system role either; it opens the first
# user message. Each answer ends with the end-of-sequence token.
_MISTRAL = (
    "{{ bos_token }}"
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set system.text = system.text + message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' + system.text + message['content'] + ' [/INST]' }}"
    "{% set system.text = '' %}"
    "{% else %}"
    "{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

#: The families, in the order their markers are tried.
FAMILIES: tuple[ChatFamily, ...] = (
    ChatFamily("llama3", _LLAMA3, ("<|start_header_id|>", "<|eot_id|>")),
    ChatFamily("gemma", _GEMMA, ("<start_of_turn>", "<end_of_turn>"), ("gemma",)),
    ChatFamily("phi3", _PHI3, ("<|user|>", "<|end|>", "<|assistant|>"), ("phi3",)),
    ChatFamily("mistral", _MISTRAL, ("[INST]", "[/INST]")),
    ChatFamily("chatml", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>")),
)

_CHATML = FAMILIES[-1]


def family_for(architecture: str, tokens: Collection[str]) -> ChatFamily:
    """The chat family of a model with this architecture and vocabulary:
    by its turn-marker tokens first, then by its architecture; ChatML when
    neither says."""
    for family in FAMILIES:
        if all(marker in tokens for marker in family.markers):
            return family
    arch = architecture.lower()
    for family in FAMILIES:
        if any(arch.startswith(prefix) for prefix in family.architectures):
            return family
    return _CHATML
