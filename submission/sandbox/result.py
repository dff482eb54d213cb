"""What one sandbox call returns, and the bounded capture that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ok: ran to the end; error: raised (traceback in stderr); timeout: killed at its
# deadline; killed: ended by a signal such as a resource limit; crashed: the
# session process exited or broke its channel.
Status = Literal["ok", "error", "timeout", "killed", "crashed"]

# UTF-8 needs at most 4 bytes a character: this many bytes always holds the limit.
_BYTES_PER_CHAR = 4


@dataclass(frozen=True)
class ExecResult:
    """One call's outcome. stdout and stderr are each already cut to the output limit.

    When the session died (timeout, killed, crashed), stderr ends with a short
    note saying so, added after the cut so the model always sees it.
    """

    stdout: str
    stderr: str
    status: Status
    seconds: float

    @property
    def output(self) -> str:
        """What the model is shown: stdout then stderr (NeMo-Skills cuts each stream alone)."""
        return self.stdout + self.stderr


class BoundedCapture:
    """Keeps the first bytes of a stream, enough for `max_chars` characters, and counts the rest.

    A session may write gigabytes; the harness keeps a few kilobytes of them.
    """

    def __init__(self, max_chars: int, marker: str) -> None:
        self.max_chars = max_chars
        self.marker = marker
        self._kept = bytearray()
        self._cap = max_chars * _BYTES_PER_CHAR + _BYTES_PER_CHAR
        self.total_bytes = 0

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        room = self._cap - len(self._kept)
        if room > 0:
            self._kept += data[:room]

    def text(self) -> str:
        """The stream as text (undecodable bytes replaced), cut with the marker when too long."""
        text = self._kept.decode("utf-8", errors="replace")
        dropped_bytes = self.total_bytes > len(self._kept)
        if len(text) > self.max_chars or dropped_bytes:
            return text[: self.max_chars] + self.marker
        return text
