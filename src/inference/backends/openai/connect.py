"""Connecting to a server: its model list, which kind of server it is, the
model chosen, and the :class:`~.model.OpenAIModel` made for it."""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from ... import env
from ...errors import ModelLoadError
from ...options import LoadConfig
from ...types import ModelInfo
from ...values import is_int
from .dialects import DIALECTS
from .embedding import probe
from .model import OpenAIModel
from .scoring import ScoringOpenAIModel
from .transport import Client, Failure
from .urls import Settings, parse_url

__all__ = ["detect_server", "load", "model_cards"]

_log = logging.getLogger(__name__)


def model_cards(doc: Any) -> list[dict[str, Any]]:
    """The model entries of a ``GET /v1/models`` answer, whatever its shape."""
    items: Any = None
    if isinstance(doc, dict):
        if isinstance(doc.get("data"), list):
            items = doc["data"]
        elif isinstance(doc.get("id"), str):
            items = [doc]  # TGI answers with one model object
    elif isinstance(doc, list):
        items = doc
    if items is None:
        raise Failure("the answer to GET /models is not a list of models", retriable=False)
    return [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


def detect_server(card: Mapping[str, Any], single_object: bool) -> str:
    """The kind of server, from what its model list says about a model."""
    owner = str(card.get("owned_by") or "").lower()
    ident = str(card.get("id"))
    if owner in ("llamacpp", "llama.cpp"):
        return "llama.cpp"
    if owner == "vllm":
        return "vllm"
    if owner == "sglang":
        return "sglang"
    if owner == "me":
        return "llama-cpp-python"
    if single_object:
        return "tgi"
    if owner in ("library", "ollama"):
        return "ollama"
    name, _, tag = ident.rpartition(":")
    if name and tag and "/" not in tag and owner == name.partition("/")[0].lower() and "/" in name:
        return "ollama"
    return "openai"


def load(url: str, cfg: LoadConfig, defaults: Settings) -> OpenAIModel:
    endpoint, settings = parse_url(url, defaults)
    where = endpoint.display
    if cfg.adapter_path:
        raise ModelLoadError(
            f"{where}: the openai backend cannot apply a LoRA adapter; load it on the server "
            "(vLLM --lora-modules, llama-server --lora) and name it with #model=NAME",
            path=where,
        )
    key = (
        cfg.api_key
        or os.environ.get(env.INFERENCE_API_KEY, "")
        or os.environ.get(env.OPENAI_API_KEY, "")
    )
    client = Client(endpoint, settings, key)
    try:
        doc: Any = client.fetch_json("GET", "/models")
        cards = model_cards(doc)
    except Failure as exc:
        if exc.status == 404 and settings.model:
            doc, cards = None, []
            _log.info("%s: the server has no /models list; using model %r", where, settings.model)
        else:
            client.close()
            raise ModelLoadError(f"{where}: {exc.message}", path=where) from None
    card = pick(cards, settings.model, where, client)
    name = settings.model or str(card.get("id"))
    single = isinstance(doc, dict) and "data" not in doc
    kind = settings.server or (detect_server(card, single) if card else "openai")
    dialect = DIALECTS[kind]
    meta: dict[str, Any] = card["meta"] if isinstance(card.get("meta"), dict) else {}
    context = first_int(meta.get("n_ctx"), card.get("max_model_len"), card.get("context_length"))
    vocab = first_int(meta.get("n_vocab"))
    hidden = first_int(meta.get("n_embd"))
    bits = quant_bits(meta.get("ftype"))
    slots = cfg.parallel_slots
    native_tools = True
    if dialect.name == "llama.cpp":
        props = llama_server_props(client)
        total = props.get("total_slots")
        slots = slots or (int(total) if is_int(total) and total > 0 else 0)
        # Without --jinja, or with a template that takes no tools, llama-server
        # ignores tools (even tool_choice="required"): the generic format then.
        caps = props.get("chat_template_caps")
        native_tools = isinstance(caps, dict) and caps.get("supports_tools") is True
    slots = slots or dialect.slots
    offer = probe(client, name)  # whether it embeds and reranks: how it was started
    notes = [f"server: {dialect.label}", f"model: {name}", f"parallel_slots: {slots}"]
    if dialect.no_scoring:
        notes.append(f"no scoring: {dialect.label} {dialect.no_scoring}")
    if cfg.gpu_layers != -1:
        notes.append("gpu_layers is ignored: the server decides")
    if cfg.flash_attention is not None:
        notes.append("flash_attention is ignored: the server decides")
    if not context and cfg.context_len:
        context = cfg.context_len
        notes.append("context_length as given by context_len (the server does not report it)")
    quoted = urllib.parse.quote(name, safe="/:@")
    info = ModelInfo(
        architecture="remote",
        vocab_size=vocab,
        hidden_size=hidden,
        context_length=context,
        quant_bits=bits,
        backend="openai",
        path=f"{where}#model={quoted}",
        notes=tuple(notes),
    )
    _log.debug("%s: model %r on %s, %d parallel slots", where, name, dialect.label, slots)
    cls = OpenAIModel if dialect.no_scoring else ScoringOpenAIModel
    return cls(
        client=client,
        name=name,
        dialect=dialect,
        info=info,
        slots=slots,
        native_tools=native_tools,
        offer=offer,
    )


def pick(cards: list[dict[str, Any]], wanted: str, where: str, client: Client) -> dict[str, Any]:
    names = [str(c["id"]) for c in cards]
    listing = ", ".join(repr(n) for n in names[:50]) + (" ..." if len(names) > 50 else "")
    if wanted:
        for card in cards:
            aliases = card.get("aliases")
            if card["id"] == wanted or (isinstance(aliases, list) and wanted in aliases):
                return card
        if not cards:
            return {}
        client.close()
        raise ModelLoadError(
            f"{where}: the server serves no model named {wanted!r}; it serves {listing}",
            path=where,
        )
    if len(cards) == 1:
        return cards[0]
    client.close()
    if not cards:
        raise ModelLoadError(
            f"{where}: the server lists no models; name one in the URL: {where}#model=NAME",
            path=where,
        )
    raise ModelLoadError(
        f"{where}: the server serves {len(cards)} models; name one in the URL, "
        f"e.g. {where}#model={urllib.parse.quote(names[0], safe='/:@')}. It serves {listing}",
        path=where,
    )


def quant_bits(ftype: Any) -> int:
    """Bits per weight from a llama.cpp file type such as "Q4_K_M" or "F16"."""
    if not isinstance(ftype, str):
        return 0
    match = re.match(r"(?i)(?:I?Q|BF|F)(\d+)", ftype.strip())
    return int(match.group(1)) if match else 0


def first_int(*values: Any) -> int:
    for value in values:
        if is_int(value) and value > 0:
            return int(value)
    return 0


def llama_server_props(client: Client) -> dict[str, Any]:
    """llama-server's ``GET /props`` (its ``total_slots`` is ``--parallel``;
    its ``chat_template_caps`` say whether it renders tools); ``{}`` if none."""
    try:
        props = client.fetch_json("GET", "/props", root=True, retries=0)
    except Failure as exc:
        _log.debug("%s: no /props (%s)", client.endpoint.display, exc.message)
        return {}
    return props if isinstance(props, dict) else {}
