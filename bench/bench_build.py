"""Benchmark: what the scripts' engine build costs against a native build.

Run by hand (not in CI):

    .venv/bin/python scripts/native_engine.py --no-amx   # once: ~1 minute
    .venv/bin/python bench/bench_build.py --rounds 5

The scripts build llama.cpp with ``GGML_NATIVE=OFF`` and the SIMD options the
CPU reports, AMX off (``inference_llamacpp.build``). Against it stand the
GGML_NATIVE builds of ``scripts/native_engine.py``: plain native (which dies
on a CPU that reports AMX and faults on it; reported, not timed) and native
without AMX (``-mno-amx-*``, the closest native build that runs on such a
CPU). Each round starts one child process per build, in turn, which loads the
model through the ``llama_cpp`` backend with ``LLAMA_CPP_LIB_PATH`` pointing at
that build and times decode (128 greedy tokens) and prefill (a ~320-token
prompt) as ``bench_llamacpp.py`` does. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[2])
import bench_llamacpp as b
model, run = b.make_inference(sys.argv[1])
run(b.PROMPT, 8)
n_long = len(model.encode(b.LONG_PROMPT))
_ttft, dt, count = run(b.PROMPT, b.DECODE_TOKENS)
ttft, _dt, _count = run(b.LONG_PROMPT, 1)
print(json.dumps({"decode_tps": (count - 1) / dt, "prefill_tps": n_long / ttft}))
"""


def _native(flag: str | None) -> str | None:
    argv = [sys.executable, str(ROOT / "scripts" / "native_engine.py")]
    done = subprocess.run(argv + ([flag] if flag else []), capture_output=True, text=True)
    out = done.stdout.strip()
    return out or None


def _run(model: str, lib: str | None) -> dict[str, float] | str:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, model, str(HERE)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"fails: {last}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_llamacpp import _model_path

    model = _model_path(args.model)
    builds: dict[str, str | None] = {"scripts' build (non-native, no AMX)": None}
    for label, flag in (("native", None), ("native without AMX", "--no-amx")):
        lib = _native(flag)
        if lib:
            builds[label] = lib
    results: dict[str, list[dict[str, float]]] = {k: [] for k in builds}
    failed: dict[str, str] = {}
    for _ in range(args.rounds):
        for label, lib in builds.items():
            if label in failed:
                continue
            got = _run(model, lib)
            if isinstance(got, str):
                failed[label] = got
            else:
                results[label].append(got)
    ours = results[next(iter(builds))]
    base = {k: statistics.median(r[k] for r in ours) for k in ("decode_tps", "prefill_tps")}
    print(f"model {os.path.basename(model)}, {args.rounds} rounds (medians)\n")
    print(f"{'build':<38}{'decode tok/s':>14}{'prefill tok/s':>15}{'ours/this':>20}")
    for label in builds:
        if label in failed:
            print(f"{label:<38}{failed[label]}")
            continue
        dec = statistics.median(r["decode_tps"] for r in results[label])
        pre = statistics.median(r["prefill_tps"] for r in results[label])
        ratio = f"{base['decode_tps'] / dec:.3f} / {base['prefill_tps'] / pre:.3f}"
        print(f"{label:<38}{dec:>14.1f}{pre:>15.1f}{ratio:>20}")


if __name__ == "__main__":
    main()
