"""Bind the port, load the models, and serve them on uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

import inference

from .app import Settings, create_app
from .connections import uvicorn_config
from .served import model_name

__all__ = ["serve"]


class _Stop(Exception):
    """SIGINT or SIGTERM, raised again by uvicorn once it has shut down."""


def load_options(load: dict[str, Any], *, embedding: bool) -> dict[str, Any]:
    """The load options of one served model: ``load``, less speculative
    decoding's for the ``--embed-model`` (it does not generate)."""
    if not embedding:
        return load
    return {k: v for k, v in load.items() if k not in ("draft_model", "speculative")}


def serve(
    models: str | Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: Settings | None = None,
    embed_model: str = "",
    out: TextIO | None = None,
    **load: Any,
) -> int:
    """Serve ``models`` (each a path, or ``NAME=PATH``; ``embed_model`` is one
    more, loaded without ``draft_model`` and ``speculative``) loaded with the
    load options ``load`` and ``settings.parallel`` slots each, within
    ``settings``' limits, until SIGINT or SIGTERM; returns the exit status
    (0 once stopped, 1 when the address cannot be bound)."""
    import uvicorn

    say = out or sys.stdout
    s = settings or Settings()
    wanted = [models] if isinstance(models, str) else list(models)
    named = [model_name(m) for m in [*wanted, *([embed_model] if embed_model else [])]]
    names = [name for name, _ in named]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        say.write(f"inference serve: two models are named {twice!r}; name them with NAME=PATH\n")
        return 2
    # The port first: a port in use is said before minutes of loading.
    try:
        sock = _listen(host, port)
    except OSError as exc:
        say.write(f"inference serve: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
        return 1
    with contextlib.ExitStack() as stack:
        stack.enter_context(sock)
        loaded = {
            name: stack.enter_context(
                inference.load_model(
                    path,
                    parallel_slots=s.parallel,
                    **load_options(load, embedding=bool(embed_model) and i == len(wanted)),
                )
            )
            for i, (name, path) in enumerate(named)
        }
        app = create_app(loaded, s)
        server = uvicorn.Server(uvicorn_config(app, s, host=host, port=port))
        where = f"http://{host}:{port}"
        served = ", ".join(f"{name} on {m.info.backend}" for name, m in loaded.items())
        say.write(
            f"inference serve: {served}; {s.parallel} at a time each; "
            f"OpenAI at {where}/v1, Ollama at {where}/api"
            f"{' (API key required)' if s.api_key else ''}\n"
        )
        say.flush()
        # uvicorn finishes the open requests on SIGINT or SIGTERM, then raises
        # the signal again: here, as _Stop, so that the models are closed and
        # the exit status is 0 for both.
        with _signals_stop(), contextlib.suppress(_Stop, KeyboardInterrupt):
            server.run(sockets=[sock])
        say.write("inference serve: stopped\n")
        say.flush()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, as uvicorn would bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    def stop(sig: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(sig).name)

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only: whoever runs this one stops it
        return
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
