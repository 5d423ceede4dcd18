"""Time to first token in a fresh process, for a ~2,000-token system prompt an
earlier process saw: restored from the prefix cache's disk tier
(``cache_dir``) against a cold prefill, in alternating rounds of one run
(each measurement its own process), and how far the restored answer is from
the cold one (its tokens, and the largest log-probability difference).

    .venv/bin/python bench/bench_restart.py [--rounds 3] [--backend llama_cpp|mlx]
        [--model smollm2|gemma3]

``--model gemma3`` is a tiny random-weight Gemma 3 (sliding-window layers of
128 tokens among global ones, written by the MLX tests' writer): its prefix
comes back from a block checkpoint. Its prompt is a ``generate`` prompt of
about 2,000 bytes (its vocabulary spells text byte by byte).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import inference
from inference import Message

backend, model, folder, question, how = sys.argv[1:6]
system = " ".join(
    f"Rule {i}: answer in one short sentence, be polite, cite no sources, and keep "
    f"to the topic of question {i} without repeating the rules back."
    for i in range(60)
)
opts = {"cache_dir": folder} if folder else {"cache_host_mib": 0}
if backend == "llama_cpp":
    opts.update(context_len=4096, parallel_slots=1)
with inference.load_model(model, backend=backend, **opts) as m:
    m.generate("warm up", max_tokens=1).text()
    if how == "chat":
        stream = m.chat(
            [Message("system", system), Message("user", question)], max_tokens=8, logprobs=0
        )
    else:
        # The tiny model's vocabulary spells text byte by byte: ~2,000 bytes.
        stream = m.generate(system[:2000] + " " + question, max_tokens=8, logprobs=0)
    tokens = list(stream)
    got = stream.metrics
print(json.dumps({
    "ttft": got.time_to_first_token, "prompt": got.prompt_tokens,
    "cached": got.cached_tokens, "tier": got.cache_tier,
    "ids": [t.id for t in tokens], "logprobs": [t.logprob for t in tokens],
}))
"""


def child(backend: str, model: str, folder: str, question: str) -> dict[str, object]:
    how = "generate" if model.endswith("gemma3.gguf") else "chat"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, backend, model, folder, question, how],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"the child failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def gemma3(folder: str) -> str:
    """The tiny random Gemma 3 of the llama.cpp tests, written into ``folder``."""
    where = ROOT / "backends" / "llamacpp" / "tests" / "gguf_files.py"
    spec = importlib.util.spec_from_file_location("gguf_files", where)
    assert spec is not None and spec.loader is not None
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    path = files.write_tiny_gemma3(Path(folder) / "gemma3.gguf", window=128, context=8192)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="llama_cpp", choices=["llama_cpp", "mlx"])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "gemma3"])
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="inference-kv-")
    models = tempfile.mkdtemp(prefix="inference-models-")
    try:
        if args.model == "gemma3":
            model = gemma3(models)
        else:
            from inference.testing import smollm2_path

            model = smollm2_path() or ""
        question = "Name a colour."
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        seen = child(args.backend, model, folder, question)  # the earlier process writes
        cold: list[float] = []
        warm: list[float] = []
        colds: list[dict[str, object]] = []
        warms: list[dict[str, object]] = []
        for r in range(args.rounds):
            for restored in (r % 2 == 0, r % 2 != 0):
                got = child(args.backend, model, folder if restored else "", question)
                (warm if restored else cold).append(float(str(got["ttft"])))
                (warms if restored else colds).append(got)
                if restored:
                    assert got["tier"] == "disk", got
        print(f"load after: {os.getloadavg()[0]:.2f}")
        same = all(w["ids"] == colds[0]["ids"] for w in warms + colds)
        gap = max(
            abs(float(a) - float(b))
            for w in warms
            for a, b in zip(w["logprobs"], colds[0]["logprobs"], strict=True)  # type: ignore[call-overload]
        )
        print(
            f"{args.backend}, {args.model}: prompt {seen['prompt']} tokens, "
            f"{warms[0]['cached']} restored; answers equal: {same}; "
            f"largest log-probability difference: {gap:.2g}"
        )
        c, w = statistics.median(cold), statistics.median(warm)
        print("| first token | median |")
        print("|---|---|")
        print(f"| cold prefill | {c * 1000:.0f} ms |")
        print(f"| restored from disk | {w * 1000:.0f} ms ({w / c:.1%} of cold) |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(models, ignore_errors=True)


if __name__ == "__main__":
    main()
