"""The ``inference`` command, end to end on the fake backend.

Most tests call ``inference.cli.main`` in this process with the fake backend
registered alone; a few run ``python -m inference`` in a child, with the fake
installed through an entry point.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import inference
from inference import GenerateConfig, LoadConfig, registry
from inference.cli import CHAT_COMMANDS, main
from inference.testing import FakeBackend

REPLY = "Hello from the fake. "


class Run:
    """The outcome of one CLI call."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str, stdin: str = "") -> Run:
        capsys.readouterr()
        out = io.StringIO()
        code = main(list(argv), stdout=out, stdin=io.StringIO(stdin))
        captured = capsys.readouterr()
        assert captured.out == "", "everything goes to the stdout given to main()"
        return Run(code, out.getvalue(), captured.err)

    return run


# -- backends --------------------------------------------------------------------------


def test_backends(cli: Any, fake_backend: FakeBackend) -> None:
    registry.register_backend(
        FakeBackend("off", available=False, reason="no GPU here", priority=80, formats=("gguf",))
    )
    result = cli("backends")
    assert (result.code, result.err) == (0, "")
    lines = result.out.splitlines()
    assert lines[0].split() == ["NAME", "AVAILABLE", "PRIORITY", "FORMATS", "REASON"]
    assert lines[1].split(None, 4) == ["off", "no", "80", "gguf", "no GPU here"]
    assert lines[2].split(None, 4) == [
        "fake",
        "yes",
        "0",
        "fake,gguf",
        "always available (fake backend for tests)",
    ]
    assert len(lines) == 3


def test_backends_json(cli: Any, fake_backend: FakeBackend) -> None:
    result = cli("backends", "--json")
    assert result.code == 0
    assert result.json() == [
        {
            "name": "fake",
            "available": True,
            "reason": "always available (fake backend for tests)",
            "priority": 0,
            "formats": ["fake", "gguf"],
            "broken": False,
            "aliases": [],
            "extra": "",
        }
    ]


def test_backends_when_none_is_installed(cli: Any, clean_registry: Any) -> None:
    result = cli("backends")
    assert result.code == 0
    assert result.out == "no backends installed; try: pip install 'inference[llamacpp]'\n"
    assert cli("backends", "--json").json() == []


# -- discover ----------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path, gguf_factory: Any) -> Path:
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    gguf_factory(folder / "tiny.gguf")
    gguf_factory(folder / "sub" / "other.gguf", name="Other", context_length=256)
    (folder / "corrupt.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    (folder / "notes.txt").write_text("not a model")
    return folder


def test_discover(cli: Any, model_dir: Path) -> None:
    result = cli("discover", str(model_dir))
    assert (result.code, result.err) == (0, "")
    corrupt, other, tiny = result.out.splitlines()
    assert corrupt.startswith(f"{model_dir}/corrupt.gguf  [gguf]  error: {model_dir}/corrupt.gguf")
    assert "truncated" in corrupt
    quant = "Q4_0 (7.56 bits/weight)"  # the F32 norms weigh in a file this small
    assert (
        other == f"{model_dir}/sub/other.gguf  [gguf]  llama  {quant}  ctx 256  1 file(s)  0.0 MiB"
    )
    assert tiny == f"{model_dir}/tiny.gguf  [gguf]  llama  {quant}  ctx 128  1 file(s)  0.0 MiB"


def test_discover_json(cli: Any, model_dir: Path) -> None:
    found = {Path(m["path"]).name: m for m in cli("discover", str(model_dir), "--json").json()}
    assert set(found) == {"corrupt.gguf", "other.gguf", "tiny.gguf"}
    assert found["tiny.gguf"]["architecture"] == "llama"
    assert found["tiny.gguf"]["name"] == "Tiny"
    assert (found["tiny.gguf"]["quant_bits"], found["tiny.gguf"]["context_length"]) == (4, 128)
    assert found["tiny.gguf"]["extra"] == []
    assert found["other.gguf"]["context_length"] == 256
    ((key, message),) = found["corrupt.gguf"]["extra"]
    assert key == "error" and "truncated" in message
    assert found["corrupt.gguf"]["architecture"] == ""


def test_discover_an_empty_folder(cli: Any, tmp_path: Path) -> None:
    result = cli("discover", str(tmp_path))
    assert (result.code, result.out) == (0, f"no models found in {tmp_path}\n")


# -- info ------------------------------------------------------------------------------------


def test_info(cli: Any, fake_backend: FakeBackend, tiny_gguf: Path) -> None:
    result = cli("info", str(tiny_gguf), "--context-len", "64")
    assert (result.code, result.err) == (0, "")
    fields = dict(
        line.split(None, 1) if " " in line.strip() else (line.strip(), "")
        for line in result.out.splitlines()
    )
    assert fields["architecture"] == "fake"
    assert fields["backend"] == "fake"
    assert fields["path"] == str(tiny_gguf)
    assert fields["context_length"] == "64"
    assert fake_backend.loads[-1].context_len == 64
    caps = result.out.split("capabilities:\n")[1].splitlines()
    assert "  logprobs          True" in caps and "  constraints       none" in caps
    assert "  parallel_streams  1" in caps and "  context_length    64" in caps


def test_info_json(cli: Any, fake_backend: FakeBackend, tiny_gguf: Path) -> None:
    info = cli("info", str(tiny_gguf), "--json", "--backend", "fake").json()
    assert info["architecture"] == "fake" and info["vocab_size"] == 257
    assert info["path"] == str(tiny_gguf)
    # The fake model ships no chat template: its notes say which one it got.
    assert info["notes"] == ["chat template: the chatml format (the model ships none)"]
    assert fake_backend.loads[-1].backend == "fake"
    with fake_backend.load_model(str(tiny_gguf)) as model:
        assert info["capabilities"] == model.capabilities.as_dict()
    assert info["capabilities"]["scoring"] is True and info["capabilities"]["constraints"] == []


# -- generate ----------------------------------------------------------------------------


def test_generate_streams_the_text(cli: Any, fake_backend: FakeBackend, tiny_gguf: Path) -> None:
    result = cli("generate", str(tiny_gguf), "Once upon a time", "--max-tokens", "10")
    assert (result.code, result.err) == (0, "")
    assert result.out == REPLY[:10] + "\n"


def test_generate_with_stop_and_sampling(
    cli: Any, fake_backend: FakeBackend, tiny_gguf: Path
) -> None:
    assert cli("generate", str(tiny_gguf), "x", "--stop", "fake").out == "Hello from the \n"
    first = cli(
        "generate", str(tiny_gguf), "x", "--temperature", "0.8", "--seed", "3", "--max-tokens", "12"
    ).out
    again = cli(
        "generate", str(tiny_gguf), "x", "--temperature", "0.8", "--seed", "3", "--max-tokens", "12"
    ).out
    assert first == again and first != REPLY[:12] + "\n"


def test_generate_json(cli: Any, fake_backend: FakeBackend, tiny_gguf: Path) -> None:
    data = cli("generate", str(tiny_gguf), "Hi", "--max-tokens", "5", "--json").json()
    assert data["text"] == "Hello"
    assert data["tokens"] == [{"id": ord(c), "text": c} for c in "Hello"]
    assert data["finish_reason"] == "length"
    metrics = data["metrics"]
    assert metrics["prompt_tokens"] == 2 and metrics["generated_tokens"] == 5
    assert {"time_to_first_token", "decode_tokens_per_second", "peak_memory_bytes"} <= set(metrics)


# -- chat --------------------------------------------------------------------------------


@pytest.fixture
def counting_chat(clean_registry: Any) -> None:
    """A fake whose reply says how many user turns and system messages it saw."""

    def reply(prompt: str) -> str:
        users = prompt.count("<|im_start|>user")
        system = "+system" if "<|im_start|>system" in prompt else ""
        return f"{users} turn(s){system}"

    registry.register_backend(FakeBackend(formats=("gguf",), reply=reply, repeat=False))


def test_chat_reads_lines_until_exit(cli: Any, counting_chat: None, tiny_gguf: Path) -> None:
    stdin = "Hello\n\n   \nHow are you?\n/reset\nAfresh\n/exit\nnever read\n"
    result = cli("chat", str(tiny_gguf), stdin=stdin)
    assert (result.code, result.err) == (0, "")
    # Blank lines are skipped, /reset forgets the history, /exit stops reading.
    assert result.out.splitlines() == ["1 turn(s)", "2 turn(s)", "1 turn(s)"]


def test_chat_with_a_system_message_and_json(
    cli: Any, counting_chat: None, tiny_gguf: Path
) -> None:
    stdin = "Hi\n/reset\nHi again\n/quit\n"
    result = cli("chat", str(tiny_gguf), "--system", "Be brief.", "--json", stdin=stdin)
    assert result.code == 0
    replies = [json.loads(line) for line in result.out.splitlines()]
    assert [r["reply"] for r in replies] == ["1 turn(s)+system", "1 turn(s)+system"]
    assert all(r["finish_reason"] == "stop" for r in replies)
    assert replies[0]["metrics"]["generated_tokens"] > 0


def test_chat_ends_at_end_of_input(cli: Any, counting_chat: None, tiny_gguf: Path) -> None:
    result = cli("chat", str(tiny_gguf), stdin="one\ntwo")
    assert result.out.splitlines() == ["1 turn(s)", "2 turn(s)"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_chat_at_a_terminal_has_a_banner_commands_and_marks_a_cut_reply(
    counting_chat: None, tiny_gguf: Path
) -> None:
    out = io.StringIO()
    stdin = _Terminal("/help\n/nope\nHi\n/reset\nHi\n/exit\n")
    assert main(["chat", str(tiny_gguf), "--max-tokens", "3"], stdout=out, stdin=stdin) == 0
    lines = out.getvalue().replace("> ", "").splitlines()
    assert lines[0] == f"{tiny_gguf} on fake; /help for the commands, /exit or Ctrl-D to leave"
    assert lines[1:5] == ["commands:", *(f"  {n:<8} {w}" for n, w in CHAT_COMMANDS.items())]
    assert lines[5].startswith("unknown command /nope; commands:")  # not sent to the model
    assert "1 t\n[cut at 3 tokens: --max-tokens]" in out.getvalue()
    assert "(the conversation is forgotten)" in lines
    assert out.getvalue().count("1 t\n[cut") == 2  # /reset: the second Hi is a first turn again


def test_generation_flags_come_from_the_options(
    cli: Any, fake_backend: FakeBackend, tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in fields(GenerateConfig):
        if field.name not in ("cancel", "tools", "template_vars"):
            assert "--" + field.name.replace("_", "-") in text, field.name
    assert "--top-p TOP_P Nucleus sampling mass in [0, 1]; 0 (or 1) turns it off" in text
    assert "(default: 256)" in text and "-o KEY=VALUE" in text
    # Every option reachable: a flag, or -o with a JSON value; the config checks them.
    once = cli("generate", str(tiny_gguf), "x", "--min-p", "0.1", "-o", "max_tokens=3")
    assert (once.code, once.out) == (0, REPLY[:3] + "\n")
    bad = cli("generate", str(tiny_gguf), "x", "-o", "top_k=-2")
    assert (bad.code, bad.err) == (1, "inference: error: top_k must be >= 0; got -2\n")
    unknown = cli("generate", str(tiny_gguf), "x", "-o", "nope=1")
    assert unknown.code == 1 and "nope" in unknown.err
    assert cli("generate", str(tiny_gguf), "x", "-o", "novalue").err.startswith(
        "inference: error: -o takes KEY=VALUE"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"inference {inference.__version__}\n"


# -- bench ---------------------------------------------------------------------------------


def test_bench_json(cli: Any, fake_backend: FakeBackend, tiny_gguf: Path) -> None:
    result = cli("bench", str(tiny_gguf), "--runs", "2", "--max-tokens", "4", "--json")
    assert (result.code, result.err) == (0, "")
    summary = result.json()
    assert set(summary) == {
        "backend",
        "runs",
        "prompt_tokens",
        "generated_tokens",
        "time_to_first_token_s",
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "peak_memory_bytes",
    }
    assert summary["backend"] == "fake"
    assert summary["runs"] == 2
    assert summary["generated_tokens"] == 4
    assert summary["prompt_tokens"] > 0
    assert summary["peak_memory_bytes"] == 2048
    assert summary["time_to_first_token_s"] >= 0 and summary["decode_tokens_per_second"] >= 0


def test_bench_text(cli: Any, fake_backend: FakeBackend, tiny_gguf: Path) -> None:
    result = cli("bench", str(tiny_gguf), "--runs", "2", "--max-tokens", "4", "--prompt", "Hi")
    assert result.code == 0
    lines = result.out.splitlines()
    # Each run's prompt is "Run N. Hi" (9 byte tokens), so no prompt cache is reused.
    assert lines[0] == "backend fake, 2 runs (median), 9 prompt tokens, 4 generated"
    assert [line.split()[0] for line in lines[1:]] == ["time", "prefill", "decode", "peak"]
    assert lines[-1].split()[-2:] == ["0.0", "MiB"]


# -- errors ---------------------------------------------------------------------------------


def test_a_missing_model_is_one_line(cli: Any, fake_backend: FakeBackend, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    for command in ("info", "generate", "chat", "bench"):
        argv = [command, str(missing)] + (["Hi"] if command == "generate" else [])
        result = cli(*argv)
        assert result.code == 1
        assert result.out == ""
        assert result.err == f"inference: error: {missing}: no such file or directory\n"


def test_an_unknown_backend_is_one_line(
    cli: Any, fake_backend: FakeBackend, tiny_gguf: Path
) -> None:
    result = cli("generate", str(tiny_gguf), "Hi", "--backend", "nope")
    assert result.code == 1
    assert result.err == (
        "inference: error: backend 'nope' (backend option) not found: it is either misspelled"
        " or not installed. Registered: fake\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "{model}", "Hi", "--max-tokens", "-1"], "max_tokens must be >= 0; got -1"),
        (
            ["generate", "{model}", "Hi", "--top-p", "2"],
            "top_p must be a number in [0, 1]; got 2.0",
        ),
        (["bench", "{model}", "--runs", "0"], "--runs must be at least 1"),
        (["info", "{model}", "--context-len", "-5"], "context_len must be >= 0; got -5"),
        (["discover", "{missing}"], "{missing}: no such file or directory"),
    ],
)
def test_bad_values_are_one_line(
    cli: Any, fake_backend: FakeBackend, tiny_gguf: Path, argv: list[str], message: str
) -> None:
    missing = str(tiny_gguf.parent / "nowhere")
    argv = [a.format(model=tiny_gguf, missing=missing) for a in argv]
    result = cli(*argv)
    assert result.code == 1
    assert result.err == f"inference: error: {message.format(missing=missing)}\n"


def test_a_backends_own_failure_is_one_line_too(
    cli: Any, clean_registry: Any, tiny_gguf: Path
) -> None:
    class Crashing(FakeBackend):
        def load_model(self, path: Any, *opts: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the GPU fell off the bus")

    registry.register_backend(Crashing(formats=("gguf",)))
    result = cli("info", str(tiny_gguf))
    assert result.code == 1
    assert result.err == "inference: error: RuntimeError: the GPU fell off the bus\n"


def test_bad_usage_exits_2(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


# -- as a program --------------------------------------------------------------------------


def test_python_dash_m_help(child: Any) -> None:
    proc = child.run(
        "import runpy; runpy.run_module('inference', run_name='__main__')", args=("--help",)
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: inference ")
    for command in ("backends", "discover", "info", "generate", "chat", "bench"):
        assert command in proc.stdout


@pytest.fixture
def fake_site(tmp_path: Path) -> Path:
    """The "good" test plugin installed as a distribution's entry point."""
    info = tmp_path / "site" / "inference_cli_fake-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: inference-cli-fake\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[inference.backends]\ngood = inference_test_plugins:GoodBackend\n"
    )
    return info.parent


def program(child: Any, site: Path, *argv: str, **env: str) -> Any:
    code = "import runpy; runpy.run_module('inference', run_name='__main__')"
    return child.run(code, paths=(site, child.plugins), isolated=True, args=argv, **env)


def test_the_program_end_to_end(child: Any, fake_site: Path, tiny_gguf: Path) -> None:
    backends = program(child, fake_site, "backends")
    assert backends.returncode == 0, backends.stderr
    assert backends.stdout.splitlines()[1].split()[:3] == ["good", "yes", "500"]
    generated = program(child, fake_site, "generate", str(tiny_gguf), "Hi", "--max-tokens", "6")
    assert (generated.returncode, generated.stdout, generated.stderr) == (0, "[good]\n", "")


def test_the_program_fails_in_one_line(child: Any, fake_site: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.gguf")
    proc = program(child, fake_site, "generate", missing, "Hi")
    assert proc.returncode == 1
    assert proc.stderr == f"inference: error: {missing}: no such file or directory\n"
    assert proc.stdout == ""


def test_inference_log_debug_shows_the_traceback(
    child: Any, fake_site: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.gguf")
    proc = program(child, fake_site, "generate", missing, "Hi", INFERENCE_LOG="debug")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.endswith(f"inference: error: {missing}: no such file or directory\n")


def test_the_serve_key_comes_from_the_flag_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from inference import env
    from inference.cli import _serve_key

    key_file = tmp_path / "key"
    key_file.write_text("from-file\nignored\n")
    monkeypatch.setenv(env.INFERENCE_SERVE_API_KEY, " from-env ")
    args = argparse.Namespace(api_key="", api_key_file="")
    assert _serve_key(args) == "from-env"
    args.api_key_file = str(key_file)
    assert _serve_key(args) == "from-file"
    args.api_key = "from-flag"
    assert _serve_key(args) == "from-flag"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(inference.InferenceError, match="is empty"):
        _serve_key(argparse.Namespace(api_key="", api_key_file=str(empty)))
    with pytest.raises(inference.InferenceError, match="cannot read"):
        _serve_key(argparse.Namespace(api_key="", api_key_file=str(tmp_path / "none")))


def test_the_speculation_flags_are_load_options() -> None:
    from inference.cli import _load_options, _parser

    args = _parser().parse_args(["serve", "m.gguf", "--draft-model", "d.gguf"])
    assert _load_options(args)["draft_model"] == "d.gguf"
    args = _parser().parse_args(["generate", "m.gguf", "hi", "--speculative", "ngram"])
    options = _load_options(args)
    assert options["speculative"] == "ngram" and "draft_model" not in options
    both = ["serve", "m.gguf", "--draft-model", "d.gguf", "--speculative", "ngram"]
    assert LoadConfig(**_load_options(_parser().parse_args(both))).speculation == "ngram+draft"
    with pytest.raises(SystemExit):
        _parser().parse_args(["generate", "m.gguf", "hi", "--speculative", "medusa"])


def test_the_flash_attention_flag_is_a_load_option() -> None:
    from inference.cli import _load_options, _parser

    for flag, value in (("on", True), ("off", False)):
        args = _parser().parse_args(["serve", "m.gguf", "--flash-attention", flag])
        assert _load_options(args)["flash_attention"] is value
    # Not given: the engine's choice, so the option is left out.
    assert "flash_attention" not in _load_options(_parser().parse_args(["info", "m.gguf"]))
    with pytest.raises(SystemExit):
        _parser().parse_args(["info", "m.gguf", "--flash-attention", "auto"])
