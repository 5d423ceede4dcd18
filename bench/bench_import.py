"""Benchmark: what ``import inference`` adds to a Python start-up.

Run by hand (not in CI):

    .venv/bin/python bench/bench_import.py --runs 15

Alternates ``python -c pass`` and ``python -c "import inference"`` (warm
bytecode, kept out of the tree) and reports the medians and their
difference. The target is under 20 ms; the unit tests count the modules the
import loads instead of timing it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _time(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
        bare = [sys.executable, "-c", "pass"]
        loaded = [sys.executable, "-c", "import inference"]
        for cmd in (bare, loaded):  # compile and cache the bytecode
            subprocess.run(cmd, env=env, check=True)
        times: dict[str, list[float]] = {"bare": [], "import": []}
        for _ in range(args.runs):
            times["bare"].append(_time(bare, env))
            times["import"].append(_time(loaded, env))
    bare_s = statistics.median(times["bare"])
    import_s = statistics.median(times["import"])
    print(
        f"python -c pass: {bare_s * 1000:.1f} ms; python -c 'import inference': "
        f"{import_s * 1000:.1f} ms; import inference adds {(import_s - bare_s) * 1000:.1f} ms "
        f"(medians of {args.runs} alternating runs)"
    )


if __name__ == "__main__":
    main()
