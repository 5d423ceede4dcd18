"""inference serve: inference models behind OpenAI-, Anthropic- and
Ollama-compatible HTTP.

    inference serve MODEL [NAME=MODEL...] [--host H] [--port P] [--parallel N]

or from Python, :func:`create_app` for any ASGI server and :func:`serve`
to load the models and run them on uvicorn.
"""

from __future__ import annotations

from .app import Settings, create_app
from .run import serve

__all__ = ["Settings", "create_app", "serve"]
