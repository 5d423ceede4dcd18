"""Make a GGML_NATIVE variant of the installed llama.cpp engine, for the
self-test's real-fault test; print its library directory.

    .venv/bin/python scripts/native_engine.py            # GGML_NATIVE, as pip builds it
    .venv/bin/python scripts/native_engine.py --no-amx   # the same without AMX

Only ggml's CPU library depends on the build's instruction sets, so this
compiles that one target from the installed llama-cpp-python version's own
source with ``-DGGML_NATIVE=ON`` (about a minute on 2 cores) and puts it
beside copies of the installed engine's other libraries. Point
``LLAMA_CPP_LIB_PATH`` at the directory and llama-cpp-python loads it. On a
CPU that reports AMX and faults in ggml's AMX kernel (this project's
machines), that build is the one that used to kill the process.

``--no-amx`` builds with the compiler's own expansion of ``-march=native``
less its AMX flags: the closest native build that runs on such a CPU, which
``bench/bench_build.py`` sets against the scripts' own configuration.

Kept under ``INFERENCE_CACHE_DIR/native-engine/<version>[-no-amx]``. Linux
only; prints nothing where cmake is missing (the test then skips).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src")]

from inference.env import cache_dir  # noqa: E402  (standard library only)


def _quiet(argv: list[str]) -> None:
    """Run a build step; show its output only if it fails (ggml's warnings are many)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"native_engine: {argv[0]} {argv[1]} failed (exit {done.returncode})")


def _native_flags_without_amx() -> list[str]:
    """What the compiler makes of ``-march=native`` (its own expansion into
    ``-march=`` and ``-m`` flags), without the AMX ones. (``-mno-amx-*`` after
    ``-march=native`` does not work: the expansion comes after it.)"""
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    done = subprocess.run(
        [cc, "-march=native", "-E", "-v", "-"], input="", capture_output=True, text=True
    )
    line = next(ln for ln in done.stderr.splitlines() if "cc1" in ln and "-march=" in ln)
    return [
        flag
        for flag in line.split()
        if flag.startswith(("-march=", "-mtune=", "-m")) and not flag.startswith("-mamx")
    ]


def main() -> int:
    if not sys.platform.startswith("linux") or shutil.which("cmake") is None:
        print("native_engine: needs Linux and cmake; skipped", file=sys.stderr)
        return 0
    import llama_cpp  # the installed engine, whose other libraries are reused

    no_amx = "--no-amx" in sys.argv[1:]
    version = importlib.metadata.version("llama-cpp-python")
    out = cache_dir("native-engine", version + ("-no-amx" if no_amx else ""))
    configure = ["-DGGML_NATIVE=ON"]
    if no_amx:
        flags = " ".join(_native_flags_without_amx())
        configure = ["-DGGML_NATIVE=OFF", f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    lib = out / "lib"
    if (lib / "libggml-cpu.so").exists():
        print(lib)
        return 0
    installed = Path(llama_cpp.__file__).parent / "lib"
    with tempfile.TemporaryDirectory(prefix="inference-native-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(work),
                f"llama-cpp-python=={version}",
            ],
            check=True,
        )
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        build = work / "build"
        print(f"native_engine: compiling ggml-cpu {version}: {configure}", file=sys.stderr)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        _quiet(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                *configure,
                "-DBUILD_SHARED_LIBS=ON",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_TOOLS=OFF",
                "-DLLAMA_BUILD_SERVER=OFF",
            ]
        )
        _quiet(["cmake", "--build", str(build), "--target", "ggml-cpu", "-j", jobs])
        (native,) = (p for p in (build / "bin").glob("libggml-cpu.so.*") if not p.is_symlink())
        staging = out / "lib.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(installed, staging, symlinks=True)
        for name in [p.name for p in staging.glob("libggml-cpu.so*")]:
            target = staging / name
            target.unlink()
            shutil.copy2(native, target)
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
