"""The MLX backend on SmolLM2 requantised by llama.cpp's own quantiser.

Q4_K_M, Q5_K_M and Q6_K hold most of the types people's GGUF files hold
(Q4_K and Q5_K repacked without loss, Q6_K re-quantised to 8 bits, and the
Q5_0, Q8_0 or Q6_K that llama.cpp picks for the matrices whose rows are not a
multiple of 256). On each file, ``mlx`` and ``llama_cpp`` are led along the
same greedy continuation of several prompts: at every step, the two engines'
next tokens must be the same, or their top-5 sets share at least 4 tokens.
(llama.cpp multiplies with activations quantised to 8 bits and MLX with float
ones, so a near tie may go either way.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

import inference
from inference.testing import requantise, requires, smollm2_path

pytestmark = requires("mlx", "mlx_lm", "inference_llamacpp")

PROMPTS = [
    "The capital of France is",
    "Count: one, two, three,",
    "Water is made of hydrogen and",
    "def add(a, b):\n    return",
    "Monday, Tuesday, Wednesday,",
    "The largest animal on Earth is",
]
STEPS = 8


@pytest.fixture(scope="module", params=["Q4_K_M", "Q5_K_M", "Q6_K"])
def both(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, inference.TextModel, inference.TextModel]]:
    source = smollm2_path()
    assert source is not None
    name = request.param
    path = tmp_path_factory.mktemp("requantised") / f"SmolLM2-135M-Instruct.{name}.gguf"
    requantise(source, path, name)
    with (
        inference.load_model(path, backend="mlx") as mlx,
        inference.load_model(path, backend="llama_cpp", context_len=512) as llama,
    ):
        yield name, mlx, llama


def _top(logits: Sequence[float] | None, k: int) -> list[int]:
    assert logits is not None
    return sorted(range(len(logits)), key=logits.__getitem__, reverse=True)[:k]


def test_notes_say_what_was_done(
    both: tuple[str, inference.TextModel, inference.TextModel],
) -> None:
    name, mlx, _ = both
    notes = " | ".join(mlx.info.notes)
    kind = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}[name]
    verb = "re-quantised to 8-bit" if kind == "Q6_K" else "kept as"
    assert f"type {kind} {verb}" in notes, notes


def test_greedy_steps_agree(both: tuple[str, inference.TextModel, inference.TextModel]) -> None:
    name, mlx, llama = both
    prefixes: list[str] = []
    chosen: list[int] = []
    for prompt in PROMPTS:
        tokens = list(mlx.generate(prompt, max_tokens=STEPS, stop_tokens=()))
        prefixes.extend(prompt + "".join(t.text for t in tokens[:i]) for i in range(len(tokens)))
        chosen.extend(t.id for t in tokens)
    # llama.cpp led along MLX's greedy path, one step at a time (the prefix
    # as text, which both engines tokenise alike).
    theirs = llama.classify(prefixes, return_logits=True)
    suspects = [i for i, b in enumerate(theirs) if b.token.id != chosen[i]]
    # Where llama.cpp's next token is not the one MLX generated, MLX's own
    # next token and top 5 on the same text (MLX's classify is slow on its
    # CPU device, so it runs only there).
    ours = mlx.classify([prefixes[i] for i in suspects], return_logits=True) if suspects else []
    differ = 0
    for i, a in zip(suspects, ours, strict=True):
        b = theirs[i]
        if a.token.id == b.token.id:
            continue
        differ += 1
        overlap = set(_top(a.logits, 5)) & set(_top(b.logits, 5))
        assert len(overlap) >= 4, (name, prefixes[i], _top(a.logits, 5), _top(b.logits, 5))
    # Most steps agree outright; the top-5 rule is for the near ties.
    assert differ <= 0.1 * len(prefixes), (name, differ, len(prefixes))
