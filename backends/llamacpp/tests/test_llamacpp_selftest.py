"""The engine self-test and the build configuration: a build that faults on
this CPU makes the backend unavailable with the fix, and never kills the caller."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from inference_llamacpp import LlamaCppBackend, build, selftest

from inference import cli
from inference.gguf import read_header

OK_COMMAND = [sys.executable, "-c", f"print({selftest._OK_LINE!r})"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache directory and an empty in-process memo."""
    root = tmp_path / "cache"
    monkeypatch.setenv("INFERENCE_CACHE_DIR", str(root))
    monkeypatch.setattr(selftest, "_memo", {})
    return root


def _fake_engine(directory: Path) -> Path:
    """A llama.cpp "build" whose libraries die of SIGILL as they are loaded,
    as a build for a newer CPU (or AMX on a hypervisor that faults) does."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the faulting stand-in engine")
    directory.mkdir(parents=True, exist_ok=True)
    src = directory / "trap.c"
    src.write_text("__attribute__((constructor)) static void trap(void) { __builtin_trap(); }\n")
    for name in ("libllama.so", "libggml.so", "libggml-base.so"):
        subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(directory / name)], check=True)
    return directory


# -- the build configuration ----------------------------------------------------

AVX512_AMX = frozenset(
    [
        "sse4_2",
        "avx",
        "f16c",
        "fma",
        "bmi2",
        "avx2",
        "avx_vnni",
        "avx512f",
        "avx512cd",
        "avx512vl",
        "avx512dq",
        "avx512bw",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ]
)
AVX2_ONLY = frozenset(["sse4_2", "avx", "f16c", "fma", "bmi2", "avx2"])


def _options(args: str) -> dict[str, str]:
    pairs = (a.removeprefix("-D").split("=", 1) for a in args.split())
    return dict((k, v) for k, v in pairs)


def test_cmake_args_keep_avx512_and_leave_amx_off() -> None:
    got = _options(build.cmake_args(AVX512_AMX))
    assert got["GGML_NATIVE"] == "OFF"
    for option in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"):
        assert got[option] == "ON", option
    for option in build.AMX_OPTIONS:
        assert got[option] == "OFF", option


def test_cmake_args_follow_what_the_cpu_reports() -> None:
    got = _options(build.cmake_args(AVX2_ONLY))
    assert got["GGML_AVX2"] == "ON" and got["GGML_FMA"] == "ON"
    assert got["GGML_AVX512"] == "OFF" and got["GGML_AVX_VNNI"] == "OFF"
    # AVX-512 needs all five of the instruction sets ggml compiles it with.
    assert _options(build.cmake_args(AVX2_ONLY | {"avx512f"}))["GGML_AVX512"] == "OFF"
    assert build.cmake_args(frozenset()) == ""  # nothing known: ggml's defaults


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 amx_tile\nbugs\t\t: x\n")
    assert build.cpu_flags(str(info)) == {"fpu", "sse4_2", "avx2", "amx_tile"}
    assert build.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_reinstall_command_is_exact() -> None:
    command = build.reinstall_command("-DGGML_NATIVE=OFF -DGGML_AVX2=ON", "llama-cpp-python==1.2")
    assert command == (
        "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON' pip install --force-reinstall "
        "--no-cache-dir --no-deps llama-cpp-python==1.2"
    )
    assert build.reinstall_command("", "x") == (
        "pip install --force-reinstall --no-cache-dir --no-deps x"
    )


def test_build_module_runs_as_a_plain_file() -> None:
    # The scripts run it before anything is installed: standard library only.
    path = Path(build.__file__)
    done = subprocess.run(
        [sys.executable, "-I", str(path), "cmake-args"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == build.cmake_args()


# -- the self-test ----------------------------------------------------------------


def test_self_test_model_is_a_valid_gguf(tmp_path: Path) -> None:
    path = selftest._tiny_model(str(tmp_path / "t.gguf"))
    header = read_header(path)
    types = {t.type_name for t in header.tensors}
    assert {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"} <= types
    assert header.architecture == "llama" and header.vocab_size == 259


def test_real_build_passes_in_a_child(cache: Path) -> None:
    result = selftest.run_selftest()
    assert result == selftest.Verdict(True), result.reason


def test_sigill_engine_is_unavailable_with_the_fix(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(_fake_engine(tmp_path / "lib")))
    backend = LlamaCppBackend()
    assert backend.available() is False  # and this process is still alive
    reason = backend.reason
    assert "dies with SIGILL (illegal instruction" in reason
    assert str(tmp_path / "lib") in reason
    assert "CMAKE_ARGS=" in reason and "pip install --force-reinstall --no-cache-dir" in reason
    assert "\n" not in reason
    if build.cmake_args():  # Linux x86-64: the fix turns AMX off
        assert "-DGGML_AMX_TILE=OFF" in reason
    out = io.StringIO()
    assert cli.main(["backends"], stdout=out) == 0
    (row,) = [line for line in out.getvalue().splitlines() if line.startswith("llama_cpp ")]
    assert " no " in row and "SIGILL" in row


def test_verdict_is_cached_per_build_and_machine(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _fake_engine(tmp_path / "lib")
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(lib))
    first = selftest.verdict()
    assert not first.ok and not first.cached
    (record,) = (cache / "selftest").glob("llama_cpp-*.json")
    saved = json.loads(record.read_text())
    assert saved["ok"] is False and saved["identity"]["lib_dir"] == str(lib.resolve())
    # Another process (an empty memo) reads the verdict, even with an engine
    # that would now pass: no child runs.
    monkeypatch.setattr(selftest, "_memo", {})
    again = selftest.verdict(command=OK_COMMAND)
    assert again.cached and again.reason == first.reason
    # A rebuilt library is a new identity: the test runs again.
    os.utime(lib / "libllama.so", ns=(1, 1))
    monkeypatch.setattr(selftest, "_memo", {})
    rebuilt = selftest.verdict(command=OK_COMMAND)
    assert rebuilt.ok and not rebuilt.cached
    assert len(list((cache / "selftest").glob("llama_cpp-*.json"))) == 2


def test_a_failing_child_is_reported_with_its_message(cache: Path) -> None:
    command = [sys.executable, "-c", "raise SystemExit('libggml-cpu.so: cannot open')"]
    result = selftest.run_selftest(command=command)
    assert not result.ok
    assert "exit 1: libggml-cpu.so: cannot open" in result.reason


def test_a_hanging_child_is_not_cached(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(_fake_engine(tmp_path / "lib")))
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    result = selftest.verdict(command=hang, timeout=0.5)
    assert not result.ok and result.retry and "did not finish" in result.reason
    assert not list((cache / "selftest").glob("llama_cpp-*.json"))
    # Not kept in memory either: the next question runs the test again.
    assert selftest.verdict(command=OK_COMMAND).ok


def test_rocm_is_unavailable_on_a_faulting_build(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_rocm import RocmBackend
    from inference_rocm.detect import Detection

    found = Detection(True, "AMD GPU (stand-in detection)", (), None, None)
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(_fake_engine(tmp_path / "lib")))
    backend = RocmBackend(detector=lambda: found)
    assert backend.available() is False
    assert "SIGILL" in backend.reason
    # Its fix keeps the HIP build.
    assert "rebuild: CMAKE_ARGS='-DGGML_HIP=on" in backend.reason


NATIVE_LIB = os.environ.get("INFERENCE_NATIVE_ENGINE_LIB", "")


def _native_should_fault() -> bool:
    """Whether a GGML_NATIVE build faults here: on this project's machines
    (a hypervisor that reports AMX, with AVX-512 VNNI, so that ggml compiles
    its AMX kernel) it does; without AMX it runs. Another machine may say
    otherwise with INFERENCE_NATIVE_ENGINE_EXPECT=ok or =faults."""
    said = os.environ.get("INFERENCE_NATIVE_ENGINE_EXPECT", "")
    if said:
        return said == "faults"
    return {"amx_int8", "avx512_vnni", "hypervisor"} <= build.cpu_flags()


@pytest.mark.skipif(not NATIVE_LIB, reason="no GGML_NATIVE engine build (scripts/native_engine.py)")
def test_native_build_verdict_on_this_cpu(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing: llama.cpp's CPU library compiled with GGML_NATIVE for
    this very CPU, the build a plain ``pip install llama-cpp-python`` makes.
    Where it faults, the backend must say so, and this process live on."""
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", NATIVE_LIB)
    backend = LlamaCppBackend()
    ok = backend.available()
    if _native_should_fault():
        assert not ok, "the native build passed its self-test on a CPU where it should fault"
        assert (
            "dies with SIG" in backend.reason and "pip install --force-reinstall" in backend.reason
        )
    else:
        assert ok, backend.reason


def test_child_survives_nothing_in_the_parent(tmp_path: Path) -> None:
    # The parent never imports the engine for the verdict.
    code = textwrap.dedent(
        """
        import sys
        from inference_llamacpp import selftest
        selftest.engine_library_dir()
        print("llama_cpp" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
