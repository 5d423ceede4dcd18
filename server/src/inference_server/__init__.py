"""inference serve: any inference model behind OpenAI- and Ollama-compatible HTTP.

    inference serve MODEL [--host H] [--port P] [--parallel N] [--api-key KEY]

or from Python, :func:`create_app` for any ASGI server and :func:`serve`
to load a model and run it on uvicorn.
"""

from __future__ import annotations

from .app import Settings, create_app
from .run import serve

__all__ = ["Settings", "create_app", "serve"]
