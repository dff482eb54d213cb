"""What one sandbox call returns, and the bounded capture that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ok: ran to the end; error: raised (traceback in stderr); timeout: passed its
# deadline (interrupted, or killed when the interrupt did not land); killed: ended
# by SIGKILL, SIGXCPU or SIGXFSZ (a limit, or out of memory); crashed: the session
# process exited, crashed with another signal or broke its channel.
Status = Literal["ok", "error", "timeout", "killed", "crashed"]
# What became of the session's namespace: kept (intact: the call ended normally or the
# interrupt landed); restored (the process was replaced and its successful cells re-run);
# lost (could not be rebuilt: the next call starts an empty session).
State = Literal["kept", "restored", "lost"]

# UTF-8 needs at most 4 bytes a character: this many bytes always holds the limit.
_BYTES_PER_CHAR = 4


@dataclass(frozen=True)
class ExecResult:
    """One call's outcome: the streams as captured (each cut at `sandbox.max_capture_chars`,
    `truncated` then True), how it ended, and what became of the session's state.

    Nothing model-facing is added here: the TIR loop's formatter turns this into
    the output block the model sees.
    """

    stdout: str
    stderr: str
    status: Status
    seconds: float
    state: State = "kept"
    truncated: bool = False

    @property
    def output(self) -> str:
        """stdout then stderr."""
        return self.stdout + self.stderr


class BoundedCapture:
    """Keeps the first bytes of a stream, enough for `max_chars` characters, and counts the rest.

    A session may write gigabytes; the harness keeps a few kilobytes of them.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._kept = bytearray()
        self._cap = max_chars * _BYTES_PER_CHAR + _BYTES_PER_CHAR
        self.total_bytes = 0

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        room = self._cap - len(self._kept)
        if room > 0:
            self._kept += data[:room]

    def text(self) -> tuple[str, bool]:
        """The stream as text (undecodable bytes replaced) and whether it was cut."""
        text = self._kept.decode("utf-8", errors="replace")
        if len(text) > self.max_chars or self.total_bytes > len(self._kept):
            return text[: self.max_chars], True
        return text, False
