"""The engine self-test: llama.cpp run once in a child process, so that a build
which faults on this CPU makes the backend unavailable instead of killing the caller.

A llama.cpp build can hold instructions this CPU does not run (a build made
for a newer CPU, or AMX on a hypervisor that reports it and faults on it).
Such a build loads and tokenises, then dies of SIGILL on the first batched
matrix product, taking the whole process with it. So before the backend says
it is available, a child process (``python -m inference_llamacpp.selftest``)
writes a tiny random-weight llama (never the user's file), loads it through
this backend's own engine, prefills a batch of :data:`PREFILL_TOKENS` tokens
(so the batched kernels run: their shapes decide which ones do) and decodes a
few tokens. Its verdict is cached under ``INFERENCE_CACHE_DIR/selftest``,
keyed by the engine library files' identity (path, size, mtime, inode) and the
CPU's flags, so it costs one child process per build and machine.

This module imports neither llama-cpp-python nor anything heavy; only the
child does.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference import env

from .build import cmake_args, cpu_flags, reinstall_command

__all__ = [
    "PREFILL_TOKENS",
    "SELFTEST_TIMEOUT",
    "Verdict",
    "engine_library_dir",
    "rebuild_command",
    "run_selftest",
    "verdict",
]

#: Tokens prefilled in one batch: enough for llama.cpp's batched kernels.
PREFILL_TOKENS = 128
#: Tokens decoded one at a time after the prefill.
DECODE_TOKENS = 4
#: Seconds the child may take before the verdict is "did not finish".
SELFTEST_TIMEOUT = 180.0
#: Bumped when the test changes, so that old verdicts are not reused.
_SELFTEST_VERSION = 2
_OK_LINE = "inference-llamacpp self-test: ok"

_SIGNALS = {
    signal.SIGILL: "illegal instruction: the build uses instructions this CPU does not run",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "arithmetic fault",
    signal.SIGABRT: "aborted",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the engine build runs here; ``reason`` is one line when it does not."""

    ok: bool
    reason: str = ""
    #: True when the verdict came from the cache, not from a child run now.
    cached: bool = False
    #: True when the run was inconclusive (it timed out): not cached.
    retry: bool = False


def engine_library_dir() -> Path | None:
    """The directory of the llama.cpp libraries llama-cpp-python loads
    (``LLAMA_CPP_LIB_PATH`` if set, as llama-cpp-python reads it), without
    importing it; None when llama-cpp-python is not installed."""
    override = os.environ.get(env.LLAMA_CPP_LIB_PATH)
    if override:
        return Path(override)
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _identity(lib_dir: Path) -> dict[str, object]:
    files: list[list[object]] = []
    try:
        entries = sorted(lib_dir.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        if not any(part in entry.name for part in (".so", ".dylib", ".dll")):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        files.append([entry.name, st.st_size, st.st_mtime_ns, st.st_ino])
    return {
        "version": _SELFTEST_VERSION,
        "lib_dir": str(lib_dir.resolve()),
        "files": files,
        "platform": sys.platform,
        "machine": platform.machine(),
        "cpu_flags": sorted(cpu_flags()),
    }


def _cache_file(identity: dict[str, object]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return env.cache_dir("selftest") / f"llama_cpp-{key}.json"


_memo: dict[Path, Verdict] = {}
_memo_lock = threading.Lock()


def verdict(*, command: Sequence[str] | None = None, timeout: float = SELFTEST_TIMEOUT) -> Verdict:
    """The self-test's verdict for the installed build: from this process's
    memory, else the cache, else a child run now (then cached).

    ``command`` replaces the child's command line (tests use it to stand in
    a fake engine).
    """
    lib_dir = engine_library_dir()
    if lib_dir is None:
        return Verdict(False, "llama-cpp-python is not installed")
    identity = _identity(lib_dir)
    path = _cache_file(identity)
    with _memo_lock:
        known = _memo.get(path)
        if known is not None:
            return known
        result = _read(path)
        if result is None:
            result = run_selftest(command=command, timeout=timeout, lib_dir=lib_dir)
            if result.retry:
                return result  # inconclusive: asked again next time
            _write(path, result, identity)
        _memo[path] = result
        return result


def _read(path: Path) -> Verdict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Verdict(bool(data["ok"]), str(data["reason"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, result: Verdict, identity: dict[str, object]) -> None:
    record = {
        "ok": result.ok,
        "reason": result.reason,
        "identity": identity,
        "tested": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".selftest-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache costs a child run next time, nothing more


def run_selftest(
    *,
    command: Sequence[str] | None = None,
    timeout: float = SELFTEST_TIMEOUT,
    lib_dir: Path | None = None,
) -> Verdict:
    """Run the self-test in a child process now (no cache) and judge how it ended."""
    argv = list(command) if command is not None else [sys.executable, "-m", __name__]
    where = f"the llama.cpp build in {lib_dir or engine_library_dir()}"
    # The child finds the packages where this process found them, even when
    # the application extended sys.path itself.
    path = os.pathsep.join(p for p in sys.path if p)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONPATH": path},
        )
    except subprocess.TimeoutExpired:
        return Verdict(
            False,
            f"{where} did not finish its self-test in {timeout:.0f} s; "
            "set INFERENCE_LOG=debug and load a model to see llama.cpp's log",
            retry=True,
        )
    except OSError as exc:
        return Verdict(False, f"the llama.cpp self-test could not start: {exc}")
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode == 0 and _OK_LINE in out:
        return Verdict(True)
    if done.returncode < 0:
        sig = -done.returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        what = _SIGNALS.get(sig, "killed")  # type: ignore[call-overload]
        return Verdict(False, f"{where} dies with {name} ({what}) in its self-test")
    last = _last_line(done.stderr.decode("utf-8", "replace")) or _last_line(out)
    return Verdict(
        False, f"{where} fails its self-test (exit {done.returncode}: {last or 'no message'})"
    )


def rebuild_command(gpu_args: str = "") -> str:
    """The command that rebuilds the installed llama-cpp-python for this CPU,
    with ``gpu_args`` (``-DGGML_HIP=on`` for the rocm backend) kept."""
    args = " ".join(part for part in (gpu_args, cmake_args()) if part)
    return reinstall_command(args, _requirement())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= 300 else line[:300] + " ..."


def _requirement() -> str:
    """``llama-cpp-python==VERSION`` for the installed build, if known."""
    import importlib.metadata

    try:
        return f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}"
    except importlib.metadata.PackageNotFoundError:
        return "llama-cpp-python"


# --------------------------------------------------------------------------
# the child


def _tiny_model(path: str) -> str:
    """A two-layer random-weight llama whose matrices use the quantised types
    with the most specialised CPU kernels (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)."""
    import struct

    from inference.gguf import GGUFValueType
    from inference.testing.gguf_writer import tensor_nbytes, write_gguf

    n_embd, n_ff, n_head, n_layer = 256, 512, 4, 2
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3, *([6] * 256)]  # unknown, control, control, byte
    n_vocab = len(tokens)
    half = struct.pack("<e", 0.02)
    seed = [0x9E3779B9]

    def noise(n: int) -> bytearray:
        out = bytearray(n)
        x = seed[0]
        for i in range(n):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
            out[i] = (x >> 16) & 0xFF
        seed[0] = x
        return out

    # (block bytes, offsets of the float16 scales inside a block)
    layout = {2: (18, (0,)), 3: (20, (0, 2)), 8: (34, (0,)), 12: (144, (0, 2)), 14: (210, (208,))}

    def quantised(shape: tuple[int, ...], ggml_type: int) -> bytes:
        data = noise(tensor_nbytes(shape, ggml_type))
        size, scales = layout[ggml_type]
        for block in range(0, len(data), size):
            for at in scales:
                data[block + at : block + at + 2] = half
        return bytes(data)

    def f32(n: int, value: float = 1.0) -> bytes:
        return struct.pack(f"<{n}f", *([value] * n))

    tensors: list[tuple[str, tuple[int, ...], int, bytes]] = [
        ("token_embd.weight", (n_embd, n_vocab), 8, b""),
        ("output_norm.weight", (n_embd,), 0, f32(n_embd)),
        ("output.weight", (n_embd, n_vocab), 14, b""),
    ]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (n_embd,), 0, f32(n_embd)),
            (p + "attn_q.weight", (n_embd, n_embd), 2, b""),
            (p + "attn_k.weight", (n_embd, n_embd), 2, b""),
            (p + "attn_v.weight", (n_embd, n_embd), 8, b""),
            (p + "attn_output.weight", (n_embd, n_embd), 3, b""),
            (p + "ffn_norm.weight", (n_embd,), 0, f32(n_embd)),
            (p + "ffn_gate.weight", (n_embd, n_ff), 12, b""),
            (p + "ffn_up.weight", (n_embd, n_ff), 3, b""),
            (p + "ffn_down.weight", (n_ff, n_embd), 8, b""),
        ]
    specs = [(n, s, t, d or quantised(s, t)) for n, s, t, d in tensors]
    # The end-of-text token's output row gets a zero scale (its logit is 0,
    # below most others), so that decoding runs its steps instead of stopping.
    out = bytearray(specs[2][3])
    out[2 * 210 + 208 : 2 * 210 + 210] = bytes(2)
    specs[2] = (*specs[2][:3], bytes(out))
    metadata = {
        "general.architecture": "llama",
        "general.name": "inference-llamacpp self-test",
        "llama.context_length": 512,
        "llama.embedding_length": n_embd,
        "llama.feed_forward_length": n_ff,
        "llama.block_count": n_layer,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head,
        "llama.rope.dimension_count": n_embd // n_head,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": (GGUFValueType.ARRAY, (GGUFValueType.FLOAT32, [0.0] * n_vocab)),
        "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, (GGUFValueType.INT32, types)),
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    return write_gguf(path, metadata, specs)


def _child() -> int:
    from inference.options import generate_config, load_config

    from .engine import LlamaCppModel

    with tempfile.TemporaryDirectory(prefix="inference-selftest-") as tmp:
        path = _tiny_model(os.path.join(tmp, "selftest.gguf"))
        with LlamaCppModel.load(path, load_config(context_len=512)) as model:
            prompt = "".join(chr(ord("a") + i % 26) for i in range(PREFILL_TOKENS))
            stream = model.generate(
                prompt, generate_config(max_tokens=DECODE_TOKENS, stop_tokens=())
            )
            produced = list(stream)
            if stream.err is not None:
                print(f"self-test generation failed: {stream.err}", file=sys.stderr)
                return 1
    print(f"{_OK_LINE} ({len(produced)} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(_child())
