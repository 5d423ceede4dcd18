"""Scoring on MLX against llama.cpp, on the same files.

Twenty (context, continuation) pairs are scored by both engines on SmolLM2.

- On the shipped Q4_1 file the engines differ by about 0.07 nats per token on
  average (measured). The difference is llama.cpp's: it multiplies Q4_1
  weights with activations quantised to 8 bits (its ``q8_1`` dot products),
  while MLX multiplies the same 4-bit weights with float activations. The
  test shows it: on the same weights written as F32 by llama.cpp's own
  quantiser (so llama.cpp's arithmetic is exact), MLX's Q4_1 scores are
  within 0.002 nats of llama.cpp's, and the two engines agree on the F32
  file within 0.002 nats, greedy flags included.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest
from fast_cpu import smollm2_f32

import inference
from inference.testing import requires, smollm2_path

pytestmark = requires("mlx", "mlx_lm", "inference_llamacpp")

PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " London"),
    ("Water is made of hydrogen and", " oxygen"),
    ("Count: one, two, three,", " four"),
    ("The cat sat on the", " mat"),
    ("Monday, Tuesday,", " Wednesday"),
    ("The sun rises in the", " east"),
    ("The sun rises in the", " west"),
    ("def add(a, b):\n    return", " a + b"),
    ("2 + 2 =", " 4"),
    ("Question: What colour is the sky?\nAnswer:", " blue"),
    ("Question: What colour is the sky?\nAnswer:", " green"),
    ("The largest animal on Earth is the", " blue whale"),
    ("Once upon a time, there was a", " princess"),
    ("", "Hello, world."),
    ("In 1492, Columbus sailed", " across the Atlantic Ocean"),
    ("The opposite of hot is", " cold"),
    ("A dog says", " woof"),
    ("My favourite colour is ", "red"),
    ("Paris is the capital of", " France, a country in Europe."),
]


def _mean_gap(a: list[inference.ScoreResult], b: list[inference.ScoreResult]) -> float:
    gaps = []
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids  # the same tokens, by the same boundary rule
        gaps.extend(abs(p - q) for p, q in zip(x.logprobs, y.logprobs, strict=True))
    return statistics.mean(gaps)


@pytest.fixture(scope="module")
def scores() -> Iterator[dict[str, list[inference.ScoreResult]]]:
    q4_1 = smollm2_path()
    assert q4_1 is not None
    f32 = smollm2_f32()
    out = {}
    for name, path in (("q4_1", q4_1), ("f32", f32)):
        for backend, options in (("llama_cpp", {"context_len": 512}), ("mlx", {})):
            with inference.load_model(path, backend=backend, **options) as model:
                assert isinstance(model, inference.Scorer)
                out[f"{backend} {name}"] = model.score_batch(PAIRS)
    yield out


def test_engines_agree_on_exact_arithmetic(scores: dict[str, list[inference.ScoreResult]]) -> None:
    a, b = scores["llama_cpp f32"], scores["mlx f32"]
    assert _mean_gap(a, b) <= 0.002
    assert [r.is_greedy for r in a] == [r.is_greedy for r in b]


def test_mlx_q4_1_is_the_exact_arithmetic(scores: dict[str, list[inference.ScoreResult]]) -> None:
    assert _mean_gap(scores["mlx q4_1"], scores["llama_cpp f32"]) <= 0.002


def test_llama_cpp_q4_1_differs_by_its_activation_quantisation(
    scores: dict[str, list[inference.ScoreResult]],
) -> None:
    gap = _mean_gap(scores["llama_cpp q4_1"], scores["mlx q4_1"])
    assert gap <= 0.1, gap
    same = [
        x.is_greedy == y.is_greedy
        for x, y in zip(scores["llama_cpp q4_1"], scores["mlx q4_1"], strict=True)
    ]
    assert sum(same) >= len(PAIRS) - 1  # a near tie may flip one flag (measured: one)
