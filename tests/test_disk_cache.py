"""The prefix cache's disk tier: entries found by any block-aligned prefix,
written atomically, kept within a byte budget, and a corrupt, foreign or
short file skipped and deleted; a write that fails turns the tier off."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from inference import disk_cache
from inference.disk_cache import (
    BLOCK,
    MAGIC,
    PENDING,
    DiskCache,
    Entry,
    describe,
    entry_files,
    fingerprint,
)

KEY = {"model": "/models/m.gguf", "engine": "test 1"}


def tokens(n: int, start: int = 0) -> list[int]:
    return [start + i for i in range(n)]


def test_an_entry_is_found_by_the_prompts_that_share_its_blocks(tmp_path: Path) -> None:
    cache = DiskCache(str(tmp_path), KEY)
    saved = tokens(3 * BLOCK + 10)
    cache.put(saved, b"state-bytes")
    assert cache.has(saved) and not cache.has(tokens(3 * BLOCK, start=1))
    # A prompt sharing the first two blocks and a bit more finds it by its
    # second block's name, and says how much it shares.
    prompt = saved[: 2 * BLOCK + 7] + [99999] * 50
    found = cache.find(prompt, limit=len(prompt) - 1)
    assert found is not None
    entry, shared = found
    assert (
        isinstance(entry, Entry) and entry.tokens == tuple(saved) and entry.state == b"state-bytes"
    )
    assert shared == 2 * BLOCK + 7
    assert cache.find(prompt, limit=len(prompt) - 1, at_least=shared + 1) is None
    assert cache.find(tokens(BLOCK - 1), limit=BLOCK - 1) is None  # shorter than a block
    # Another key (another model, build or setting) never sees it.
    other = DiskCache(str(tmp_path), {**KEY, "engine": "test 2"})
    assert other.find(prompt, limit=len(prompt) - 1) is None
    assert describe(entry_files(str(tmp_path))[0][0])["tokens"] == len(saved)


def test_an_entry_with_a_floor_serves_no_shorter_prefix(tmp_path: Path) -> None:
    """A sliding-window state of 3 blocks trims to no fewer than its floor:
    it is named, and found, for its third block only."""
    cache = DiskCache(str(tmp_path), KEY)
    saved = tokens(3 * BLOCK)
    cache.put(saved, b"window-state", floor=3 * BLOCK)
    assert len(entry_files(str(tmp_path))) == 1
    assert cache.find(tokens(3 * BLOCK + 5), limit=3 * BLOCK + 4) is not None
    assert cache.find(tokens(2 * BLOCK + 5), limit=2 * BLOCK + 4) is None
    found = cache.find([*tokens(3 * BLOCK), -1], limit=3 * BLOCK)
    assert found is not None and found[0].floor == 3 * BLOCK and found[1] == 3 * BLOCK
    cache.put(tokens(3 * BLOCK, start=1), b"half", floor=2 * BLOCK - 1)  # names from block 2
    assert len(entry_files(str(tmp_path))) == 3


def test_submitted_states_are_written_off_the_callers_thread(tmp_path: Path) -> None:
    """submit takes the state at once and writes it on the cache's thread
    (close waits for it); a state past what the writes waiting may hold, or
    one no prefix would find, is not even taken."""
    cache = DiskCache(str(tmp_path), KEY)
    taken: list[str] = []

    def state() -> bytes:
        taken.append(threading.current_thread().name)
        return b"state"

    cache.submit(tokens(BLOCK), 5, state)
    cache.close()
    assert taken == [threading.current_thread().name]
    assert cache.find(tokens(BLOCK), limit=BLOCK) is not None
    cache.submit(tokens(BLOCK), 5, state)  # written already
    cache.submit(tokens(BLOCK, start=9), PENDING + 1, state)  # too much to hold
    cache.submit(tokens(BLOCK - 1, start=9), 5, state)  # shorter than a block
    cache.submit(tokens(BLOCK, start=9), 5, state, floor=BLOCK + 1)  # past its floor
    cache.close()
    assert len(taken) == 1 and len(entry_files(str(tmp_path))) == 1


def test_a_fingerprint_changes_with_the_files(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    before = fingerprint(str(model))
    os.utime(model, ns=(1, 1))
    assert fingerprint(str(model)) != before
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    first = fingerprint(str(folder))
    (folder / "config.json").write_text("{}")
    assert fingerprint(str(folder)) != first and fingerprint(str(folder))[0] == str(folder)


def test_corrupt_short_and_foreign_files_are_skipped_and_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(str(tmp_path), KEY)
    saved = tokens(2 * BLOCK)
    cache.put(saved, b"x" * 1000)
    names = sorted(p for p, *_ in entry_files(str(tmp_path)))
    assert len(names) == 2  # one file, a name for each block
    data = Path(names[1]).read_bytes()
    Path(names[1]).unlink()
    Path(names[1]).write_bytes(data[:-40])  # truncated, in place of the link
    Path(names[0]).unlink()
    Path(names[0]).write_bytes(data[:100] + b"\xff" + data[101:])  # one byte flipped
    (tmp_path / "foreign.kv").write_bytes(os.urandom(500))
    with caplog.at_level(logging.WARNING, logger="inference.cache"):
        assert cache.find(saved, limit=len(saved)) is None
    assert "checksum does not match" in caplog.text
    assert not Path(names[0]).exists() and not Path(names[1]).exists()
    assert describe(str(tmp_path / "foreign.kv"))["error"] == "not an entry of this format"
    assert MAGIC.startswith(b"INFKV")


def test_the_folder_keeps_within_its_budget_least_recently_used_out(tmp_path: Path) -> None:
    cache = DiskCache(str(tmp_path), KEY, budget=5000)
    for i in range(4):
        cache.put(tokens(BLOCK, start=i * 1000), bytes(1500))
        assert cache.find(tokens(BLOCK, start=i * 1000), limit=BLOCK) is not None  # used now
    total = sum(size for _, size, *_ in entry_files(str(tmp_path)))
    assert total <= 5000
    assert cache.find(tokens(BLOCK, start=3000), limit=BLOCK) is not None  # the newest stays
    assert cache.find(tokens(BLOCK, start=0), limit=BLOCK) is None  # the oldest went first


def test_a_failed_write_turns_the_tier_off_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(str(tmp_path), KEY)

    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_cache.tempfile, "mkstemp", full)
    with caplog.at_level(logging.WARNING, logger="inference.cache"):
        cache.put(tokens(BLOCK), b"state")
    assert not cache.enabled and "disk tier is off" in caplog.text
    assert cache.find(tokens(BLOCK), limit=BLOCK) is None
    assert not list(tmp_path.iterdir())


def test_the_folder_comes_from_the_option_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inference import env

    monkeypatch.delenv(env.INFERENCE_KV_CACHE_DIR, raising=False)
    assert env.kv_cache_dir() == ""
    monkeypatch.setenv(env.INFERENCE_KV_CACHE_DIR, "/var/cache/kv ")
    assert env.kv_cache_dir() == "/var/cache/kv"
    assert env.kv_cache_dir("/given") == "/given"
