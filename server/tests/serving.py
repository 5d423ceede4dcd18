"""Helpers for the server's tests: a real ``inference serve`` on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from inference_server import Settings, create_app
from inference_server.connections import uvicorn_config

import inference
from inference.testing import FakeBackend


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    model: inference.TextModel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(
    model: inference.TextModel | Mapping[str, inference.TextModel], **settings: object
) -> Iterator[Running]:
    """``model`` (or several, by name) served by uvicorn in a thread, until
    the block ends."""
    port = free_port()
    s = Settings(**settings)  # type: ignore[arg-type]
    app = create_app(model, s)
    server = uvicorn.Server(uvicorn_config(app, s, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, name="inference-serve-test", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        thread.join(0.01)
    try:
        first = model if isinstance(model, inference.TextModel) else next(iter(model.values()))
        yield Running(f"http://127.0.0.1:{port}", first)
    finally:
        server.should_exit = True
        thread.join(10)


def fake(delay: float = 0.0, reply: str = "Hello from the fake model.") -> inference.TextModel:
    return FakeBackend(delay=delay, reply=reply).load_model("fake-model")


#: A ChatML template that writes <think>: a model with it reasons.
THINKING_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{%- endif %}{%- endif %}"
)


class Recording:
    """A model that records the messages and options each chat gets."""

    def __init__(self, model: inference.TextModel) -> None:
        self.model = model
        self.seen: list[tuple[list[inference.Message], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def chat(self, messages: Any, **options: Any) -> inference.TokenStream:
        self.seen.append((list(messages), {k: v for k, v in options.items() if k != "cancel"}))
        return self.model.chat(messages, **options)
