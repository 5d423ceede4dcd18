"""Whether MLX can run here, and on which device: cheap enough to call on every start.

When mlx or mlx-lm is missing this only asks the import system where they
would be (``find_spec``), without importing anything. When both are there it
imports ``mlx.core`` (about 10 ms) and asks it for a GPU: Metal on Apple
silicon, CUDA on an MLX CUDA build, else the CPU device.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform as _platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["INSTALL_HINT", "MlxDevice", "detect"]

INSTALL_HINT = "pip install 'inference[mlx]'"

PRIORITY_METAL = 100
PRIORITY_CUDA = 90
PRIORITY_CPU = 10


@dataclass(frozen=True, slots=True)
class MlxDevice:
    """What :func:`detect` found.

    ``device`` is ``"metal"``, ``"cuda"``, ``"cpu"``, or ``""`` when MLX is
    not available; ``priority`` ranks this backend against others (0 when not
    available); ``reason`` is one line for a person.
    """

    available: bool
    device: str
    priority: int
    reason: str


def _unavailable(reason: str) -> MlxDevice:
    return MlxDevice(available=False, device="", priority=0, reason=reason)


def _installed(find_spec: Callable[[str], Any], name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _flag(check: Callable[[], Any] | None) -> bool:
    """Call a ``*.is_available`` function, treating any failure as "no"."""
    if check is None:
        return False
    try:
        return bool(check())
    except Exception:
        return False


def detect(
    *,
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    platform: str = sys.platform,
    machine: str = _platform.machine(),
    import_module: Callable[[str], Any] = importlib.import_module,
) -> MlxDevice:
    """Report whether MLX is usable here and on which device.

    Every input is injectable for tests: ``find_spec`` looks modules up
    without importing them, ``platform`` is ``sys.platform``, ``machine`` is
    ``platform.machine()``, and ``import_module`` imports ``mlx.core`` when
    both packages are present.
    """
    for package, label in (("mlx", "mlx"), ("mlx_lm", "mlx-lm")):
        if not _installed(find_spec, package):
            return _unavailable(f"{label} is not installed: {INSTALL_HINT}")

    is_mac = platform == "darwin"
    if is_mac and machine.lower() not in ("arm64", "aarch64"):
        return _unavailable(f"MLX needs Apple silicon; this Mac is {machine or 'unknown'}")

    try:
        mx = import_module("mlx.core")
    except Exception as exc:  # a broken build fails in many ways
        return _unavailable(
            f"mlx is installed but cannot be imported ({type(exc).__name__}: {exc})"
        )

    metal = getattr(mx, "metal", None)
    if is_mac and _flag(getattr(metal, "is_available", None)):
        return MlxDevice(True, "metal", PRIORITY_METAL, "Apple GPU via Metal")

    cuda = getattr(mx, "cuda", None)
    if _flag(getattr(cuda, "is_available", None)):
        return MlxDevice(True, "cuda", PRIORITY_CUDA, "NVIDIA GPU via MLX's CUDA backend")
    if cuda is None and not is_mac:
        # Older MLX has no mx.cuda; off macOS its only GPU backend is CUDA.
        is_available = getattr(mx, "is_available", None)
        gpu = getattr(mx, "gpu", None)
        if is_available is not None and gpu is not None and _flag(lambda: is_available(gpu)):
            return MlxDevice(True, "cuda", PRIORITY_CUDA, "NVIDIA GPU via MLX's CUDA backend")

    return MlxDevice(True, "cpu", PRIORITY_CPU, "MLX CPU device only; no GPU")
