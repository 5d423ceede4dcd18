"""The ``openai`` backend: a :class:`~inference.TextModel` in front of a remote
OpenAI-compatible server (vLLM, SGLang, llama.cpp's llama-server,
llama-cpp-python's server, Ollama, TGI...), standard library only.

::

    import inference
    with inference.load_model("http://gpu-box:8000/v1#model=Qwen/Qwen3-8B") as m:
        print(m.generate("Once upon a time", max_tokens=32).text())

The URL is the server's OpenAI base URL (the one an OpenAI client is given,
ending in ``/v1``; a bare ``http://host:port`` gets ``/v1``). Settings of
this backend go in the URL's *fragment*, which is never sent to the server:

``model=NAME``
    the served model to use. Without it the server's only model (from
    ``GET /v1/models``) is used; several models and none named is a
    :class:`~inference.ModelLoadError` that lists them.
``server=KIND``
    ``llama.cpp``, ``llama-cpp-python``, ``vllm``, ``sglang``, ``ollama``,
    ``tgi`` or ``openai`` (a generic server): which request fields the
    server understands. Detected from ``/v1/models`` when not given.
``connect_timeout=S``, ``read_timeout=S``
    seconds to wait for a connection (default 10) and for the next bytes
    from the server, between tokens (default 120).
``retries=N``
    how many times a request that failed before its first token is tried
    again, with exponential backoff (default 2).

For example ``http://127.0.0.1:8080/v1#model=smollm2&read_timeout=30``.

The API key comes from ``with_api_key``/``api_key=``, else the
``INFERENCE_API_KEY`` or ``OPENAI_API_KEY`` environment variable, and is
sent as ``Authorization: Bearer``. It never appears in a log line, an error
message or a ``repr``; user and password in the URL are sent as HTTP Basic
authentication when no key is given, and are never shown either.

Every :class:`~inference.GenerateConfig` field is sent explicitly under the
name the server understands, the core's defaults included, so that a
server's own defaults (llama-cpp-python's ``repeat_penalty`` 1.1, vLLM's
``generation_config.json``) do not leak in. ``Token.id`` is the server's
token id where it reports one (llama.cpp via ``n_probs``, vLLM and SGLang via
``return_token_ids``), else ``-1``. ``docs/openai.md`` has the whole table.

The package is cut where httpx cuts, one job a module: ``urls`` (the URL and
its fragment settings), ``dialects`` (what each kind of server understands),
``transport`` (the keep-alive pool, the watchdog, HTTP failures),
``retries`` (when to try again, and how long to wait), ``sse`` and ``wire``
(the event stream and the completion chunks in it), ``model`` (the
TextModel), ``connect`` (connecting, choosing the model) and ``backend``
(the backend object, cheap to import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import OpenAIBackend
from .dialects import SERVER_KINDS

if TYPE_CHECKING:
    from .model import OpenAIModel

__all__ = ["SERVER_KINDS", "OpenAIBackend", "OpenAIModel"]


def __getattr__(name: str) -> Any:
    # The model (and the HTTP client under it) is imported when first used,
    # so that listing backends imports only the backend object.
    if name == "OpenAIModel":
        from .model import OpenAIModel

        return OpenAIModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
