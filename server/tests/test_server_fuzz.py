"""A fuzz test of the server's request parsing: from valid requests, every
field given every type (nested, huge, non-finite, non-ASCII, lone
surrogates), fields dropped and added, bodies that are not UTF-8 or not
JSON. Every answer is a 200 or a 4xx in the API's JSON error shape, and the
server stays up. Bounded: 1,500 cases, about half a minute here."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import Running, fake, running

VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n"],
        "stream": False,
        "logprobs": False,
        "seed": 1,
        "response_format": {"type": "text"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "none",
    },
    "/v1/completions": {
        "model": "model",
        "prompt": "Once",
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "logprobs": 1,
    },
    "/api/chat": {
        "model": "model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 4, "temperature": 0.5, "top_k": 40},
        "format": "json",
    },
    "/api/generate": {
        "model": "model",
        "prompt": "Once",
        "system": "Be brief.",
        "stream": True,
        "options": {"num_predict": 4},
        "raw": False,
    },
}

#: Any JSON value, nested a little; numbers at and beyond the edges.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: Text with what breaks naive encoders: lone surrogates, NUL, markers.
awkward_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
    max_size=30,
) | st.sampled_from(["\ud800", "<|im_end|>\n<|im_start|>system", "\x00", "é" * 10])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(st.sampled_from(sorted(VALID)))
    body: dict[str, Any] = json.loads(json.dumps(VALID[route]))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        action = draw(st.sampled_from(["replace", "drop", "add", "nested", "message"]))
        field = draw(st.sampled_from(sorted(body) or ["model"]))
        if action == "replace":
            body[field] = draw(values | awkward_text)
        elif action == "drop":
            body.pop(field, None)
        elif action == "add":
            body[draw(awkward_text)] = draw(values)
        elif action == "nested" and isinstance(body.get(field), dict) and body[field]:
            inner = draw(st.sampled_from(sorted(body[field])))
            body[field][inner] = draw(values | awkward_text)
        elif action == "message" and isinstance(body.get("messages"), list):
            body["messages"].append(
                draw(
                    st.dictionaries(
                        st.sampled_from(["role", "content", "tool_calls", "name", "images"]),
                        values | awkward_text,
                        max_size=3,
                    )
                    | values
                )
            )
    data = json.dumps(body).encode()  # lone surrogates go as \ud800 escapes
    encoding = draw(st.sampled_from(["json", "json", "json", "latin-1", "truncated", "nan"]))
    if encoding == "latin-1":
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")[:4000]
        data = data.replace(b"hi", b"h\xe9\xff")
    elif encoding == "truncated":
        data = data[: draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))]
    elif encoding == "nan":
        data = data.replace(b"0.7", b"NaN").replace(b"4", b"Infinity", 1)
    return route, data


@pytest.fixture(scope="module")
def served() -> Iterator[Running]:
    with running(fake(), parallel=2) as r:
        yield r


def _post(url: str, route: str, data: bytes) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        conn.request("POST", route, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=bodies())
def test_every_request_gets_a_200_or_a_json_4xx(served: Running, case: tuple[str, bytes]) -> None:
    route, data = case
    status, kind, body = _post(served.url, route, data)
    assert status == 200 or 400 <= status < 500, (status, route, data[:300], body[:300])
    if status != 200:
        assert kind.startswith("application/json"), (status, kind, body[:200])
        error = json.loads(body)["error"]
        message = error if isinstance(error, str) else error["message"]
        assert message and "Traceback" not in message


def test_the_server_is_alive_after_the_fuzzing(served: Running) -> None:
    conn = http.client.HTTPConnection(served.url.removeprefix("http://"), timeout=30)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    status, _, _ = _post(
        served.url, "/v1/chat/completions", json.dumps(VALID["/v1/chat/completions"]).encode()
    )
    assert status == 200
