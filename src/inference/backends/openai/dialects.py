"""What each kind of OpenAI-compatible server understands: one :class:`Dialect` each.

Dialects are data with named fields (docs/openai.md has the table): which
request fields a server honours, under which names, and how it reports token
ids. :data:`SERVER_ALIASES` maps what ``server=`` may say to a dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ...options import GenerateConfig

__all__ = ["DIALECTS", "SERVER_ALIASES", "SERVER_KINDS", "Dialect", "StopIds", "TokenIds"]

#: How a server stops on token ids: natively (``stop_token_ids``), by
#: reporting ids that the client checks, or not at all.
StopIds = Literal["native", "client", ""]
#: How token ids are asked for: llama.cpp's ``n_probs``, vLLM/SGLang's
#: ``return_token_ids``, or not at all.
TokenIds = Literal["n_probs", "token_ids", ""]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """The request fields one kind of server honours. The defaults are what
    most servers take; each dialect names only where its server differs."""

    name: str
    label: str
    #: Requests sent at once by batch_generate and classify by default.
    slots: int
    #: (field, value that turns it off), or None when the server ignores top_k.
    top_k: tuple[str, int] | None = ("top_k", 0)
    min_p: bool = True
    #: Field names for the repetition penalty (empty: not honoured).
    repeat_penalty: tuple[str, ...] = ("repeat_penalty",)
    #: Whether the repetition penalty is honoured by the chat endpoint too.
    repeat_on_chat: bool = True
    #: Value of top_p that means "off", or None to leave the field out.
    top_p_off: float | None = 1.0
    stop_ids: StopIds = ""
    token_ids: TokenIds = ""
    #: Most stop strings the server takes (0: no limit); the rest are
    #: enforced client-side.
    max_stop: int = 0
    #: Ask the server to count the prompt's tokens when it reports no usage.
    count_prompt: bool = False
    #: Send the "off" values of top_k, min_p and the repetition penalty
    #: explicitly (False: only values the user set).
    send_off: bool = True
    #: Whether the server reports per-token log-probabilities (OpenAI's
    #: ``logprobs`` fields) when asked.
    logprobs: bool = True
    #: Why ``score()`` is refused ("" when the server returns the prompt's
    #: log-probabilities for a completions request with ``echo``).
    no_scoring: str = "it is not known to return the prompt's log-probabilities with echo"
    #: How the server takes a structured-output constraint: a style of
    #: :data:`.structured.ACCEPTS` ("openai": ``response_format`` alone).
    structured: str = "openai"
    #: Whether the server renders ``tools`` through the model's template and
    #: returns ``tool_calls`` (False: the client's generic format instead).
    tools: bool = True
    #: Whether the server passes ``chat_template_kwargs`` to the template
    #: (``enable_thinking`` and ``template_vars``).
    template_kwargs: bool = False
    #: Whether the alternatives of ``top_logprobs`` carry token ids.
    alternative_ids: bool = False
    #: Ask for the sampled tokens' log-probabilities even when the caller did
    #: not: a chunk of several tokens (vLLM merges them when its reader lags)
    #: then lists each token's text, so that no token's text depends on timing.
    token_texts: bool = False
    #: Send ``strict: true`` on tools, so that calls' arguments follow
    #: their schemas.
    strict_tools: bool = False

    def request_fields(
        self, cfg: GenerateConfig, *, chat: bool, ignored: Callable[[str], None]
    ) -> dict[str, Any]:
        """The fields of a streamed request for ``cfg``, named as this server
        wants them; ``ignored(option)`` is told of each option set that the
        server would ignore. What the server cannot honour at all was refused
        before (the model's capabilities)."""
        from ...constraints import constraint_of
        from .structured import constraint_fields

        body: dict[str, Any] = {
            "stream": True,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
        }
        if 0.0 < cfg.top_p < 1.0:
            body["top_p"] = cfg.top_p
        elif self.top_p_off is not None:
            body["top_p"] = self.top_p_off
        if self.top_k is not None:
            field, off = self.top_k
            if cfg.top_k > 0:
                body[field] = cfg.top_k
            elif self.send_off:
                body[field] = off
        elif cfg.top_k > 0:
            ignored("top_k")
        if self.min_p:
            if cfg.min_p > 0.0 or self.send_off:
                body["min_p"] = cfg.min_p
        elif cfg.min_p > 0.0:
            ignored("min_p")
        names = self.repeat_penalty if (self.repeat_on_chat or not chat) else ()
        if names:
            if cfg.repeat_penalty != 1.0 or self.send_off:
                for name in names:
                    body[name] = cfg.repeat_penalty
        elif cfg.repeat_penalty != 1.0:
            ignored("repeat_penalty")
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.stop:
            body["stop"] = list(cfg.stop[: self.max_stop] if self.max_stop else cfg.stop)
        if cfg.stop_tokens and self.stop_ids == "native":
            body["stop_token_ids"] = list(cfg.stop_tokens)
        if self.token_ids == "n_probs":
            # llama-server takes n_probs over logprobs when both are sent.
            body["n_probs"] = max(1, cfg.logprobs or 0)
        elif self.token_ids == "token_ids":
            body["return_token_ids"] = True
        k = cfg.logprobs if cfg.logprobs is not None else (0 if self.token_texts else None)
        if k is not None:
            if chat:
                body["logprobs"] = True
                body["top_logprobs"] = k
            else:
                body["logprobs"] = k
        constraint = constraint_of(cfg)
        if constraint is not None:
            body.update(constraint_fields(self, constraint))
        body["stream_options"] = {"include_usage": True}
        return body


_VLLM = Dialect(
    name="vllm",
    label="vLLM",
    slots=8,
    top_k=("top_k", -1),
    repeat_penalty=("repetition_penalty",),
    stop_ids="native",
    token_ids="token_ids",
    no_scoring="",
    structured="vllm",
    template_kwargs=True,
    token_texts=True,
    strict_tools=True,
)

_ALL = (
    Dialect(
        name="llama.cpp",
        label="llama.cpp's llama-server",
        slots=4,
        stop_ids="client",
        token_ids="n_probs",
        no_scoring=(
            "it returns no log-probabilities for the prompt with echo (llama.cpp#27174), "
            "so every score would be wrong"
        ),
        structured="llama.cpp",
        template_kwargs=True,
        alternative_ids=True,
    ),
    Dialect(
        name="llama-cpp-python",
        label="llama-cpp-python's server",
        slots=1,
        count_prompt=True,
        # Measured on 0.3.36 (a test checks).
        no_scoring=(
            "its echo log-probabilities are shifted by one token (each prompt token is "
            "scored by the distribution that follows it)"
        ),
        structured="llama-cpp-python",
        # It parses calls only for its function-calling chat formats.
        tools=False,
    ),
    _VLLM,
    # SGLang takes vLLM's sampling fields; its constraints are its own.
    replace(_VLLM, name="sglang", label="SGLang", structured="sglang"),
    Dialect(
        name="ollama",
        label="Ollama",
        slots=1,
        top_k=None,
        min_p=False,
        repeat_penalty=(),
        repeat_on_chat=False,
        logprobs=False,
        no_scoring="its OpenAI endpoints have no echo and no log-probabilities",
    ),
    Dialect(
        name="tgi",
        label="Text Generation Inference",
        slots=8,
        top_k=None,
        min_p=False,
        repeat_penalty=("repetition_penalty",),
        repeat_on_chat=False,
        top_p_off=None,
        max_stop=4,
    ),
    Dialect(
        name="openai",
        label="a generic OpenAI-compatible server",
        slots=4,
        repeat_penalty=("repetition_penalty", "repeat_penalty"),
        max_stop=4,
        send_off=False,
    ),
)

#: Dialect name -> dialect.
DIALECTS: Mapping[str, Dialect] = {d.name: d for d in _ALL}

SERVER_ALIASES: Mapping[str, str] = {
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "llama-server": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "llama-cpp-python": "llama-cpp-python",
    "llama_cpp_python": "llama-cpp-python",
    "vllm": "vllm",
    "sglang": "sglang",
    "ollama": "ollama",
    "tgi": "tgi",
    "text-generation-inference": "tgi",
    "openai": "openai",
    "generic": "openai",
}

#: The values ``server=`` accepts in the URL fragment.
SERVER_KINDS = tuple(DIALECTS)
