"""Install llama-cpp-python into the running interpreter, built for this CPU.

    .venv/bin/python scripts/install_engine.py

The build configuration is ``CMAKE_ARGS`` when the user sets it (CUDA, HIP,
Vulkan, Metal: theirs always wins), else the one
``inference_llamacpp.build.cmake_args()`` chooses for this CPU (on Linux
x86-64: ggml's SIMD options for what the CPU runs, AMX only where it runs).
The wheel is built once per configuration and kept under
``INFERENCE_CACHE_DIR/engine-wheels/<key>``, keyed by the configuration and
the version requirement, so that a wheel built with other flags (pip's own
cache keeps one per version, whatever the flags) is never reused by mistake.
"""

from __future__ import annotations

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


def requirement() -> str:
    """The llama-cpp-python requirement of the llama.cpp backend's pyproject.toml."""
    text = (ROOT / "backends" / "llamacpp" / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"(llama-cpp-python[^";]*)"', text)
    if not found:
        raise SystemExit("install_engine: no llama-cpp-python requirement in the backend")
    return found.group(1)


def main() -> int:
    args = os.environ["CMAKE_ARGS"] if "CMAKE_ARGS" in os.environ else cmake_args()
    req = requirement()
    key = hashlib.sha256(f"{req}\n{args}".encode()).hexdigest()[:16]
    wheels = cache_dir("engine-wheels", key)
    found = sorted(wheels.glob("llama_cpp_python-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        print(
            f"install_engine: compiling {req} with CMAKE_ARGS={args!r} "
            "(about 7 minutes on 2 cores, once per configuration)",
            file=sys.stderr,
        )
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
            env={**os.environ, "CMAKE_ARGS": args},
            check=True,
        )
        print(f"install_engine: built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        found = sorted(wheels.glob("llama_cpp_python-*.whl"))
    if not found:
        raise SystemExit(f"install_engine: pip built no wheel into {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(found[-1])], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
