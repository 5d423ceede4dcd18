"""The ``openai`` backend against a loopback server of our own that misbehaves
on purpose: refuses, cuts streams, sends garbage, stalls, fails with 5xx and
401, and records when requests arrive (to show that batches go out at once).

No model runs here; every test takes well under a second or two.
"""

from __future__ import annotations

import json
import logging
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import inference
from inference import (
    Cancelled,
    DeadlineExceeded,
    GenerationError,
    Message,
    ModelClosedError,
    ModelLoadError,
    NoBackendError,
    ToolCall,
    UnsupportedOptionError,
    with_api_key,
)
from inference.backends.openai import OpenAIBackend, OpenAIModel
from inference.registry import register_backend
from inference.testing import cancel_after, wait_for

KEY = "sk-test-0123456789"


# -- the misbehaving server ----------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    arrived: float
    mode: str


@dataclass
class FaultState:
    """What the server does next, and what it has seen."""

    mode: str = "ok"
    owned_by: str = "tests"
    models: list[str] = field(default_factory=lambda: ["fault-model"])
    models_status: int = 200
    tokens: int = 5
    delay: float = 0.0
    fail_first: int = 0
    retry_after: str = ""
    require_key: str = ""
    #: What mode "deltas" streams: one chat chunk's delta each.
    deltas: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnected: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def completions(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- helpers -------------------------------------------------------------

    @property
    def state(self) -> FaultState:
        return self.server.state

    def _record(self, body: Any) -> Request:
        req = Request(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            time.monotonic(),
            self.state.mode,
        )
        with self.state.lock:
            self.state.requests.append(req)
        return req

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, doc: Any) -> None:
        payload = doc if isinstance(doc, str) else json.dumps(doc)
        self._chunk(f"data: {payload}\n\n".encode())

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Drop the connection without ending the chunked body."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _token(self, text: str, *, ids: list[int] | None = None, style: str = "") -> None:
        choice: dict[str, Any] = {"text": text, "index": 0, "finish_reason": None}
        if ids is not None and style == "vllm":
            choice["token_ids"] = ids
        if ids is not None and style == "llama.cpp":
            choice["logprobs"] = {"content": [{"id": i, "token": text} for i in ids]}
        self._event({"choices": [choice]})

    def _merged(
        self, group: list[tuple[bytes, int]], chat: bool, *, text: str | None = None, end: str = ""
    ) -> None:
        """One chunk of several tokens, as vLLM sends when its reader lags:
        their ids, and each token's text in its log-probabilities (chat's
        ``bytes``, completions' ``tokens`` and ``text_offset``)."""
        joined = b"".join(t for t, _ in group).decode("utf-8", "replace")
        body = joined if text is None else text
        choice: dict[str, Any] = {"index": 0, "finish_reason": end or None}
        choice["token_ids"] = [i for _, i in group]
        if chat:
            choice["delta"] = {"content": body}
            entries = []
            for data, _ in group:
                shown = data.decode("utf-8", "replace")
                alt = {"token": shown, "logprob": -0.5, "bytes": list(data)}
                entries.append({**alt, "top_logprobs": [alt, {**alt, "logprob": -2.0}]})
            choice["logprobs"] = {"content": entries}
        else:
            choice["text"] = body
            shown = [data.decode("utf-8", "replace") for data, _ in group]
            offsets = [sum(len(t) for t in shown[:i]) for i in range(len(shown))]
            choice["logprobs"] = {
                "tokens": shown,
                "token_logprobs": [-0.5] * len(group),
                "top_logprobs": [{t: -0.5} for t in shown],
                "text_offset": offsets,
            }
        self._event({"choices": [choice]})

    def _finish(self, reason: str = "length", usage: bool = True) -> None:
        self._event({"choices": [{"text": "", "index": 0, "finish_reason": reason}]})
        if usage:
            usage = {"prompt_tokens": 3, "completion_tokens": self.state.tokens}
            self._event({"choices": [], "usage": usage})
        self._event("[DONE]")
        self._end_stream()

    def _client_gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the client to close; True if it did."""
        readable, _, _ = select.select([self.connection], [], [], timeout)
        if readable:
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True
        return False

    def _authorised(self) -> bool:
        want = self.state.require_key
        if not want:
            return True
        if self.headers.get("Authorization") == f"Bearer {want}":
            return True
        got = self.headers.get("Authorization", "")
        message = f"Invalid API key: {got.removeprefix('Bearer ')}"
        self._json(401, {"error": {"message": message, "type": "auth"}})
        return False

    # -- routes --------------------------------------------------------------

    def do_GET(self) -> None:
        self._record(None)
        if not self._authorised():
            return
        st = self.state
        if self.path.endswith("/models"):
            if st.models_status != 200:
                self._json(st.models_status, {"error": {"message": "no model list here"}})
            elif st.owned_by == "tgi-single":
                self._json(200, {"id": st.models[0], "object": "model", "owned_by": st.models[0]})
            else:
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {"id": m, "object": "model", "owned_by": st.owned_by} for m in st.models
                        ],
                    },
                )
        elif self.path.endswith("/props"):
            self._json(200, {"total_slots": 3})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if not self.path.split("?")[0].endswith("completions"):
            # No embeddings or rerank here (the client asks once, at connect).
            self._json(404, {"error": {"message": f"no {self.path} here"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        req = self._record(body)
        if not self._authorised():
            return
        st = self.state
        with st.lock:
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            nth = len(st.completions())
        try:
            self._complete(req, nth)
        except (BrokenPipeError, ConnectionResetError):
            with st.lock:
                st.disconnected.append(time.monotonic())
        finally:
            with st.lock:
                st.in_flight -= 1

    def _complete(self, req: Request, nth: int) -> None:
        st = self.state
        mode = st.mode
        if nth <= st.fail_first:
            headers = {"Retry-After": st.retry_after} if st.retry_after else {}
            self._json(503, {"error": {"message": "warming up"}}, headers)
            return
        if mode in ("ok", "slow", "auth"):
            self._start_stream()
            for i in range(st.tokens):
                if st.delay:
                    time.sleep(st.delay)
                self._token(f"t{i} ")
            self._finish()
        elif mode in ("vllm-ids", "llamacpp-ids"):
            style = "vllm" if mode == "vllm-ids" else "llama.cpp"
            self._start_stream()
            self._token("Hel", ids=[10], style=style)
            self._token("lo", ids=[11, 12], style=style)
            self._token(" world", ids=[13], style=style)
            self._token("!", ids=[2], style=style)  # id 2 plays the end-of-text token
            self._token(" more", ids=[14], style=style)
            self._finish("stop")
        elif mode == "merged":
            chat = req.path.endswith("/chat/completions")
            self._start_stream()
            self._merged([(b"Hel", 10), (b"lo", 11)], chat)
            self._merged([(b" wor", 12), (b"ld", 13), (b"!", 14)], chat)
            if chat:  # a character split between two tokens
                self._merged([(b" caf", 15), (b"\xc3", 16), (b"\xa9", 17)], chat)
            # The end-of-text token: its entry, no text, and the finish reason.
            self._merged([(b"<|im_end|>", 2)], chat, text="", end="stop")
            self._event("[DONE]")
            self._end_stream()
        elif mode == "echo":
            self._start_stream()
            self._token("x")
            self._finish("length")
        elif mode == "drop":
            self._start_stream()
            self._token("a ")
            self._token("b ")
            self._cut()
        elif mode == "drop-first":
            self._start_stream()
            self._cut()
        elif mode == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2 not http at all\r\n\r\n")
            self._cut()
        elif mode == "bad-json":
            self._start_stream()
            self._chunk(b"data: {this is not json\n\n")
            self._end_stream()
        elif mode == "not-sse":
            self._start_stream()
            self._chunk(b"\x00\x01binary junk\nmore junk\n\n")
            self._end_stream()
        elif mode == "html":
            data = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif mode == "stall":
            self._start_stream()
            if self._client_gone(10):
                with st.lock:
                    st.disconnected.append(time.monotonic())
        elif mode == "stall-mid":
            self._start_stream()
            self._token("a ")
            self._token("b ")
            if self._client_gone(10):
                with st.lock:
                    st.disconnected.append(time.monotonic())
        elif mode == "endless":
            self._start_stream()
            for i in range(5000):
                self._token(f"w{i} ")
                if self._client_gone(0.01):
                    with st.lock:
                        st.disconnected.append(time.monotonic())
                    return
            self._finish()
        elif mode == "500":
            self._json(500, {"error": {"message": "the GPU caught fire"}})
        elif mode == "400":
            self._json(400, {"error": {"message": "max_tokens is too large"}})
        elif mode == "error-event":
            self._start_stream()
            self._token("a ")
            self._event({"error": {"message": "out of KV cache mid-stream", "code": 500}})
            self._end_stream()
        elif mode == "no-finish":
            self._start_stream()
            self._token("a ")
            self._event("[DONE]")
            self._end_stream()
        elif mode == "abort":
            self._start_stream()
            self._token("a ")
            self._event({"choices": [{"text": "", "index": 0, "finish_reason": "abort"}]})
            self._event("[DONE]")
            self._end_stream()
        elif mode == "json":
            chat = req.path.endswith("/chat/completions")
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": "whole answer"}
            else:
                choice["text"] = "whole answer"
            usage = {"prompt_tokens": 4, "completion_tokens": 2}
            self._json(200, {"choices": [choice], "usage": usage})
        elif mode == "deltas":
            self._start_stream()
            for delta in st.deltas:
                self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self._event("[DONE]")
            self._end_stream()
        elif mode == "chat":
            self._start_stream()
            deltas: list[dict[str, Any]] = [{"role": "assistant"}, {"content": "Hi"}]
            deltas.append({"content": " there"})
            for delta in deltas:
                self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self._event("[DONE]")
            self._end_stream()
        else:
            self._json(500, {"error": {"message": f"unknown test mode {mode}"}})


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.state = FaultState()
        self.port = int(self.server_address[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def set(self, **changes: Any) -> FaultState:
        for k, v in changes.items():
            setattr(self.state, k, v)
        return self.state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropping its connection is what these tests make it do:
        # not worth socketserver's traceback on stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = FaultServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.state.stop.set()
        server.shutdown()
        server.server_close()


def load(url: str, *opts: Any, **kwargs: Any) -> OpenAIModel:
    model = OpenAIBackend().load_model(url, *opts, **kwargs)
    assert isinstance(model, OpenAIModel)
    return model


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    out = fn()
    return out, time.monotonic() - start


def failing(kind: type[BaseException], fn: Callable[[], Any]) -> tuple[BaseException, float]:
    """The exception ``fn`` raises (it must raise ``kind``) and how long it took."""
    start = time.monotonic()
    with pytest.raises(kind) as info:
        fn()
    return info.value, time.monotonic() - start


# -- loading -------------------------------------------------------------------


def test_loads_the_only_model_and_streams(fault: FaultServer) -> None:
    with load(fault.url) as model:
        assert model.name == "fault-model"
        assert model.server == "openai"
        stream = model.generate("hi", max_tokens=5)
        assert [t.text for t in stream] == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 "]
        assert stream.finish_reason == "length"
        assert all(t.id == -1 for t in model.generate("hi", max_tokens=5))
        m = model.metrics
        assert m is not None and m.prompt_tokens == 3 and m.generated_tokens == 5


def test_url_picks_this_backend_and_a_local_path_never_does(
    fault: FaultServer, clean_registry: Any, tiny_gguf: Any
) -> None:
    register_backend(OpenAIBackend())
    assert inference.default_backend(fault.url).name == "openai"
    assert inference.default_backend(fault.url.replace("http://", "https://")).name == "openai"
    with inference.load_model(fault.url) as model:
        assert model.info.backend == "openai"
        assert model.model_type == "remote"
    with pytest.raises(NoBackendError):
        inference.default_backend(tiny_gguf)
    with pytest.raises(ModelLoadError):
        OpenAIBackend().load_model(tiny_gguf)


def test_the_entry_point_registers_the_backend() -> None:
    backend = inference.get_backend("openai")
    assert backend is not None and backend.available()
    assert "url" in backend.formats  # type: ignore[attr-defined]


def test_model_name_in_the_fragment(fault: FaultServer) -> None:
    fault.set(models=["alpha", "org/beta:q4"])
    with pytest.raises(ModelLoadError) as info:
        load(fault.url)
    assert "alpha" in str(info.value) and "org/beta:q4" in str(info.value)
    assert "#model=" in str(info.value)
    with load(fault.url + "#model=org/beta:q4") as model:
        assert model.name == "org/beta:q4"
        model.generate("x", max_tokens=1).text()
        assert fault.state.completions()[-1].body["model"] == "org/beta:q4"
        assert model.info.path.endswith("#model=org/beta:q4")
    with pytest.raises(ModelLoadError) as info:
        load(fault.url + "#model=gamma")
    assert "gamma" in str(info.value) and "alpha" in str(info.value)


def test_no_models_listed(fault: FaultServer) -> None:
    fault.set(models=[])
    with pytest.raises(ModelLoadError, match="lists no models"):
        load(fault.url)


def test_server_without_a_model_list(fault: FaultServer) -> None:
    fault.set(models_status=404)
    with pytest.raises(ModelLoadError, match="404"):
        load(fault.url)
    with load(fault.url + "#model=any") as model:
        assert model.generate("x", max_tokens=2).text() == "t0 t1 t2 t3 t4 "


def test_bare_host_gets_v1_and_fragment_settings_are_checked(fault: FaultServer) -> None:
    with load(f"http://127.0.0.1:{fault.port}") as model:
        assert model.info.path.startswith(fault.url)
    for bad in ("#colour=blue", "#retries=-1", "#read_timeout=0", "#server=nonesuch", "#model="):
        with pytest.raises(ModelLoadError):
            load(fault.url + bad)
    with pytest.raises(ModelLoadError):
        load("ftp://127.0.0.1/v1")


def test_unknown_keyword_is_type_error(fault: FaultServer) -> None:
    with pytest.raises(TypeError):
        load(fault.url, colour="blue")
    with load(fault.url) as model, pytest.raises(TypeError, match="max_tokens"):
        model.generate("x", max_tokenz=3)


@pytest.fixture
def tls_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FaultServer, Path]]:
    """The same server over TLS, with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = FaultServer(context)
    server.thread.start()
    try:
        yield server, cert
    finally:
        server.shutdown()
        server.server_close()


def test_https(tls_fault: tuple[FaultServer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, cert = tls_fault
    assert inference.default_backend(server.url).name == "openai"
    with pytest.raises(ModelLoadError, match="certificate was not accepted"):
        load(server.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    with load(server.url) as model:
        assert model.generate("x").text() == "t0 t1 t2 t3 t4 "
        assert model.batch_generate(["a", "b"], max_tokens=5)[1].text == "t0 t1 t2 t3 t4 "


# -- faults when loading ---------------------------------------------------------


def test_connection_refused() -> None:
    from openai_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    err, took = failing(ModelLoadError, lambda: load(url + "#retries=1"))
    assert "refused" in str(err)
    assert url in str(err)
    assert "gave up after 2 attempts" in str(err)
    assert took < 5


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(ModelLoadError) as info:
        load("http://no-such-host.invalid:8000/v1#retries=0")
    assert "cannot resolve the host name 'no-such-host.invalid'" in str(info.value)


def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(address: Any, timeout: Any = None, *args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", slow)
    with pytest.raises(ModelLoadError, match=r"could not connect within 0.5 s"):
        load("http://127.0.0.1:9/v1#connect_timeout=0.5&retries=0")


def test_models_401_without_key_names_the_variables(fault: FaultServer) -> None:
    fault.set(require_key=KEY)
    with pytest.raises(ModelLoadError) as info:
        load(fault.url + "#retries=0")
    assert "401" in str(info.value)
    assert "INFERENCE_API_KEY" in str(info.value)


# -- the API key ----------------------------------------------------------------


def test_api_key_from_option_keyword_and_environment(
    fault: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault.set(require_key=KEY)
    for model in (load(fault.url, with_api_key(KEY)), load(fault.url, api_key=KEY)):
        with model:
            assert model.generate("x", max_tokens=1).text()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with load(fault.url) as model:
        assert model.generate("x").text()
    monkeypatch.setenv("INFERENCE_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-one")
    with load(fault.url) as model:  # INFERENCE_API_KEY wins over OPENAI_API_KEY
        assert model.generate("x").text()
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in fault.state.requests)


def test_api_key_never_shown(fault: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fault.set(require_key=KEY)
    model = load(fault.url, api_key=KEY)
    shown = [repr(model), str(model.info), repr(with_api_key(KEY))]
    shown.append(repr(inference.LoadConfig(api_key=KEY)))
    wrong = "sk-wrong-9876543210"
    with pytest.raises(ModelLoadError) as info:
        load(fault.url + "#retries=0", api_key=wrong)
    # The server echoed the wrong key in its error text: it is scrubbed.
    assert wrong not in str(info.value) and "***" in str(info.value)
    fault.set(require_key="sk-rotated-key")
    stream = model.generate("x")
    with pytest.raises(GenerationError) as gen_info:
        stream.text()
    assert "401" in str(gen_info.value) and "not accepted" in str(gen_info.value)
    shown += [str(info.value), str(gen_info.value), repr(stream.err), repr(model.err)]
    shown += [r.getMessage() for r in caplog.records]
    for text in shown:
        assert KEY not in text and wrong not in text
    model.close()


def test_credentials_in_the_url_are_sent_and_never_shown(fault: FaultServer) -> None:
    url = fault.url.replace("http://", "http://alice:s3cret-pw@")
    with load(url) as model:
        assert model.generate("x").text()
        texts = [repr(model), str(model.info)]
    assert fault.state.requests[0].headers["authorization"].startswith("Basic ")
    fault.set(mode="500")
    with load(url + "#retries=0") as model:
        with pytest.raises(GenerationError) as info:
            model.generate("x").text()
        texts.append(str(info.value))
    assert all("s3cret-pw" not in t and "alice" not in t for t in texts)


# -- faults while generating ---------------------------------------------------------


def test_drop_mid_stream_is_not_retried_and_the_model_stays_usable(fault: FaultServer) -> None:
    with load(fault.url) as model:
        fault.set(mode="drop")
        stream = model.generate("x", max_tokens=10)
        got = []
        with pytest.raises(GenerationError) as info:
            for tok in stream:
                got.append(tok.text)
        assert got == ["a ", "b "]
        assert "cut mid-stream" in str(info.value) and "not tried again" in str(info.value)
        assert stream.finish_reason == "error" and stream.err is info.value
        assert model.err is info.value
        assert len(fault.state.completions()) == 1
        fault.set(mode="ok")
        assert model.generate("x").text() == "t0 t1 t2 t3 t4 "
        assert model.err is None


def test_drop_before_the_first_token_is_retried_with_backoff(fault: FaultServer) -> None:
    with load(fault.url + "#retries=2") as model:
        fault.set(mode="drop-first")
        stream = model.generate("x")
        err, took = failing(GenerationError, stream.text)
        assert "gave up after 3 attempts" in str(err)
        assert len(fault.state.completions()) == 3
        assert took >= 0.2 + 0.4  # backoff of about 0.25 s, then 0.5 s


def test_5xx_is_retried_then_succeeds(fault: FaultServer) -> None:
    with load(fault.url + "#retries=2") as model:
        fault.set(fail_first=2)
        assert model.generate("x").text() == "t0 t1 t2 t3 t4 "
        assert len(fault.state.completions()) == 3


def test_retry_after_is_honoured(fault: FaultServer) -> None:
    with load(fault.url + "#retries=1") as model:
        fault.set(fail_first=1, retry_after="0.8")
        text, took = timed(lambda: model.generate("x").text())
        assert text and took >= 0.75


def test_500_gives_up_with_the_servers_text(fault: FaultServer) -> None:
    with load(fault.url + "#retries=1") as model:
        fault.set(mode="500")
        with pytest.raises(GenerationError) as info:
            model.generate("x").text()
        assert "HTTP 500" in str(info.value) and "the GPU caught fire" in str(info.value)
        assert fault.url in str(info.value)
        assert len(fault.state.completions()) == 2


@pytest.mark.parametrize(
    ("mode", "message"), [("400", "max_tokens is too large"), ("garbage", "not valid HTTP")]
)
def test_a_4xx_or_garbage_is_not_retried(fault: FaultServer, mode: str, message: str) -> None:
    with load(fault.url + "#retries=3") as model:
        fault.set(mode=mode)
        with pytest.raises(GenerationError, match=message):
            model.generate("x").text()
        assert len(fault.state.completions()) == 1


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("bad-json", "malformed JSON"),
        ("not-sse", "not an event stream"),
        ("html", "text/html"),
        ("error-event", "out of KV cache mid-stream"),
        ("no-finish", "without a finish reason"),
        ("abort", "finish_reason 'abort'"),
    ],
)
def test_malformed_or_failing_streams(fault: FaultServer, mode: str, message: str) -> None:
    with load(fault.url + "#retries=2") as model:
        fault.set(mode=mode)
        stream = model.generate("x")
        with pytest.raises(GenerationError, match=message):
            stream.text()
        assert stream.finish_reason == "error"
        assert len(fault.state.completions()) == 1
        fault.set(mode="ok")
        assert model.generate("x").text()


def test_stall_before_the_first_token_times_out_and_is_retried(fault: FaultServer) -> None:
    with load(fault.url + "#read_timeout=0.4&retries=1") as model:
        fault.set(mode="stall")
        err, took = failing(GenerationError, model.generate("x").text)
        assert "read_timeout" in str(err) and "2 attempts" in str(err)
        assert 0.8 <= took < 5


def test_stall_between_tokens_times_out_and_is_not_retried(fault: FaultServer) -> None:
    with load(fault.url + "#read_timeout=0.4&retries=3") as model:
        fault.set(mode="stall-mid")
        got: list[str] = []
        with pytest.raises(GenerationError) as info:
            for tok in model.generate("x"):
                got.append(tok.text)
        assert got == ["a ", "b "]
        assert "no more data from the server within 0.4 s" in str(info.value)
        assert len(fault.state.completions()) == 1


def test_timeout_option_ends_a_stalled_read_at_once(fault: FaultServer) -> None:
    with load(fault.url) as model:
        fault.set(mode="stall")
        stream = model.generate("x", timeout=0.3)
        tokens, took = timed(lambda: list(stream))
        assert tokens == [] and took < 2
        assert stream.finish_reason == "cancelled"
        assert isinstance(stream.err, DeadlineExceeded)
        wait_for(lambda: fault.state.disconnected, "the server to see the client go", limit=3)


def test_cancel_closes_the_connection_so_the_server_stops(fault: FaultServer) -> None:
    with load(fault.url) as model:
        fault.set(mode="endless")
        stream = model.generate("x", max_tokens=100_000)
        got = cancel_after(stream, 3)
        assert len(got) <= 4
        assert stream.finish_reason == "cancelled" and isinstance(stream.err, Cancelled)
        wait_for(lambda: fault.state.disconnected, "the server to stop streaming", limit=3)


def test_cancel_from_another_thread_while_blocked_in_a_read(fault: FaultServer) -> None:
    with load(fault.url) as model:
        fault.set(mode="stall-mid")
        stream = model.generate("x")
        assert next(stream).text == "a "
        threading.Timer(0.3, stream.cancel).start()
        rest, took = timed(lambda: list(stream))
        assert [t.text for t in rest] == ["b "]
        assert took < 2, "cancel() did not interrupt the blocked read"
        assert stream.finish_reason == "cancelled"
        fault.set(mode="ok")
        assert model.generate("x").text()


def test_close_cancels_running_streams_and_later_calls_raise(fault: FaultServer) -> None:
    model = load(fault.url)
    fault.set(mode="stall-mid")
    stream = model.generate("x")
    next(stream)
    threading.Timer(0.2, model.close).start()
    _, took = timed(lambda: list(stream))
    assert took < 2 and stream.finish_reason == "cancelled"
    for call in (
        lambda: model.generate("x"),
        lambda: model.chat([{"role": "user", "content": "x"}]),
        lambda: model.classify(["x"]),
        lambda: model.batch_generate(["x"]),
    ):
        with pytest.raises(ModelClosedError):
            call()
    model.close()


# -- what is sent ----------------------------------------------------------------


def sent(
    fault: FaultServer, owned_by: str, *opts: Any, chat: bool = False, **kwargs: Any
) -> dict[str, Any]:
    fault.set(mode="echo", owned_by=owned_by)
    with load(fault.url) as model:
        if chat:
            model.chat([{"role": "user", "content": "hi"}], *opts, **kwargs).text()
        else:
            model.generate("hi", *opts, **kwargs).text()
    body = fault.state.completions()[-1].body
    assert isinstance(body, dict)
    return body


def test_defaults_are_sent_explicitly_to_llama_cpp_python(fault: FaultServer) -> None:
    body = sent(fault, "me")
    assert body["stream"] is True and body["prompt"] == "hi"
    assert body["max_tokens"] == 256 and body["temperature"] == 0.0
    assert body["top_k"] == 0 and body["top_p"] == 1.0 and body["min_p"] == 0.0
    assert body["repeat_penalty"] == 1.0
    assert "seed" not in body and "stop" not in body
    body = sent(
        fault,
        "me",
        max_tokens=7,
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        min_p=0.05,
        repeat_penalty=1.1,
        seed=3,
        stop=["\n"],
    )
    got = [body[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "min_p")]
    assert got == [7, 0.7, 40, 0.9, 0.05]
    assert [body[k] for k in ("repeat_penalty", "seed", "stop")] == [1.1, 3, ["\n"]]


def test_fields_for_llama_server(fault: FaultServer) -> None:
    body = sent(fault, "llamacpp")
    assert body["top_k"] == 0 and body["repeat_penalty"] == 1.0 and body["n_probs"] == 1
    assert body["stream_options"] == {"include_usage": True}
    body = sent(fault, "llamacpp", stop_tokens=[2])
    assert "stop_token_ids" not in body  # enforced client-side from the reported ids


def test_fields_for_vllm_and_sglang(fault: FaultServer) -> None:
    for owner in ("vllm", "sglang"):
        body = sent(fault, owner, stop_tokens=[2, 5])
        assert body["top_k"] == -1 and body["repetition_penalty"] == 1.0 and body["min_p"] == 0.0
        assert body["return_token_ids"] is True and body["stop_token_ids"] == [2, 5]
        assert "repeat_penalty" not in body


def test_fields_for_ollama_and_warnings_for_ignored_ones(
    fault: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = sent(fault, "library", top_k=20, repeat_penalty=1.2)
    assert "top_k" not in body and "repeat_penalty" not in body and "repetition_penalty" not in body
    assert body["top_p"] == 1.0
    assert any("Ollama ignores top_k" in r.getMessage() for r in caplog.records)


def test_fields_for_tgi(fault: FaultServer) -> None:
    body = sent(fault, "tgi-single")
    assert "top_p" not in body and "top_k" not in body
    assert body["repetition_penalty"] == 1.0
    body = sent(fault, "tgi-single", chat=True, stop=["a", "b", "c", "d", "e"])
    assert "repetition_penalty" not in body and body["stop"] == ["a", "b", "c", "d"]
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_generic_server_gets_only_what_was_set(fault: FaultServer) -> None:
    body = sent(fault, "someone")
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty"} & set(body)
    assert body["top_p"] == 1.0
    body = sent(fault, "someone", top_k=5, repeat_penalty=1.3)
    assert body["top_k"] == 5 and body["repeat_penalty"] == body["repetition_penalty"] == 1.3


def test_server_kind_can_be_forced(fault: FaultServer) -> None:
    fault.set(owned_by="someone")
    with load(fault.url + "#server=vllm") as model:
        assert model.server == "vllm"


def test_stop_tokens_fail_loudly_where_the_server_cannot_honour_them(fault: FaultServer) -> None:
    fault.set(owned_by="me")
    with load(fault.url) as model:
        with pytest.raises(GenerationError, match="stop_tokens"):
            model.generate("x", stop_tokens=[2])
        with pytest.raises(GenerationError, match="stop_tokens"):
            model.batch_generate(["x"], stop_tokens=[2])


def test_max_tokens_zero_sends_nothing(fault: FaultServer) -> None:
    with load(fault.url) as model:
        stream = model.generate("x", max_tokens=0)
        assert list(stream) == [] and stream.finish_reason == "length"
    assert fault.state.completions() == []


def test_empty_prompt_is_an_error(fault: FaultServer) -> None:
    with load(fault.url) as model, pytest.raises(GenerationError, match="empty"):
        model.generate("").text()


# -- token ids ---------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "owner"), [("vllm-ids", "vllm"), ("llamacpp-ids", "llamacpp")])
def test_reported_token_ids(fault: FaultServer, mode: str, owner: str) -> None:
    fault.set(mode=mode, owned_by=owner)
    with load(fault.url) as model:
        toks = list(model.generate("x"))
        assert [(t.id, t.text) for t in toks] == [
            (10, "Hel"),
            (11, ""),
            (12, "lo"),
            (13, " world"),
            (2, "!"),
            (14, " more"),
        ]
        stream = model.generate("x", stop_tokens=[2])
        assert stream.text() == "Hello world" and stream.finish_reason == "stop"
        stream = model.generate("x", max_tokens=2)
        assert [(t.id, t.text) for t in stream] == [(10, "Hel"), (11, "")]
        assert stream.finish_reason == "length"


@pytest.mark.parametrize("logprobs", [None, 1])
def test_a_chunk_of_several_tokens_is_split_by_what_it_lists(
    fault: FaultServer, logprobs: int | None
) -> None:
    """vLLM merges tokens into one chunk when its reader lags: each token
    gets its own text from the chunk's log-probabilities, whatever the
    timing, and the end-of-text token's entry on the last chunk is neither
    emitted nor miscounted."""
    fault.set(mode="merged", owned_by="vllm")
    with load(fault.url) as model:
        stream = model.generate("x", logprobs=logprobs)
        toks = list(stream)
        assert stream.finish_reason == "stop"
        assert [(t.id, t.text) for t in toks] == [
            (10, "Hel"),
            (11, "lo"),
            (12, " wor"),
            (13, "ld"),
            (14, "!"),
        ]
        assert all(t.logprob == (None if logprobs is None else -0.5) for t in toks)
        sent = fault.state.completions()[-1].body
        assert sent["logprobs"] == (0 if logprobs is None else 1)  # asked for the texts
        chat = model.chat([Message("user", "x")], logprobs=logprobs)
        got = [(t.id, t.text) for t in chat]
        assert chat.finish_reason == "stop"
        assert got[-3:] == [(15, " caf"), (16, ""), (17, "é")]
        assert "".join(text for _, text in got) == "Hello world! café"
        stream = model.generate("x", max_tokens=3, logprobs=logprobs)
        assert [t.text for t in stream] == ["Hel", "lo", " wor"]
        assert stream.finish_reason == "length"
        stream = model.generate("x", stop_tokens=[13])
        assert stream.text() == "Hello wor" and stream.finish_reason == "stop"


def test_max_tokens_is_at_most_the_servers_context(fault: FaultServer) -> None:
    """vLLM refuses a max_tokens past its context: it is clamped to it."""
    fault.set(mode="ok", owned_by="vllm")
    with load(fault.url, context_len=64) as model:
        model.generate("x", max_tokens=10_000).text()
        assert fault.state.completions()[-1].body["max_tokens"] == 64


def test_stop_strings_are_enforced_client_side_too(fault: FaultServer) -> None:
    with load(fault.url) as model:
        stream = model.generate("x", stop=["t2"])
        assert stream.text() == "t0 t1 " and stream.finish_reason == "stop"


def test_non_streamed_json_answers_are_accepted(fault: FaultServer) -> None:
    fault.set(mode="json")
    with load(fault.url) as model:
        stream = model.generate("x")
        assert stream.text() == "whole answer" and stream.finish_reason == "stop"
        assert model.chat([{"role": "user", "content": "x"}]).text() == "whole answer"
        assert stream.metrics is not None and stream.metrics.generated_tokens == 2


def test_chat_deltas(fault: FaultServer) -> None:
    fault.set(mode="chat")
    with load(fault.url) as model:
        messages = [inference.Message("system", "be brief"), {"role": "user", "content": "hi"}]
        stream = model.chat(messages)
        assert [t.text for t in stream] == ["Hi", " there"]
        assert stream.finish_reason == "stop"
    body = fault.state.completions()[-1]
    assert body.path == "/v1/chat/completions"
    assert body.body["messages"][0] == {"role": "system", "content": "be brief"}


# -- concurrency -------------------------------------------------------------------


def test_batch_generate_sends_concurrently(fault: FaultServer) -> None:
    fault.set(mode="slow", delay=0.1, tokens=3)
    prompts = [f"p{i}" for i in range(8)]
    with load(fault.url, parallel_slots=4) as model:
        assert model.parallel_slots == 4
        results = model.batch_generate(prompts, max_tokens=3)
    assert [r.text for r in results] == ["t0 t1 t2 "] * 8
    assert all(r.err is None and r.finish_reason == "length" for r in results)
    # The server counted the requests in flight at once: parallel_slots of
    # them, never more (sequential requests would never overlap at all).
    assert fault.state.max_in_flight == 4
    assert len(fault.state.completions()) == 8


def test_batch_keeps_errors_per_prompt(fault: FaultServer) -> None:
    fault.set(mode="ok", fail_first=1)
    with load(fault.url + "#retries=0", parallel_slots=1) as model:
        results = model.batch_generate(["a", "b", "c"], max_tokens=5)
    assert results[0].err is not None and results[0].finish_reason == "error"
    assert "warming up" in str(results[0].err)
    assert [r.text for r in results[1:]] == ["t0 t1 t2 t3 t4 "] * 2
    assert all(r.err is None for r in results[1:])


def test_classify_sends_concurrently_and_one_token(fault: FaultServer) -> None:
    fault.set(mode="slow", delay=0.1, tokens=1)
    with load(fault.url, parallel_slots=3) as model:
        results = model.classify(["a", "b", "c"])
        assert [r.token.text for r in results] == ["t0 "] * 3
        assert all(r.logits is None for r in results)
        with pytest.raises(GenerationError, match="logits"):
            model.classify(["a"], return_logits=True)
    assert fault.state.max_in_flight == 3
    assert {r.body["max_tokens"] for r in fault.state.completions()} == {1}


def test_llama_server_slots_come_from_props(fault: FaultServer) -> None:
    fault.set(owned_by="llamacpp")
    with load(fault.url) as model:
        assert model.parallel_slots == 3
    with load(fault.url, parallel_slots=6) as model:
        assert model.parallel_slots == 6


def test_many_threads_share_one_model(fault: FaultServer) -> None:
    fault.set(mode="slow", delay=0.05, tokens=3)
    with load(fault.url) as model:
        out: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            text = model.generate("x").text()
            with lock:
                out.append(text)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert out == ["t0 t1 t2 "] * 6
    assert fault.state.max_in_flight >= 2


# -- tools, reasoning and constraints on the wire ------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tool_call_deltas_and_reasoning_are_put_together(fault: FaultServer) -> None:
    fault.set(
        mode="deltas",
        deltas=[
            {"role": "assistant", "reasoning_content": "The user wants "},
            {"reasoning": "the weather."},
            {"content": "Checking."},
            {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_weather"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Zürich"}'}}]},
        ],
    )
    with load(fault.url) as model:
        stream = model.chat([Message("user", "Weather?")], tools=[WEATHER])
        tokens = list(stream)
        assert "".join(t.text for t in tokens if t.reasoning) == "The user wants the weather."
        assert stream.reasoning == "The user wants the weather."
        assert "".join(t.text for t in tokens if not t.reasoning) == "Checking."
        assert stream.tool_calls == (ToolCall("call_1", "get_weather", {"city": "Zürich"}),)
    body = fault.state.completions()[-1].body
    assert body["tools"] == [WEATHER | {"function": WEATHER["function"] | {"description": ""}}]
    assert body["tool_choice"] == "auto"


def test_a_call_whose_arguments_do_not_parse_is_an_error_that_shows_it(
    fault: FaultServer,
) -> None:
    """As vLLM 0.32 did without strict tools: the call is never dropped in
    silence."""
    fault.set(
        mode="deltas",
        deltas=[
            {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_weather"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"'}}]},
        ],
    )
    with load(fault.url) as model:
        stream = model.chat([Message("user", "Weather?")], tools=[WEATHER])
        with pytest.raises(GenerationError, match=r'not a JSON object: get_weather\("Paris"\)'):
            stream.text()
        fault.set(mode="ok")
        assert model.generate("x").text()  # the model is ready for the next call


def test_tools_go_strict_to_vllm_with_one_call_when_one_is_named(fault: FaultServer) -> None:
    fault.set(mode="chat", owned_by="vllm")
    with load(fault.url) as model:
        named = [Message("user", "x")]
        model.chat(named, tools=[WEATHER], tool_choice="function:get_weather").text()
        model.chat(named, tools=[WEATHER]).text()
    named, auto = (r.body for r in fault.state.completions()[-2:])
    assert all(t["function"]["strict"] is True for t in named["tools"] + auto["tools"])
    assert named["parallel_tool_calls"] is False and "parallel_tool_calls" not in auto


def test_a_call_left_in_the_text_is_read_not_shown(fault: FaultServer) -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    fault.set(mode="deltas", deltas=[{"content": text[:7]}, {"content": text[7:]}])
    with load(fault.url) as model:
        stream = model.chat([Message("user", "Weather?")], tools=[WEATHER], tool_choice="required")
        assert stream.text() == ""
        assert [(c.name, c.arguments) for c in stream.tool_calls] == [
            ("get_weather", {"city": "Oslo"})
        ]
    assert fault.state.completions()[-1].body["tool_choice"] == "required"


def test_constraints_go_in_each_servers_fields(fault: FaultServer) -> None:
    schema = {"type": "object", "properties": {"e": {"type": "string", "pattern": "^a\\.b$"}}}
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        (
            "openai",
            {"json_schema": schema},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema, "strict": True},
                }
            },
        ),
        ("openai", {"json_object": True}, {"response_format": {"type": "json_object"}}),
        ("vllm", {"regex": "[0-9]+"}, {"structured_outputs": {"regex": "[0-9]+"}}),
        ("vllm", {"choice": ["a", "b"]}, {"structured_outputs": {"choice": ["a", "b"]}}),
        ("sglang", {"choice": ["a.", "b"]}, {"regex": "(a\\.|b)"}),
        ("llama.cpp", {"choice": ["a", 'say "b"']}, {"grammar": 'root ::= "a" | "say \\"b\\""'}),
        (
            "llama-cpp-python",
            {"json_schema": schema},
            {
                "response_format": {
                    "type": "json_object",
                    "schema": {
                        "type": "object",
                        "properties": {"e": {"type": "string", "pattern": "^a[.]b$"}},
                    },
                }
            },
        ),
    ]
    for server, options, fields in cases:
        fault.set(mode="ok")
        with load(f"{fault.url}#server={server}") as model:
            model.generate("x", **options).text()
        body = fault.state.completions()[-1].body
        for key, value in fields.items():
            assert body[key] == value, (server, key)


def test_a_constraint_the_server_cannot_take_is_refused_before_any_request(
    fault: FaultServer,
) -> None:
    for server, kind, value in (
        ("ollama", "regex", "a+"),
        ("llama.cpp", "grammar", 'start: "a"'),
        ("openai", "choice", ["a"]),
        ("llama-cpp-python", "regex", "b"),
    ):
        with load(f"{fault.url}#server={server}") as model:
            before = len(fault.state.completions())
            with pytest.raises(UnsupportedOptionError) as info:
                model.chat([Message("user", "x")], **{kind: value})
            assert info.value.option == kind and info.value.backend == server
            assert kind in str(info.value)
            assert len(fault.state.completions()) == before, "nothing may be sent"
            assert kind not in model.capabilities.constraints


def test_generic_tools_for_a_server_without_them(fault: FaultServer) -> None:
    call = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Rome"}}}'
    fault.set(mode="deltas", deltas=[{"content": call[:10]}, {"content": call[10:]}])
    with load(f"{fault.url}#server=llama-cpp-python") as model:
        stream = model.chat([Message("user", "Weather?")], tools=[WEATHER], tool_choice="required")
        assert stream.text() == "" and stream.tool_calls[0].arguments == {"city": "Rome"}
        body = fault.state.completions()[-1].body
        assert "tools" not in body
        assert (
            body["messages"][0]["role"] == "system"
            and "get_weather" in body["messages"][0]["content"]
        )
        schema = body["response_format"]["schema"]
        assert schema["properties"]["tool_call"]["properties"]["name"] == {"const": "get_weather"}
        model.chat([Message("user", "x")], enable_thinking=False).text()  # ignored, with a note
        assert "chat_template_kwargs" not in fault.state.completions()[-1].body
    with load(f"{fault.url}#server=vllm") as model:
        model.chat([Message("user", "x")], enable_thinking=False, template_vars={"k": 1}).text()
        assert fault.state.completions()[-1].body["chat_template_kwargs"] == {
            "k": 1,
            "enable_thinking": False,
        }
