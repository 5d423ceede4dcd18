"""The ``inference`` command: list backends, find, inspect, run and time models.

The generation flags are derived from :class:`~inference.GenerateConfig`'s
fields (a flag per option whose value fits on a command line, its help the
option's builder's, its default the config's), and ``-o KEY=VALUE`` takes
any option, the value read as JSON where it parses; the config checks them
all. Errors print one line to stderr and exit 1 (2 for bad usage), with no
traceback; ``INFERENCE_LOG=debug`` shows more.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, fields
from typing import Any, TextIO

from . import __version__, env, options
from .discovery import discover
from .errors import InferenceError
from .options import GenerateConfig, generate_config
from .registry import backend_status, candidates, install_command, load_model
from .types import GenerateMetrics, Message

__all__ = ["CHAT_COMMANDS", "main"]

DEFAULT_BENCH_PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather and the keeper's thoughts."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference",
        description="Run language models on whatever hardware is here.",
    )
    parser.add_argument("--version", action="version", version=f"inference {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_load(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="model file, directory or http(s) URL")
        p.add_argument("--backend", default="", help="backend name (default: best available)")
        p.add_argument("--context-len", type=int, default=0, help="context window in tokens")
        p.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload (-1: all)")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (0: one per core)")
        p.add_argument(
            "--pooling",
            default=None,
            choices=options.POOLINGS,
            help="how embed pools (default: as the model file says)",
        )
        p.add_argument(
            "--constraint-timeout",
            type=float,
            default=None,
            help="seconds compiling one constraint may take",
        )
        p.add_argument(
            "--constraint-memory",
            type=int,
            default=None,
            help="MiB compiling one constraint may take",
        )
        p.add_argument(
            "--cache-dir",
            default=None,
            help=f"keep prompts' KV in this folder across restarts "
            f"(default: ${env.INFERENCE_KV_CACHE_DIR}, else none)",
        )
        p.add_argument(
            "--draft-model",
            default=None,
            metavar="PATH",
            help="decode speculatively, checking this smaller model's guesses "
            "(the same vocabulary)",
        )
        p.add_argument(
            "--speculative",
            default=None,
            choices=("ngram",),
            help="decode speculatively with guesses copied from the prompt (prompt lookup; "
            "with --draft-model too, its guesses come first)",
        )
        p.add_argument(
            "--flash-attention",
            default=None,
            choices=tuple(_FLASH_ATTENTION),
            help="the engine's attention kernel: flash attention on or off "
            "(default: the engine's choice)",
        )

    def common_gen(p: argparse.ArgumentParser, **defaults: Any) -> None:
        _generate_flags(p.add_argument_group("generation options"), defaults)

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

    p = sub.add_parser("chat", help="chat with a model (/help inside lists the commands)")
    common_load(p)
    common_gen(p)
    p.add_argument("--system", default="", help="system message")
    p.add_argument("--json", action="store_true", help="one JSON object per reply")

    p = sub.add_parser(
        "serve", help="serve models over OpenAI-, Anthropic- and Ollama-compatible HTTP"
    )
    common_load(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--parallel", type=int, default=4, help="requests generated at once, batched (default: 4)"
    )
    p.add_argument(
        "more",
        nargs="*",
        metavar="MODEL",
        help="more models to serve; each PATH or NAME=PATH, chosen by a request's model",
    )
    p.add_argument(
        "--api-key",
        default="",
        help=f"require this key of clients (also ${env.INFERENCE_SERVE_API_KEY}; "
        "--api-key-file keeps it out of ps)",
    )
    p.add_argument("--api-key-file", default="", help="read the required key from this file")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browsers on ORIGIN call the server (CORS); repeatable, * for any",
    )
    p.add_argument("--queue", type=int, default=128, help="requests that may wait (then 429)")
    p.add_argument("--max-tokens-cap", type=int, default=8192, help="the most max_tokens allowed")
    p.add_argument("--log-prompts", action="store_true", help="log each request's prompt")
    # Defaults live in inference_server.Settings (docs/server.md lists them).
    for flag, what in (
        ("--header-timeout", "seconds a client has to send a request's head"),
        ("--body-timeout", "seconds a client has to send a request's body"),
        ("--keep-alive-timeout", "seconds an idle connection stays open"),
    ):
        p.add_argument(flag, type=float, default=None, help=what)
    p.add_argument("--max-connections", type=int, default=None, help="open connections allowed")
    p.add_argument("--max-body-bytes", type=int, default=None, help="the largest request body")
    p.add_argument(
        "--responses-store-mib",
        type=int,
        default=None,
        help="MiB of recent /v1/responses replies kept for previous_response_id",
    )
    p.add_argument(
        "--embed-model", default="", help="one more model, for the embedding and rerank routes"
    )

    p = sub.add_parser("embed", help="embed TEXTs (or stdin's lines, with -): a vector each")
    common_load(p)
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts; - reads one a line from stdin")
    p.add_argument("--dimensions", type=int, default=None, help="keep the first N values")
    p.add_argument("--no-normalize", action="store_true", help="leave the vectors' lengths")
    p.add_argument("--no-truncate", action="store_true", help="refuse a text past the context")
    p.add_argument(
        "--format",
        choices=("jsonl", "json", "tsv"),
        default="jsonl",
        help="jsonl: {index, text, embedding} a line (default); json: one object; "
        "tsv: the text and its values, tab-separated",
    )

    p = sub.add_parser("rerank", help="order DOCs by relevance to QUERY, best first")
    common_load(p)
    p.add_argument("query")
    p.add_argument("documents", nargs="+", metavar="DOC")
    p.add_argument("--top-n", type=int, default=None, help="only the N best")
    p.add_argument("--json", action="store_true", help="one JSON object (default: a line each)")

    p = sub.add_parser("cache", help="list, size or clear a prefix cache folder")
    p.add_argument(
        "folder",
        nargs="?",
        default=None,
        help=f"the folder (default: ${env.INFERENCE_KV_CACHE_DIR})",
    )
    p.add_argument("--clear", action="store_true", help="delete every entry in it")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = sub.add_parser("bench", help="time prefill and decode over a few runs")
    common_load(p)
    common_gen(p, max_tokens=64)
    p.add_argument("--prompt", default=DEFAULT_BENCH_PROMPT)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


#: Options that no command-line flag carries: a threading.Event, and values
#: with structure (given with ``-o KEY=JSON``).
#: (``--speculative`` is the load option's: per call, ``-o speculative=false``.)
_NO_FLAG = frozenset({"cancel", "tools", "template_vars", "speculative"})
#: How a flag reads the value of an option of each type (as the config
#: annotates it); lists are repeatable flags.
_FLAG_TYPES: dict[str, Any] = {
    "int": int,
    "int | None": int,
    "float": float,
    "float | None": float,
    "str": str,
    "str | None": str,
    "bool | None": lambda text: _yes_no(text),
    "Mapping[str, Any] | None": str,  # JSON text, which the option reads
    "tuple[str, ...]": str,
    "tuple[int, ...]": int,
}


def _yes_no(text: str) -> bool:
    value = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return value[text.lower()]


def _option_help(name: str, default: Any) -> str:
    """The first sentence of the option's builder's docstring, as plain text,
    and its default."""
    builder = getattr(options, f"with_{options._builder_suffix(name)}", None)
    doc = (builder.__doc__ or "") if builder is not None else ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?([^`]+)`|``([^`]+)``", lambda m: m[1] or m[2], paragraph)
    text = text.split(". ")[0].rstrip(".") or name.replace("_", " ")
    if default is None or default == () or default is False:
        return text
    return f"{text} (default: {default})"


def _generate_flags(group: Any, defaults: dict[str, Any]) -> None:
    """A flag for each generation option a command line can carry, and
    ``-o KEY=VALUE`` for every option."""
    for f in fields(GenerateConfig):
        if f.name in _NO_FLAG:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        kind = str(f.type)
        if kind == "bool":
            group.add_argument(
                flag,
                action="store_true",
                default=argparse.SUPPRESS,
                help=_option_help(f.name, None),
            )
            continue
        reader = _FLAG_TYPES[kind]
        many = kind.startswith("tuple")
        group.add_argument(
            flag,
            type=reader,
            action="append" if many else "store",
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=_option_help(f.name, default) + ("; repeatable" if many else ""),
        )
    group.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any generation option (tools=, json_schema=...), VALUE read as JSON where it parses",
    )
    group.set_defaults(gen_defaults=defaults)


def _gen_config(args: argparse.Namespace) -> GenerateConfig:
    """The generation options the command line gave, checked by the config."""
    values: dict[str, Any] = dict(getattr(args, "gen_defaults", {}))
    names = {f.name for f in fields(GenerateConfig)} - _NO_FLAG
    for name in names:
        if hasattr(args, name):
            values[name] = getattr(args, name)
    for item in args.option:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"-o takes KEY=VALUE; got {item!r}")
        try:
            values[key.strip()] = json.loads(text)
        except ValueError:
            values[key.strip()] = text
    return generate_config(**values)


#: ``--flash-attention``'s values: the ``flash_attention`` load option's.
_FLASH_ATTENTION = {"on": True, "off": False}


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The load options the common flags give (defaults are LoadConfig's)."""
    given = {
        "backend": args.backend,
        "context_len": args.context_len,
        "gpu_layers": args.gpu_layers,
        "threads": args.threads,
        "constraint_timeout": args.constraint_timeout,
        "constraint_memory_mib": args.constraint_memory,
        "pooling": args.pooling,
        "cache_dir": args.cache_dir,
        "draft_model": args.draft_model,
        "speculative": args.speculative,
        "flash_attention": _FLASH_ATTENTION.get(args.flash_attention),
    }
    return {k: v for k, v in given.items() if v is not None}


def _load(args: argparse.Namespace) -> Any:
    return load_model(args.model, **_load_options(args))


def _dump(value: Any, out: TextIO) -> int:
    """``value`` as indented JSON on ``out``; the command's exit status."""
    json.dump(value, out, indent=2)
    out.write("\n")
    return 0


def _cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    statuses = backend_status()
    if args.json:
        return _dump([asdict(s) for s in statuses], out)
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
        return _dump([asdict(m) for m in found], out)
    if not found:
        out.write(f"no models found in {args.directory}\n")
        return 0
    for m in found:
        quant = "-"
        if m.quant_type:
            quant = f"{m.quant_type} ({m.bits_per_weight:.2f} bits/weight)"
        elif m.quant_bits:
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
        caps = model.capabilities.as_dict()
        if args.json:
            info["capabilities"] = caps
            if chain:
                info["selection"] = [asdict(c) for c in chain]
            return _dump(info, out)
        for key, value in info.items():
            out.write(f"{key:<17} {value}\n")
        out.write("capabilities:\n")
        for key, value in caps.items():
            shown = (", ".join(value) or "none") if isinstance(value, list) else value
            out.write(f"  {key:<17} {shown}\n")
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


#: What ``inference chat`` does with a line that is one of these.
CHAT_COMMANDS = {
    "/help": "show these commands",
    "/reset": "forget the conversation (the system message stays)",
    "/exit": "leave (so does /quit, or Ctrl-D)",
}


def _cmd_chat(args: argparse.Namespace, out: TextIO, inp: TextIO) -> int:
    cfg = _gen_config(args)
    interactive = inp.isatty() and not args.json
    with _load(args) as model:
        if interactive:
            out.write(
                f"{model.info.path or args.model} on {model.info.backend}; "
                "/help for the commands, /exit or Ctrl-D to leave\n"
            )
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
                if interactive:
                    out.write("(the conversation is forgotten)\n")
                continue
            if text == "/help" or (text.startswith("/") and " " not in text and len(text) > 1):
                if text != "/help":
                    out.write(f"unknown command {text}; ")
                out.write("commands:\n")
                for name, what in CHAT_COMMANDS.items():
                    out.write(f"  {name:<8} {what}\n")
                out.flush()
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
            elif stream.finish_reason == "length":
                out.write(f"\n[cut at {cfg.max_tokens} tokens: --max-tokens]")
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
        return _dump(summary, out)
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


def _cmd_embed(args: argparse.Namespace, out: TextIO, inp: TextIO) -> int:
    if args.texts == ["-"]:  # read as they come, EMBED_CHUNK lines at a time
        lines = (line.rstrip("\n") for line in inp if line.strip())
        chunks: Iterator[list[str]] = iter(lambda: list(itertools.islice(lines, EMBED_CHUNK)), [])
    else:
        chunks = iter([args.texts])
    opts = {
        "normalize": not args.no_normalize,
        "truncate": not args.no_truncate,
        "dimensions": args.dimensions,
    }
    rows: list[dict[str, Any]] = []
    with _load(args) as model:
        index = 0
        for chunk in chunks:
            vectors = model.embed(chunk, **opts).tolist()
            for text, vector in zip(chunk, vectors, strict=True):
                row = {"index": index, "text": text, "embedding": vector}
                if args.format == "json":
                    rows.append(row)
                elif args.format == "jsonl":
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    out.write("\t".join([text.replace("\t", " "), *map(repr, vector)]) + "\n")
                index += 1
    if args.format == "json":
        out.write(json.dumps({"model": args.model, "data": rows}, ensure_ascii=False) + "\n")
    return 0


#: Lines of stdin ``inference embed -`` embeds at a time.
EMBED_CHUNK = 256


def _cmd_rerank(args: argparse.Namespace, out: TextIO) -> int:
    with _load(args) as model:
        ranking = model.rerank(args.query, args.documents, top_n=args.top_n)
    rows = [{"index": r.index, "score": r.score, "document": r.document} for r in ranking]
    if args.json:
        out.write(json.dumps({"method": ranking.method, "results": rows}, ensure_ascii=False))
        out.write("\n")
        return 0
    for r in ranking:
        out.write(f"{r.score:10.4f}  {r.index:3d}  {r.document}\n")
    return 0


def _cmd_cache(args: argparse.Namespace, out: TextIO) -> int:
    """``inference cache [FOLDER]``: the prefix cache's entries, their size;
    ``--clear`` deletes them."""
    from . import disk_cache

    folder = env.kv_cache_dir(args.folder or "")
    if not folder:
        raise InferenceError(
            f"name a folder, or set {env.INFERENCE_KV_CACHE_DIR} (the cache_dir models use)"
        )
    files = disk_cache.entry_files(folder)
    if args.clear:
        for path, *_ in files:
            os.unlink(path)
        out.write(f"{folder}: {len({f[3] for f in files})} entries deleted\n")
        return 0
    # One entry is one file with a name for each of its blocks (hard links).
    entries: dict[int, dict[str, Any]] = {}
    for path, _size, used, inode in files:
        entry = entries.setdefault(
            inode, {**disk_cache.describe(path), "names": 0, "last_used": used}
        )
        entry["names"] += 1
    total = sum({inode: size for _, size, _, inode in files}.values())
    if args.json:
        return _dump({"folder": folder, "bytes": total, "entries": list(entries.values())}, out)
    for e in sorted(entries.values(), key=lambda e: -e["last_used"]):
        what = e.get("error") or f"{e['tokens']} tokens of {e['model']}"
        out.write(f"{e.get('bytes', 0) / (1 << 20):9.1f} MiB  {what}\n")
    out.write(f"{folder}: {len(entries)} entries, {total / (1 << 20):.1f} MiB\n")
    return 0


def _cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        import inference_server
    except ImportError:
        raise InferenceError(
            "inference serve needs the server distribution: pip install '.[server]'"
        ) from None
    limits = {
        name: getattr(args, name)
        for name in (
            "header_timeout",
            "body_timeout",
            "keep_alive_timeout",
            "max_connections",
            "max_body_bytes",
            "responses_store_mib",
        )
        if getattr(args, name) is not None
    }
    settings = inference_server.Settings(
        parallel=args.parallel,
        api_key=_serve_key(args),
        cors_origins=tuple(args.cors_origin),
        queue=args.queue,
        max_tokens_cap=args.max_tokens_cap,
        log_prompts=args.log_prompts,
        **limits,
    )
    return inference_server.serve(
        [args.model, *args.more],
        host=args.host,
        port=args.port,
        settings=settings,
        embed_model=args.embed_model,
        out=out,
        **_load_options(args),
    )


def _serve_key(args: argparse.Namespace) -> str:
    """The key clients must send: ``--api-key``, else ``--api-key-file``'s
    first line, else the environment's."""
    if args.api_key:
        return str(args.api_key)
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        except OSError as exc:
            raise InferenceError(f"cannot read the API key file: {exc}") from None
        if not key:
            raise InferenceError(f"the API key file {args.api_key_file} is empty")
        return key
    return os.environ.get(env.INFERENCE_SERVE_API_KEY, "").strip()


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
        if args.command == "embed":
            return _cmd_embed(args, out, inp)
        if args.command == "rerank":
            return _cmd_rerank(args, out)
        if args.command == "bench":
            return _cmd_bench(args, out)
        if args.command == "cache":
            return _cmd_cache(args, out)
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
