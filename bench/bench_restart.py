"""Time to first token in a fresh process, for a ~2,000-token system prompt an
earlier process saw: restored from the prefix cache's disk tier
(``cache_dir``) against a cold prefill, on llama.cpp, in alternating rounds
of one run (each measurement its own process).

    .venv/bin/python bench/bench_restart.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import inference
from inference import Message
from inference.testing import smollm2_path

system = " ".join(
    f"Rule {i}: answer in one short sentence, be polite, cite no sources, and keep "
    f"to the topic of question {i} without repeating the rules back."
    for i in range(60)
)
folder = sys.argv[1]
opts = {"cache_dir": folder} if folder else {"cache_host_mib": 0}
with inference.load_model(
    smollm2_path(), backend="llama_cpp", context_len=4096, parallel_slots=1, **opts
) as m:
    m.generate("warm up", max_tokens=1).text()
    stream = m.chat([Message("system", system), Message("user", sys.argv[2])], max_tokens=8)
    text = stream.text()
    got = stream.metrics
print(json.dumps({
    "ttft": got.time_to_first_token, "prompt": got.prompt_tokens,
    "cached": got.cached_tokens, "tier": got.cache_tier, "text": text,
}))
"""


def child(folder: str, question: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, folder, question],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="inference-kv-")
    try:
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        seen = child(folder, "Name a colour.")  # the earlier process: writes the entry
        cold: list[float] = []
        warm: list[float] = []
        answers = set()
        for r in range(args.rounds):
            for restored in (r % 2 == 0, r % 2 != 0):
                got = child(folder if restored else "", "Name a colour.")
                (warm if restored else cold).append(float(str(got["ttft"])))
                answers.add(str(got["text"]))
                if restored:
                    assert got["tier"] == "disk", got
        print(f"load after: {os.getloadavg()[0]:.2f}")
        print(f"prompt: {seen['prompt']} tokens; answers equal: {len(answers) == 1}")
        c, w = statistics.median(cold), statistics.median(warm)
        print("| first token | median |")
        print("|---|---|")
        print(f"| cold prefill | {c * 1000:.0f} ms |")
        print(f"| restored from disk | {w * 1000:.0f} ms ({w / c:.1%} of cold) |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
