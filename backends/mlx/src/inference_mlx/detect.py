"""Whether MLX can run here, and on which device: cheap enough to call on every start.

When mlx or mlx-lm is missing this only asks the import system where they
would be (``find_spec``), without importing anything. When both are there it
finds the device one of two ways:

- ``probe=True`` (the default) imports ``mlx.core`` (about 10 ms) and asks it
  for a GPU: Metal on Apple silicon, CUDA on an MLX CUDA build, else the CPU
  device;
- ``probe=False`` imports nothing, as ``inference backends`` and the registry
  require of a backend: Apple silicon means Metal (MLX needs it there); off
  macOS, MLX's CUDA build (the ``mlx-cuda-12`` or ``mlx-cuda-13``
  distribution) with an NVIDIA driver present means CUDA; anything else the
  CPU device. A build that cannot be imported is then found at load time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform as _platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference.registry import install_command

__all__ = ["INSTALL_HINT", "MlxDevice", "detect"]

INSTALL_HINT = install_command("mlx")

PRIORITY_METAL = 100
PRIORITY_CUDA = 90
PRIORITY_CPU = 10

#: The distributions that carry MLX's CUDA build (``mlx[cuda12]``, ``mlx[cuda13]``).
CUDA_DISTRIBUTIONS = ("mlx-cuda-12", "mlx-cuda-13", "mlx-cuda")
#: Files that exist when an NVIDIA kernel driver is loaded.
NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")


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


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    except Exception:  # unreadable metadata
        return False
    return True


def _nvidia_driver() -> bool:
    return any(os.path.exists(path) for path in NVIDIA_DRIVER_FILES)


def detect(
    *,
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    platform: str = sys.platform,
    machine: str = _platform.machine(),
    import_module: Callable[[str], Any] = importlib.import_module,
    probe: bool = True,
    installed: Callable[[str], bool] = _distribution_installed,
    nvidia_driver: Callable[[], bool] = _nvidia_driver,
) -> MlxDevice:
    """Report whether MLX is usable here and on which device.

    Every input is injectable for tests: ``find_spec`` looks modules up
    without importing them, ``platform`` is ``sys.platform``, ``machine`` is
    ``platform.machine()``, and ``import_module`` imports ``mlx.core`` when
    both packages are present and ``probe`` is true. Without ``probe``,
    ``installed`` says whether a distribution is installed and
    ``nvidia_driver`` whether an NVIDIA driver is loaded; nothing is imported.
    """
    for package, label in (("mlx", "mlx"), ("mlx_lm", "mlx-lm")):
        if not _installed(find_spec, package):
            return _unavailable(f"{label} is not installed: {INSTALL_HINT}")

    is_mac = platform == "darwin"
    if is_mac and machine.lower() not in ("arm64", "aarch64"):
        return _unavailable(f"MLX needs Apple silicon; this Mac is {machine or 'unknown'}")

    if not probe:
        return _without_import(is_mac, installed, nvidia_driver)

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


def _without_import(
    is_mac: bool, installed: Callable[[str], bool], nvidia_driver: Callable[[], bool]
) -> MlxDevice:
    """The device MLX would use, judged from the installed builds alone."""
    if is_mac:  # Apple silicon (checked above): MLX runs on Metal there
        return MlxDevice(True, "metal", PRIORITY_METAL, "Apple GPU via Metal")
    cuda_build = next((name for name in CUDA_DISTRIBUTIONS if _safe(installed, name)), "")
    if cuda_build and _flag(nvidia_driver):
        return MlxDevice(True, "cuda", PRIORITY_CUDA, "NVIDIA GPU via MLX's CUDA backend")
    if cuda_build:
        return MlxDevice(
            True,
            "cpu",
            PRIORITY_CPU,
            f"MLX CPU device only; no GPU ({cuda_build} is installed "
            "but no NVIDIA driver is loaded)",
        )
    return MlxDevice(True, "cpu", PRIORITY_CPU, "MLX CPU device only; no GPU")


def _safe(check: Callable[[str], bool], name: str) -> bool:
    try:
        return bool(check(name))
    except Exception:
        return False
