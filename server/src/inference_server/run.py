"""Load a model and serve it on uvicorn until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, TextIO

import inference

from .app import Settings, create_app

__all__ = ["serve"]


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    parallel: int = 4,
    api_key: str = "",
    queue: int = 128,
    max_tokens_cap: int = 8192,
    log_prompts: bool = False,
    out: TextIO | None = None,
    **load: Any,
) -> int:
    """Load ``model`` (with the load options ``load``), print where it is
    served, and serve it until interrupted; returns the exit status."""
    import uvicorn

    say = out or sys.stdout
    with inference.load_model(model, parallel_slots=parallel, **load) as m:
        name = os.path.basename(os.fspath(model).rstrip("/")) or "model"
        settings = Settings(
            name=name,
            api_key=api_key,
            parallel=parallel,
            queue=queue,
            max_tokens_cap=max_tokens_cap,
            log_prompts=log_prompts,
        )
        app = create_app(m, settings)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        where = f"http://{host}:{port}"
        say.write(
            f"inference serve: {name} on {m.info.backend}, {parallel} at a time; "
            f"OpenAI at {where}/v1, Ollama at {where}/api"
            f"{' (API key required)' if api_key else ''}\n"
        )
        say.flush()
        # Returns on SIGINT or SIGTERM, after finishing the open requests; uvicorn
        # raises a captured Ctrl-C again once it has stopped.
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        say.write("inference serve: stopped\n")
        say.flush()
    return 0
