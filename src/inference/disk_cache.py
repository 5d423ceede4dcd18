"""The disk tier of the prefix cache: prompts' KV kept in a folder, so that a
fresh process asked a prompt whose prefix an earlier process saw restores
it instead of prefilling it. Engine-neutral: a backend hands in its state
of a sequence as bytes and gets them back.

An entry is one file: a header, the tokens its KV holds, the engine's state
of them and a SHA-256 of all that. Its names (hard links to one file) are
chained hashes of its key (all that shapes the KV: the model file, the
engine build, the KV types and layout) and of its first ``n`` tokens, for
every ``n`` that is a multiple of :data:`BLOCK`: a lookup hashes the prompt
block by block and tries its longest prefix first, one ``stat`` a block, and
a prompt that shares only a system prompt with an entry still finds it. An
entry may say the shortest prefix its state can be trimmed to (its *floor*:
a sliding-window cache holds only its window's last cells); it is named,
and found, only for prefixes no shorter.

Safety:

- writes are atomic (a temporary file, then ``os.replace``), so two
  processes sharing a folder, or a kill mid-write, never leave a name that
  loads half;
- a file that is short, corrupt, of another format or of another key is
  skipped with a warning and deleted, never handed to an engine;
- the folder is kept within a byte budget, least recently used out first
  (a hit touches its file);
- a write that fails (a full disk) turns the tier off with one warning;
  generation goes on;
- an engine hands a state over with :meth:`DiskCache.submit`, which writes
  it on the cache's own thread: the engine never waits for the disk, and a
  state is dropped while those waiting hold :data:`PENDING` bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .options import CACHE_DISK_MIB

__all__ = [
    "BLOCK",
    "MAGIC",
    "PENDING",
    "DiskCache",
    "Entry",
    "describe",
    "entry_files",
    "fingerprint",
]

_log = logging.getLogger("inference.cache")

#: Tokens a block: entries are found at multiples of it.
BLOCK = 256
#: The first bytes of every entry file.
MAGIC = b"INFKV01\n"
#: Bytes of state that writes waiting may hold; more are not kept.
PENDING = 256 << 20
_SUFFIX = ".kv"
_HEAD = struct.Struct("<II")  # header bytes, tokens


@dataclass(frozen=True)
class Entry:
    """One entry read back: the tokens its state holds, and the state."""

    tokens: tuple[int, ...]
    state: bytes
    floor: int = 0


def _chain(key: str, tokens: Sequence[int]) -> list[str]:
    """The name for each block-aligned prefix of ``tokens``, shortest first."""
    names = []
    h = hashlib.sha256(key.encode())
    for start in range(0, len(tokens) - len(tokens) % BLOCK, BLOCK):
        h.update(array("i", tokens[start : start + BLOCK]).tobytes())
        names.append(h.copy().hexdigest()[:40])
    return names


class DiskCache:
    """Entries of one ``key`` in ``folder``, within ``budget`` bytes."""

    def __init__(
        self, folder: str, key: Mapping[str, object], budget: int = CACHE_DISK_MIB << 20
    ) -> None:
        self.folder = os.path.abspath(folder)
        self.key = json.dumps(dict(key), sort_keys=True)
        self._budget = budget
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.enabled = True
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            self._off(f"cannot make {self.folder}: {exc}")

    def _off(self, why: str) -> None:
        if self.enabled:
            self.enabled = False
            _log.warning("the prefix cache's disk tier is off: %s", why)

    # -- writing -------------------------------------------------------------------

    def submit(
        self, tokens: Sequence[int], size: int, state: Callable[[], bytes], floor: int = 0
    ) -> None:
        """Write the entry of ``tokens`` on the cache's thread: ``state()``
        (about ``size`` bytes) is called now, on the caller's thread, unless
        the entry would be named by no prefix (see :meth:`put`), is written
        already, or the writes waiting hold :data:`PENDING` bytes."""
        if not self.enabled or len(tokens) // BLOCK * BLOCK < max(floor, 1):
            return
        with self._pending_lock:
            if self.has(tokens) or self._pending + size > PENDING:
                return
            self._pending += size
        tokens = list(tokens)
        try:
            data = state()
        except BaseException:
            self._done(size)
            raise
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="inference-kv-write")

        def write() -> None:
            try:
                if data:
                    self.put(tokens, data, floor)
            finally:
                self._done(size)

        self._writer.submit(write)

    def _done(self, size: int) -> None:
        with self._pending_lock:
            self._pending -= size

    def close(self) -> None:
        """Finish the writes submitted (a restart finds them)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def has(self, tokens: Sequence[int]) -> bool:
        """Whether an entry for the block-aligned prefix of ``tokens`` exists."""
        names = _chain(self.key, tokens)
        return bool(names) and os.path.exists(self._path(names[-1]))

    def put(self, tokens: Sequence[int], state: bytes, floor: int = 0) -> None:
        """Write the entry of ``tokens`` (a state that trims to no fewer than
        ``floor`` of them), named by each of their block-aligned prefixes
        from ``floor`` on (nothing when there is none), atomically."""
        names = _chain(self.key, tokens)[max(floor - 1, 0) // BLOCK :]
        if not names or not self.enabled or len(state) > self._budget:
            return
        header = json.dumps({"key": self.key, "tokens": len(tokens), "floor": floor}).encode()
        body = MAGIC + _HEAD.pack(len(header), len(tokens)) + header
        body += array("i", tokens).tobytes() + state
        data = body + hashlib.sha256(body).digest()
        final = self._path(names[-1])
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        except OSError as exc:
            self._off(f"cannot write in {self.folder}: {exc}")
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except OSError as exc:
            _remove(tmp)
            self._off(f"writing {final} failed: {exc}")
            return
        for name in names[:-1]:  # the shorter prefixes find it too
            try:
                os.link(final, self._path(name))
            except FileExistsError:
                pass  # an entry holding that prefix is there already
            except OSError:
                break  # no hard links here: found by its longest prefix only
        self._trim()

    def _trim(self) -> None:
        """Delete the least recently used entries past the budget."""
        with self._lock:
            files = entry_files(self.folder)
            inodes: dict[int, tuple[int, float, list[str]]] = {}
            for path, size, used, ino in files:
                _, _, paths = inodes.setdefault(ino, (size, used, []))
                paths.append(path)
            total = sum(size for size, _, _ in inodes.values())
            for size, _, paths in sorted(inodes.values(), key=lambda v: v[1]):
                if total <= self._budget:
                    break
                for path in paths:
                    _remove(path)
                total -= size

    # -- reading -------------------------------------------------------------------

    def find(
        self, prompt: Sequence[int], limit: int, at_least: int = 1
    ) -> tuple[Entry, int] | None:
        """The entry kept for the longest block-aligned prefix of ``prompt``,
        and how many of its tokens ``prompt`` shares (at most ``limit``);
        None when there is none, or none of ``at_least`` tokens (no file is
        read then)."""
        if not self.enabled:
            return None
        names = _chain(self.key, prompt[:limit])
        for blocks in range(len(names), 0, -1):
            if blocks * BLOCK < at_least - BLOCK:
                break  # the entries left cannot share enough
            name = names[blocks - 1]
            path = self._path(name)
            if not os.path.exists(path):
                continue
            entry = self._read(path)
            if entry is None:
                continue
            n = 0
            top = min(len(entry.tokens), limit)
            while n < top and entry.tokens[n] == prompt[n]:
                n += 1
            if n >= max(at_least, entry.floor):
                now = time.time()
                with contextlib.suppress(OSError):
                    os.utime(path, (now, now))  # recently used
                return entry, n
        return None

    def _read(self, path: str) -> Entry | None:
        """The entry in ``path``, or None (and the file deleted, with a
        warning) when it is not a whole entry of this key."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        got = _check(data, self.key)
        if isinstance(got, str):
            _log.warning("the prefix cache skipped and deleted %s: %s", path, got)
            _remove(path)
            return None
        return got

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name + _SUFFIX)


def _check(data: bytes, key: str | None) -> Entry | str:
    """The entry ``data`` holds, or why it is not one (of ``key``, if given)."""
    fixed = len(MAGIC) + _HEAD.size
    if len(data) < fixed + 32 or not data.startswith(MAGIC):
        return "not an entry of this format"
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        return "its checksum does not match (truncated or corrupt)"
    size, count = _HEAD.unpack_from(data, len(MAGIC))
    try:
        header = json.loads(data[fixed : fixed + size])
    except ValueError:
        return "its header is not JSON"
    if not isinstance(header, dict) or (key is not None and header.get("key") != key):
        return "it belongs to another model, build or setting"
    start = fixed + size
    tokens = array("i")
    tokens.frombytes(data[start : start + 4 * count])
    if len(tokens) != count or header.get("tokens") != count:
        return "its token count does not match"
    floor = header.get("floor", 0)
    if not isinstance(floor, int) or not 0 <= floor <= count:
        return "its floor is not a token count"
    return Entry(tuple(tokens), body[start + 4 * count :], floor)


def entry_files(folder: str) -> list[tuple[str, int, float, int]]:
    """Every entry name in ``folder``: (path, bytes, last used, inode)."""
    out = []
    try:
        with os.scandir(folder) as it:
            for item in it:
                if item.name.endswith(_SUFFIX) and item.is_file():
                    st = item.stat()
                    out.append((item.path, st.st_size, st.st_mtime, st.st_ino))
    except OSError:
        return []
    return out


def fingerprint(path: str) -> list[object]:
    """What a key says of a model or adapter file, or a folder of them:
    its real path, and each file's name, size and modification time."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        st = os.stat(real)
        return [real, st.st_size, st.st_mtime_ns]
    with os.scandir(real) as it:
        files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
    return [real, *files]


def describe(path: str) -> dict[str, object]:
    """What the entry file ``path`` holds (``inference cache`` lists it)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return {"path": path, "error": str(exc)}
    got = _check(data, None)
    if isinstance(got, str):
        return {"path": path, "error": got}
    fixed = len(MAGIC) + _HEAD.size
    size, _ = _HEAD.unpack_from(data, len(MAGIC))
    key = json.loads(json.loads(data[fixed : fixed + size])["key"])
    model = key.get("model")
    if isinstance(model, list) and model:  # a fingerprint: its path first
        model = model[0]
    return {"path": path, "tokens": len(got.tokens), "bytes": len(data), "model": model}


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
