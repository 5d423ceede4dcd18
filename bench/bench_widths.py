"""llama.cpp's raw decode times by width, and the most a draft model could gain.

    .venv/bin/python bench/bench_widths.py [--rounds 7] [--cells 780]
        [--types q4_1,q8_0,f16] [--draft q4_1] [--no-flash-attention]

Loads SmolLM2 in each weight type (Q4_1 as shipped, the others made by
llama.cpp's quantiser, the files ``bench_speculative.py`` uses) straight
through llama-cpp-python, fills ``--cells`` KV cells with the fixed
passage of ``bench/texts/`` (its ~680 tokens, then again), then times one
``llama_decode`` of 1, 2, 4, 8 and 16 tokens after it (removed again after
each), the types in turn (in alternating order) in every round; the
figures are medians over the rounds, in milliseconds.

Speculative decoding pays only where a decode of ``1 + k`` tokens costs
much less than ``1 + k`` single ones, and a draft model's guesses cost less
than the target's own decodes. So the bound it prints: a draft model
(``--draft``) guessing ``k`` tokens a step, every guess right, costs ``k`` of
its single decodes and one target decode of ``1 + k`` tokens, and emits
``1 + k`` tokens; the best ratio over the ``k`` measured (1, 3, 7 and 15)
against the target's single decodes is the most any acceptance rate can
give there. Prompt lookup's guesses
cost nothing to make, so its bound counts the target's decodes alone.
Check the machine's load first (``uptime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import bench_speculative
import llama_cpp

WIDTHS = (1, 2, 4, 8, 16)


class Probe:
    """One model at ``cells`` filled KV cells, whose decodes after them are timed."""

    def __init__(self, path: str, cells: int, threads: int, flash: bool) -> None:
        self.llama = llama_cpp.Llama(
            path, n_ctx=2048, n_batch=512, n_threads=threads, flash_attn=flash, verbose=False
        )
        tokens = self.llama.tokenize(bench_speculative.PROSE.encode())
        self.tokens = (tokens * (cells // len(tokens) + 1))[:cells]  # the passage, again if short
        self.llama.eval(self.tokens)

    def time(self, width: int) -> float:
        """Seconds for one decode of ``width`` tokens after the filled cells."""
        ctx: Any = self.llama.ctx
        base = len(self.tokens)
        batch = llama_cpp.llama_batch_init(width, 0, 1)
        try:
            batch.n_tokens = width
            for i in range(width):
                batch.token[i] = self.tokens[i]
                batch.pos[i] = base + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            start = time.perf_counter()
            code = llama_cpp.llama_decode(ctx, batch)
            seconds = time.perf_counter() - start
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, base, -1)
        assert code == 0, f"llama_decode returned {code}"
        return seconds


def bound(draft_one: float, target: dict[int, float]) -> tuple[float, int]:
    """The best ratio to plain decoding that guesses costing ``draft_one``
    seconds each could reach with every guess right, and the guesses a step
    that reaches it."""
    best = (0.0, 0)
    for width, seconds in target.items():
        if width > 1:
            k = width - 1
            ratio = (width / (k * draft_one + seconds)) / (1 / target[1])
            best = max(best, (ratio, k))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cells", type=int, default=780)
    parser.add_argument("--types", default="q4_1,q8_0,f16")
    parser.add_argument("--draft", default="q4_1")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-flash-attention", action="store_true")
    args = parser.parse_args()

    kinds = list(dict.fromkeys([*args.types.split(","), args.draft]))
    flash = not args.no_flash_attention
    probes = {
        k: Probe(bench_speculative._target(k), args.cells, args.threads, flash) for k in kinds
    }
    times: dict[str, dict[int, list[float]]] = {k: {w: [] for w in WIDTHS} for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            for width in WIDTHS:
                times[kind][width].append(probes[kind].time(width))
    medians = {k: {w: statistics.median(t) for w, t in by.items()} for k, by in times.items()}

    print(
        f"{args.cells} cells, {args.threads} threads, flash attention "
        f"{'on' if flash else 'off'}, medians of {args.rounds} rounds (ms)"
    )
    print("type   " + "".join(f"{w:>9}" for w in WIDTHS) + "   a token of 4 wide")
    for kind, by in medians.items():
        cells = "".join(f"{by[w] * 1000:9.1f}" for w in WIDTHS)
        print(f"{kind:6} {cells}   {by[4] / 4 / by[1]:.2f} of one alone")
    for kind, by in medians.items():
        ratio, k = bound(0.0, by)
        print(f"{kind}, prompt lookup: at most {ratio:.2f}x plain ({k} guesses a step, all right)")
        if kind != args.draft:
            ratio, k = bound(medians[args.draft][1], by)
            print(
                f"{kind}, draft {args.draft}: at most {ratio:.2f}x plain ({k} guesses, all right)"
            )


if __name__ == "__main__":
    main()
