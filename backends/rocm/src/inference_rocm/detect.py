"""Find AMD GPUs that ROCm/HIP can use, without loading ROCm or llama.cpp.

Everything here reads plain files: the KFD topology the ``amdgpu`` kernel
driver publishes under ``/sys/class/kfd/kfd/topology/nodes``, the DRM sysfs
files of each card, ``/dev/kfd`` and the shared libraries that
llama-cpp-python installed.  Nothing heavy is imported, so :func:`detect`
takes well under a millisecond on a real machine.  Every root is a
parameter, so the tests run against fake trees laid out like real ones.

Sources for the layouts and rules followed here:

* KFD node properties (``cpu_cores_count``, ``simd_count``,
  ``gfx_target_version``, ``vendor_id``, ``device_id``, ``drm_render_minor``,
  ``unique_id``...): the kernel's KFD topology, as dumped from a Radeon RX
  7900 XTX in tinygrad's ``test/mockgpu/amd/amdgpu.py`` and from a Raven
  Ridge APU in ROCm/amdgpu issue #66.
* HIP device numbering: ROCr makes one GPU agent per node with SIMDs, in
  node order, skipping CPU nodes (ollama ``discover/amd_linux.go`` subtracts
  the CPU nodes the same way).  ``ROCR_VISIBLE_DEVICES`` filters those
  agents first; HIP then applies ``HIP_VISIBLE_DEVICES``, or
  ``CUDA_VISIBLE_DEVICES`` when that is empty, to what is left, stopping at
  the first invalid entry (ROCm/clr ``rocclr/device/rocm/rocdevice.cpp``;
  ROCm docs "GPU isolation techniques").
* VRAM: ``mem_info_vram_total`` / ``mem_info_vram_used`` of the card, the
  files ollama reads because the KFD ``mem_banks`` figures miss other users
  of the memory.
* Marketing names: libdrm's ``amdgpu.ids`` (``device_id,<tab>revision,<tab>
  name``), the table rocminfo uses.
* Integrated GPUs: libhsakmt asks the driver for ``AMDGPU_IDS_FLAGS_FUSION``
  through an ioctl, which sysfs does not expose, so this module combines
  three file-level signs (see :func:`_is_integrated`).
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec

from inference import env
from inference.registry import install_command

__all__ = [
    "REINSTALL_COMMAND",
    "AmdGpu",
    "Detection",
    "choose_gpu",
    "describe",
    "detect",
    "find_gpus",
    "gfx_name",
    "llama_cpp_hip_build",
    "read_vram",
]

REINSTALL_COMMAND = (
    'CMAKE_ARGS="-DGGML_HIP=on" pip install --force-reinstall --no-cache-dir '
    "--no-binary llama-cpp-python llama-cpp-python"
)
"""Rebuild llama-cpp-python from source with llama.cpp's HIP backend.

``GGML_HIP`` is the current name of the option (``GGML_HIPBLAS`` and
``LLAMA_HIPBLAS`` before it no longer enable anything: abetlen/llama-cpp-python
issues #1579 and #1880).  Without ``GPU_TARGETS`` the HIP compiler builds for
the GPUs it finds on the machine, which is what a user fixing their own
install wants.
"""

INSTALL_COMMAND = install_command("rocm")

AMD_VENDOR_ID = 0x1002
"""PCI vendor id of AMD/ATI (4098 in the decimal KFD properties)."""

KFD_NODES = "class/kfd/kfd/topology/nodes"
"""The KFD topology nodes, relative to the sysfs root."""

IGPU_VRAM_LIMIT = 1 << 30
"""Less VRAM than this can only be an APU's carve-out (ollama's ``IGPUMemLimit``)."""

# GFX targets that only exist as APUs, from the dGPU/APU column of LLVM's
# AMDGPUUsage processor table (Kaveri, Carrizo, Stoney, Raven, Picasso,
# Renoir/Cezanne, Cyan Skillfish, Van Gogh, Rembrandt, Raphael, Mendocino,
# Phoenix, Strix Point, Strix Halo, Krackan).
_APU_TARGETS = frozenset(
    {
        "gfx700",
        "gfx801",
        "gfx810",
        "gfx902",
        "gfx909",
        "gfx90c",
        "gfx1013",
        "gfx1033",
        "gfx1035",
        "gfx1036",
        "gfx1037",
        "gfx1103",
        "gfx1150",
        "gfx1151",
        "gfx1152",
        "gfx1153",
    }
)

_AMDGPU_IDS_PATHS = (
    "/usr/share/libdrm/amdgpu.ids",
    "/opt/amdgpu/share/libdrm/amdgpu.ids",
)

# HIP's runtime library: every library with HIP code in it links against it,
# so it is named in the library's dynamic string table.
_HIP_MARKERS = (b"libamdhip64.so",)

_GIB = float(1 << 30)


@dataclass(frozen=True, slots=True)
class AmdGpu:
    """One GPU node of the KFD topology, as HIP will number it."""

    node: int
    """KFD topology node number (CPU nodes count too)."""
    hip_index: int
    """Index HIP gives the device with no visibility variable set."""
    gfx_target_version: int
    """KFD's encoding of the GFX target, e.g. 110000."""
    gfx: str
    """LLVM target name, e.g. ``"gfx1100"``; empty on kernels too old to say."""
    name: str
    vendor_id: int
    device_id: int
    render_minor: int
    """``N`` of ``/dev/dri/renderDN``; 0 when the node has none."""
    vram_total: int
    vram_used: int
    is_integrated: bool
    unique_id: int = 0
    """KFD ``unique_id``; ROCm spells it ``GPU-<16 hex digits>`` as a UUID."""

    @property
    def vram_free(self) -> int:
        return max(self.vram_total - self.vram_used, 0)

    @property
    def uuid(self) -> str:
        return f"GPU-{self.unique_id:016x}" if self.unique_id else ""


@dataclass(frozen=True, slots=True)
class Detection:
    """Whether the ROCm backend can run here, and on which GPU."""

    available: bool
    reason: str
    """One line: why not, or what was chosen."""
    gpus: tuple[AmdGpu, ...]
    chosen: AmdGpu | None
    main_gpu: int | None
    """llama.cpp's ``main_gpu`` for the chosen GPU (its HIP index), with the
    whole model on it; None when the visibility variables already chose."""


# --- reading sysfs -----------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str, base: int = 10) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


def _parse_properties(text: str) -> dict[str, int]:
    """Parse KFD ``properties``: one ``key value`` pair per line, decimal."""
    props: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                props[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return props


def gfx_name(gfx_target_version: int) -> str:
    """``110000`` -> ``"gfx1100"``, ``90012`` -> ``"gfx90c"``; 0 -> ``""``.

    KFD writes major * 10000 + minor * 100 + stepping; LLVM prints the minor
    and stepping as one hex digit each.
    """
    if gfx_target_version <= 0:
        return ""
    major, rest = divmod(gfx_target_version, 10000)
    minor, stepping = divmod(rest, 100)
    return f"gfx{major}{minor:x}{stepping:x}"


def _drm_device_dir(sys_root: str, render_minor: int) -> str:
    return os.path.join(sys_root, "class", "drm", f"renderD{render_minor}", "device")


def _kfd_vram_total(node_dir: str) -> int:
    """Frame-buffer size from the node's memory banks (heap types 1 and 2)."""
    banks = os.path.join(node_dir, "mem_banks")
    try:
        names = os.listdir(banks)
    except OSError:
        return 0
    total = 0
    for bank in names:
        text = _read_text(os.path.join(banks, bank, "properties"))
        if text is None:
            continue
        props = _parse_properties(text)
        if props.get("heap_type") in (1, 2):  # HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC/PRIVATE
            total += props.get("size_in_bytes", 0)
    return total


def _vram(sys_root: str, node_dir: str, render_minor: int) -> tuple[int, int]:
    if render_minor > 0:
        device = _drm_device_dir(sys_root, render_minor)
        total = _read_int(os.path.join(device, "mem_info_vram_total"))
        if total is not None:
            used = _read_int(os.path.join(device, "mem_info_vram_used"))
            return total, used or 0
    return _kfd_vram_total(node_dir), 0


def _lookup_amdgpu_ids(paths: Iterable[str], device_id: int, revision: int | None) -> str:
    """Marketing name from libdrm's ``amdgpu.ids``; the exact revision wins."""
    want = f"{device_id:04X}"
    first = ""
    for path in paths:
        text = _read_text(path)
        if text is None:
            continue
        for line in text.splitlines():
            if not line.startswith(want):
                continue
            parts = [p.strip() for p in line.split(",", 2)]
            if len(parts) != 3 or parts[0].upper() != want:
                continue
            try:
                rev = int(parts[1], 16)
            except ValueError:
                continue
            if revision is not None and rev == revision:
                return parts[2]
            first = first or parts[2]
        if first:
            return first
    return first


def _gpu_name(
    sys_root: str, node_dir: str, props: Mapping[str, int], ids_paths: Sequence[str]
) -> str:
    device_id = props.get("device_id", 0)
    render_minor = props.get("drm_render_minor", 0)
    device = _drm_device_dir(sys_root, render_minor) if render_minor > 0 else ""
    if device:
        product = (_read_text(os.path.join(device, "product_name")) or "").strip()
        if product:
            return product
    if device_id:
        revision = _read_int(os.path.join(device, "revision"), 16) if device else None
        name = _lookup_amdgpu_ids(ids_paths, device_id, revision)
        if name:
            return name
    kfd_name = (_read_text(os.path.join(node_dir, "name")) or "").strip()
    if kfd_name and kfd_name != "ip discovery":  # newer kernels say only that
        return f"AMD {kfd_name}"
    vendor = props.get("vendor_id", AMD_VENDOR_ID) or AMD_VENDOR_ID
    return f"AMD GPU {vendor:04x}:{device_id:04x}"


def _is_integrated(props: Mapping[str, int], gfx: str, vram_total: int) -> bool:
    """Tell an APU's GPU from a discrete card with what sysfs shows.

    * Before the kernel split them, an APU was one KFD node with both CPU
      cores and SIMDs (``cpu_cores_count 8`` with ``simd_count 44`` on Raven).
    * GFX targets that AMD only ships in APUs (LLVM's processor table).
    * Less than 1 GiB of VRAM: a BIOS carve-out, never a card (ollama).
    """
    if props.get("cpu_cores_count", 0) > 0 and props.get("simd_count", 0) > 0:
        return True
    if gfx in _APU_TARGETS:
        return True
    return 0 < vram_total < IGPU_VRAM_LIMIT


def _node_numbers(nodes_dir: str) -> list[int]:
    try:
        names = os.listdir(nodes_dir)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def find_gpus(
    sys_root: str = "/sys", *, ids_paths: Sequence[str] | None = None
) -> tuple[AmdGpu, ...]:
    """Every GPU node of the KFD topology, in HIP's order.

    A node is a GPU when it has SIMDs (ROCr makes a GPU agent of exactly
    those); kernels that do not report ``simd_count`` are judged by a
    non-zero ``gfx_target_version``.  ``ids_paths`` names the ``amdgpu.ids``
    files to take marketing names from (libdrm's usual places by default;
    an empty sequence skips the lookup).
    """
    ids = _AMDGPU_IDS_PATHS if ids_paths is None else tuple(ids_paths)
    nodes_dir = os.path.join(sys_root, KFD_NODES)
    gpus: list[AmdGpu] = []
    for node in _node_numbers(nodes_dir):
        node_dir = os.path.join(nodes_dir, str(node))
        text = _read_text(os.path.join(node_dir, "properties"))
        if text is None:
            continue
        props = _parse_properties(text)
        target = props.get("gfx_target_version", 0)
        simds = props.get("simd_count")
        if not (simds > 0 if simds is not None else target > 0):
            continue  # a CPU node
        render_minor = props.get("drm_render_minor", 0)
        total, used = _vram(sys_root, node_dir, render_minor)
        gfx = gfx_name(target)
        gpus.append(
            AmdGpu(
                node=node,
                hip_index=len(gpus),
                gfx_target_version=target,
                gfx=gfx,
                name=_gpu_name(sys_root, node_dir, props, ids),
                vendor_id=props.get("vendor_id", 0),
                device_id=props.get("device_id", 0),
                render_minor=render_minor,
                vram_total=total,
                vram_used=used,
                is_integrated=_is_integrated(props, gfx, total),
                unique_id=props.get("unique_id", 0),
            )
        )
    return tuple(gpus)


def read_vram(gpu: AmdGpu, sys_root: str = "/sys") -> tuple[int, int]:
    """``(total, used)`` VRAM in bytes, read again from sysfs now."""
    node_dir = os.path.join(sys_root, KFD_NODES, str(gpu.node))
    total, used = _vram(sys_root, node_dir, gpu.render_minor)
    if total == 0:
        return gpu.vram_total, gpu.vram_used
    return total, used


def choose_gpu(gpus: Iterable[AmdGpu]) -> AmdGpu | None:
    """The GPU to run on: discrete before integrated, then the most VRAM.

    Ties go to the lowest HIP index.
    """
    return min(gpus, key=lambda g: (g.is_integrated, -g.vram_total, g.hip_index), default=None)


# --- visibility variables -----------------------------------------------------


def _apply_visibility(value: str, gpus: Sequence[AmdGpu]) -> list[AmdGpu]:
    """Filter ``gpus`` as ROCr/HIP read one ``*_VISIBLE_DEVICES`` value.

    Entries are indices into ``gpus`` or ``GPU-<hex>`` UUIDs; the first entry
    that names no device ends the list, and repeats are dropped.
    """
    picked: list[AmdGpu] = []
    for raw in value.split(","):
        entry = raw.strip()
        gpu: AmdGpu | None = None
        if entry.upper().startswith("GPU-"):
            gpu = next((g for g in gpus if g.uuid and g.uuid.lower() == entry.lower()), None)
        elif (
            entry.isascii()
            and entry.isdigit()
            and str(int(entry)) == entry
            and int(entry) < len(gpus)
        ):
            gpu = gpus[int(entry)]
        if gpu is None:
            break
        if gpu not in picked:
            picked.append(gpu)
    return picked


def _visible(
    gpus: Sequence[AmdGpu], environ: Mapping[str, str]
) -> tuple[list[AmdGpu], list[str]] | None:
    """The GPUs HIP will show, and the variables that chose them; None if unset."""
    rocr = environ.get(env.ROCR_VISIBLE_DEVICES, "")
    hip_name = env.HIP_VISIBLE_DEVICES
    if not environ.get(hip_name):
        hip_name = env.CUDA_VISIBLE_DEVICES  # HIP reads it when HIP_VISIBLE_DEVICES is empty
    hip = environ.get(hip_name, "")
    if not rocr and not hip:
        return None
    shown = list(gpus)
    used: list[str] = []
    if rocr:
        shown = _apply_visibility(rocr, shown)
        used.append(f"{env.ROCR_VISIBLE_DEVICES}={rocr}")
    if hip:
        shown = _apply_visibility(hip, shown)
        used.append(f"{hip_name}={hip}")
    return shown, used


# --- llama-cpp-python's libraries ---------------------------------------------


def _dynstr_range(buf: mmap.mmap) -> tuple[int, int] | None:
    """Byte range of an ELF file's dynamic string table, or None if not found."""
    if len(buf) < 64 or buf[:4] != b"\x7fELF":
        return None
    wide, order = buf[4], buf[5]
    if wide not in (1, 2) or order not in (1, 2):
        return None
    end = "<" if order == 1 else ">"
    try:
        if wide == 2:
            (shoff,) = struct.unpack_from(end + "Q", buf, 0x28)
            shentsize, shnum = struct.unpack_from(end + "HH", buf, 0x3A)
            layout = end + "4xI8x8xQQI"  # sh_type, sh_offset, sh_size, sh_link
        else:
            (shoff,) = struct.unpack_from(end + "I", buf, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", buf, 0x2E)
            layout = end + "4xI4x4xIII"
        sections = [struct.unpack_from(layout, buf, shoff + i * shentsize) for i in range(shnum)]
    except struct.error:
        return None
    for sh_type, _offset, _size, link in sections:
        if sh_type == 11 and link < len(sections):  # SHT_DYNSYM -> its SHT_STRTAB
            _t, offset, size, _l = sections[link]
            if offset + size <= len(buf):
                return offset, offset + size
    return None


def _links_hip(path: str) -> bool:
    """True if the shared library at ``path`` has HIP code in it.

    Looks for HIP's runtime library among the names in the ELF dynamic
    string table (its ``DT_NEEDED`` entries live there), which is a few
    hundred kilobytes even in a library of hundreds of megabytes.  A file
    that is not ELF, or whose sections cannot be read, is searched whole.
    The file is memory-mapped, never read into Python.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            span = _dynstr_range(buf) or (0, len(buf))
            return any(buf.find(marker, *span) != -1 for marker in _HIP_MARKERS)
    except (OSError, ValueError):  # unreadable, or empty (mmap refuses size 0)
        return False


def _package_dir(spec: ModuleSpec) -> str | None:
    if spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            return str(location)
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return os.path.dirname(spec.origin)
    return None


def _shared_libraries(folder: str) -> list[str]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [n for n in names if ".so" in n or n.endswith((".dylib", ".dll"))]


def llama_cpp_hip_build(
    find_spec: Callable[[str], ModuleSpec | None] = importlib.util.find_spec,
    *,
    environ: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Whether the installed llama-cpp-python can run on HIP, without importing it.

    llama-cpp-python installs llama.cpp's shared libraries into
    ``llama_cpp/lib/`` (its CMakeLists installs every target there; older
    wheels put ``libllama.so`` beside ``__init__.py``), and loads them from
    ``LLAMA_CPP_LIB_PATH`` instead when that is set.  A build with the HIP
    backend has ``libggml-hip.so``; one from before the backends were split
    out has the HIP code inside ``libggml.so`` or ``libllama.so``, which then
    link ``libamdhip64.so``.  CUDA and Vulkan builds offload to a GPU too,
    but not to this one, so they do not count.

    Returns ``(True, library path)`` or ``(False, one-line reason)``.
    """
    variables = os.environ if environ is None else environ
    try:
        spec = find_spec("llama_cpp")
    except (ImportError, ValueError):
        spec = None
    folder = _package_dir(spec) if spec is not None else None
    if folder is None:
        return False, f"llama-cpp-python is not installed: {INSTALL_COMMAND}"
    override = variables.get(env.LLAMA_CPP_LIB_PATH, "")
    folders = [override] if override else [os.path.join(folder, "lib"), folder]
    for where in folders:
        libraries = _shared_libraries(where)
        for name in libraries:
            if name.startswith("libggml-hip") or name.startswith("ggml-hip"):
                return True, os.path.join(where, name)
        for name in libraries:
            if name.startswith(("libggml.", "libllama.", "ggml.", "llama.")):
                path = os.path.join(where, name)
                if _links_hip(path):
                    return True, path
    return (
        False,
        "the installed llama-cpp-python was built without HIP; reinstall it with: "
        + REINSTALL_COMMAND,
    )


# --- the verdict --------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / _GIB:.1f}"


def describe(gpu: AmdGpu) -> str:
    """``"AMD Radeon RX 7900 XTX (gfx1100), 24.0 GiB VRAM, 23.1 GiB free"``."""
    target = gpu.gfx or "unknown gfx target"
    kind = ", integrated" if gpu.is_integrated else ""
    return (
        f"{gpu.name} ({target}{kind}), {_gib(gpu.vram_total)} GiB VRAM, "
        f"{_gib(gpu.vram_free)} GiB free"
    )


def _no(reason: str, gpus: tuple[AmdGpu, ...] = ()) -> Detection:
    return Detection(available=False, reason=reason, gpus=gpus, chosen=None, main_gpu=None)


def detect(
    *,
    dev_root: str = "/dev",
    sys_root: str = "/sys",
    platform: str = sys.platform,
    environ: Mapping[str, str] = os.environ,
    hip_build: Callable[[], tuple[bool, str]] = llama_cpp_hip_build,
    access: Callable[[str, int], bool] = os.access,
    ids_paths: Sequence[str] | None = None,
) -> Detection:
    """Decide whether the ROCm backend can run, checking in this order:

    Linux; ``/dev/kfd`` (the amdgpu driver's compute interface); a GPU node
    in the KFD topology; read-write access to ``/dev/kfd`` and to the chosen
    GPU's render node; llama-cpp-python installed; built with HIP.

    ``access`` is ``os.access`` by default; tests pass their own, as root
    passes every permission check.
    """
    if not platform.startswith("linux"):
        return _no(f"ROCm needs Linux; this is {platform}")
    kfd = os.path.join(dev_root, "kfd")
    if not os.path.exists(kfd):
        return _no("no /dev/kfd: the amdgpu kernel driver is not loaded")
    gpus = find_gpus(sys_root, ids_paths=ids_paths)
    if not gpus:
        return _no("no AMD GPU node under /sys/class/kfd/kfd/topology/nodes")
    groups = (
        "add the user to the render and video groups "
        "(sudo usermod -aG render,video $USER) and log in again"
    )
    if not access(kfd, os.R_OK | os.W_OK):
        return _no(f"permission denied on /dev/kfd: {groups}", gpus)

    visible = _visible(gpus, environ)
    if visible is None:
        chosen = choose_gpu(gpus)
    else:
        shown, used = visible
        if not shown:
            return _no(
                f"{' and '.join(used)} leaves no AMD GPU visible "
                f"(HIP numbers {len(gpus)} here: 0-{len(gpus) - 1})",
                gpus,
            )
        chosen = shown[0]
    assert chosen is not None  # gpus is not empty

    if chosen.render_minor > 0:
        render = os.path.join(dev_root, "dri", f"renderD{chosen.render_minor}")
        if os.path.exists(render) and not access(render, os.R_OK | os.W_OK):
            denied = f"permission denied on /dev/dri/renderD{chosen.render_minor}"
            return _no(f"{denied}: {groups}", gpus)

    ok, why = hip_build()
    if not ok:
        return _no(why, gpus)
    return Detection(
        available=True,
        reason=describe(chosen),
        gpus=gpus,
        chosen=chosen,
        main_gpu=None if visible is not None else chosen.hip_index,
    )
