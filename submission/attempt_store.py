"""The collector's store: attempt rows appended to shard files, one JSON line per attempt.

A row is committed once its whole line, newline included, is in its shard: the
line goes out in one write to a file opened for appending (and is fsynced when
asked), so a process killed at any moment leaves at most one torn last line.
Readers skip a torn last line; a shard's writer cuts it off before it appends.
Each shard has one writer at a time: an exclusive `flock` on the shard, which
the kernel releases when the writing process dies, SIGKILL included. Rows are
keyed by (problem_id, attempt_num); reading a folder takes every shard in it
and keeps the first row of a key, so a resume or a merge never counts an
attempt twice, whatever chunking wrote the shards.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARD_SUFFIX = ".jsonl"
TEXT_FIELD = "text_z"  # the generation text, zlib-compressed, base64

Key = tuple[str, int]


class StoreBusyError(RuntimeError):
    """A shard that another process is writing now."""


def row_key(row: dict[str, Any]) -> Key:
    return str(row["problem_id"]), int(row["attempt_num"])


def pack_text(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 6)).decode("ascii")


def unpack_text(packed: str) -> str:
    return zlib.decompress(base64.b64decode(packed)).decode("utf-8")


@dataclass
class ShardRead:
    """One shard's committed rows, and what in it was not a row."""

    rows: list[dict[str, Any]]
    good_bytes: int  # the length of its committed lines (where a writer appends)
    torn_tail: bool  # its last line is incomplete (a writer killed mid-line)
    bad_lines: list[int]  # complete lines that are not rows (1-based; corruption)


def _committed_lines(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """(line number, bytes, the row or None when the line is not one) of each committed
    line, streamed; stops before a torn last line."""
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith(b"\n"):
                return
            try:
                row = json.loads(line)
                row_key(row)
            except (ValueError, KeyError, TypeError):
                row = None
            yield number, len(line), row


def read_shard(path: Path) -> ShardRead:
    """The shard's rows, their texts left out (`texts()` streams those)."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    good_bytes = 0
    for number, size, row in _committed_lines(path):
        good_bytes += size
        if row is None:
            bad.append(number)
            continue
        row.pop(TEXT_FIELD, None)
        rows.append(row)
    return ShardRead(rows, good_bytes, good_bytes < path.stat().st_size, bad)


@dataclass
class StoreRead:
    """Every committed row of a folder's shards, one per key."""

    rows: list[dict[str, Any]]
    shards: int = 0
    duplicates: int = 0  # rows of a key already read (never written by the collector)
    torn_tails: list[str] = field(default_factory=list)  # shards ending in a torn line
    bad_lines: list[str] = field(default_factory=list)  # "shard:line" of unreadable lines

    def keys(self) -> set[Key]:
        return {row_key(row) for row in self.rows}


def shard_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SHARD_SUFFIX}")) if folder.is_dir() else []


def read_store(folder: Path) -> StoreRead:
    """All shards of `folder` in name order; the first row of each key wins (texts left
    out: `texts()` streams them)."""
    result = StoreRead(rows=[])
    seen: set[Key] = set()
    for path in shard_paths(folder):
        shard = read_shard(path)
        result.shards += 1
        if shard.torn_tail:
            result.torn_tails.append(path.name)
        result.bad_lines += [f"{path.name}:{n}" for n in shard.bad_lines]
        for row in shard.rows:
            key = row_key(row)
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
            result.rows.append(row)
    return result


def texts(folder: Path) -> Iterator[tuple[Key, str]]:
    """Each key's text, in `read_store`'s order and with its choice of row, one at a time."""
    seen: set[Key] = set()
    for path in shard_paths(folder):
        for _, _, row in _committed_lines(path):
            if row is None or (key := row_key(row)) in seen:
                continue
            seen.add(key)
            yield key, unpack_text(row[TEXT_FIELD])


class ShardWriter:
    """The one writer of a shard: appends committed rows, whole lines only."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fsync = fsync
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreBusyError(f"another process is writing {path}") from None
        shard = read_shard(path)
        self.dropped_torn_tail = shard.torn_tail
        if shard.torn_tail:  # a row its last writer did not finish: not committed
            os.ftruncate(self._fd, shard.good_bytes)
        self.rows_at_open = len(shard.rows)

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:  # a regular file takes it in one write; loop for the odd short one
            view = view[os.write(self._fd, view) :]
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
