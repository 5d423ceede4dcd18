"""Settings for loading and generating: the two configs and their option builders.

A setting can be given two ways, with the same validation::

    m.generate("Hi", with_max_tokens(64), with_temperature(0.7))
    m.generate("Hi", max_tokens=64, temperature=0.7)

Each ``with_*`` builder checks its value when it is called and returns an
:class:`Option`, a small frozen object that :func:`generate_config` and
:func:`load_config` fold into a config. Unknown keyword arguments raise
``TypeError`` listing the valid names.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

__all__ = [
    "GENERATE_OPTIONS",
    "LOAD_OPTIONS",
    "GenerateConfig",
    "LoadConfig",
    "Option",
    "generate_config",
    "load_config",
    "with_adapter_path",
    "with_api_key",
    "with_backend",
    "with_cancel",
    "with_context_len",
    "with_gpu_layers",
    "with_logits",
    "with_max_tokens",
    "with_min_p",
    "with_parallel_slots",
    "with_repeat_penalty",
    "with_seed",
    "with_stop",
    "with_stop_tokens",
    "with_temperature",
    "with_timeout",
    "with_top_k",
    "with_top_p",
]


@dataclass(frozen=True, slots=True)
class GenerateConfig:
    """How one generation call samples and when it stops.

    Zero means "off" for ``top_k``, ``top_p`` and ``min_p``; ``temperature``
    0 is greedy decoding; ``repeat_penalty`` 1 is no penalty; ``seed`` None
    lets the backend choose; ``timeout`` None means no deadline.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 0.0
    min_p: float = 0.0
    stop_tokens: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    repeat_penalty: float = 1.0
    seed: int | None = None
    return_logits: bool = False
    timeout: float | None = None
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How a model is loaded.

    ``backend`` "" picks the best available; ``context_len`` 0 uses the
    model's trained length (backends may cap it for memory); ``gpu_layers``
    -1 offloads every layer the build can; ``parallel_slots`` 0 lets the
    backend decide; ``api_key`` is for remote backends and never printed.
    """

    backend: str = ""
    context_len: int = 0
    gpu_layers: int = -1
    parallel_slots: int = 0
    adapter_path: str = ""
    api_key: str = field(default="", repr=False)


Target = Literal["generate", "load"]


@dataclass(frozen=True, slots=True)
class Option:
    """One validated setting, made by a ``with_*`` builder."""

    target: Target
    name: str
    value: Any

    def __repr__(self) -> str:
        shown = "'***'" if self.name == "api_key" else repr(self.value)
        return f"with_{_BUILDER_SUFFIX.get(self.name, self.name)}({shown})"


_BUILDER_SUFFIX = {"stop_tokens": "stop_tokens", "return_logits": "logits"}


def _fail(option: str, value: object, must: str) -> ValueError:
    return ValueError(f"{option} must be {must}; got {value!r}")


def _int(option: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(option, value, "an int")
    if value < minimum:
        raise _fail(option, value, f">= {minimum}")
    return value


def _float(option: str, value: object, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(option, value, "a number")
    number = float(value)
    if math.isnan(number) or number < low or number > high:
        bounds = f"in [{low:g}, {high:g}]" if high != math.inf else f">= {low:g}"
        raise _fail(option, value, f"a number {bounds}")
    return number


def _str(option: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(option, value, "a str")
    return value


# -- generation options -------------------------------------------------------


def with_max_tokens(n: int) -> Option:
    """Stop after ``n`` generated tokens (0 generates nothing)."""
    return Option("generate", "max_tokens", _int("max_tokens", n, minimum=0))


def with_temperature(t: float) -> Option:
    """Sampling temperature; 0 is greedy and deterministic."""
    return Option("generate", "temperature", _float("temperature", t, low=0.0))


def with_top_k(k: int) -> Option:
    """Sample only among the ``k`` likeliest tokens; 0 turns it off."""
    return Option("generate", "top_k", _int("top_k", k, minimum=0))


def with_top_p(p: float) -> Option:
    """Nucleus sampling mass in [0, 1]; 0 (or 1) turns it off."""
    return Option("generate", "top_p", _float("top_p", p, low=0.0, high=1.0))


def with_min_p(p: float) -> Option:
    """Drop tokens below ``p`` times the likeliest one's probability."""
    return Option("generate", "min_p", _float("min_p", p, low=0.0, high=1.0))


def with_stop_tokens(*ids: int | Iterable[int]) -> Option:
    """Stop when any of these token ids is generated (it is not emitted)."""
    flat: list[int] = []
    for item in ids:
        if isinstance(item, Iterable):
            flat.extend(item)
        else:
            flat.append(item)
    return Option(
        "generate",
        "stop_tokens",
        tuple(_int("stop_tokens", i, minimum=0) for i in flat),
    )


def with_stop(*strings: str | Iterable[str]) -> Option:
    """Stop when the output contains any of these strings (not emitted)."""
    flat: list[str] = []
    for item in strings:
        if isinstance(item, str):
            flat.append(item)
        elif isinstance(item, Iterable):
            flat.extend(item)
        else:
            raise _fail("stop", item, "a str or strings")
    for s in flat:
        if not isinstance(s, str) or not s:
            raise _fail("stop", s, "a non-empty str")
    return Option("generate", "stop", tuple(flat))


def with_repeat_penalty(penalty: float) -> Option:
    """Penalise tokens already in the context; 1 is no penalty."""
    value = _float("repeat_penalty", penalty, low=0.0)
    if value == 0.0:
        raise _fail("repeat_penalty", penalty, "> 0 (1 is no penalty)")
    return Option("generate", "repeat_penalty", value)


def with_seed(seed: int | None) -> Option:
    """Random seed for sampling: the same seed gives the same output."""
    if seed is not None:
        seed = _int("seed", seed, minimum=0)
    return Option("generate", "seed", seed)


def with_logits(enabled: bool = True) -> Option:
    """Return the full logits from :meth:`TextModel.classify`."""
    if not isinstance(enabled, bool):
        raise _fail("return_logits", enabled, "a bool")
    return Option("generate", "return_logits", enabled)


def with_timeout(seconds: float | None) -> Option:
    """End the call after ``seconds``; it finishes with DeadlineExceeded."""
    if seconds is None:
        return Option("generate", "timeout", None)
    value = _float("timeout", seconds, low=0.0)
    if value == 0.0:
        raise _fail("timeout", seconds, "> 0 seconds (None means no deadline)")
    return Option("generate", "timeout", value)


def with_cancel(event: threading.Event | None) -> Option:
    """Cancel the call when ``event`` is set, from any thread."""
    if event is not None and not callable(getattr(event, "is_set", None)):
        raise _fail("cancel", event, "a threading.Event")
    return Option("generate", "cancel", event)


# -- load options ------------------------------------------------------------


def with_backend(name: str) -> Option:
    """Load with this backend, by name, instead of the best available."""
    return Option("load", "backend", _str("backend", name))


def with_context_len(n: int) -> Option:
    """Context window in tokens; 0 uses the model's trained length."""
    return Option("load", "context_len", _int("context_len", n, minimum=0))


def with_gpu_layers(n: int) -> Option:
    """Layers to offload to the GPU; -1 offloads all, 0 none."""
    return Option("load", "gpu_layers", _int("gpu_layers", n, minimum=-1))


def with_parallel_slots(n: int) -> Option:
    """Sequences the backend may run at once; 0 lets it decide."""
    return Option("load", "parallel_slots", _int("parallel_slots", n, minimum=0))


def with_adapter_path(path: str | os.PathLike[str]) -> Option:
    """A LoRA adapter to apply on load."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return Option("load", "adapter_path", _str("adapter_path", path))


def with_api_key(key: str) -> Option:
    """API key for remote backends; never logged or shown."""
    return Option("load", "api_key", _str("api_key", key))


_Builder = Callable[[Any], Option]

#: Keyword name -> builder, for generation calls.
GENERATE_OPTIONS: Mapping[str, _Builder] = {
    "max_tokens": with_max_tokens,
    "temperature": with_temperature,
    "top_k": with_top_k,
    "top_p": with_top_p,
    "min_p": with_min_p,
    "stop_tokens": with_stop_tokens,
    "stop": with_stop,
    "repeat_penalty": with_repeat_penalty,
    "seed": with_seed,
    "return_logits": with_logits,
    "timeout": with_timeout,
    "cancel": with_cancel,
}

#: Keyword name -> builder, for loading.
LOAD_OPTIONS: Mapping[str, _Builder] = {
    "backend": with_backend,
    "context_len": with_context_len,
    "gpu_layers": with_gpu_layers,
    "parallel_slots": with_parallel_slots,
    "adapter_path": with_adapter_path,
    "api_key": with_api_key,
}


def _fold(
    base: Any,
    target: Target,
    builders: Mapping[str, _Builder],
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
    for name, value in kwargs.items():
        builder = builders.get(name)
        if builder is None:
            raise TypeError(
                f"unknown {target} option {name!r}; valid: {', '.join(sorted(builders))}"
            )
        changes[name] = builder(value).value
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
    result: GenerateConfig = _fold(
        base or _DEFAULT_GENERATE, "generate", GENERATE_OPTIONS, opts, kwargs
    )
    return result


def load_config(
    *opts: Option | LoadConfig,
    base: LoadConfig | None = None,
    **kwargs: Any,
) -> LoadConfig:
    """Fold options and keyword settings into a :class:`LoadConfig`."""
    result: LoadConfig = _fold(base or _DEFAULT_LOAD, "load", LOAD_OPTIONS, opts, kwargs)
    return result


_DEFAULT_GENERATE = GenerateConfig()
_DEFAULT_LOAD = LoadConfig()
