"""The rehearsal's live progress: its own steps, and the key lines of each run's logs as written.

Lines go to stderr (the verdict table, or `--json`, to stdout), each with the
seconds since the rehearsal began: `[  42.1 s] aimo3 interactive: problem 3/10 ...`.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import TextIO

# Kernel log lines worth showing live: its stages, each answer, predict's own fallbacks, faults.
KEY_LINE = re.compile(
    r"submission\.kernel: (install|preflight|engine|serve\(\)|config|SIGTERM|kernel)"
    r"|submission\.kernel: code: (installed|the installed|/)"
    r"| problem \d+/\d+ | summary: \d+ rows |submission\.kaggle: fallback "
    r"| (ERROR|CRITICAL) |^Traceback|^\w*Error\b"
)
# "2026-12-06 17:31:16,511 INFO submission.kernel: " (the level is kept when not INFO)
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO )?(?:(\w+) )?\S+: ")


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.began = time.monotonic()

    def step(self, text: str) -> None:
        if self.enabled:
            seconds = time.monotonic() - self.began
            print(f"[{seconds:6.1f} s] {text}", file=self.stream, flush=True)

    def follow(self, log: Path, label: str) -> LogTail:
        return LogTail(self, log, label)


class LogTail:
    """The lines a log file gained since the last poll; the key ones shown."""

    def __init__(self, progress: Progress, log: Path, label: str) -> None:
        self.progress = progress
        self.log = log
        self.label = label
        self.offset = 0
        self.partial = b""

    def poll(self) -> None:
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if KEY_LINE.search(line):
                shown = LOG_PREFIX.sub(lambda m: f"{m.group(1)} " if m.group(1) else "", line)
                self.progress.step(f"{self.label}: {shown[:160]}")
