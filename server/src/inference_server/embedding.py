"""Embeddings and reranking over HTTP: the request bodies, checked, and the replies.

- OpenAI ``POST /v1/embeddings``: ``input`` a string, a list of strings, a
  list of token ids or a list of such lists (embedded as they are);
  ``encoding_format`` ``float`` or
  ``base64`` (little-endian float32); ``dimensions``.
- Ollama ``POST /api/embed`` (``input``, ``truncate``, ``dimensions``) and
  the legacy ``POST /api/embeddings`` (``prompt``: one vector).
- ``POST /v1/rerank`` (and ``/rerank``), as llama-server, vLLM, Jina and
  Cohere shape it: ``query``, ``documents``, ``top_n``; results with
  ``index``, ``relevance_score`` and the document.

Each parser returns an :class:`EmbedCall` or :class:`RerankCall` or raises
:class:`~inference_server.requests.BadRequest`.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference import Embeddings, Ranking
from inference.values import is_int

from .requests import BadRequest

__all__ = [
    "MAX_INPUTS",
    "EmbedCall",
    "RerankCall",
    "embed_call",
    "encode_base64",
    "ollama_embed_reply",
    "openai_embed_reply",
    "rerank_call",
    "rerank_reply",
]

#: The most texts (or documents) one request may carry.
MAX_INPUTS = 2048


@dataclass
class EmbedCall:
    """One embedding request: texts, or token ids to read back into text."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = None
    base64: bool = False
    legacy: bool = False  # Ollama's /api/embeddings: one vector, as "embedding"

    @property
    def inputs(self) -> list[str | tuple[int, ...]]:
        """What ``embed`` is given: the texts, or the token ids as they are."""
        if self.token_ids:
            return [tuple(ids) for ids in self.token_ids]
        return list(self.texts)


@dataclass
class RerankCall:
    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = True


def _unknown(body: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise BadRequest(f"unknown field {extra[0]!r}", extra[0])


def _texts(value: object, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise BadRequest(f"{name} must be a string or a list of strings", name)
    if len(items) > MAX_INPUTS:
        raise BadRequest(f"{name} has more than {MAX_INPUTS} items", name)
    if any(not t for t in items):
        raise BadRequest(f"{name} holds an empty string; there is nothing to embed", name)
    return list(items)


def _dimensions(body: Mapping[str, Any]) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise BadRequest("dimensions must be a positive integer", "dimensions")
    return int(value)


def _ids(value: object) -> list[list[int]] | None:
    """``input`` as token ids (a list of ints, or a list of such lists), or None."""
    if not isinstance(value, list) or not value:
        return None
    rows = value if all(isinstance(v, list) for v in value) else [value]
    if all(isinstance(row, list) and row and all(is_int(t) for t in row) for row in rows):
        if len(rows) > MAX_INPUTS:
            raise BadRequest(f"input has more than {MAX_INPUTS} items", "input")
        return [[int(t) for t in row] for row in rows]
    return None


def embed_call(body: Mapping[str, Any], *, api: str) -> EmbedCall:
    """An embedding request of ``api`` (``openai``, ``ollama`` or ``ollama-legacy``)."""
    if api == "openai":
        _unknown(body, {"model", "input", "encoding_format", "dimensions", "user"})
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise BadRequest('encoding_format must be "float" or "base64"', "encoding_format")
        if "input" not in body:
            raise BadRequest("input is required", "input")
        ids = _ids(body["input"])
        call = EmbedCall(dimensions=_dimensions(body), base64=fmt == "base64")
        if ids is not None:
            call.token_ids = ids
        else:
            call.texts = _texts(body["input"], "input")
        return call
    if api == "ollama":
        _unknown(body, {"model", "input", "truncate", "options", "keep_alive", "dimensions"})
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise BadRequest("truncate must be true or false", "truncate")
        return EmbedCall(
            texts=_texts(body.get("input"), "input"),
            truncate=truncate,
            dimensions=_dimensions(body),
        )
    _unknown(body, {"model", "prompt", "options", "keep_alive"})
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string", "prompt")
    return EmbedCall(texts=[prompt], legacy=True)


def openai_embed_reply(got: Embeddings, name: str, *, as_base64: bool) -> dict[str, Any]:
    """OpenAI's list of embeddings (floats, or base64 of float32)."""
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode_base64(v) if as_base64 else [float(x) for x in v],
        }
        for i, v in enumerate(got.vectors)
    ]
    usage = {"prompt_tokens": got.tokens, "total_tokens": got.tokens}
    return {"object": "list", "data": data, "model": name, "usage": usage}


def encode_base64(vector: memoryview) -> str:
    """A vector as base64 of little-endian float32 (OpenAI's ``base64`` format)."""
    values = array("f", vector)
    if sys.byteorder != "little":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def ollama_embed_reply(got: Embeddings, name: str, *, legacy: bool) -> dict[str, Any]:
    """Ollama's ``embeddings`` (or the legacy route's one ``embedding``)."""
    vectors = got.tolist()
    if legacy:
        return {"embedding": vectors[0]}
    return {"model": name, "embeddings": vectors, "prompt_eval_count": got.tokens}


def rerank_call(body: Mapping[str, Any]) -> RerankCall:
    """A rerank request (llama-server's, vLLM's, Jina's and Cohere's shape)."""
    _unknown(body, {"model", "query", "documents", "top_n", "return_documents", "user"})
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise BadRequest("query must be a non-empty string", "query")
    raw = body.get("documents")
    if isinstance(raw, list):  # Cohere's {"text": ...} objects too
        raw = [d.get("text") if isinstance(d, dict) else d for d in raw]
    documents = _texts(raw, "documents")
    if not documents:
        raise BadRequest("documents must hold at least one document", "documents")
    top_n = body.get("top_n")
    if top_n is not None and (not is_int(top_n) or top_n < 1):
        raise BadRequest("top_n must be a positive integer", "top_n")
    back = body.get("return_documents", True)
    if not isinstance(back, bool):
        raise BadRequest("return_documents must be true or false", "return_documents")
    return RerankCall(query, documents, None if top_n is None else int(top_n), back)


def rerank_reply(ranking: Ranking, call: RerankCall, name: str) -> dict[str, Any]:
    results = []
    for r in ranking:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if call.return_documents:
            item["document"] = {"text": r.document}
        results.append(item)
    return {"object": "list", "model": name, "results": results, "method": ranking.method}
