"""Options (inference.options): builders, validation, folding into configs;
and the environment variables (inference.env)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import inference
from inference import env
from inference.options import (
    GENERATE_OPTIONS,
    LOAD_OPTIONS,
    MIN_TEMPERATURE,
    PENALTY_RANGE,
    POOLINGS,
    GenerateConfig,
    LoadConfig,
    Option,
    generate_config,
    load_config,
)
from inference.tool_calls import Tool

NAN = float("nan")
INF = float("inf")

# builder, option name, [(given, stored)], [invalid values]
BUILDERS: list[tuple[Any, str, list[tuple[Any, Any]], list[Any]]] = [
    (
        inference.with_max_tokens,
        "max_tokens",
        [(0, 0), (1, 1), (4096, 4096)],
        [-1, 1.5, "3", None, True],
    ),
    (
        inference.with_temperature,
        "temperature",
        # Below MIN_TEMPERATURE: greedy (dividing by 1e-40 overflowed float32).
        [(0, 0.0), (0.7, 0.7), (2, 2.0), (1e-40, 0.0), (MIN_TEMPERATURE / 2, 0.0)],
        [-0.1, NAN, INF, -INF, 10**400, "x", True],
    ),
    (inference.with_top_k, "top_k", [(0, 0), (40, 40)], [-1, 2.0, None, False]),
    (
        inference.with_top_p,
        "top_p",
        [(0, 0.0), (0.9, 0.9), (1, 1.0)],
        [-0.01, 1.01, NAN, INF, "0.5"],
    ),
    (inference.with_min_p, "min_p", [(0, 0.0), (0.05, 0.05), (1.0, 1.0)], [-0.1, 1.5, NAN]),
    (
        inference.with_repeat_penalty,
        "repeat_penalty",
        [(1, 1.0), (1.1, 1.1), (PENALTY_RANGE[0], 0.01), (PENALTY_RANGE[1], 100.0)],
        [0, 0.0, -1.0, NAN, INF, 1e-40, 0.009, 101],
    ),
    (inference.with_seed, "seed", [(None, None), (0, 0), (1234, 1234)], [-1, 1.0, "7", True]),
    (inference.with_logits, "return_logits", [(True, True), (False, False)], [1, 0, "yes", None]),
    (
        inference.with_logprobs,
        "logprobs",
        [(0, 0), (20, 20), (None, None)],
        [-1, 21, 1.5, True, "2"],
    ),
    (
        inference.with_timeout,
        "timeout",
        [(None, None), (0.5, 0.5), (10, 10.0)],
        [0, 0.0, -1, NAN, "1"],
    ),
    (
        inference.with_stop_tokens,
        "stop_tokens",
        [(2, (2,)), ([1, 2], (1, 2)), ((), ())],
        [-1, [1, -2], True],
    ),
    (
        inference.with_stop,
        "stop",
        [("\n", ("\n",)), (["a", "bc"], ("a", "bc"))],
        ["", ["a", ""], 3, [3]],
    ),
    (inference.with_backend, "backend", [("", ""), ("llama_cpp", "llama_cpp")], [None, 1, b"x"]),
    (inference.with_context_len, "context_len", [(0, 0), (8192, 8192)], [-1, 1.5, None]),
    (inference.with_gpu_layers, "gpu_layers", [(-1, -1), (0, 0), (33, 33)], [-2, 1.5, None]),
    (inference.with_parallel_slots, "parallel_slots", [(0, 0), (4, 4)], [-1, None, "2"]),
    (inference.with_threads, "threads", [(0, 0), (2, 2)], [-1, None, 1.5]),
    (
        inference.with_pooling,
        "pooling",
        [("", ""), *((p, p) for p in POOLINGS)],
        ["max", None],
    ),
    (
        inference.with_constraint_timeout,
        "constraint_timeout",
        [(10, 10.0), (0.5, 0.5)],
        [0, -1, None, float("nan"), float("inf")],
    ),
    (inference.with_constraint_memory_mib, "constraint_memory_mib", [(64, 64)], [0, 15, None]),
    (inference.with_cache_host_mib, "cache_host_mib", [(0, 0), (512, 512)], [-1, None, 1.5]),
    (inference.with_cache_dir, "cache_dir", [("", ""), ("/tmp/kv", "/tmp/kv")], [None, 3]),
    (inference.with_draft_model, "draft_model", [("", ""), ("/m/d.gguf", "/m/d.gguf")], [None, 3]),
    (
        inference.with_flash_attention,
        "flash_attention",
        [(None, None), (True, True), (False, False)],
        [0, 1, "off", "auto"],
    ),
    (inference.with_draft_max, "draft_max", [(0, 0), (8, 8), (32, 32)], [-1, 33, 2.5, True]),
    # Per call, a bool (its load form, a str, is checked in test_speculation).
    (inference.with_speculative, "speculative", [(None, None), (False, False)], [3, "medusa"]),
    (inference.with_cache_disk_mib, "cache_disk_mib", [(1, 1), (8192, 8192)], [0, -1, None]),
    (
        inference.with_adapter_path,
        "adapter_path",
        [("", ""), ("lora.gguf", "lora.gguf")],
        [None, 3],
    ),
    (inference.with_api_key, "api_key", [("", ""), ("sk-x", "sk-x")], [None, 3]),
    (inference.with_json_object, "json_object", [(True, True), (False, False)], [1, None, "yes"]),
    (inference.with_regex, "regex", [("[a-z]+", "[a-z]+"), (None, None)], ["", 3, b"x"]),
    (inference.with_choice, "choice", [(["a", "b"], ("a", "b")), ((), ())], ["ab", [""], [3]]),
    (inference.with_grammar, "grammar", [('start: "a"', 'start: "a"'), (None, None)], ["", 1]),
    (inference.with_thinking, "enable_thinking", [(True, True), (None, None)], [1, "no"]),
    (
        inference.with_tool_choice,
        "tool_choice",
        [("auto", "auto"), ("none", "none")],
        ["x", 1, {}],
    ),
    (
        inference.with_json_schema,
        "json_schema",
        [({"type": "object"}, MappingProxyType({"type": "object"})), (None, None)],
        [[1], "not json", 3],
    ),
    (
        inference.with_tools,
        "tools",
        [([], ()), ([{"name": "f"}], (Tool("f"),))],
        ["f", {"name": "f"}, [{"name": "a b"}]],
    ),
    (
        inference.with_template_vars,
        "template_vars",
        [({"a": 1}, MappingProxyType({"a": 1}))],
        [[1], {1: 2}],
    ),
]


def _name(value: Any) -> str | None:
    return getattr(value, "__name__", None)


def test_every_builder_is_in_the_table() -> None:
    builders = {b.__name__ for b, *_ in BUILDERS} | {"with_cancel"}
    exported = {n for n in inference.__all__ if n.startswith("with_")}
    assert builders == exported


@pytest.mark.parametrize(("builder", "name", "valid", "invalid"), BUILDERS, ids=_name)
def test_builder_accepts_valid_values(builder: Any, name: str, valid: Any, invalid: Any) -> None:
    table = GENERATE_OPTIONS if name in GENERATE_OPTIONS else LOAD_OPTIONS
    for given, stored in valid:
        opt = builder(given)
        assert isinstance(opt, Option)
        assert opt.name == name
        assert opt.target == ("generate" if table is GENERATE_OPTIONS else "load")
        assert opt.value == stored and type(opt.value) is type(stored)
        assert table[name] is builder


@pytest.mark.parametrize(("builder", "name", "valid", "invalid"), BUILDERS, ids=_name)
def test_builder_rejects_invalid_values_naming_option_and_value(
    builder: Any, name: str, valid: Any, invalid: Any
) -> None:
    for value in invalid:
        with pytest.raises(ValueError) as info:
            builder(value)
        message = str(info.value)
        assert message.startswith(f"{name} must be"), message
        shown = repr(value)
        # The offending value is named (for a list, the bad item in it may be).
        assert shown in message or any(repr(v) in message for v in _items(value)), message


def _items(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        yield from value


@pytest.mark.parametrize(("builder", "name", "valid", "invalid"), BUILDERS, ids=_name)
def test_keyword_is_the_same_as_the_builder(
    builder: Any, name: str, valid: Any, invalid: Any
) -> None:
    fold = generate_config if name in GENERATE_OPTIONS else load_config
    for given, _ in valid:
        assert fold(builder(given)) == fold(**{name: given})
    for value in invalid:  # the same validation either way
        with pytest.raises(ValueError, match=f"^{name} must be"):
            fold(**{name: value})


def test_messages_are_specific() -> None:
    with pytest.raises(ValueError, match=r"max_tokens must be >= 0; got -1"):
        inference.with_max_tokens(-1)
    with pytest.raises(ValueError, match=r"temperature must be a finite number; got nan"):
        inference.with_temperature(NAN)
    with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\]; got 1.5"):
        inference.with_top_p(1.5)
    with pytest.raises(ValueError, match=r"max_tokens must be an int; got True"):
        inference.with_max_tokens(True)
    with pytest.raises(ValueError, match=r"repeat_penalty must be a number in \[0.01, 100\]"):
        inference.with_repeat_penalty(0)
    with pytest.raises(ValueError, match=r"timeout must be > 0 seconds \(None means no deadline\)"):
        inference.with_timeout(0.0)


def test_configs_built_by_hand_are_checked_too() -> None:
    # The review's case: once accepted, it generated '' with finish reason "stop".
    with pytest.raises(ValueError, match=r"max_tokens must be >= 0; got -3"):
        GenerateConfig(max_tokens=-3, top_p=7.0, stop=("",))
    with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\]; got 7.0"):
        GenerateConfig(top_p=7.0)
    with pytest.raises(ValueError, match=r"stop must be a non-empty str; got ''"):
        GenerateConfig(stop=("",))
    with pytest.raises(ValueError, match=r"max_tokens must be an int; got '5'"):
        GenerateConfig(max_tokens="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gpu_layers must be >= -1; got -2"):
        LoadConfig(gpu_layers=-2)
    # A config passed among the options is as checked as a keyword.
    with pytest.raises(ValueError, match=r"^seed must be"):
        generate_config(dataclasses.replace(GenerateConfig(), seed=-1))
    # Values are normalised the same way as the builders normalise them.
    assert GenerateConfig(stop="END", temperature=1) == generate_config(stop="END", temperature=1)
    assert type(GenerateConfig(temperature=1).temperature) is float
    assert LoadConfig(adapter_path=Path("/x/a.gguf")).adapter_path == "/x/a.gguf"  # type: ignore[arg-type]


def test_cancel_option() -> None:
    event = threading.Event()
    assert inference.with_cancel(event).value is event
    assert inference.with_cancel(None).value is None
    assert generate_config(cancel=event).cancel is event
    with pytest.raises(ValueError, match=r"cancel must be a threading\.Event"):
        inference.with_cancel(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cancel must be"):
        generate_config(cancel=True)


def test_stop_builders_flatten_their_arguments() -> None:
    assert inference.with_stop("a", ["b", "c"], ("d",)).value == ("a", "b", "c", "d")
    assert inference.with_stop_tokens(1, [2, 3], (4,)).value == (1, 2, 3, 4)
    assert generate_config(stop="END").stop == ("END",)
    assert generate_config(stop_tokens=7).stop_tokens == (7,)


def test_adapter_path_accepts_a_path() -> None:
    assert inference.with_adapter_path(Path("/x/lora.gguf")).value == "/x/lora.gguf"


def test_option_objects_are_frozen() -> None:
    opt = inference.with_max_tokens(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.value = 4  # type: ignore[misc]


def test_option_repr_names_its_builder() -> None:
    assert repr(inference.with_max_tokens(3)) == "with_max_tokens(3)"
    assert repr(inference.with_logits()) == "with_logits(True)"
    assert repr(inference.with_stop_tokens(1, 2)) == "with_stop_tokens((1, 2))"
    assert repr(inference.with_stop("\n")) == "with_stop(('\\n',))"


# -- configs -------------------------------------------------------------------


def test_generate_config_defaults() -> None:
    cfg = GenerateConfig()
    sampling = (cfg.max_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
    assert sampling == (256, 0.0, 0, 0.0, 0.0) and cfg.repeat_penalty == 1.0
    assert cfg.stop == () and cfg.stop_tokens == ()
    assert cfg.seed is None and cfg.timeout is None and cfg.cancel is None
    assert cfg.return_logits is False
    assert generate_config() == cfg


def test_load_config_defaults() -> None:
    cfg = LoadConfig()
    assert cfg.backend == ""
    assert cfg.context_len == 0
    assert cfg.gpu_layers == -1
    assert cfg.parallel_slots == 0
    assert cfg.adapter_path == ""
    assert cfg.api_key == ""
    assert load_config() == cfg


def test_option_tables_match_config_fields() -> None:
    assert set(GENERATE_OPTIONS) == {f.name for f in dataclasses.fields(GenerateConfig)}
    assert set(LOAD_OPTIONS) == {f.name for f in dataclasses.fields(LoadConfig)}
    # One name is both: speculative= at load ("ngram") and per call (False),
    # as speculative decoding's contract names it; its builder goes by type.
    assert set(GENERATE_OPTIONS) & set(LOAD_OPTIONS) == {"speculative"}


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        GenerateConfig().max_tokens = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoadConfig().backend = "x"  # type: ignore[misc]


def test_unknown_keyword_is_a_type_error_listing_valid_names() -> None:
    with pytest.raises(TypeError) as info:
        generate_config(max_tokenz=3)
    message = str(info.value)
    assert "'max_tokenz'" in message
    for name in GENERATE_OPTIONS:
        assert name in message
    with pytest.raises(TypeError) as info:
        load_config(ctx=3)
    for name in LOAD_OPTIONS:
        assert name in str(info.value)


def test_load_and_generate_options_do_not_mix() -> None:
    with pytest.raises(TypeError, match=r"with_backend\('x'\) is a load option"):
        generate_config(inference.with_backend("x"))
    with pytest.raises(TypeError, match=r"with_max_tokens\(3\) is a generate option"):
        load_config(inference.with_max_tokens(3))
    with pytest.raises(TypeError, match="unknown generate option 'backend'"):
        generate_config(backend="x")
    with pytest.raises(TypeError, match="unknown load option 'max_tokens'"):
        load_config(max_tokens=3)
    with pytest.raises(TypeError, match="expected an option from a with_\\* builder"):
        generate_config(LoadConfig())
    with pytest.raises(TypeError, match="expected an option"):
        load_config(GenerateConfig())
    with pytest.raises(TypeError, match="expected an option"):
        generate_config(3)  # type: ignore[arg-type]


def test_later_settings_win_and_keywords_win_over_options() -> None:
    assert (
        generate_config(inference.with_max_tokens(1), inference.with_max_tokens(2)).max_tokens == 2
    )
    assert generate_config(inference.with_max_tokens(1), max_tokens=5).max_tokens == 5
    cfg = GenerateConfig(max_tokens=9, temperature=0.5)
    folded = generate_config(inference.with_top_k(3), cfg, inference.with_seed(1))
    assert (folded.max_tokens, folded.temperature, folded.top_k, folded.seed) == (9, 0.5, 0, 1)
    assert generate_config(cfg) == cfg
    assert generate_config(base=cfg, seed=4) == dataclasses.replace(cfg, seed=4)
    assert load_config(LoadConfig(backend="a"), backend="b").backend == "b"


def test_cancel_event_is_not_compared_or_shown() -> None:
    cfg = generate_config(cancel=threading.Event())
    assert cfg == GenerateConfig()
    assert "cancel" not in repr(cfg)


def test_api_key_is_never_shown() -> None:
    secret = "sk-very-secret-123"
    cfg = load_config(inference.with_api_key(secret), backend="openai")
    assert cfg.api_key == secret
    for text in (
        repr(cfg),
        str(cfg),
        repr(inference.with_api_key(secret)),
        repr(LoadConfig(api_key=secret)),
    ):
        assert secret not in text, text
    assert repr(inference.with_api_key(secret)) == "with_api_key('***')"
    assert "backend='openai'" in repr(cfg)


# -- environment variables ---------------------------------------------------------


def test_environment_variable_names() -> None:
    assert env.INFERENCE_BACKEND == "INFERENCE_BACKEND"
    assert env.INFERENCE_LOG == "INFERENCE_LOG"
    assert env.INFERENCE_API_KEY == "INFERENCE_API_KEY"
    assert env.OPENAI_API_KEY == "OPENAI_API_KEY"
    assert env.INFERENCE_CACHE_DIR == "INFERENCE_CACHE_DIR"
    assert env.LLAMA_CPP_LIB_PATH == "LLAMA_CPP_LIB_PATH"
    for name in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        assert getattr(env, name) == name
    # Every name is documented in the module docstring.
    for name in env.__all__:
        if name.isupper():
            assert f"``{name}``" in (env.__doc__ or "")


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFERENCE_CACHE_DIR", str(tmp_path / "c"))
    assert env.cache_dir("mlx", "m1") == tmp_path / "c" / "mlx" / "m1"
    monkeypatch.delenv("INFERENCE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert env.cache_dir() == tmp_path / "xdg" / "inference"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert env.cache_dir("x") == tmp_path / "home" / ".cache" / "inference" / "x"
    assert not (tmp_path / "home").exists(), "cache_dir must not create anything"


@pytest.fixture
def inference_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("inference")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("debug", logging.DEBUG),
        ("WARNING", logging.WARNING),
        (" error ", logging.ERROR),
        ("chatty", logging.INFO),
        ("basic_format", logging.INFO),
        ("10", logging.INFO),
    ],
)
def test_configure_logging(
    monkeypatch: pytest.MonkeyPatch, inference_logger: logging.Logger, value: str, level: int
) -> None:
    inference_logger.setLevel(logging.NOTSET)
    monkeypatch.setenv("INFERENCE_LOG", value)
    env.configure_logging()
    assert inference_logger.level == level
    assert env.engine_logs_enabled() is (level == logging.DEBUG)


def test_configure_logging_leaves_logging_alone_without_the_variable(
    inference_logger: logging.Logger,
) -> None:
    inference_logger.setLevel(logging.NOTSET)
    env.configure_logging()
    assert inference_logger.level == logging.NOTSET
    assert not env.engine_logs_enabled()
    inference_logger.setLevel(logging.DEBUG)  # the application asked for debug
    assert env.engine_logs_enabled()


def test_the_prefix_cache_s_host_budget_defaults_to_its_constant() -> None:
    from inference.options import CACHE_DISK_MIB, CACHE_HOST_MIB, LoadConfig

    assert LoadConfig().cache_host_mib == CACHE_HOST_MIB == 256  # docs/backends.md says so
    assert LoadConfig().cache_disk_mib == CACHE_DISK_MIB == 4096
