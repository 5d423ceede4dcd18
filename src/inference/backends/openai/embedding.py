"""Embeddings and reranking over the wire: what a server offers, found at
connect, and the two requests.

Whether a server embeds depends on how it was started (llama-server's
``--embeddings``, llama-cpp-python's ``embedding=True``, a vLLM embedding
model), not on its kind, so :func:`probe` asks once, at connect, with one
tiny request to each endpoint: ``POST /embeddings`` (its answer gives the
dimensions) and ``POST /rerank`` (llama-server's ``--reranking``, vLLM's, and
``inference serve``'s). A model then states ``embed`` and ``rerank`` in its
capabilities, and a call the server cannot answer is refused before any
request. Without a rerank endpoint, a server that embeds reranks by cosine
similarity, client-side.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from ...embeddings import Embeddings, EmbedInput, Ranked, Ranking, RankMethod, finish
from ...errors import GenerationError
from ...values import is_int, is_number
from .transport import Client, Failure

__all__ = ["Offer", "embed", "probe", "rerank"]


@dataclass(frozen=True, slots=True)
class Offer:
    """What the server's model offers beside generation."""

    dimensions: int = 0  # 0: it does not embed
    rerank: bool = False  # it has a rerank endpoint


def probe(client: Client, model: str) -> Offer:
    """Ask the server, once, whether it embeds (and in how many dimensions)
    and whether it reranks; an error or an odd answer means no."""
    dims = 0
    try:
        doc = client.fetch_json(
            "POST", "/embeddings", {"model": model, "input": ["probe"]}, retries=0
        )
        vector = doc["data"][0]["embedding"]
        if isinstance(vector, list) and vector and all(is_number(x) for x in vector):
            dims = len(vector)
    except (Failure, KeyError, IndexError, TypeError):
        pass
    ranks = False
    try:
        doc = client.fetch_json(
            "POST", "/rerank", {"model": model, "query": "probe", "documents": ["probe"]}, retries=0
        )
        ranks = isinstance(doc.get("results"), list)
    except (Failure, AttributeError):
        pass
    return Offer(dims, ranks)


def embed(
    client: Client,
    model: str,
    texts: list[EmbedInput],
    *,
    normalize: bool,
    dimensions: int | None,
) -> Embeddings:
    """``POST /embeddings`` of ``texts``; the vectors cut and normalised here."""
    body = {"model": model, "input": [t if isinstance(t, str) else list(t) for t in texts]}
    try:
        doc = client.fetch_json("POST", "/embeddings", body)
    except Failure as exc:
        raise GenerationError(f"the server could not embed: {exc}") from None
    try:
        rows = sorted(doc["data"], key=lambda d: d["index"])
        vectors = [row["embedding"] for row in rows]
        width = len(vectors[0])
        if len(vectors) != len(texts) or any(
            len(v) != width or not all(is_number(x) for x in v) for v in vectors
        ):
            raise ValueError
        usage = doc.get("usage") or {}
        tokens = usage.get("prompt_tokens", 0)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise GenerationError("the server's embeddings answer is not well formed") from None
    raw = array("f", (float(x) for v in vectors for x in v))
    out = finish(raw, len(texts), normalize=normalize, dimensions=dimensions)
    return Embeddings(out, dimensions or width, int(tokens) if is_int(tokens) else 0)


def rerank(client: Client, model: str, query: str, documents: list[str]) -> Ranking:
    """``POST /rerank``: the server's own ranking, by its classification head."""
    body: dict[str, Any] = {"model": model, "query": query, "documents": documents}
    try:
        doc = client.fetch_json("POST", "/rerank", body)
    except Failure as exc:
        raise GenerationError(f"the server could not rerank: {exc}") from None
    try:
        ranked = []
        for r in doc["results"]:
            i = r["index"]
            if not is_int(i) or not 0 <= i < len(documents):
                raise ValueError
            ranked.append(Ranked(int(i), float(r["relevance_score"]), documents[int(i)]))
    except (KeyError, TypeError, ValueError):
        raise GenerationError("the server's rerank answer is not well formed") from None
    # inference serve says how it ranked; other servers rank with a head.
    method: RankMethod = "cosine" if doc.get("method") == "cosine" else "classifier"
    return Ranking(tuple(sorted(ranked, key=lambda r: -r.score)), method)
