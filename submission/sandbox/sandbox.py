"""The harness side of the sandbox: sessions by name, calls with deadlines, bounded capture.

`Sandbox(...)` starts the fork server (a fresh interpreter, see forkserver.py)
right away, so construct it before importing CUDA or TensorRT-LLM. Each
session is one forked process; the harness talks to it over a socket and reads
its stdout and stderr from pipes, keeping only the first `max_output_chars`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from submission.sandbox import protocol
from submission.sandbox.result import BoundedCapture, ExecResult, Status

if TYPE_CHECKING:
    from submission.config import Config

log = logging.getLogger(__name__)
_READ_CHUNK = 1 << 16
_SERVER_TIMEOUT_S = 120.0
_MB = 1024 * 1024
_NOBODY_ID = 65534
# Signals that mean "a limit or someone stopped it" rather than "it broke".
_KILL_SIGNALS = {signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ}
DEFAULT_PRELOAD = ("math", "numpy", "sympy", "itertools", "fractions", "functools", "collections")


class SandboxError(RuntimeError):
    """The sandbox machinery itself failed (not the code it ran)."""


@dataclass
class _Session:
    """One live session process and the harness's ends of its channel and pipes."""

    name: str
    pid: int
    channel: socket.socket
    stdout_fd: int
    stderr_fd: int
    workdir: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close_fds(self) -> None:
        self.channel.close()
        for fd in (self.stdout_fd, self.stderr_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Sandbox:
    """Stateful, isolated Python sessions (one process each) for the model's code."""

    def __init__(
        self,
        *,
        memory_mb: int = 4096,
        cpu_time_s: int = 60,
        file_size_mb: int = 64,
        open_files: int = 256,
        max_processes: int = 64,
        unprivileged_user: str | None = "nobody",
        first_session_uid: int = 61000,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        max_output_chars: int = 1000,
        truncation_marker: str = "<output cut>",
        max_concurrent_calls: int = 64,
        spare_sessions: int = 2,
    ) -> None:
        self.max_output_chars = max_output_chars
        self.truncation_marker = truncation_marker
        # (soft, hard) per limit. CPU: SIGXCPU at the soft limit names the cause;
        # SIGKILL a second later if the code ignores it.
        self._limits = {
            "RLIMIT_AS": (memory_mb * _MB, memory_mb * _MB),
            "RLIMIT_CPU": (cpu_time_s, cpu_time_s + 1),
            "RLIMIT_FSIZE": (file_size_mb * _MB, file_size_mb * _MB),
            "RLIMIT_NOFILE": (open_files, open_files),
        }
        self._user = _unprivileged_ids(unprivileged_user)
        self._first_session_uid = first_session_uid
        if self._user is not None:
            self._limits["RLIMIT_NPROC"] = (max_processes, max_processes)
        self._preload = list(preload)
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._server_lock = threading.Lock()
        self._closed = False
        # Sessions forked and warmed ahead of need, so a new session costs no fork.
        self._spare_target = spare_sessions
        self._spares: list[_Session] = []
        self._refilling = False
        self._executor = ThreadPoolExecutor(max_concurrent_calls, thread_name_prefix="sandbox")
        self._server: subprocess.Popen[bytes] | None = None
        self._server_channel: socket.socket | None = None
        self._server_ready = False
        self._start_server()
        self._refill_spares()

    @classmethod
    def from_config(cls, config: Config) -> Sandbox:
        """A sandbox with the limits of `config.sandbox` and the output cut of `config.tir`."""
        sc = config.sandbox
        return cls(
            memory_mb=sc.memory_mb,
            cpu_time_s=sc.cpu_time_s,
            file_size_mb=sc.file_size_mb,
            open_files=sc.open_files,
            max_processes=sc.max_processes,
            unprivileged_user=sc.unprivileged_user or None,
            first_session_uid=sc.first_session_uid,
            preload=sc.preload,
            max_output_chars=config.tir.max_output_chars,
            truncation_marker=config.tir.truncation_marker,
            spare_sessions=sc.spare_sessions,
        )

    # -- public API -----------------------------------------------------------------------

    def run(self, code: str, session: str = "default", timeout: float = 10.0) -> ExecResult:
        """Run `code` in the named session (created on first use); never raises for bad code."""
        start = time.monotonic()
        if self._closed:
            raise SandboxError("sandbox is closed")
        try:
            sess = self._session(session)
        except SandboxError as exc:
            log.error("sandbox cannot start session %r: %s", session, exc)
            return ExecResult("", f"SandboxError: {exc}\n", "crashed", time.monotonic() - start)
        with sess.lock:
            deadline = time.monotonic() + timeout
            status, stdout, stderr, ended = self._execute(sess, code, deadline)
        stderr_text = stderr.text()
        if status in ("timeout", "killed", "crashed"):
            info = self._discard(sess, grace_s=0.0 if status == "timeout" else 0.2)
            if status != "timeout":
                status = _death_status(info)
            # After the cut, so the model always learns that its variables are gone.
            newline = "" if stderr_text.endswith("\n") or not stderr_text else "\n"
            stderr_text += newline + _restart_note(status, timeout, info)
        return ExecResult(stdout.text(), stderr_text, status, ended - start)

    async def arun(self, code: str, session: str = "default", timeout: float = 10.0) -> ExecResult:
        """`run` on a worker thread; cancelling the task kills the session (it is not reused)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, functools.partial(self.run, code, session, timeout)
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The worker thread returns as soon as the session's process is gone.
            if not self._closed:
                self._executor.submit(self.close_session, session)
            raise

    @property
    def server_pid(self) -> int | None:
        """The fork server's process id: every session process descends from it."""
        return self._server.pid if self._server is not None else None

    def session_pids(self) -> dict[str, int]:
        """Process ids of the live sessions by name (spares not included)."""
        with self._sessions_lock:
            return {name: sess.pid for name, sess in self._sessions.items()}

    def close_session(self, session: str) -> None:
        """Kill the session's processes and remove its directory; unknown names are ignored."""
        with self._sessions_lock:
            sess = self._sessions.get(session)
        if sess is not None:
            self._discard(sess, grace_s=0.0)

    def close(self) -> None:
        """Kill every session and the fork server."""
        if self._closed:
            return
        with self._sessions_lock:
            self._closed = True
            sessions = [*self._sessions.values(), *self._spares]
            self._spares.clear()
        for sess in sessions:
            self._discard(sess, grace_s=0.0)
        with self._server_lock:
            self._stop_server()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sessions -------------------------------------------------------------------------

    def _session(self, name: str) -> _Session:
        """The named session; a new one is a spare when there is one, else forked now."""
        with self._sessions_lock:
            sess = self._sessions.get(name)
            if sess is not None:
                return sess
            if self._spares:
                sess = self._spares.pop()
                sess.name = name
                self._sessions[name] = sess
        self._refill_spares()
        if sess is not None:
            return sess
        sess = self._spawn(name)
        with self._sessions_lock:
            existing = self._sessions.setdefault(name, sess)
        if existing is not sess:  # another thread created it first
            self._discard(sess, grace_s=0.0)
        return existing

    def _refill_spares(self) -> None:
        with self._sessions_lock:
            if self._refilling or self._closed or len(self._spares) >= self._spare_target:
                return
            self._refilling = True
        self._executor.submit(self._refill_loop)

    def _refill_loop(self) -> None:
        """Fork and warm spares up to the target (on a worker thread)."""
        try:
            while True:
                with self._sessions_lock:
                    if self._closed or len(self._spares) >= self._spare_target:
                        return
                sess = self._spawn("")
                # The first cell pays the copy-on-write faults; pay them now, not in a call.
                status, *_ = self._execute(sess, 'print(end="")', time.monotonic() + 30.0)
                with self._sessions_lock:
                    keep = status == "ok" and not self._closed
                    if keep:
                        self._spares.append(sess)
                if not keep:
                    self._discard(sess, grace_s=0.0)
                    return
        except SandboxError as exc:
            if not self._closed:  # a refill racing close() fails by design: no news
                log.warning("sandbox could not prepare a spare session: %s", exc)
        finally:
            with self._sessions_lock:
                self._refilling = False

    def _spawn(self, name: str) -> _Session:
        workdir = tempfile.mkdtemp(prefix="aimo-sandbox-")  # the session makes it its own
        parent_channel, child_channel = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        request = {"op": "spawn", "workdir": workdir, "limits": self._limits}
        try:
            reply = self._server_request(request, [child_channel.fileno(), out_w, err_w])
        finally:
            child_channel.close()
            os.close(out_w)
            os.close(err_w)
        if "pid" not in reply:
            parent_channel.close()
            os.close(out_r)
            os.close(err_r)
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(f"fork server could not start a session: {reply}")
        return _Session(name, int(reply["pid"]), parent_channel, out_r, err_r, workdir)

    def _discard(self, sess: _Session, grace_s: float) -> dict[str, Any]:
        """Forget the session, kill its processes, remove its directory; how it ended."""
        with self._sessions_lock:
            if self._sessions.get(sess.name) is sess:
                del self._sessions[sess.name]
        try:
            info = self._server_request({"op": "kill", "pid": sess.pid, "grace_s": grace_s})
        except SandboxError:
            info = {}
        sess.close_fds()
        shutil.rmtree(sess.workdir, ignore_errors=True)
        return info

    # -- one call ---------------------------------------------------------------------------

    def _execute(
        self, sess: _Session, code: str, deadline: float
    ) -> tuple[Status, BoundedCapture, BoundedCapture, float]:
        stdout = BoundedCapture(self.max_output_chars, self.truncation_marker)
        stderr = BoundedCapture(self.max_output_chars, self.truncation_marker)
        # Output left over from processes a previous call started is not this call's.
        _drain(sess.stdout_fd, None)
        _drain(sess.stderr_fd, None)
        try:
            # A session whose threads hold the GIL may not read a big cell: bound the send.
            sess.channel.settimeout(max(0.001, deadline - time.monotonic()))
            sess.channel.sendall(protocol.encode({"code": code}))
        except TimeoutError:
            return "timeout", stdout, stderr, time.monotonic()
        except OSError:
            return "crashed", stdout, stderr, time.monotonic()
        reader = protocol.MessageReader()
        poller = select.poll()
        captures = {sess.stdout_fd: stdout, sess.stderr_fd: stderr}
        for fd in (sess.channel.fileno(), *captures):
            poller.register(fd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _drain(sess.stdout_fd, stdout)
                _drain(sess.stderr_fd, stderr)
                return "timeout", stdout, stderr, time.monotonic()
            for fd, _ in poller.poll(max(1, int(remaining * 1000 + 1))):
                if fd in captures:
                    if not _drain(fd, captures[fd]):
                        poller.unregister(fd)
                    continue
                try:
                    data = sess.channel.recv(_READ_CHUNK)
                    reply = reader.feed(data) if data else None
                except (OSError, protocol.ProtocolError):
                    data, reply = b"", None
                if reply is not None or not data:
                    ended = time.monotonic()
                    _drain(sess.stdout_fd, stdout)
                    _drain(sess.stderr_fd, stderr)
                    status = reply.get("status") if reply else None
                    if status in ("ok", "error"):
                        return status, stdout, stderr, ended
                    return "crashed", stdout, stderr, ended

    # -- the fork server --------------------------------------------------------------------

    def _start_server(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.update(
            {
                # No GPU for the model's code; single-threaded BLAS is fork-safe.
                "CUDA_VISIBLE_DEVICES": "",
                "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(Path(__file__).parents[2]), env.get("PYTHONPATH")) if p
                ),
            }
        )
        settings = {
            "preload": self._preload,
            "user": self._user,
            "first_session_uid": self._first_session_uid,
        }
        self._server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "submission.sandbox.forkserver",
                str(theirs.fileno()),
                json.dumps(settings),
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        # The server never blocks for long; silence this long means it is stuck.
        ours.settimeout(_SERVER_TIMEOUT_S)
        self._server_channel = ours
        self._server_ready = False

    def _server_request(
        self, request: dict[str, Any], fds: list[int] | None = None
    ) -> dict[str, Any]:
        """One request to the fork server; a dead one is replaced once (its sessions die)."""
        with self._server_lock:
            for attempt in (1, 2):
                try:
                    return self._server_exchange(request, fds)
                except (OSError, protocol.ProtocolError) as exc:
                    if attempt == 2 or self._closed:
                        raise SandboxError(f"fork server failed: {exc}") from exc
                    log.warning("sandbox fork server failed (%s); starting a new one", exc)
                    self._stop_server()
                    self._start_server()
            raise AssertionError("unreachable")

    def _server_exchange(self, request: dict[str, Any], fds: list[int] | None) -> dict[str, Any]:
        if self._server_channel is None:
            raise OSError("fork server is not running")
        if not self._server_ready:
            hello, _ = protocol.recv(self._server_channel)
            if hello.get("failed_preloads"):
                log.warning("sandbox could not preload %s", hello["failed_preloads"])
            if self._user is not None and hello.get("user") is None:
                log.warning("sandbox sessions run as root: this machine refuses setuid")
            elif (
                self._user is not None and self._first_session_uid and not hello.get("session_uids")
            ):
                log.warning(
                    "sandbox sessions share one uid: this machine refuses uid %d",
                    self._first_session_uid,
                )
            self._server_ready = True
        protocol.send(self._server_channel, request, fds)
        reply, _ = protocol.recv(self._server_channel)
        return reply

    def _stop_server(self) -> None:
        if self._server_channel is not None:
            self._server_channel.close()
            self._server_channel = None
        if self._server is not None:
            try:
                self._server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()


def _drain(fd: int, capture: BoundedCapture | None) -> bool:
    """Read everything available now; False once the pipe is closed."""
    while True:
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


def _unprivileged_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to drop to, or None when not root or no user is configured."""
    if not user or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        # A user needs no passwd entry to exist: fall back to nobody's usual ids.
        log.warning("sandbox user %r does not exist; using uid/gid %d", user, _NOBODY_ID)
        return _NOBODY_ID, _NOBODY_ID
    return entry.pw_uid, entry.pw_gid


def _death_status(info: dict[str, Any]) -> Status:
    sig = info.get("signal")
    return "killed" if sig is not None and sig in _KILL_SIGNALS else "crashed"


def _restart_note(status: Status, timeout: float, info: dict[str, Any]) -> str:
    gone = "the session was restarted, earlier variables are gone"
    if status == "timeout":
        return f"TimeoutError: execution exceeded {timeout:g} s; {gone}\n"
    if "signal" in info:
        try:
            name = signal.Signals(info["signal"]).name
        except ValueError:
            name = f"signal {info['signal']}"
        why = {
            "SIGXCPU": "CPU time limit",
            "SIGXFSZ": "file size limit",
            "SIGKILL": "killed, e.g. out of memory",
        }.get(name, name)
        return f"The Python process died ({why}); {gone}\n"
    if "exit_code" in info:
        return f"The Python process exited (code {info['exit_code']}); {gone}\n"
    return f"The Python process stopped answering; {gone}\n"
