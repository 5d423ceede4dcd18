"""Load a model and serve it on uvicorn until Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, TextIO

import inference

from .app import Settings, create_app
from .connections import uvicorn_config

__all__ = ["serve"]


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: Settings | None = None,
    embed_model: str = "",
    out: TextIO | None = None,
    **load: Any,
) -> int:
    """Load ``model`` (with the load options ``load``, and
    ``settings.parallel`` slots), print where it is served, and serve it
    within ``settings``' limits until interrupted; returns the exit status."""
    import uvicorn

    say = out or sys.stdout
    s = settings or Settings()
    with contextlib.ExitStack() as stack:
        m = stack.enter_context(inference.load_model(model, parallel_slots=s.parallel, **load))
        embedder = None
        if embed_model:
            embedder = stack.enter_context(inference.load_model(embed_model, **load))
        s = dataclasses.replace(s, name=_name(model), embed_name=_name(embed_model or model))
        app = create_app(m, s, embedder=embedder)
        server = uvicorn.Server(uvicorn_config(app, s, host=host, port=port))
        name = s.name
        where = f"http://{host}:{port}"
        say.write(
            f"inference serve: {name} on {m.info.backend}, {s.parallel} at a time; "
            f"OpenAI at {where}/v1, Ollama at {where}/api"
            f"{' (API key required)' if s.api_key else ''}"
            f"{f'; embeddings by {s.embed_name}' if embedder is not None else ''}\n"
        )
        say.flush()
        # Returns on SIGINT or SIGTERM, after finishing the open requests; uvicorn
        # raises a captured Ctrl-C again once it has stopped.
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        say.write("inference serve: stopped\n")
        say.flush()
    return 0


def _name(path: str) -> str:
    return os.path.basename(os.fspath(path).rstrip("/")) or "model"
