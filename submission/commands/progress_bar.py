"""Live progress for a long command: a rich bar on a terminal, a log line now and then elsewhere.

While the bar is shown, log records print above it (through its console). Both
say how much is done, the caller's status (e.g. tokens/s), and the time left at
this run's pace so far.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # a progress line this often when there is no terminal


class LiveProgress:
    def __init__(
        self,
        what: str,
        total: int,
        done: int = 0,
        status: Callable[[], str] = lambda: "",
        unit: str = "",
        log_every_s: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.what = what
        self.total = total
        self.done = done
        self.status = status
        self.unit = unit
        self.log_every_s = LOG_EVERY_S if log_every_s is None else log_every_s
        self.enabled = enabled
        self._done_at_start = done
        self._started = time.monotonic()
        self._logged = self._started
        self._bar: Any = None
        self._task: Any = None
        self._saved_handlers: list[logging.Handler] = []

    def __enter__(self) -> LiveProgress:
        self._started = self._logged = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            from rich.logging import RichHandler
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                transient=True,
            )
            root = logging.getLogger()
            self._saved_handlers = root.handlers[:]
            root.handlers = [RichHandler(console=self._bar.console, show_path=False)]
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            logging.getLogger().handlers = self._saved_handlers
            self._bar = None

    def advance(self, count: int = 1) -> None:
        self.done += count
        self.refresh()

    def seconds_left(self) -> float | None:
        """At this run's pace so far; None before anything was done."""
        done_here = self.done - self._done_at_start
        if done_here <= 0:
            return None
        return (self.total - self.done) * (time.monotonic() - self._started) / done_here

    def line(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        left = self.seconds_left()
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit} ({percent:.0f}%)".strip()]
        if status := self.status():
            parts.append(status)
        parts.append("time left unknown" if left is None else f"{_duration(left)} left")
        return ", ".join(parts)

    def refresh(self) -> None:
        """Show the state now (the bar), or log it when the last line is old enough."""
        if self._bar is not None:
            status = self.status()
            description = f"{self.what} ({status})" if status else self.what
            self._bar.update(self._task, completed=self.done, description=description)
            return
        now = time.monotonic()
        if self.enabled and (now - self._logged >= self.log_every_s or self.done >= self.total):
            self._logged = now
            log.info("%s", self.line())


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
