"""Tests of inference_mlx.detect: every branch through injected finders and modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from inference_mlx.detect import (
    INSTALL_HINT,
    PRIORITY_CPU,
    PRIORITY_CUDA,
    PRIORITY_METAL,
    MlxDevice,
    detect,
)


def finder(*present: str) -> Any:
    """A find_spec that knows only ``present``, and records what it was asked."""
    asked: list[str] = []

    def find_spec(name: str) -> Any:
        asked.append(name)
        return object() if name in present else None

    find_spec.asked = asked  # type: ignore[attr-defined]
    return find_spec


def fake_mlx(*, metal: bool = False, cuda: bool | None = False, gpu: bool = False) -> Any:
    """A stand-in for mlx.core with the given devices (cuda=None: no mx.cuda at all)."""
    core = SimpleNamespace(
        metal=SimpleNamespace(is_available=lambda: metal),
        gpu="gpu",
        cpu="cpu",
        is_available=lambda device: gpu and device == "gpu",
    )
    if cuda is not None:
        core.cuda = SimpleNamespace(is_available=lambda: cuda)
    return core


def importer(module: Any) -> Any:
    imported: list[str] = []

    def import_module(name: str) -> Any:
        imported.append(name)
        return module

    import_module.imported = imported  # type: ignore[attr-defined]
    return import_module


def refuse_import(name: str) -> Any:
    raise AssertionError(f"detect() imported {name} although it should not")


def here(platform: str, machine: str, import_module: Any = refuse_import, **kw: Any) -> MlxDevice:
    """``detect`` with mlx and mlx-lm installed, on ``platform``/``machine``."""
    return detect(
        find_spec=finder("mlx", "mlx_lm"),
        platform=platform,
        machine=machine,
        import_module=import_module,
        **kw,
    )


def test_missing_mlx_is_reported_without_importing_it() -> None:
    find_spec = finder("mlx_lm")
    result = detect(
        find_spec=find_spec, platform="darwin", machine="arm64", import_module=refuse_import
    )
    assert result == MlxDevice(False, "", 0, f"mlx is not installed: {INSTALL_HINT}")
    assert result.reason == "mlx is not installed: pip install 'inference[mlx]'"
    assert find_spec.asked == ["mlx"]


def test_missing_mlx_lm_is_reported_without_importing_mlx() -> None:
    result = detect(
        find_spec=finder("mlx"), platform="linux", machine="x86_64", import_module=refuse_import
    )
    assert not result.available
    assert result.device == ""
    assert result.reason == f"mlx-lm is not installed: {INSTALL_HINT}"


def test_a_failing_find_spec_counts_as_not_installed() -> None:
    def broken(name: str) -> Any:
        raise ValueError(f"{name}.__spec__ is None")

    result = detect(find_spec=broken, platform="darwin", machine="arm64")
    assert not result.available
    assert "mlx is not installed" in result.reason


def test_apple_silicon_uses_metal() -> None:
    import_module = importer(fake_mlx(metal=True))
    result = here("darwin", "arm64", import_module)
    assert result == MlxDevice(True, "metal", PRIORITY_METAL, "Apple GPU via Metal")
    assert result.priority == 100
    assert import_module.imported == ["mlx.core"]


def test_mac_without_metal_falls_back_to_cpu() -> None:
    result = here("darwin", "arm64", importer(fake_mlx(metal=False)))
    assert result == MlxDevice(True, "cpu", PRIORITY_CPU, "MLX CPU device only; no GPU")


def test_intel_mac_is_refused_without_importing_mlx() -> None:
    result = here("darwin", "x86_64")
    assert not result.available
    assert "Apple silicon" in result.reason and "x86_64" in result.reason


def test_cuda_build_uses_cuda() -> None:
    result = here("linux", "x86_64", importer(fake_mlx(cuda=True)))
    assert result.available and result.device == "cuda"
    assert result.priority == PRIORITY_CUDA == 90
    assert "CUDA" in result.reason


def test_metal_is_not_trusted_off_macos() -> None:
    fake = fake_mlx(metal=True, cuda=False)
    result = here("linux", "aarch64", importer(fake))
    assert result.device == "cpu"


def test_older_mlx_without_mx_cuda_uses_the_gpu_device() -> None:
    result = here("linux", "x86_64", importer(fake_mlx(cuda=None, gpu=True)))
    assert result.device == "cuda"
    result = here("linux", "x86_64", importer(fake_mlx(cuda=None, gpu=False)))
    assert result.device == "cpu"


def test_cpu_only_build() -> None:
    result = here("linux", "x86_64", importer(fake_mlx()))
    assert result == MlxDevice(True, "cpu", 10, "MLX CPU device only; no GPU")


def test_an_mlx_that_cannot_be_imported_is_unavailable() -> None:
    def broken(name: str) -> Any:
        raise ImportError("libmlx.so: cannot open shared object file")

    result = here("linux", "x86_64", broken)
    assert not result.available
    assert "cannot be imported" in result.reason and "libmlx.so" in result.reason


def test_a_raising_availability_check_means_no_device() -> None:
    def boom() -> bool:
        raise RuntimeError("no device")

    fake = fake_mlx()
    fake.cuda = SimpleNamespace(is_available=boom)
    result = here("linux", "x86_64", importer(fake))
    assert result.device == "cpu"


def test_device_is_frozen() -> None:
    result = detect(find_spec=finder(), platform="linux", machine="x86_64")
    with pytest.raises(AttributeError):
        result.available = True  # type: ignore[misc]


def test_absent_mlx_is_found_without_importing_anything() -> None:
    asked: list[str] = []

    def find_spec(name: str) -> Any:
        asked.append(name)
        return None if name == "mlx" else importlib.util.find_spec(name)

    before = set(sys.modules)
    result = detect(find_spec=find_spec)
    assert not result.available and "mlx" in result.reason
    assert "mlx" in asked
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("mlx", "mlx_lm")}


@pytest.mark.skipif(
    importlib.util.find_spec("mlx") is None or importlib.util.find_spec("mlx_lm") is None,
    reason="mlx and mlx-lm are not installed",
)
def test_real_detection_here_agrees_with_mlx() -> None:
    result = detect()
    import mlx.core as mx

    assert result.available
    if sys.platform == "darwin" and mx.metal.is_available():
        assert result.device == "metal"
    elif getattr(mx, "cuda", None) is not None and mx.cuda.is_available():
        assert result.device == "cuda"
    else:
        assert result == MlxDevice(True, "cpu", PRIORITY_CPU, "MLX CPU device only; no GPU")


# --------------------------------------------------------------------------
# probe=False: what the registry and `inference backends` use; imports nothing


def installed(*names: str) -> Any:
    return lambda name: name in names


def offline(platform: str, machine: str, *builds: str, driver: bool = False) -> MlxDevice:
    """``detect(probe=False)`` with these mlx builds installed, and an NVIDIA
    driver or not."""
    return here(
        platform, machine, probe=False, installed=installed(*builds), nvidia_driver=lambda: driver
    )


def test_without_probe_apple_silicon_is_metal_without_importing() -> None:
    result = offline("darwin", "arm64", "mlx-metal")
    assert result == MlxDevice(True, "metal", PRIORITY_METAL, "Apple GPU via Metal")


def test_without_probe_intel_mac_is_still_refused() -> None:
    result = here("darwin", "x86_64", probe=False)
    assert not result.available and "Apple silicon" in result.reason


def test_without_probe_cuda_build_with_a_driver_is_cuda() -> None:
    for build in ("mlx-cuda-12", "mlx-cuda-13"):
        result = offline("linux", "x86_64", "mlx-cpu", build, driver=True)
        assert result == MlxDevice(True, "cuda", PRIORITY_CUDA, "NVIDIA GPU via MLX's CUDA backend")


def test_without_probe_cuda_build_without_a_driver_is_cpu() -> None:
    result = offline("linux", "x86_64", "mlx-cuda-12")
    assert (result.available, result.device, result.priority) == (True, "cpu", PRIORITY_CPU)
    assert result.reason.startswith("MLX CPU device only; no GPU")
    assert "mlx-cuda-12" in result.reason


def test_without_probe_cpu_build_is_cpu_even_with_a_driver() -> None:
    def broken_metadata(name: str) -> bool:
        raise OSError("unreadable METADATA")

    for check in (installed("mlx-cpu"), broken_metadata):
        result = here("linux", "aarch64", probe=False, installed=check, nvidia_driver=lambda: True)
        assert result == MlxDevice(True, "cpu", PRIORITY_CPU, "MLX CPU device only; no GPU")


@pytest.mark.skipif(
    importlib.util.find_spec("mlx") is None or importlib.util.find_spec("mlx_lm") is None,
    reason="mlx and mlx-lm are not installed",
)
def test_without_probe_agrees_with_the_probe_here(python_says: Callable[[str], str]) -> None:
    code = (
        "import sys\n"
        "from inference_mlx.detect import detect\n"
        "d = detect(probe=False)\n"
        "print(d.available, d.device, 'mlx' in sys.modules)\n"
    )
    out = python_says(code).split()
    cheap = detect(probe=False)
    assert out == [str(cheap.available), cheap.device, "False"]  # judged without importing mlx
    assert cheap == detect()
