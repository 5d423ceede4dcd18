"""Settings for loading and generating: the two configs and their option builders.

A setting can be given two ways, with the same validation::

    m.generate("Hi", with_max_tokens(64), with_temperature(0.7))
    m.generate("Hi", max_tokens=64, temperature=0.7)

Each option is defined once, as a field of :class:`GenerateConfig` or
:class:`LoadConfig` with its check; the configs check themselves when made
(``__post_init__``), so builders, keywords and configs built by hand cannot
disagree. Each ``with_*`` builder runs the same check when it is called and
returns an :class:`Option`, a small frozen object that
:func:`generate_config` and :func:`load_config` fold into a config. Unknown
keyword arguments raise ``TypeError`` listing the valid names. Adding an
option is one field and one builder.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal

from .tool_calls import Tool, to_tool, tool_choice
from .values import is_int, is_number

__all__ = [
    "CACHE_DISK_MIB",
    "CACHE_HOST_MIB",
    "CONSTRAINT_MEMORY_MIB",
    "CONSTRAINT_SECONDS",
    "DRAFT_MAX_LIMIT",
    "GENERATE_OPTIONS",
    "LOAD_OPTIONS",
    "MIN_TEMPERATURE",
    "PENALTY_RANGE",
    "POOLINGS",
    "SPECULATION",
    "GenerateConfig",
    "LoadConfig",
    "Option",
    "generate_config",
    "load_config",
    "with_adapter_path",
    "with_api_key",
    "with_backend",
    "with_cache_dir",
    "with_cache_disk_mib",
    "with_cache_host_mib",
    "with_cancel",
    "with_choice",
    "with_constraint_memory_mib",
    "with_constraint_timeout",
    "with_context_len",
    "with_draft_max",
    "with_draft_model",
    "with_flash_attention",
    "with_gpu_layers",
    "with_grammar",
    "with_json_object",
    "with_json_schema",
    "with_logits",
    "with_logprobs",
    "with_max_tokens",
    "with_min_p",
    "with_parallel_slots",
    "with_pooling",
    "with_regex",
    "with_repeat_penalty",
    "with_seed",
    "with_speculative",
    "with_stop",
    "with_stop_tokens",
    "with_temperature",
    "with_template_vars",
    "with_thinking",
    "with_threads",
    "with_timeout",
    "with_tool_choice",
    "with_tools",
    "with_top_k",
    "with_top_p",
]


_Check = Callable[[str, Any], Any]


def _fail(option: str, value: object, must: str) -> ValueError:
    return ValueError(f"{option} must be {must}; got {value!r}")


def _int(option: str, value: object, *, minimum: int) -> int:
    if not is_int(value):
        raise _fail(option, value, "an int")
    if value < minimum:
        raise _fail(option, value, f">= {minimum}")
    return value


def _float(option: str, value: object, *, low: float, high: float = math.inf) -> float:
    """A finite number in [low, high] (NaN and the infinities never are)."""
    if not is_number(value):
        raise _fail(option, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise _fail(option, value, "a finite number") from None
    if not math.isfinite(number):
        raise _fail(option, value, "a finite number")
    if number < low or number > high:
        bounds = f"in [{low:g}, {high:g}]" if high != math.inf else f">= {low:g}"
        raise _fail(option, value, f"a number {bounds}")
    return number


def _at_least(minimum: int) -> _Check:
    return lambda option, value: _int(option, value, minimum=minimum)


def _number(low: float, high: float = math.inf) -> _Check:
    return lambda option, value: _float(option, value, low=low, high=high)


def _str(option: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(option, value, "a str")
    return value


def _path(option: str, value: object) -> str:
    return _str(option, os.fspath(value) if isinstance(value, os.PathLike) else value)


def _bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(option, value, "a bool")
    return value


def _seed(option: str, value: object) -> int | None:
    return None if value is None else _int(option, value, minimum=0)


#: The most alternatives a token's ``top_logprobs`` may hold (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


def _logprobs(option: str, value: object) -> int | None:
    if value is None:
        return None
    number = _int(option, value, minimum=0)
    if number > MAX_TOP_LOGPROBS:
        raise _fail(option, value, f"an int from 0 to {MAX_TOP_LOGPROBS}, or None")
    return number


def _token_ids(option: str, value: object) -> tuple[int, ...]:
    """An id, or ids and iterables of ids (flattened one level)."""
    items = [value] if not isinstance(value, Iterable) else list(value)
    flat: list[object] = []
    for item in items:
        flat.extend(item if isinstance(item, Iterable) else [item])
    return tuple(_int(option, i, minimum=0) for i in flat)


def _strings(option: str, value: object) -> tuple[str, ...]:
    """A string, or strings and iterables of strings (flattened one level)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        raise _fail(option, value, "a str or strings")
    flat: list[object] = []
    for item in items:
        if isinstance(item, str):
            flat.append(item)
        elif isinstance(item, Iterable):
            flat.extend(item)
        else:
            raise _fail(option, item, "a str or strings")
    for text in flat:
        if not isinstance(text, str) or not text:
            raise _fail(option, text, "a non-empty str")
    return tuple(flat)  # type: ignore[arg-type]


#: Below this a temperature is greedy: dividing logits by a smaller one
#: overflows float32 (1e-40 sampled the last vocabulary id forever).
MIN_TEMPERATURE = 1e-6
#: The repetition penalty's range: the logits of repeated tokens are
#: divided (or multiplied) by it, and float32 must hold the result.
PENALTY_RANGE = (0.01, 100.0)


def _temperature(option: str, value: object) -> float:
    number = _float(option, value, low=0.0)
    return 0.0 if number < MIN_TEMPERATURE else number


def _penalty(option: str, value: object) -> float:
    low, high = PENALTY_RANGE
    return _float(option, value, low=low, high=high)


def _timeout(option: str, value: object) -> float | None:
    if value is None:
        return None
    number = _float(option, value, low=0.0)
    if number == 0.0:
        raise _fail(option, value, "> 0 seconds (None means no deadline)")
    return number


#: What compiling one constraint may take by default (LoadConfig's
#: ``constraint_timeout`` and ``constraint_memory_mib``; see
#: :mod:`inference.compile_guard`).
CONSTRAINT_SECONDS = 10.0
CONSTRAINT_MEMORY_MIB = 1024
#: The prefix cache's default host-memory budget (MiB), per model.
CACHE_HOST_MIB = 256
#: The prefix cache's default disk budget (MiB), per folder.
CACHE_DISK_MIB = 4096

#: How ``embed`` pools a text's token vectors into one (``pooling=`` at load):
#: their mean, the first (CLS) token's, the last token's, or a cross-encoder's
#: classification head over the whole text (``rank``, for ``rerank``).
POOLINGS = ("mean", "cls", "last", "rank")


def _pooling(option: str, value: object) -> str:
    if value != "" and value not in POOLINGS:
        raise _fail(option, value, f'"" (the model\'s own) or one of {", ".join(POOLINGS)}')
    return str(value)


#: How a model decodes speculatively (``capabilities.speculative``): "ngram"
#: copies its guesses from the prompt and the text so far (prompt lookup,
#: ``speculative="ngram"`` at load); "draft" checks a smaller model's
#: (``draft_model=``); "ngram+draft" both (given both at load): prompt
#: lookup's guesses first, as llama.cpp orders its kinds, the draft model's
#: where lookup has none or its guesses do not pay.
SPECULATION = ("ngram", "draft", "ngram+draft")
#: The most tokens ``draft_max`` lets one step propose.
DRAFT_MAX_LIMIT = 32


def _speculation(option: str, value: object) -> str:
    if value not in ("", "ngram"):
        raise _fail(option, value, '"" (none) or "ngram" (a draft model is draft_model=)')
    return str(value)


def _draft_max(option: str, value: object) -> int:
    number = _int(option, value, minimum=0)
    if number > DRAFT_MAX_LIMIT:
        raise _fail(option, value, f"an int from 0 (the model's default) to {DRAFT_MAX_LIMIT}")
    return number


def _positive_seconds(option: str, value: object) -> float:
    number = _float(option, value, low=0.0)
    if number == 0.0:
        raise _fail(option, value, "> 0 seconds")
    return number


def _event(option: str, value: object) -> threading.Event | None:
    if value is not None and not callable(getattr(value, "is_set", None)):
        raise _fail(option, value, "a threading.Event")
    return value  # type: ignore[return-value]


def _optional_bool(option: str, value: object) -> bool | None:
    return None if value is None else _bool(option, value)


def _text(option: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(option, value, "a non-empty str, or None")
    return value


def _json_value(option: str, value: object) -> Any:
    """``value`` copied through JSON (so it is plain and cannot change later)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _fail(option, value, f"JSON ({exc})") from None


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):  # a read-only schema from an earlier check
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _schema(option: str, value: object) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, (Mapping, str)):
        raise _fail(option, value, "a JSON schema (a dict)")
    schema = _json_value(option, value)
    if not isinstance(schema, dict):
        raise _fail(option, value, "a JSON schema (a dict)")
    return MappingProxyType(schema)


def _choices(option: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise _fail(option, value, "a list of strings")
    return _strings(option, value) if value else ()


def _tools(option: str, value: object) -> tuple[Tool, ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise _fail(option, value, "a list of tools")
    try:
        tools = tuple(to_tool(t) for t in value)
    except ValueError as exc:
        raise _fail(option, value, f"a list of tools ({exc})") from None
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise _fail(option, names, "tools with different names")
    return tools


def _tool_choice(option: str, value: object) -> str:
    return tool_choice(value)


def _template_vars(option: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(option, value, "a dict of names to values")
    return MappingProxyType(dict(value))


#: The structured-output options: at most one per call.
CONSTRAINT_OPTIONS = ("json_schema", "json_object", "regex", "choice", "grammar")


def _check_together(cfg: GenerateConfig) -> None:
    """The rules that span fields: one constraint at most, tools without one,
    a forced tool among the tools."""
    given = [name for name in CONSTRAINT_OPTIONS if getattr(cfg, name)]
    if len(given) > 1:
        raise ValueError(f"at most one structured-output option per call; got {', '.join(given)}")
    if given and cfg.tools and cfg.tool_choice != "none":
        raise ValueError(
            f"{given[0]} cannot be combined with tools (tool_choice={cfg.tool_choice!r})"
        )
    forced = cfg.tool_choice.removeprefix("function:")
    if cfg.tool_choice == "required" and not cfg.tools:
        raise ValueError("tool_choice='required' needs tools")
    if forced != cfg.tool_choice and forced not in {t.name for t in cfg.tools}:
        raise ValueError(f"tool_choice names {forced!r}, which is not among the tools")
    if cfg.draft_max and cfg.speculative is False:
        raise ValueError("draft_max= needs speculation; the call turned it off (speculative=False)")


def _option(default: Any, check: _Check, **kw: Any) -> Any:
    """A config field and its check: the one place an option is defined."""
    if isinstance(default, MappingProxyType):  # unhashable, so a factory
        return field(default_factory=lambda: default, metadata={"check": check}, **kw)
    return field(default=default, metadata={"check": check}, **kw)


def _validate(config: Any) -> None:
    """Run every field's check, storing the normalised value (``__post_init__``)."""
    for f in fields(config):
        value = getattr(config, f.name)
        checked = f.metadata["check"](f.name, value)
        if checked is not value:
            object.__setattr__(config, f.name, checked)


@dataclass(frozen=True, slots=True)
class GenerateConfig:
    """How one generation call samples and when it stops.

    Zero means "off" for ``top_k``, ``top_p`` and ``min_p``; ``temperature``
    0 is greedy decoding (a temperature below :data:`MIN_TEMPERATURE` is
    stored as 0); ``repeat_penalty`` 1 is no penalty (within
    :data:`PENALTY_RANGE`); numbers are finite; ``seed`` None
    lets the backend choose; ``logprobs`` None asks for no log-probabilities
    (0 asks for the chosen token's alone); ``timeout`` None means no deadline.
    At most one of the structured-output fields (``json_schema``,
    ``json_object``, ``regex``, ``choice``, ``grammar``) is set; ``tools``
    and ``tool_choice`` apply to ``chat``; ``enable_thinking`` None leaves
    the template's default, and ``template_vars`` are passed to the chat
    template as variables. Every field
    is checked when the config is made, however it is made (a ``with_*``
    builder, a keyword, or ``GenerateConfig(...)`` itself): a bad value raises
    ``ValueError`` naming the option and the value.
    """

    max_tokens: int = _option(256, _at_least(0))
    temperature: float = _option(0.0, _temperature)
    top_k: int = _option(0, _at_least(0))
    top_p: float = _option(0.0, _number(0.0, 1.0))
    min_p: float = _option(0.0, _number(0.0, 1.0))
    stop_tokens: tuple[int, ...] = _option((), _token_ids)
    stop: tuple[str, ...] = _option((), _strings)
    repeat_penalty: float = _option(1.0, _penalty)
    seed: int | None = _option(None, _seed)
    return_logits: bool = _option(False, _bool)
    logprobs: int | None = _option(None, _logprobs)
    json_schema: Mapping[str, Any] | None = _option(None, _schema)
    json_object: bool = _option(False, _bool)
    regex: str | None = _option(None, _text)
    choice: tuple[str, ...] = _option((), _choices)
    grammar: str | None = _option(None, _text)
    tools: tuple[Tool, ...] = _option((), _tools)
    tool_choice: str = _option("auto", _tool_choice)
    enable_thinking: bool | None = _option(None, _optional_bool)
    template_vars: Mapping[str, Any] = _option(MappingProxyType({}), _template_vars)
    timeout: float | None = _option(None, _timeout)
    speculative: bool | None = _option(None, _optional_bool)
    draft_max: int = _option(0, _draft_max)
    cancel: threading.Event | None = _option(None, _event, compare=False, repr=False)  # noqa: RUF009 (a field)

    def __post_init__(self) -> None:
        _validate(self)
        _check_together(self)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How a model is loaded.

    ``backend`` "" picks the best available; ``context_len`` 0 uses the
    model's trained length (backends may cap it for memory); ``gpu_layers``
    -1 offloads every layer the build can; ``parallel_slots`` 0 lets the
    backend decide; ``api_key`` is for remote backends and never printed;
    ``threads`` 0 lets the backend choose its CPU threads;
    ``constraint_timeout`` and ``constraint_memory_mib`` bound compiling one
    constraint (see :mod:`inference.compile_guard`); ``pooling`` ""
    follows the model file in ``embed``, or one of :data:`POOLINGS`;
    ``cache_host_mib`` is the host-memory budget of the prefix cache, for
    prompts' KV evicted from the engine's slots (0: none kept);
    ``cache_dir`` a folder where it keeps prompts' KV across restarts (""
    is ``$INFERENCE_KV_CACHE_DIR``, else none), within ``cache_disk_mib``;
    ``draft_model`` a smaller model with the same vocabulary whose guesses
    the model checks several at a time (speculative decoding), and
    ``speculative="ngram"`` guesses copied from the prompt and the text so
    far (no second model; with a draft model too, lookup's guesses come
    first); ``flash_attention`` None leaves the engine's
    choice of attention kernel, True or False asks for flash attention or
    the plain one (llama.cpp's backends honour it, MLX refuses it, a remote
    server decides for itself). Checked when made, as :class:`GenerateConfig` is.
    """

    backend: str = _option("", _str)
    context_len: int = _option(0, _at_least(0))
    gpu_layers: int = _option(-1, _at_least(-1))
    parallel_slots: int = _option(0, _at_least(0))
    adapter_path: str = _option("", _path)
    api_key: str = _option("", _str, repr=False)
    threads: int = _option(0, _at_least(0))
    constraint_timeout: float = _option(CONSTRAINT_SECONDS, _positive_seconds)
    constraint_memory_mib: int = _option(CONSTRAINT_MEMORY_MIB, _at_least(16))
    pooling: str = _option("", _pooling)
    cache_host_mib: int = _option(CACHE_HOST_MIB, _at_least(0))
    cache_dir: str = _option("", _path)
    cache_disk_mib: int = _option(CACHE_DISK_MIB, _at_least(1))
    draft_model: str = _option("", _path)
    speculative: str = _option("", _speculation)
    flash_attention: bool | None = _option(None, _optional_bool)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def speculation(self) -> str:
        """How the model is to decode speculatively: one of
        :data:`SPECULATION`, or "" (it is not)."""
        if self.draft_model:
            return "ngram+draft" if self.speculative else "draft"
        return self.speculative


Target = Literal["generate", "load"]

_CONFIGS: dict[Target, type] = {"generate": GenerateConfig, "load": LoadConfig}
_CHECKS: dict[Target, dict[str, _Check]] = {
    target: {f.name: f.metadata["check"] for f in fields(cls)} for target, cls in _CONFIGS.items()
}


@dataclass(frozen=True, slots=True)
class Option:
    """One validated setting, made by a ``with_*`` builder."""

    target: Target
    name: str
    value: Any

    def __repr__(self) -> str:
        shown = "'***'" if self.name == "api_key" else repr(self.value)
        return f"with_{_builder_suffix(self.name)}({shown})"


_BUILDER_SUFFIXES = {"return_logits": "logits", "enable_thinking": "thinking"}


def _builder_suffix(name: str) -> str:
    return _BUILDER_SUFFIXES.get(name, name)


def _make(target: Target, name: str, value: Any) -> Option:
    return Option(target, name, _CHECKS[target][name](name, value))


# -- generation options -------------------------------------------------------


def with_max_tokens(n: int) -> Option:
    """Stop after ``n`` generated tokens (0 generates nothing)."""
    return _make("generate", "max_tokens", n)


def with_temperature(t: float) -> Option:
    """Sampling temperature; 0 (or below 1e-6) is greedy and deterministic."""
    return _make("generate", "temperature", t)


def with_top_k(k: int) -> Option:
    """Sample only among the ``k`` likeliest tokens; 0 turns it off."""
    return _make("generate", "top_k", k)


def with_top_p(p: float) -> Option:
    """Nucleus sampling mass in [0, 1]; 0 (or 1) turns it off."""
    return _make("generate", "top_p", p)


def with_min_p(p: float) -> Option:
    """Drop tokens below ``p`` times the likeliest one's probability."""
    return _make("generate", "min_p", p)


def with_stop_tokens(*ids: int | Iterable[int]) -> Option:
    """Stop when any of these token ids is generated (it is not emitted)."""
    return _make("generate", "stop_tokens", ids)


def with_stop(*strings: str | Iterable[str]) -> Option:
    """Stop when the output contains any of these strings (not emitted)."""
    return _make("generate", "stop", strings)


def with_repeat_penalty(penalty: float) -> Option:
    """Penalise tokens already in the context; 1 is no penalty (0.01 to 100)."""
    return _make("generate", "repeat_penalty", penalty)


def with_seed(seed: int | None) -> Option:
    """Random seed for sampling: the same seed gives the same output."""
    return _make("generate", "seed", seed)


def with_logits(enabled: bool = True) -> Option:
    """Return the full logits from :meth:`TextModel.classify`."""
    return _make("generate", "return_logits", enabled)


def with_logprobs(k: int | None = 0) -> Option:
    """Give each streamed token its log-probability and its ``k`` (0 to 20) most
    likely alternatives, from the model's raw distribution (None: not asked)."""
    return _make("generate", "logprobs", k)


def with_json_schema(schema: Mapping[str, Any] | str) -> Option:
    """Constrain the output to JSON that matches ``schema`` (a dict, or its JSON text)."""
    return _make("generate", "json_schema", schema)


def with_json_object(enabled: bool = True) -> Option:
    """Constrain the output to one JSON object, of any shape."""
    return _make("generate", "json_object", enabled)


def with_regex(pattern: str | None) -> Option:
    """Constrain the output to match ``pattern`` whole (Rust ``regex`` syntax,
    as llguidance takes it)."""
    return _make("generate", "regex", pattern)


def with_choice(options: Iterable[str]) -> Option:
    """Constrain the output to exactly one of these strings."""
    return _make("generate", "choice", options)


def with_grammar(grammar: str | None) -> Option:
    """Constrain the output to a context-free grammar (Lark syntax, as llguidance takes it)."""
    return _make("generate", "grammar", grammar)


def with_tools(tools: Iterable[Mapping[str, Any] | Tool]) -> Option:
    """Functions the model may call in ``chat``: OpenAI's tool shape
    (``{"type": "function", "function": {...}}``) or its inner dict; the
    calls arrive in ``stream.tool_calls``."""
    return _make("generate", "tools", tools)


def with_tool_choice(choice: str | Mapping[str, Any]) -> Option:
    """ "auto" (the model decides), "required" (it must call one), "none",
    or ``{"name": ...}`` (it must call that one)."""
    return _make("generate", "tool_choice", choice)


def with_thinking(enabled: bool | None) -> Option:
    """Turn a reasoning model's thinking on or off, for templates that take
    ``enable_thinking`` (None: the template's default)."""
    return _make("generate", "enable_thinking", enabled)


def with_template_vars(variables: Mapping[str, Any] | None = None, **more: Any) -> Option:
    """Extra variables for the model's chat template (``chat`` only)."""
    value: object = {} if variables is None else variables
    if more and isinstance(value, Mapping):
        value = {**value, **more}
    return _make("generate", "template_vars", value)


def with_timeout(seconds: float | None) -> Option:
    """End the call after ``seconds``; it finishes with DeadlineExceeded."""
    return _make("generate", "timeout", seconds)


def with_cancel(event: threading.Event | None) -> Option:
    """Cancel the call when ``event`` is set, from any thread."""
    return _make("generate", "cancel", event)


def with_speculative(value: str | bool | None) -> Option:
    """Speculative decoding. At load, a str: "ngram" drafts tokens from the
    prompt and the text so far (a draft model is :func:`with_draft_model`;
    with both, lookup's guesses come first and the draft model's where it
    has none).
    Per call, a bool: False turns it off, None (the default) speculates as
    the model was loaded to."""
    target: Target = "load" if isinstance(value, str) else "generate"
    return _make(target, "speculative", value)


def with_draft_max(n: int) -> Option:
    """The most tokens one speculative step proposes (0: the model's default,
    which adapts to how many are accepted)."""
    return _make("generate", "draft_max", n)


# -- load options ------------------------------------------------------------


def with_draft_model(path: str | os.PathLike[str]) -> Option:
    """A smaller model with the same vocabulary, whose guesses the model
    checks several tokens at a time (speculative decoding)."""
    return _make("load", "draft_model", path)


def with_flash_attention(on: bool | None) -> Option:
    """Flash attention (True), the plain attention kernel (False) or the
    engine's choice (None, the default). On a CPU, llama.cpp's flash
    attention prefills faster but checks speculative guesses slower."""
    return _make("load", "flash_attention", on)


def with_backend(name: str) -> Option:
    """Load with this backend, by name, instead of the best available."""
    return _make("load", "backend", name)


def with_context_len(n: int) -> Option:
    """Context window in tokens; 0 uses the model's trained length."""
    return _make("load", "context_len", n)


def with_gpu_layers(n: int) -> Option:
    """Layers to offload to the GPU; -1 offloads all, 0 none."""
    return _make("load", "gpu_layers", n)


def with_parallel_slots(n: int) -> Option:
    """Sequences the backend may run at once; 0 lets it decide."""
    return _make("load", "parallel_slots", n)


def with_adapter_path(path: str | os.PathLike[str]) -> Option:
    """A LoRA adapter to apply on load."""
    return _make("load", "adapter_path", path)


def with_threads(n: int) -> Option:
    """CPU threads the engine computes with; 0 lets the backend choose."""
    return _make("load", "threads", n)


def with_constraint_timeout(seconds: float) -> Option:
    """Seconds compiling one constraint (schema, pattern, grammar) may take
    before the call is refused."""
    return _make("load", "constraint_timeout", seconds)


def with_constraint_memory_mib(mib: int) -> Option:
    """Memory (MiB) compiling one constraint may take before the call is refused."""
    return _make("load", "constraint_memory_mib", mib)


def with_cache_dir(path: str) -> Option:
    """A folder where the prefix cache keeps prompts' KV across restarts."""
    return _make("load", "cache_dir", path)


def with_cache_disk_mib(mib: int) -> Option:
    """Disk (MiB) the prefix cache's folder may take."""
    return _make("load", "cache_disk_mib", mib)


def with_cache_host_mib(mib: int) -> Option:
    """Host memory (MiB) the prefix cache keeps evicted prompts' KV in (0: none)."""
    return _make("load", "cache_host_mib", mib)


def with_pooling(pooling: str) -> Option:
    """How ``embed`` pools token vectors: "" (the model file's), or one of
    :data:`POOLINGS`."""
    return _make("load", "pooling", pooling)


def with_api_key(key: str) -> Option:
    """API key for remote backends; never logged or shown."""
    return _make("load", "api_key", key)


_Builder = Callable[[Any], Option]


def _builders(target: Target) -> Mapping[str, _Builder]:
    return MappingProxyType(
        {name: globals()[f"with_{_builder_suffix(name)}"] for name in _CHECKS[target]}
    )


#: Keyword name -> builder, for generation calls (derived from GenerateConfig).
GENERATE_OPTIONS: Mapping[str, _Builder] = _builders("generate")
#: Keyword name -> builder, for loading (derived from LoadConfig).
LOAD_OPTIONS: Mapping[str, _Builder] = _builders("load")


def _fold(
    base: Any,
    target: Target,
    opts: tuple[Option | Any, ...],
    kwargs: Mapping[str, Any],
) -> Any:
    changes: dict[str, Any] = {}
    for opt in opts:
        if isinstance(opt, type(base)):
            changes.update({f.name: getattr(opt, f.name) for f in fields(opt)})
            continue
        if not isinstance(opt, Option):
            raise TypeError(f"expected an option from a with_* builder; got {opt!r}")
        if opt.target != target:
            raise TypeError(f"{opt!r} is a {opt.target} option; it does not apply here")
        changes[opt.name] = opt.value
    known = _CHECKS[target]
    for name in kwargs:
        if name not in known:
            raise TypeError(f"unknown {target} option {name!r}; valid: {', '.join(sorted(known))}")
    changes.update(kwargs)
    # replace() builds a new config, whose __post_init__ checks every value.
    return replace(base, **changes) if changes else base


def generate_config(
    *opts: Option | GenerateConfig,
    base: GenerateConfig | None = None,
    **kwargs: Any,
) -> GenerateConfig:
    """Fold options and keyword settings into a :class:`GenerateConfig`.

    A whole ``GenerateConfig`` may be passed among the options; later
    settings win over earlier ones, keywords over positional options.
    """
    result: GenerateConfig = _fold(base or _DEFAULT_GENERATE, "generate", opts, kwargs)
    return result


def load_config(
    *opts: Option | LoadConfig,
    base: LoadConfig | None = None,
    **kwargs: Any,
) -> LoadConfig:
    """Fold options and keyword settings into a :class:`LoadConfig`."""
    result: LoadConfig = _fold(base or _DEFAULT_LOAD, "load", opts, kwargs)
    return result


_DEFAULT_GENERATE = GenerateConfig()
_DEFAULT_LOAD = LoadConfig()
