"""Tests of ROCm detection against fake /sys and /dev trees laid out like real
ones (see ``sysfs_trees.py`` for where each layout comes from)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import struct
import sys
import time
from collections.abc import Callable, Mapping
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
from inference_rocm import detect as d
from inference_rocm.detect import (
    REINSTALL_COMMAND,
    AmdGpu,
    choose_gpu,
    detect,
    find_gpus,
    gfx_name,
    llama_cpp_hip_build,
    read_vram,
)
from sysfs_trees import (
    GIB,
    MIB,
    RAVEN_COMBINED,
    RX7900XTX,
    Machine,
    apu_and_discrete_box,
    cpu_props,
    discrete_box,
    laptop_apu_box,
)

# --- find_gpus --------------------------------------------------------------------


def test_gfx_names_follow_llvm_spelling() -> None:
    assert gfx_name(110000) == "gfx1100"
    assert gfx_name(90012) == "gfx90c"
    assert gfx_name(90010) == "gfx90a"
    assert gfx_name(90402) == "gfx942"
    assert gfx_name(100300) == "gfx1030"
    assert gfx_name(100306) == "gfx1036"
    assert gfx_name(110501) == "gfx1151"
    assert gfx_name(0) == ""


def test_discrete_card_is_read_from_kfd_and_drm(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    (gpu,) = m.gpus()
    assert gpu.node == 1
    assert gpu.hip_index == 0  # the CPU node takes no HIP index
    assert gpu.gfx_target_version == 110000
    assert gpu.gfx == "gfx1100"
    assert gpu.name == "AMD Radeon RX 7900 XTX"
    assert (gpu.vendor_id, gpu.device_id, gpu.render_minor) == (0x1002, 0x744C, 128)
    assert gpu.vram_total == 25753026560
    assert gpu.vram_used == 1_020_000_000
    assert gpu.vram_free == 25753026560 - 1_020_000_000
    assert gpu.is_integrated is False
    assert gpu.uuid == "GPU-a1ffc9d1799c317f"  # unique_id 11673270660693242239 in hex


def test_apu_enumerating_first_keeps_hip_order(tmp_path: Path) -> None:
    m = apu_and_discrete_box(tmp_path)
    igpu, dgpu = m.gpus()
    assert (igpu.node, igpu.hip_index, igpu.gfx) == (1, 0, "gfx1036")
    assert (dgpu.node, dgpu.hip_index, dgpu.gfx) == (2, 1, "gfx1100")
    assert igpu.is_integrated and not dgpu.is_integrated
    assert igpu.name == "AMD Radeon 610M"
    assert igpu.vram_total == 512 * MIB
    assert dgpu.render_minor == 129


def test_integrated_by_gfx_target_even_with_a_big_carve_out(tmp_path: Path) -> None:
    (gpu,) = laptop_apu_box(tmp_path).gpus()
    assert gpu.gfx == "gfx1103"
    assert gpu.vram_total == 4 * GIB  # more than ollama's 1 GiB limit
    assert gpu.is_integrated
    assert gpu.name == "AMD Radeon 780M Graphics"


def test_old_kernel_combined_apu_node_is_a_gpu_and_integrated(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.load_amdgpu()
    m.node(0, RAVEN_COMBINED, name="raven")
    m.card(128, "0000:0a:00.0", device=0x15DD, revision=0xC4, vram_total=2 * GIB, vram_used=0)
    (gpu,) = m.gpus()
    assert (gpu.node, gpu.hip_index) == (0, 0)
    assert gpu.gfx == ""  # that kernel did not publish gfx_target_version
    assert gpu.is_integrated  # CPU cores and SIMDs on one node
    assert gpu.name == "AMD Radeon Vega 8 Graphics"
    assert "unknown gfx target" in m.detect().reason


def test_names_fall_back_from_product_name_to_ids_to_pci_ids(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    card = tmp_path / "sys/devices/pci0000:00/0000:00:01.1/0000:03:00.0"
    (card / "product_name").write_text("Navi 31 [Radeon RX 7900 XT/7900 XTX]\n")
    assert m.gpus()[0].name == "Navi 31 [Radeon RX 7900 XT/7900 XTX]"
    (card / "product_name").write_text("\n")  # consumer cards: empty FRU name
    (card / "revision").write_text("0xcc\n")
    assert m.gpus()[0].name == "AMD Radeon RX 7900 XT"  # the exact revision wins
    assert find_gpus(str(m.sys), ids_paths=[])[0].name == "AMD GPU 1002:744c"


def test_vram_falls_back_to_kfd_memory_banks_without_drm(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.load_amdgpu()
    m.node(0, cpu_props(8))
    node = m.node(1, RX7900XTX.format(minor=130))  # no renderD130 in sysfs
    (node / "mem_banks/0/properties").write_text(
        "heap_type 1\nsize_in_bytes 25753026560\nflags 0\nwidth 384\nmem_clk_max 1250\n"
    )
    (gpu,) = m.gpus()
    assert (gpu.vram_total, gpu.vram_used) == (25753026560, 0)


def test_read_vram_reads_sysfs_again(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    (gpu,) = m.gpus()
    card = tmp_path / "sys/class/drm/renderD128/device"
    (card / "mem_info_vram_used").write_text(f"{20 * GIB}\n")
    assert read_vram(gpu, str(m.sys)) == (25753026560, 20 * GIB)
    assert gpu.vram_used == 1_020_000_000  # the snapshot is unchanged


def test_choose_gpu_prefers_discrete_then_vram_then_index() -> None:
    def gpu(i: int, vram: int, integrated: bool) -> AmdGpu:
        return AmdGpu(i + 1, i, 110000, "gfx1100", f"gpu{i}", 4098, 1, 128 + i, vram, 0, integrated)

    big_igpu = gpu(0, 64 * GIB, True)
    small = gpu(1, 16 * GIB, False)
    large = gpu(2, 24 * GIB, False)
    twin = gpu(3, 24 * GIB, False)
    assert choose_gpu([big_igpu, small, twin, large]) == large
    assert choose_gpu([big_igpu, gpu(4, 4 * GIB, True)]) == big_igpu
    assert choose_gpu([]) is None


# --- detect -----------------------------------------------------------------------


def test_available_on_a_discrete_card(tmp_path: Path) -> None:
    result = discrete_box(tmp_path).detect()
    assert result.available
    assert result.chosen is not None and result.chosen.gfx == "gfx1100"
    assert result.main_gpu == 0
    assert result.reason == "AMD Radeon RX 7900 XTX (gfx1100), 24.0 GiB VRAM, 23.0 GiB free"


def test_discrete_card_beats_the_apu_that_enumerates_first(tmp_path: Path) -> None:
    result = apu_and_discrete_box(tmp_path).detect()
    assert result.available
    assert [g.hip_index for g in result.gpus] == [0, 1]
    assert result.chosen is result.gpus[1]
    assert result.main_gpu == 1  # hides the iGPU from HIP
    assert result.reason.startswith("AMD Radeon RX 7900 XTX (gfx1100), 24.0 GiB VRAM")


def test_only_an_igpu_is_used_and_said_to_be_integrated(tmp_path: Path) -> None:
    result = laptop_apu_box(tmp_path).detect()
    assert result.available
    assert result.chosen is not None and result.chosen.is_integrated
    assert result.main_gpu == 0
    assert result.reason == (
        "AMD Radeon 780M Graphics (gfx1103, integrated), 4.0 GiB VRAM, 3.7 GiB free"
    )


def test_not_linux(tmp_path: Path) -> None:
    result = discrete_box(tmp_path).detect(platform="darwin")
    assert not result.available
    assert result.reason == "ROCm needs Linux; this is darwin"
    assert result.gpus == () and result.chosen is None


def test_cuda_machine_has_no_kfd(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        (m.dev / name).touch()
    m.card(  # an RTX 4090 bound to the nvidia driver
        128, "0000:01:00.0", device=0x2684, revision=0xA1, vram_total=0, vram_used=0, vendor=0x10DE
    )
    result = m.detect()
    assert not result.available
    assert result.reason == "no /dev/kfd: the amdgpu kernel driver is not loaded"


def test_kfd_without_gpu_nodes(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.load_amdgpu()
    m.node(0, cpu_props(16))  # amdkfd up, but only the CPU node (no supported GPU)
    result = m.detect()
    assert not result.available
    assert result.reason == "no AMD GPU node under /sys/class/kfd/kfd/topology/nodes"


def test_permission_denied_on_kfd(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    kfd = m.dev / "kfd"
    kfd.chmod(0)  # what a user outside the render group meets (root still passes os.access)
    seen: list[tuple[str, int]] = []

    def access(path: str, mode: int) -> bool:
        seen.append((path, mode))
        return os.stat(path).st_mode & 0o666 == 0o666

    result = m.detect(access=access)
    assert not result.available
    assert result.reason == (
        "permission denied on /dev/kfd: add the user to the render and video groups "
        "(sudo usermod -aG render,video $USER) and log in again"
    )
    assert seen == [(str(kfd), os.R_OK | os.W_OK)]
    assert len(result.gpus) == 1  # the GPU was seen, only the access is missing


def test_permission_denied_on_the_render_node(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    result = m.detect(access=lambda path, mode: not path.endswith("renderD128"))
    assert not result.available
    assert result.reason.startswith("permission denied on /dev/dri/renderD128: add the user")


def test_real_os_access_on_an_open_kfd(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    (m.dev / "kfd").chmod(0o666)
    (m.dev / "dri/renderD128").chmod(0o666)
    result = detect(
        dev_root=str(m.dev),
        sys_root=str(m.sys),
        platform="linux",
        environ={},
        hip_build=lambda: (True, "libggml-hip.so"),
        ids_paths=[str(m.ids)],
    )
    assert result.available, result.reason


def test_llama_cpp_missing_or_without_hip(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    missing = "llama-cpp-python is not installed: pip install 'inference[rocm]'"
    result = m.detect(hip=(False, missing))
    assert not result.available and result.reason == missing
    no_hip = (
        "the installed llama-cpp-python was built without HIP; reinstall it with: "
        + REINSTALL_COMMAND
    )
    result = m.detect(hip=(False, no_hip))
    assert not result.available and result.reason == no_hip
    assert result.chosen is None and len(result.gpus) == 1


def test_checks_run_in_the_documented_order(tmp_path: Path) -> None:
    m = discrete_box(tmp_path)
    calls: list[str] = []

    def hip() -> tuple[bool, str]:
        calls.append("hip")
        return False, "x"

    (m.dev / "kfd").unlink()
    result = detect(
        dev_root=str(m.dev), sys_root=str(m.sys), platform="linux", environ={}, hip_build=hip
    )
    assert result.reason.startswith("no /dev/kfd") and calls == []  # hardware first


def test_hip_visible_devices_is_left_alone(tmp_path: Path) -> None:
    m = apu_and_discrete_box(tmp_path)
    igpu, dgpu = m.gpus()
    result = m.detect(environ={"HIP_VISIBLE_DEVICES": "0"})
    assert result.available and result.chosen == igpu and result.main_gpu is None
    result = m.detect(environ={"HIP_VISIBLE_DEVICES": "1,0"})
    assert result.chosen == dgpu and result.main_gpu is None


def test_cuda_visible_devices_counts_when_hip_is_unset(tmp_path: Path) -> None:
    m = apu_and_discrete_box(tmp_path)
    igpu, dgpu = m.gpus()
    assert m.detect(environ={"CUDA_VISIBLE_DEVICES": "1"}).chosen == dgpu
    both = m.detect(environ={"HIP_VISIBLE_DEVICES": "0", "CUDA_VISIBLE_DEVICES": "1"})
    assert both.chosen == igpu  # HIP_VISIBLE_DEVICES wins over CUDA_VISIBLE_DEVICES


def test_rocr_visible_devices_filters_before_hip(tmp_path: Path) -> None:
    m = apu_and_discrete_box(tmp_path)
    igpu, dgpu = m.gpus()
    result = m.detect(environ={"ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "0"})
    assert result.chosen == dgpu and result.main_gpu is None
    by_uuid = m.detect(environ={"ROCR_VISIBLE_DEVICES": f"GPU-{dgpu.unique_id:016X}"})
    assert by_uuid.chosen == dgpu
    assert m.detect(environ={"ROCR_VISIBLE_DEVICES": "0"}).chosen == igpu


def test_visible_devices_that_hide_every_gpu(tmp_path: Path) -> None:
    m = apu_and_discrete_box(tmp_path)
    result = m.detect(environ={"HIP_VISIBLE_DEVICES": "7,1"})  # parsing stops at 7
    assert not result.available
    assert result.reason == (
        "HIP_VISIBLE_DEVICES=7,1 leaves no AMD GPU visible (HIP numbers 2 here: 0-1)"
    )
    assert not m.detect(environ={"HIP_VISIBLE_DEVICES": "01"}).available  # HIP wants "1"


# --- llama-cpp-python's libraries -----------------------------------------------------


def make_elf(path: Path, dynstr: bytes, rodata: bytes = b"") -> None:
    """A minimal little-endian ELF64 shared object with .dynstr, .dynsym and .rodata."""
    dynstr_off = 64
    rodata_off = dynstr_off + len(dynstr)
    shoff = (rodata_off + len(rodata) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64, 4, 0)
    shdr = "<IIQQQQIIQQ"  # name type flags addr offset size link info align entsize
    sections = (
        struct.pack(shdr, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        + struct.pack(shdr, 0, 3, 2, 0, dynstr_off, len(dynstr), 0, 0, 1, 0)  # SHT_STRTAB
        + struct.pack(shdr, 0, 11, 2, 0, 0, 0, 1, 1, 8, 24)  # SHT_DYNSYM, link -> 1
        + struct.pack(shdr, 0, 1, 2, 0, rodata_off, len(rodata), 0, 0, 1, 0)  # PROGBITS
    )
    body = header + dynstr + rodata
    path.write_bytes(body + bytes(shoff - len(body)) + sections)


def fake_llama_cpp(root: Path, libs: Mapping[str, bytes | None]) -> Path:
    """A llama_cpp package folder whose import would fail loudly."""
    pkg = root / "site-packages/llama_cpp"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('llama_cpp must not be imported')\n")
    for name, content in libs.items():
        target = pkg / "lib" / name
        if content is None:
            make_elf(target, b"\0libggml-base.so\0libc.so.6\0ggml_backend_cpu_init\0")
        else:
            target.write_bytes(content)
    return pkg


def spec_for(pkg: Path) -> Callable[[str], ModuleSpec | None]:
    spec = importlib.util.spec_from_file_location(
        "llama_cpp", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    return lambda name: spec if name == "llama_cpp" else None


def test_llama_cpp_not_installed() -> None:
    ok, why = llama_cpp_hip_build(lambda name: None, environ={})
    assert not ok
    assert why == "llama-cpp-python is not installed: pip install 'inference[rocm]'"


def test_cpu_only_wheel_is_not_hip(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(
        tmp_path,
        {"libggml-cpu.so": None, "libggml-base.so": None, "libggml.so": None, "libllama.so": None},
    )
    ok, why = llama_cpp_hip_build(spec_for(pkg), environ={})
    assert not ok
    assert why == (
        "the installed llama-cpp-python was built without HIP; reinstall it with: "
        'CMAKE_ARGS="-DGGML_HIP=on" pip install --force-reinstall --no-cache-dir '
        "--no-binary llama-cpp-python llama-cpp-python"
    )


def test_cuda_and_vulkan_wheels_are_not_hip(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(
        tmp_path, {"libggml-cuda.so": None, "libggml-vulkan.so": None, "libllama.so": None}
    )
    assert llama_cpp_hip_build(spec_for(pkg), environ={})[0] is False


def test_hip_backend_library_is_found(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(tmp_path, {"libggml-cpu.so": None, "libggml-hip.so": None})
    ok, path = llama_cpp_hip_build(spec_for(pkg), environ={})
    assert ok and path == str(pkg / "lib/libggml-hip.so")


def test_monolithic_library_linking_hip_runtime_counts(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(tmp_path, {})
    make_elf(
        pkg / "lib/libllama.so",
        b"\0libamdhip64.so.6\0libhipblas.so.2\0librocblas.so.4\0hipMalloc\0",
    )
    ok, path = llama_cpp_hip_build(spec_for(pkg), environ={})
    assert ok and path.endswith("libllama.so")


def test_hip_named_outside_the_dynamic_strings_does_not_count(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(tmp_path, {})
    make_elf(
        pkg / "lib/libllama.so",
        b"\0libc.so.6\0",
        rodata=b"rebuild with ROCm: libamdhip64.so not linked\0",
    )
    assert llama_cpp_hip_build(spec_for(pkg), environ={})[0] is False


def test_old_wheel_layout_and_empty_files(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(tmp_path, {"libllama.so": b""})  # empty: mmap refuses it
    assert llama_cpp_hip_build(spec_for(pkg), environ={})[0] is False
    make_elf(pkg / "libllama.so", b"\0libamdhip64.so.6\0")  # beside __init__.py
    ok, path = llama_cpp_hip_build(spec_for(pkg), environ={})
    assert ok and path == str(pkg / "libllama.so")


def test_llama_cpp_lib_path_override(tmp_path: Path) -> None:
    pkg = fake_llama_cpp(tmp_path, {"libggml-cpu.so": None})
    custom = tmp_path / "llama.cpp/build/bin"
    custom.mkdir(parents=True)
    make_elf(custom / "libggml-hip.so", b"\0libamdhip64.so.6\0")
    ok, path = llama_cpp_hip_build(spec_for(pkg), environ={"LLAMA_CPP_LIB_PATH": str(custom)})
    assert ok and path == str(custom / "libggml-hip.so")


def test_real_find_spec_does_not_import_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = fake_llama_cpp(tmp_path, {"libggml-hip.so": None})
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    importlib.invalidate_caches()
    ok, path = llama_cpp_hip_build(environ={})
    assert ok and path == str(pkg / "lib/libggml-hip.so")
    assert "llama_cpp" not in sys.modules  # __init__.py would have raised


def test_dynamic_strings_of_a_real_system_library() -> None:
    lib = next(
        (
            p
            for p in (
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/usr/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/libm.so.6",
                "/usr/lib64/libm.so.6",
                "/lib/aarch64-linux-gnu/libm.so.6",
            )
            if os.path.exists(p)
        ),
        None,
    )
    if lib is None:
        pytest.skip("no libm.so.6 to read")
    import mmap

    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        span = d._dynstr_range(buf)
        assert span is not None
        start, end = span
        assert buf.find(b"libc.so.6", start, end) != -1  # libm's DT_NEEDED
        assert end - start < len(buf) // 4


# --- timing -----------------------------------------------------------------------


def test_detection_time(tmp_path: Path) -> None:
    m = apu_and_discrete_box(tmp_path)
    pkg = fake_llama_cpp(tmp_path, {"libggml-cpu.so": None, "libggml-hip.so": None})
    find = spec_for(pkg)
    runs = 50
    start = time.perf_counter()
    for _ in range(runs):
        result = detect(
            dev_root=str(m.dev),
            sys_root=str(m.sys),
            platform="linux",
            environ={},
            hip_build=lambda: llama_cpp_hip_build(find, environ={}),
            access=lambda path, mode: True,
            ids_paths=[str(m.ids)],
        )
    fake_ms = (time.perf_counter() - start) * 1000 / runs
    assert result.available and result.chosen is not None and result.chosen.hip_index == 1

    start = time.perf_counter()
    real = detect()
    real_ms = (time.perf_counter() - start) * 1000
    print(f"\ndetect() on the fake APU+dGPU tree: {fake_ms:.2f} ms per call")
    print(f"detect() on this machine's /dev and /sys: {real_ms:.2f} ms -> {real.reason}")
    assert isinstance(real.reason, str) and real.reason
