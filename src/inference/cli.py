"""The ``inference`` command: list backends, find, inspect, run and time models.

Errors print one line to stderr and exit 1 (2 for bad usage), with no
traceback; ``INFERENCE_LOG=debug`` shows more.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from . import env
from .discovery import discover
from .errors import InferenceError
from .options import GenerateConfig, generate_config
from .registry import backend_status, candidates, install_command, load_model
from .types import GenerateMetrics, Message

__all__ = ["main"]

DEFAULT_BENCH_PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather and the keeper's thoughts."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference",
        description="Run language models on whatever hardware is here.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_load(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="model file, directory or http(s) URL")
        p.add_argument("--backend", default="", help="backend name (default: best available)")
        p.add_argument("--context-len", type=int, default=0, help="context window in tokens")
        p.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload (-1: all)")

    def common_gen(p: argparse.ArgumentParser, max_tokens: int = 256) -> None:
        p.add_argument("--max-tokens", type=int, default=max_tokens)
        p.add_argument("--temperature", type=float, default=0.0)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=0.0)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")

    p = sub.add_parser("backends", help="list backends, whether they can run here and why")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("discover", help="find models in a directory")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("info", help="load a model and show what it is")
    common_load(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("generate", help="stream a continuation of PROMPT")
    common_load(p)
    p.add_argument("prompt")
    common_gen(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")

    p = sub.add_parser("chat", help="chat with a model (type /exit to leave)")
    common_load(p)
    common_gen(p, max_tokens=512)
    p.add_argument("--system", default="", help="system message")
    p.add_argument("--json", action="store_true", help="one JSON object per reply")

    p = sub.add_parser("serve", help="serve a model over OpenAI- and Ollama-compatible HTTP")
    common_load(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--parallel", type=int, default=4, help="requests generated at once, batched (default: 4)"
    )
    p.add_argument("--api-key", default="", help="require this bearer token")
    p.add_argument("--queue", type=int, default=128, help="requests that may wait (then 429)")
    p.add_argument("--max-tokens-cap", type=int, default=8192, help="the most max_tokens allowed")
    p.add_argument("--log-prompts", action="store_true", help="log each request's prompt")

    p = sub.add_parser("bench", help="time prefill and decode over a few runs")
    common_load(p)
    common_gen(p, max_tokens=64)
    p.add_argument("--prompt", default=DEFAULT_BENCH_PROMPT)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _gen_config(args: argparse.Namespace) -> GenerateConfig:
    return generate_config(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    )


def _load(args: argparse.Namespace) -> Any:
    return load_model(
        args.model,
        backend=args.backend,
        context_len=args.context_len,
        gpu_layers=args.gpu_layers,
    )


def _cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    statuses = backend_status()
    if args.json:
        json.dump([asdict(s) for s in statuses], out, indent=2)
        out.write("\n")
        return 0
    if not statuses:
        out.write(f"no backends installed; try: {install_command('llama_cpp')}\n")
        return 0
    width = max(len(s.name) for s in statuses)
    fwidth = max(15, *(len(",".join(s.formats)) for s in statuses))
    out.write(f"{'NAME':<{width}}  AVAILABLE  PRIORITY  {'FORMATS':<{fwidth}}  REASON\n")
    for s in statuses:
        avail = "broken" if s.broken else ("yes" if s.available else "no")
        formats = ",".join(s.formats) or "-"
        out.write(
            f"{s.name:<{width}}  {avail:<9}  {s.priority:>8}  {formats:<{fwidth}}  {s.reason}\n"
        )
    return 0


def _cmd_discover(args: argparse.Namespace, out: TextIO) -> int:
    found = list(discover(args.directory))
    if args.json:
        json.dump([asdict(m) for m in found], out, indent=2)
        out.write("\n")
        return 0
    if not found:
        out.write(f"no models found in {args.directory}\n")
        return 0
    for m in found:
        quant = "-"
        if m.quant_bits:
            group = f" g{m.quant_group_size}" if m.quant_group_size else ""
            quant = f"{m.quant_bits}-bit{group}"
        error = dict(m.extra).get("error")
        detail = (
            f"error: {error}"
            if error
            else (
                f"{m.architecture or '?'}  {quant}  ctx {m.context_length or '?'}  "
                f"{m.file_count} file(s)  {m.size_bytes / 2**20:.1f} MiB"
            )
        )
        out.write(f"{m.path}  [{m.format}]  {detail}\n")
    return 0


def _cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    # Which backend would load it and why each other one would not: shown
    # before loading, so that it is there when no backend can.
    chain = [] if args.backend else candidates(args.model)
    if chain and not args.json:
        out.write("selection (best first):\n")
        for c in chain:
            verdict = "loads it" if c.chosen else "no"
            out.write(f"  {c.name:<15} {verdict:<8} {c.reason}\n")
        out.flush()
    with _load(args) as model:
        info = asdict(model.info)
        if args.json:
            if chain:
                info["selection"] = [asdict(c) for c in chain]
            json.dump(info, out, indent=2)
            out.write("\n")
        else:
            for key, value in info.items():
                out.write(f"{key:<17} {value}\n")
    return 0


def _metrics_json(m: GenerateMetrics | None) -> dict[str, Any] | None:
    return asdict(m) if m is not None else None


def _cmd_generate(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _gen_config(args)
    with _load(args) as model:
        stream = model.generate(args.prompt, cfg)
        if args.json:
            tokens = list(stream)
            json.dump(
                {
                    "text": "".join(t.text for t in tokens),
                    "tokens": [{"id": t.id, "text": t.text} for t in tokens],
                    "finish_reason": stream.finish_reason,
                    "metrics": _metrics_json(stream.metrics),
                },
                out,
            )
            out.write("\n")
            return 0
        try:
            for tok in stream:
                out.write(tok.text)
                out.flush()
        finally:
            stream.close()
        out.write("\n")
    return 0


def _cmd_chat(args: argparse.Namespace, out: TextIO, inp: TextIO) -> int:
    cfg = _gen_config(args)
    interactive = inp.isatty() and not args.json
    with _load(args) as model:
        history: list[Message] = []
        if args.system:
            history.append(Message("system", args.system))
        while True:
            if interactive:
                out.write("> ")
                out.flush()
            line = inp.readline()
            if not line:
                break
            text = line.strip()
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history = history[:1] if args.system else []
                continue
            if not text:
                continue
            history.append(Message("user", text))
            stream = model.chat(history, cfg)
            parts: list[str] = []
            try:
                for tok in stream:
                    parts.append(tok.text)
                    if not args.json:
                        out.write(tok.text)
                        out.flush()
            except KeyboardInterrupt:
                stream.close()
                out.write("\n[interrupted]\n")
            reply = "".join(parts)
            history.append(Message("assistant", reply))
            if args.json:
                json.dump(
                    {
                        "reply": reply,
                        "finish_reason": stream.finish_reason,
                        "metrics": _metrics_json(stream.metrics),
                    },
                    out,
                )
            out.write("\n")
            out.flush()
    return 0


def _cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    if args.runs < 1:
        raise ValueError("--runs must be at least 1")
    cfg = _gen_config(args)
    with _load(args) as model:
        model.generate(args.prompt, cfg, max_tokens=4).text()  # warm-up
        runs: list[GenerateMetrics] = []
        for run in range(args.runs):
            # Each run's prompt starts differently, so that an engine's prompt
            # cache (llama.cpp reuses a shared prefix) cannot skip the prefill.
            stream = model.generate(f"Run {run + 1}. {args.prompt}", cfg)
            stream.text()
            assert stream.metrics is not None
            runs.append(stream.metrics)
        backend = model.info.backend

    def med(attr: str) -> float:
        return statistics.median(float(getattr(m, attr) or 0) for m in runs)

    summary = {
        "backend": backend,
        "runs": len(runs),
        "prompt_tokens": runs[0].prompt_tokens,
        "generated_tokens": med("generated_tokens"),
        "time_to_first_token_s": med("time_to_first_token"),
        "prefill_tokens_per_second": med("prefill_tokens_per_second"),
        "decode_tokens_per_second": med("decode_tokens_per_second"),
        "peak_memory_bytes": max((m.peak_memory_bytes or 0) for m in runs) or None,
    }
    if args.json:
        json.dump(summary, out, indent=2)
        out.write("\n")
        return 0
    peak = summary["peak_memory_bytes"]
    out.write(
        f"backend {backend}, {len(runs)} runs (median), {summary['prompt_tokens']} prompt tokens, "
        f"{summary['generated_tokens']:.0f} generated\n"
        f"time to first token  {summary['time_to_first_token_s'] * 1000:8.1f} ms\n"
        f"prefill              {summary['prefill_tokens_per_second']:8.1f} tokens/s\n"
        f"decode               {summary['decode_tokens_per_second']:8.1f} tokens/s\n"
        f"peak memory          {f'{peak / 2**20:8.1f} MiB' if peak else '       -'}\n"
    )
    return 0


def _cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        import inference_server
    except ImportError:
        raise InferenceError(
            "inference serve needs the server distribution: pip install '.[server]'"
        ) from None
    return inference_server.serve(
        args.model,
        host=args.host,
        port=args.port,
        parallel=args.parallel,
        api_key=args.api_key,
        queue=args.queue,
        max_tokens_cap=args.max_tokens_cap,
        log_prompts=args.log_prompts,
        out=out,
        backend=args.backend,
        context_len=args.context_len,
        gpu_layers=args.gpu_layers,
    )


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stdin: TextIO | None = None
) -> int:
    """Run the CLI; returns the exit status."""
    out = stdout or sys.stdout
    inp = stdin or sys.stdin
    parser = _parser()
    args = parser.parse_args(argv)
    env.configure_logging()
    try:
        if args.command == "backends":
            return _cmd_backends(args, out)
        if args.command == "discover":
            return _cmd_discover(args, out)
        if args.command == "info":
            return _cmd_info(args, out)
        if args.command == "generate":
            return _cmd_generate(args, out)
        if args.command == "chat":
            return _cmd_chat(args, out, inp)
        if args.command == "bench":
            return _cmd_bench(args, out)
        if args.command == "serve":
            return _cmd_serve(args, out)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # One line, no traceback, whatever failed (a backend's own error
        # too); INFERENCE_LOG=debug logs the traceback.
        logging.getLogger("inference").debug("the command failed", exc_info=True)
        message = (
            str(exc)
            if isinstance(exc, (InferenceError, ValueError, TypeError))
            else (f"{type(exc).__name__}: {exc}")
        )
        sys.stderr.write(f"inference: error: {message}\n")
        return 1
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover
