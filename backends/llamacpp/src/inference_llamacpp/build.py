"""How llama-cpp-python is compiled on this machine: ggml's SIMD options from what the CPU runs.

A source install of llama-cpp-python builds ggml with ``GGML_NATIVE``, which
compiles for every instruction set the CPU *reports*. Some hypervisors report
AMX and then fault in ggml's AMX kernel (SIGSEGV or SIGILL in
``ggml_backend_amx_mul_mat`` on the first batched matrix product), while a
standalone AMX program runs on the same machine: no probe short of the engine
itself predicts it. So on Linux x86-64 the scripts build with
``GGML_NATIVE=OFF``, turn on one by one the SIMD options whose instructions
the CPU reports (AVX-512 included), and leave AMX off. Everywhere else (macOS,
ARM, Windows) ggml's own defaults stand. A user's own ``CMAKE_ARGS`` (CUDA,
HIP, Vulkan, Metal, or AMX on bare metal) always wins, and the engine
self-test (:mod:`inference_llamacpp.selftest`) then tells whether it runs.

Standard library only, and runnable as a file before anything is installed::

    python3 backends/llamacpp/src/inference_llamacpp/build.py cmake-args
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Iterable

__all__ = [
    "AMX_OPTIONS",
    "SIMD_OPTIONS",
    "cmake_args",
    "cpu_flags",
    "reinstall_command",
]

#: ggml's CMake option for each x86 instruction set, with the ``/proc/cpuinfo``
#: flags that must all be present for it (ggml's own option names and order).
SIMD_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    # GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
)

#: ggml's AMX options: always off unless the user's own CMAKE_ARGS turn them on.
AMX_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the CPU reports (Linux); empty where unknown."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _machine_is_linux_x86_64() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in {"x86_64", "amd64"}


def cmake_args(flags: Iterable[str] | None = None) -> str:
    """The ``CMAKE_ARGS`` for a llama-cpp-python source build on this machine.

    Empty (ggml's defaults) except on Linux x86-64, where it is
    ``-DGGML_NATIVE=OFF``, each SIMD option the CPU reports, and the AMX
    options off. ``flags`` defaults to this CPU's.
    """
    if flags is None:
        if not _machine_is_linux_x86_64():
            return ""
        flags = cpu_flags()
    have = frozenset(flags)
    if not have:
        return ""
    args = ["-DGGML_NATIVE=OFF"]
    for option, needs in SIMD_OPTIONS:
        args.append(f"-D{option}={'ON' if all(n in have for n in needs) else 'OFF'}")
    args += [f"-D{option}=OFF" for option in AMX_OPTIONS]
    return " ".join(args)


def reinstall_command(args: str, requirement: str = "llama-cpp-python") -> str:
    """The exact command that rebuilds llama-cpp-python with ``args``."""
    prefix = f"CMAKE_ARGS={shlex.quote(args)} " if args else ""
    return (
        f"{prefix}pip install --force-reinstall --no-cache-dir --no-deps {shlex.quote(requirement)}"
    )


def _main(argv: list[str]) -> int:
    what = argv[0] if argv else "cmake-args"
    if what == "cmake-args":
        print(cmake_args())
        return 0
    print(f"usage: {os.path.basename(sys.argv[0])} [cmake-args]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
