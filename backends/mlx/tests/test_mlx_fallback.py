"""load_model falls back from ``mlx`` to ``llama_cpp`` when MLX declines a file.

On a Mac, ``mlx`` ranks first (priority 100). Here MLX has only its CPU
device (priority 10, below llama.cpp), so the Mac's ranking is stood in for by
giving the real ``mlx`` backend the verdict its detection gives on Apple
silicon; its ``check_model`` and the loading are the real ones.

Each kind of refusal gets a tiny random-weight file that llama.cpp runs and
the MLX loader declines from the header: an architecture it does not map
(gpt2), and a layout mlx-lm's model cannot take (Phi-3 with Q, K and V as
separate matrices, which llama.cpp also reads). Tensor types: the loader
decodes every type gguf-py can, and a file llama.cpp makes has no other (the
refusal of an undecodable type is tested in test_mlx_gguf_loader.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import inference
from inference import cli

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from tiny_gguf import write_tiny

REFUSED = {
    "gpt2": (True, "architecture 'gpt2' has no MLX loader"),
    "phi3": (False, "mlx-lm's phi3 model fuses them"),
}


@pytest.fixture(scope="module", params=sorted(REFUSED))
def refused(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    arch = request.param
    fused, reason = REFUSED[arch]
    path = write_tiny(tmp_path_factory.mktemp("refused") / f"tiny-{arch}.gguf", arch, fused=fused)
    return path, reason


@pytest.fixture
def mlx_ranked_first(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from inference_mlx.detect import PRIORITY_METAL, MlxDevice

    backend = inference.get_backend("mlx")
    assert backend is not None
    device = MlxDevice(True, "metal", PRIORITY_METAL, "Apple GPU via Metal (stand-in ranking)")
    monkeypatch.setattr(backend, "_device", device)
    yield


@pytest.mark.usefixtures("mlx_ranked_first")
def test_mlx_declines_and_llama_cpp_loads_it(refused: tuple[Path, str], model_path: str) -> None:
    path, reason = refused
    chain = inference.candidates(path)
    first, second = chain[0], chain[1]
    assert (first.name, first.chosen) == ("mlx", False)
    assert reason in first.reason
    assert (second.name, second.chosen) == ("llama_cpp", True)
    with inference.load_model(path) as model:
        assert model.info.backend == "llama_cpp"
        tokens = list(model.generate("w1 w2 w3", max_tokens=4, stop_tokens=()))
        assert len(tokens) == 4
    # A file MLX can read stays with MLX, the better backend on a Mac.
    assert inference.default_backend(model_path).name == "mlx"


@pytest.mark.usefixtures("mlx_ranked_first")
def test_explicit_mlx_is_not_overridden(refused: tuple[Path, str]) -> None:
    path, reason = refused
    with pytest.raises(inference.ModelLoadError, match=reason):
        inference.load_model(path, backend="mlx")


@pytest.mark.usefixtures("mlx_ranked_first")
def test_inference_info_shows_the_fallback_chain(refused: tuple[Path, str]) -> None:
    path, reason = refused
    out = io.StringIO()
    assert cli.main(["info", str(path)], stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "selection (best first):"
    assert lines[1].startswith("  mlx             no       ") and reason in lines[1]
    assert lines[2].startswith("  llama_cpp       loads it llama.cpp in-process")
    assert any(line.startswith("backend           llama_cpp") for line in lines)
