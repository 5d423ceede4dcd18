"""What ``embed`` and ``rerank`` return, and the arithmetic on their vectors.

:class:`Embeddings` holds one float32 vector per text in one compact buffer
(``array('f')``): each of ``.vectors`` is a ``memoryview`` of it, so
``numpy.asarray(e.vectors)`` or ``numpy.asarray(e.vectors[i])`` takes the
floats without a Python float per element, and the core stays standard
library only. :class:`Ranking` is ``rerank``'s answer: documents best
first, and whether a classification head or cosine similarity scored them.

:func:`finish` is the one place where pooled vectors are cut to
``dimensions`` and normalised, for every backend.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import InferenceError
from .values import is_int

__all__ = [
    "EmbedInput",
    "Embeddings",
    "RankMethod",
    "Ranked",
    "Ranking",
    "check_documents",
    "check_texts",
    "cosine_ranking",
    "finish",
]

RankMethod = Literal["classifier", "cosine"]


@dataclass(frozen=True, eq=False)
class Embeddings:
    """One vector per text, in order, each of ``dimensions`` float32 values
    (stored row after row in ``data``); ``tokens`` is how many tokens the
    texts took (after truncation)."""

    data: array  # type: ignore[type-arg]
    dimensions: int
    tokens: int = 0

    @property
    def vectors(self) -> tuple[memoryview, ...]:
        """Each text's vector: a float32 ``memoryview`` (the buffer protocol)."""
        view = memoryview(self.data)
        d = self.dimensions
        return tuple(view[i * d : (i + 1) * d] for i in range(len(self)))

    def __len__(self) -> int:
        return len(self.data) // self.dimensions if self.dimensions else 0

    def tolist(self) -> list[list[float]]:
        """The vectors as lists of Python floats (for JSON)."""
        return [[float(x) for x in v] for v in self.vectors]


@dataclass(frozen=True, slots=True)
class Ranked:
    """One document of a :class:`Ranking`: its position in the documents
    given, its score (higher is better) and its text."""

    index: int
    score: float
    document: str


@dataclass(frozen=True, slots=True)
class Ranking:
    """``rerank``'s answer: the documents best first (the ``top_n`` best when
    asked), scored by the model's classification head (``"classifier"``, a
    cross-encoder) or by the cosine similarity of their embeddings with the
    query's (``"cosine"``, a bi-encoder)."""

    results: tuple[Ranked, ...]
    method: RankMethod

    def __iter__(self) -> Iterator[Ranked]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> Ranked:
        return self.results[i]


#: What ``embed`` takes for one text: the text, or its token ids as they are.
EmbedInput = str | tuple[int, ...]


def check_texts(texts: object, *, what: str = "texts") -> list[EmbedInput]:
    """``texts`` as a list of texts (one string is one text), each a string
    or a sequence of token ids; InferenceError for anything else, or an empty
    text (it has no meaning to embed)."""
    items = [texts] if isinstance(texts, str) else texts
    if isinstance(items, (bytes, bytearray)) or not isinstance(items, Sequence):
        raise InferenceError(f"{what} must be a string or a list of strings")
    out: list[EmbedInput] = []
    for i, text in enumerate(items):
        if isinstance(text, str):
            if not text:
                raise InferenceError(f"{what}[{i}] is empty; there is nothing to embed")
            out.append(text)
        elif isinstance(text, (list, tuple)) and all(is_int(t) and t >= 0 for t in text):
            if not text:
                raise InferenceError(f"{what}[{i}] has no tokens; there is nothing to embed")
            out.append(tuple(int(t) for t in text))
        else:
            raise InferenceError(
                f"{what}[{i}] must be a string or a list of token ids; got {type(text).__name__}"
            )
    return out


def check_documents(query: object, documents: object, top_n: object) -> tuple[str, list[str]]:
    """rerank's arguments, checked: InferenceError for a bad query, no
    documents, or a bad ``top_n``."""
    if not isinstance(query, str) or not query:
        raise InferenceError("the query must be a non-empty string")
    docs = [d for d in check_texts(documents, what="documents") if isinstance(d, str)]
    if not isinstance(documents, Sequence) or len(docs) != len(documents):
        raise InferenceError("documents must be strings")
    if not docs:
        raise InferenceError("rerank needs at least one document")
    if top_n is not None and (not is_int(top_n) or int(top_n) < 1):
        raise InferenceError(f"top_n must be a positive integer or None; got {top_n!r}")
    return query, docs


def finish(raw: array, n: int, *, normalize: bool, dimensions: int | None) -> array:  # type: ignore[type-arg]
    """``n`` pooled vectors (row after row in ``raw``), each cut to its first
    ``dimensions`` values (Matryoshka-style) and, with ``normalize``, scaled
    to unit length: what :class:`Embeddings` holds."""
    width = len(raw) // n if n else 0
    keep = width if dimensions is None else dimensions
    if keep == width and not normalize:
        return raw
    out = array("f")
    view = memoryview(raw)
    for i in range(n):
        row = view[i * width : i * width + keep]
        norm = math.sqrt(math.fsum(x * x for x in row)) if normalize else 0.0
        if norm:
            out.extend(x / norm for x in row)
        else:
            out.extend(row)
    return out


def cosine_ranking(
    query: Sequence[float], vectors: Sequence[Sequence[float]], documents: Sequence[str]
) -> list[Ranked]:
    """``documents`` scored by the cosine similarity of their ``vectors``
    with ``query``'s, best first (ties in document order)."""
    qn = math.sqrt(math.fsum(x * x for x in query)) or 1.0
    ranked = []
    for i, (vec, doc) in enumerate(zip(vectors, documents, strict=True)):
        vn = math.sqrt(math.fsum(x * x for x in vec)) or 1.0
        dot = math.fsum(a * b for a, b in zip(query, vec, strict=True))
        ranked.append(Ranked(i, dot / (qn * vn), doc))
    return sorted(ranked, key=lambda r: -r.score)
