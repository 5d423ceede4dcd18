"""Fake /sys and /dev trees laid out like real AMD machines, for the ROCm tests.

The node properties follow the kernel's KFD topology output: the RX 7900 XTX
node is the dump in tinygrad's ``test/mockgpu/amd/amdgpu.py``; CPU nodes
print the same keys with zeros (GPU-only keys are left out, as the kernel
does); the Raven Ridge node with CPU cores and SIMDs together is the
older-kernel dump from ROCm/amdgpu issue #66.  Marketing names come from
libdrm's ``amdgpu.ids``, whose lines are ``device,<tab>revision,<tab>name``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from inference_rocm.detect import (
    AmdGpu,
    Detection,
    detect,
    find_gpus,
)

GIB = 1 << 30
MIB = 1 << 20

# Keys the kernel prints for every node, in its order (kfd_topology.c node_show).
COMMON_KEYS = [
    "cpu_cores_count",
    "simd_count",
    "mem_banks_count",
    "caches_count",
    "io_links_count",
    "p2p_links_count",
    "cpu_core_id_base",
    "simd_id_base",
    "max_waves_per_simd",
    "lds_size_in_kb",
    "gds_size_in_kb",
    "num_gws",
    "wave_front_size",
    "array_count",
    "simd_arrays_per_engine",
    "cu_per_simd_array",
    "simd_per_cu",
    "max_slots_scratch_cu",
    "gfx_target_version",
    "vendor_id",
    "device_id",
    "location_id",
    "domain",
    "drm_render_minor",
    "hive_id",
    "num_sdma_engines",
    "num_sdma_xgmi_engines",
    "num_sdma_queues_per_engine",
    "num_cp_queues",
]

# Radeon RX 7900 XTX (Navi 31, gfx1100), verbatim from tinygrad's mock GPU.
RX7900XTX = """cpu_cores_count 0
simd_count 192
mem_banks_count 1
caches_count 206
io_links_count 1
p2p_links_count 5
cpu_core_id_base 0
simd_id_base 2147488032
max_waves_per_simd 16
lds_size_in_kb 64
gds_size_in_kb 0
num_gws 64
wave_front_size 32
array_count 12
simd_arrays_per_engine 2
cu_per_simd_array 8
simd_per_cu 2
max_slots_scratch_cu 32
gfx_target_version 110000
vendor_id 4098
device_id 29772
location_id 34304
domain 0
drm_render_minor {minor}
hive_id 0
num_sdma_engines 2
num_sdma_xgmi_engines 0
num_sdma_queues_per_engine 6
num_cp_queues 8
max_engine_clk_fcompute 2482
local_mem_size 0
fw_version 2140
capability 671588992
debug_prop 1495
sdma_fw_version 20
unique_id 11673270660693242239
num_xcc 1
max_engine_clk_ccompute 2400
"""

# Raven Ridge on a 2019 kernel: CPU cores and the iGPU on one node, no
# gfx_target_version yet (ROCm/amdgpu#66).
RAVEN_COMBINED = """cpu_cores_count 8
simd_count 44
mem_banks_count 1
caches_count 13
io_links_count 1
cpu_core_id_base 0
simd_id_base 0
max_waves_per_simd 40
lds_size_in_kb 64
gds_size_in_kb 0
wave_front_size 64
array_count 1
simd_arrays_per_engine 1
cu_per_simd_array 11
simd_per_cu 4
max_slots_scratch_cu 32
vendor_id 4098
device_id 5597
location_id 2560
drm_render_minor 128
max_engine_clk_fcompute 1250
local_mem_size 0
fw_version 363
capability 8834
max_engine_clk_ccompute 3600
"""

AMDGPU_IDS = """# List of AMDGPU IDs
#
# Syntax:
# device_id,\trevision_id,\tproduct_name        <-- single tab after comma

1.0.0
15BF,\tC1,\tAMD Radeon 780M Graphics
15BF,\tC3,\tAMD Radeon 760M Graphics
15DD,\tC4,\tAMD Radeon Vega 8 Graphics
164E,\tD8,\tAMD Radeon 610M
744C,\tC8,\tAMD Radeon RX 7900 XTX
744C,\tCC,\tAMD Radeon RX 7900 XT
"""


def cpu_props(cores: int) -> str:
    values = dict.fromkeys(COMMON_KEYS, 0)
    values["cpu_cores_count"] = cores
    values["mem_banks_count"] = 1
    values["io_links_count"] = 1
    lines = [f"{k} {v}" for k, v in values.items()] + ["max_engine_clk_ccompute 4200"]
    return "\n".join(lines) + "\n"


def igpu_props(*, gfx: int, simds: int, device_id: int, minor: int, location: int) -> str:
    """An APU's GPU node on a current kernel: its own node, no CPU cores."""
    values = dict.fromkeys(COMMON_KEYS, 0)
    values.update(
        simd_count=simds,
        mem_banks_count=1,
        caches_count=32,
        io_links_count=1,
        max_waves_per_simd=16,
        lds_size_in_kb=64,
        num_gws=64,
        wave_front_size=32,
        array_count=2,
        simd_arrays_per_engine=2,
        cu_per_simd_array=simds // 4,
        simd_per_cu=2,
        max_slots_scratch_cu=32,
        gfx_target_version=gfx,
        vendor_id=4098,
        device_id=device_id,
        location_id=location,
        drm_render_minor=minor,
        num_sdma_engines=1,
        num_sdma_queues_per_engine=2,
        num_cp_queues=8,
    )
    extra = [
        "max_engine_clk_fcompute 2700",
        "local_mem_size 0",
        "fw_version 2140",
        "capability 671588992",
        "debug_prop 1495",
        "sdma_fw_version 20",
        "unique_id 0",
        "num_xcc 1",
        "max_engine_clk_ccompute 4000",
    ]
    return "\n".join([f"{k} {v}" for k, v in values.items()] + extra) + "\n"


class Machine:
    """A fake machine: ``root/sys``, ``root/dev`` and an ``amdgpu.ids``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.dev = root / "dev"
        self.ids = root / "usr/share/libdrm/amdgpu.ids"
        self.ids.parent.mkdir(parents=True)
        self.ids.write_text(AMDGPU_IDS)
        (self.sys / "class/drm").mkdir(parents=True)
        self.dev.mkdir()

    def load_amdgpu(self) -> None:
        """What loading the amdgpu driver creates: /dev/kfd and the topology."""
        (self.dev / "kfd").touch()
        (self.dev / "dri").mkdir(exist_ok=True)
        nodes = self.sys / "class/kfd/kfd/topology/nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        (self.sys / "class/kfd/kfd/topology/generation_id").write_text("1\n")

    def node(self, n: int, properties: str, *, name: str = "", gpu_id: int = 0) -> Path:
        node = self.sys / f"class/kfd/kfd/topology/nodes/{n}"
        (node / "mem_banks/0").mkdir(parents=True)
        (node / "properties").write_text(properties)
        (node / "name").write_text(name + "\n")
        (node / "gpu_id").write_text(f"{gpu_id}\n")
        return node

    def card(
        self,
        minor: int,
        pci: str,
        *,
        device: int,
        revision: int,
        vram_total: int,
        vram_used: int,
        product_name: str | None = "",
        vendor: int = 0x1002,
    ) -> Path:
        """The PCI device and its DRM nodes, linked as sysfs links them."""
        dev_dir = self.sys / "devices/pci0000:00/0000:00:01.1" / pci
        (dev_dir / "drm" / f"renderD{minor}").mkdir(parents=True)
        (dev_dir / "drm" / f"card{minor - 128}").mkdir(parents=True)
        for name, value in {
            "vendor": f"0x{vendor:04x}",
            "device": f"0x{device:04x}",
            "revision": f"0x{revision:02x}",
            "mem_info_vram_total": str(vram_total),
            "mem_info_vram_used": str(vram_used),
            "mem_info_vis_vram_total": str(min(vram_total, 256 * MIB)),
            "mem_info_gtt_total": str(16 * GIB),
            "mem_info_gtt_used": str(20 * MIB),
        }.items():
            (dev_dir / name).write_text(value + "\n")
        if product_name is not None:
            (dev_dir / "product_name").write_text(product_name + "\n")
        for entry in (f"renderD{minor}", f"card{minor - 128}"):
            drm_dir = dev_dir / "drm" / entry
            (drm_dir / "device").symlink_to("../..", target_is_directory=True)
            link = self.sys / "class/drm" / entry
            link.symlink_to(os.path.relpath(drm_dir, link.parent), target_is_directory=True)
        if vendor == 0x1002:
            (self.dev / "dri").mkdir(exist_ok=True)
            (self.dev / "dri" / f"renderD{minor}").touch()
        return dev_dir

    def detect(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        hip: tuple[bool, str] = (True, "/site-packages/llama_cpp/lib/libggml-hip.so"),
        access: Callable[[str, int], bool] = lambda path, mode: True,
        platform: str = "linux",
    ) -> Detection:
        return detect(
            dev_root=str(self.dev),
            sys_root=str(self.sys),
            platform=platform,
            environ={} if environ is None else environ,
            hip_build=lambda: hip,
            access=access,
            ids_paths=[str(self.ids)],
        )

    def gpus(self) -> tuple[AmdGpu, ...]:
        return find_gpus(str(self.sys), ids_paths=[str(self.ids)])


def discrete_box(tmp_path: Path) -> Machine:
    """A Ryzen 9 7950X with graphics off in the BIOS and an RX 7900 XTX."""
    m = Machine(tmp_path)
    m.load_amdgpu()
    m.node(0, cpu_props(32))
    m.node(1, RX7900XTX.format(minor=128), name="ip discovery", gpu_id=4672)
    m.card(
        128,
        "0000:03:00.0",
        device=0x744C,
        revision=0xC8,
        vram_total=25753026560,
        vram_used=1_020_000_000,
    )
    return m


def apu_and_discrete_box(tmp_path: Path) -> Machine:
    """A Ryzen 7000 desktop: its 2-CU Raphael iGPU (gfx1036) enumerates first."""
    m = Machine(tmp_path)
    m.load_amdgpu()
    m.node(0, cpu_props(16))
    m.node(
        1,
        igpu_props(gfx=100306, simds=4, device_id=0x164E, minor=128, location=0x1300),
        name="ip discovery",
    )
    m.node(2, RX7900XTX.format(minor=129), name="ip discovery")
    m.card(
        128, "0000:13:00.0", device=0x164E, revision=0xD8, vram_total=512 * MIB, vram_used=40 * MIB
    )
    m.card(
        129,
        "0000:03:00.0",
        device=0x744C,
        revision=0xC8,
        vram_total=25753026560,
        vram_used=600 * MIB,
    )
    return m


def laptop_apu_box(tmp_path: Path) -> Machine:
    """A Ryzen 7 7840U laptop: Radeon 780M (gfx1103), 4 GiB carve-out set in the BIOS."""
    m = Machine(tmp_path)
    m.load_amdgpu()
    m.node(0, cpu_props(16))
    m.node(
        1,
        igpu_props(gfx=110003, simds=24, device_id=0x15BF, minor=128, location=0xC500),
        name="ip discovery",
    )
    m.card(
        128, "0000:c5:00.0", device=0x15BF, revision=0xC1, vram_total=4 * GIB, vram_used=300 * MIB
    )
    return m
