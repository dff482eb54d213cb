"""One session as the harness holds it, and one call on it: send the cell, then read its
output pipes and its reply until the reply comes, the session process dies, the call
spends its CPU budget, or a deadline passes."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from submission.sandbox import pids, protocol
from submission.sandbox.repl import INTERRUPT_NOTICE
from submission.sandbox.result import BoundedCapture

_READ_CHUNK = 1 << 16
_DRAIN_READS = 16
# A session's reply is a few bytes; more is a forged message, not worth buffering.
MAX_REPLY_BYTES = 4096
REPLY_STATUSES = ("ok", "error", "interrupted")
# What `Call.wait` returns when the call has used its CPU budget (checked this often).
OVER_CPU = "over_cpu"
_CPU_CHECK_S = 0.25
# struct ucred (pid, uid, gid), which the kernel attaches to what a peer sends (SO_PASSCRED).
_CREDENTIALS = struct.Struct("iII")
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_CREDENTIALS.size)


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
    # Its cells that ended with its namespace kept (status ok or error), for a restore.
    history: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call at a time
    closed_by_user: bool = False  # close_session: never restore it
    pidfd: int | None = None  # the process itself, whatever happens to its pid's number
    cpu_budget_s: float = 0.0  # CPU seconds one call may use (0: no limit)
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
        for fd in (self.stdout_fd, self.stderr_fd, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def send_interrupt_notice(self) -> None:
        """Tell the cell that the SIGINT about to come is the harness's (see repl.py)."""
        with contextlib.suppress(OSError):
            self.channel.send(INTERRUPT_NOTICE, socket.MSG_DONTWAIT)


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
        # CPU time counts from here (the process's whole life is no call's budget).
        self._cpu_start = pids.cpu_seconds(sess.pid) if sess.cpu_budget_s else None
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
        if sess.pidfd is not None:  # its death ends the call at once (a child may hold
            self._poller.register(sess.pidfd, select.POLLIN)  # the channel open)

    def wait(self, deadline: float) -> str | None:
        """The reply's status ("ok", "error", "interrupted"), "crashed" when the session
        died, broke its channel or sent garbage, OVER_CPU when the session process (all its
        threads) used more CPU time than its budget since the call began, or None when
        `deadline` passed first."""
        if not self.sent:
            return "crashed"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drain_all()
                return None
            if self._cpu_start is not None:
                if self._over_cpu():
                    self._drain_all()
                    return OVER_CPU
                remaining = min(remaining, _CPU_CHECK_S)  # look again this often
            events = self._poller.poll(max(1, int(remaining * 1000 + 1)))
            # The channel first: a reply sent just before the process died still counts.
            events.sort(key=lambda event: event[0] != self.sess.channel.fileno())
            for fd, _ in events:
                if fd in self._captures:
                    if not drain(fd, self._captures[fd]):
                        self._poller.unregister(fd)
                    continue
                status = self._read_reply() if fd == self.sess.channel.fileno() else "crashed"
                if status is not None:
                    self._drain_all()
                    return status

    def _read_reply(self) -> str | None:
        try:
            data = self._recv_from_session()
            if data is None:  # sent by another process (a child holding the channel)
                return None
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

    def _over_cpu(self) -> bool:
        used = pids.cpu_seconds(self.sess.pid)
        if used is None or self._cpu_start is None:
            return False
        return used - self._cpu_start > self.sess.cpu_budget_s

    def _recv_from_session(self) -> bytes | None:
        """What the session process itself sent (b"" at the end of the channel); None for
        bytes another process sent: a child of the session holds the channel too, and may
        send well-formed replies with the next call's number. The kernel names the sender
        of each read (SO_PASSCRED) and never joins two senders' bytes in one."""
        data, ancillary, _, _ = self.sess.channel.recvmsg(_READ_CHUNK, _CREDENTIALS_SPACE)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender, _, _ = _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])
                return data if sender == self.sess.pid or not data else None
        return data

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
