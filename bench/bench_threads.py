"""Two processes on one machine: does each keep a fair share of the cores?

Decodes with SmolLM2 on ``llama_cpp`` alone and then as two processes at
once, for each thread setting (the default, which follows the load:
inference_llamacpp.threads; fixed counts; optionally libgomp's spin-wait,
``GOMP_SPINCOUNT``), in alternating rounds; prints the median decode
tokens/s of each.

    .venv/bin/python bench/bench_threads.py --rounds 3 [--tokens 400]

A setting is good if two processes each keep about half of what one gets
alone, and one alone loses nothing against a thread per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time, inference
from inference.testing import smollm2_path
m = inference.load_model(smollm2_path(), backend="llama_cpp", threads=int(sys.argv[1]))
m.generate("Hello", max_tokens=8).text()  # warm
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
s = m.generate("Once upon a time", max_tokens=int(sys.argv[2]), temperature=0, stop=[])
s.text()
print(json.dumps(s.metrics.decode_tokens_per_second))
"""


def run(threads: int, spin: str | None, tokens: int, together: int) -> list[float]:
    env = dict(os.environ)
    env.pop("GOMP_SPINCOUNT", None)
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(threads), str(tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(together)
    ]
    for p in procs:  # all loaded and warm, then all decode at once
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [float(json.loads(p.communicate()[0].strip().splitlines()[-1])) for p in procs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--spins", default="", help="GOMP_SPINCOUNT values to try, fixed threads")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings: list[tuple[str, int, str | None]] = [
        ("default (threads follow the load)", 0, None),
        (f"threads={cores} (one per core, fixed)", cores, None),
        ("threads=1", 1, None),
    ]
    settings += [
        (f"threads={cores}, GOMP_SPINCOUNT={n}", cores, n) for n in args.spins.split(",") if n
    ]
    alone: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    pair: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.rounds):
        for name, threads, spin in settings:
            alone[name] += run(threads, spin, args.tokens, 1)
            pair[name] += run(threads, spin, args.tokens, 2)
        print(f"round {r + 1} done", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print("| setting | alone tok/s | each of two tok/s | two / alone |")
    print("|---|---|---|---|")
    for name, _, _ in settings:
        a, p = statistics.median(alone[name]), statistics.median(pair[name])
        print(f"| {name} | {a:.1f} | {p:.1f} | {p / a:.2f} |")


if __name__ == "__main__":
    main()
