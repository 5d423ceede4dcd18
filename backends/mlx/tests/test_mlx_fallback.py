"""load_model falls back from ``mlx`` to ``llama_cpp`` when MLX declines a file.

On a Mac, ``mlx`` ranks first (priority 100). Here MLX has only its CPU
device (priority 10, below llama.cpp), so the Mac's ranking is stood in for by
giving the real ``mlx`` backend the verdict its detection gives on Apple
silicon; its ``check_model`` and the loading are the real ones. The file is
SmolLM2 requantised to Q5_K_M by llama.cpp's own quantiser: a type the MLX
loader refuses today.
"""

from __future__ import annotations

import ctypes
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import inference
from inference import cli

pytest.importorskip("llama_cpp")


def requantise(source: str, target: Path, ftype_name: str) -> Path:
    """``source`` requantised by llama.cpp's ``llama_model_quantize``."""
    import llama_cpp as lc

    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, ftype_name)
    params.allow_requantize = True
    params.nthread = 2
    rc = lc.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize returned {rc}"
    return target


@pytest.fixture(scope="module")
def q5_k_m(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("requantised") / "SmolLM2-135M-Instruct.Q5_K_M.gguf"
    return requantise(model_path, out, "LLAMA_FTYPE_MOSTLY_Q5_K_M")


@pytest.fixture
def mlx_ranked_first(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from inference_mlx.detect import PRIORITY_METAL, MlxDevice

    backend = inference.get_backend("mlx")
    assert backend is not None
    device = MlxDevice(True, "metal", PRIORITY_METAL, "Apple GPU via Metal (stand-in ranking)")
    monkeypatch.setattr(backend, "_device", device)
    yield


@pytest.mark.usefixtures("mlx_ranked_first")
def test_mlx_declines_q5_k_and_llama_cpp_loads_it(q5_k_m: Path, model_path: str) -> None:
    chain = inference.candidates(q5_k_m)
    first, second = chain[0], chain[1]
    assert (first.name, first.chosen) == ("mlx", False)
    assert "Q5_K" in first.reason and "cannot read" in first.reason
    assert (second.name, second.chosen) == ("llama_cpp", True)
    with inference.load_model(q5_k_m) as model:
        assert model.info.backend == "llama_cpp"
        text = model.chat(
            [{"role": "user", "content": "Name a large animal."}], max_tokens=8
        ).text()
        assert text.strip()
    # A file MLX can read stays with MLX, the better backend on a Mac.
    assert inference.default_backend(model_path).name == "mlx"


@pytest.mark.usefixtures("mlx_ranked_first")
def test_explicit_mlx_is_not_overridden(q5_k_m: Path) -> None:
    with pytest.raises(inference.ModelLoadError, match="Q5_K"):
        inference.load_model(q5_k_m, backend="mlx")


@pytest.mark.usefixtures("mlx_ranked_first")
def test_inference_info_shows_the_fallback_chain(q5_k_m: Path) -> None:
    out = io.StringIO()
    assert cli.main(["info", str(q5_k_m)], stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "selection (best first):"
    assert lines[1].startswith("  mlx             no       tensor types that mlx")
    assert lines[2].startswith("  llama_cpp       loads it llama.cpp in-process")
    assert any(line.startswith("backend           llama_cpp") for line in lines)
