"""The fault-finding figures of the hardening issue, measured against a real
``inference serve`` (SmolLM2 on llama_cpp) in a child process:

- slow and silent clients: 300 slowloris heads, 200 silent connections and
  50 half-sent bodies, with the server's open-files limit at 256; how long a
  normal client (retrying a 503 every half second) waits for its answer, and
  how many of the 550 connections the server has closed 15 s later;
- the 4 KB ``allOf`` schema of 18 ``.*N.*`` patterns: the answer, its time,
  and the server's peak memory before and after;
- 12 requests with 1,500-token prompts sent and dropped within 0.6 s: how
  long the next client waits for its answer.

    .venv/bin/python bench/fault_figures.py
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from inference.testing import smollm2_path

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Name a large animal."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(*flags: str) -> Iterator[tuple[int, int]]:
    """``inference serve`` with ``flags`` and 256 open files; (port, pid)."""
    port = free_port()
    cmd = [sys.executable, "-m", "inference", "serve", str(smollm2_path()), "--port", str(port)]
    proc = subprocess.Popen(
        ["bash", "-c", 'ulimit -n 256; exec "$@"', "serve", *cmd, *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if request("GET", port, "/health", None)[0] == 200:
                    break
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def request(method: str, port: int, path: str, body: object) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slow_clients(port: int) -> None:
    socks: list[socket.socket] = []
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    for kind, n in (("slow", 300), ("silent", 200), ("half", 50)):
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
            socks.append(s)
            with contextlib.suppress(OSError):
                if kind == "slow":
                    s.sendall(head)
                elif kind == "half":
                    s.sendall(head + b"Content-Length: 1000\r\n\r\n{")
    start = time.monotonic()
    refused = 0
    while True:
        try:
            status, _ = request("POST", port, "/v1/chat/completions", {**CHAT, "max_tokens": 8})
        except OSError:  # refused at the connection limit, reset before our request was read
            status = 0
        if status == 200:
            break
        refused += 1
        time.sleep(0.5)
    waited = time.monotonic() - start
    time.sleep(15)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
            closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    print(
        f"slow clients: {len(socks)} opened; a normal client was answered after {waited:.1f} s "
        f"({refused} tries refused first); "
        f"{closed} of them closed by the server 15 s later"
    )


def schema_bomb(port: int, pid: int) -> None:
    bomb = {"allOf": [{"type": "string", "pattern": f".*{i}.*"} for i in range(18)]}
    body = {
        **CHAT,
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": bomb}},
    }
    before = peak_mib(pid)
    start = time.monotonic()
    status, reply = request("POST", port, "/v1/chat/completions", body)
    took = time.monotonic() - start
    message = json.loads(reply)["error"]["message"] if status != 200 else ""
    print(
        f"18-pattern schema: {status} in {took:.1f} s ({message[:90]}); "
        f"server peak memory {before:.0f} MiB before, {peak_mib(pid):.0f} MiB after"
    )


def abandoned(port: int) -> None:
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 170)  # ~1,500 tokens
    body = json.dumps(
        {**CHAT, "messages": [{"role": "user", "content": long}], "max_tokens": 400}
    ).encode()
    start = time.monotonic()
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    sent = time.monotonic() - start
    start = time.monotonic()
    status, _ = request("POST", port, "/v1/chat/completions", {**CHAT, "max_tokens": 8})
    print(
        f"12 abandoned 1,500-token requests (sent and dropped in {sent:.2f} s): "
        f"the next client got {status} after {time.monotonic() - start:.1f} s"
    )


def main() -> None:
    print(f"load: {os.getloadavg()[0]:.2f}")
    with serve() as (port, pid):
        schema_bomb(port, pid)
        abandoned(port)
        slow_clients(port)
    print(f"load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
