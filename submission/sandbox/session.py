"""One session as the harness holds it, and one call on it: send the cell, then read
its output pipes and its reply until the reply comes or a deadline passes."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from submission.sandbox import protocol
from submission.sandbox.result import BoundedCapture

_READ_CHUNK = 1 << 16
_DRAIN_READS = 16
# A session's reply is a few bytes; more is a forged message, not worth buffering.
MAX_REPLY_BYTES = 4096
REPLY_STATUSES = ("ok", "error", "interrupted")


@dataclass
class Session:
    """A live session process and what the harness keeps for it."""

    name: str
    pid: int
    channel: socket.socket
    stdout_fd: int
    stderr_fd: int
    generation: int  # the fork server that started it
    uid: int | None = None  # leased host-wide; given back when it is discarded
    cgroups: list[str] = field(default_factory=list)
    workdir: str | None = None  # a host folder to remove (no private /tmp here)
    history: list[str] = field(default_factory=list)  # its successful cells, for a restore
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call at a time
    closed_by_user: bool = False  # close_session: never restore it
    _seq: int = 0
    _closed: bool = False
    _close_lock: threading.Lock = field(default_factory=threading.Lock)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def mark_closed(self) -> bool:
        """True for the one caller that gets to close it (a discard is idempotent)."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
        return first

    def close_fds(self) -> None:
        self.channel.close()
        for fd in (self.stdout_fd, self.stderr_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Call:
    """One cell sent to a session; `wait` may be called again with a later deadline
    (after an interrupt), the output keeps accumulating."""

    def __init__(self, sess: Session, code: str, max_chars: int, deadline: float) -> None:
        self.sess = sess
        self.stdout = BoundedCapture(max_chars)
        self.stderr = BoundedCapture(max_chars)
        self.seq = sess.next_seq()
        self.sent = False
        self.send_timed_out = False
        self._reader = protocol.MessageReader(MAX_REPLY_BYTES)
        self._poller = select.poll()
        self._captures = {sess.stdout_fd: self.stdout, sess.stderr_fd: self.stderr}
        # Output left over from processes a previous call started is not this call's.
        drain(sess.stdout_fd, None)
        drain(sess.stderr_fd, None)
        try:
            # A session whose threads hold the GIL may not read a big cell: bound the send.
            sess.channel.settimeout(max(0.001, deadline - time.monotonic()))
            sess.channel.sendall(protocol.encode({"code": code, "seq": self.seq}))
            self.sent = True
        except TimeoutError:  # a partial message: the channel is out of step
            self.send_timed_out = True
            return
        except OSError:  # the session is gone
            return
        for fd in (sess.channel.fileno(), *self._captures):
            self._poller.register(fd, select.POLLIN)

    def wait(self, deadline: float) -> str | None:
        """The reply's status ("ok", "error", "interrupted"), "crashed" when the session
        broke its channel or sent garbage, or None when `deadline` passed first."""
        if not self.sent:
            return "crashed"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drain_all()
                return None
            for fd, _ in self._poller.poll(max(1, int(remaining * 1000 + 1))):
                if fd in self._captures:
                    if not drain(fd, self._captures[fd]):
                        self._poller.unregister(fd)
                    continue
                status = self._read_reply()
                if status is not None:
                    self._drain_all()
                    return status

    def _read_reply(self) -> str | None:
        try:
            data = self.sess.channel.recv(_READ_CHUNK)
            if not data:
                return "crashed"
            reply = self._reader.feed(data)
            while reply is not None:
                status = reply.get("status")
                if reply.get("seq") == self.seq and status in REPLY_STATUSES:
                    return str(status)
                if reply.get("seq") == self.seq:
                    return "crashed"
                # A message for no call of ours: the cell forged it; wait for the real one.
                reply = self._reader.feed(b"")
        except (OSError, protocol.ProtocolError):
            return "crashed"
        return None

    def _drain_all(self) -> None:
        for fd, capture in self._captures.items():
            drain(fd, capture)


def drain(fd: int, capture: BoundedCapture | None) -> bool:
    """Read what is available now, at most _DRAIN_READS chunks (a writer that never stops
    must not keep a call from seeing its deadline); False once the pipe is closed."""
    for _ in range(_DRAIN_READS):
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return False
        if not data:
            return False
        if capture is not None:
            capture.feed(data)
    return True
