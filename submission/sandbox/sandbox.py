"""The harness side of the sandbox: sessions by name, calls with deadlines, and what
happens when a call overruns or its process dies (interrupt, else kill and restore).

`Sandbox(config.sandbox)` starts the fork server (a fresh interpreter, see
forkserver.py) right away, so construct it before importing CUDA or TensorRT-LLM.
No exception from what a session does reaches the caller: `run` returns an
ExecResult whatever the code did.

A session whose process died is restored in the background (a thread per restore):
the call that saw it die returns within `restore_wait_s`, and the session's next call
waits for the restore to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import math
import os
import resource
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from submission.config import SandboxConfig
from submission.sandbox import pids
from submission.sandbox.cgroups import SessionCgroups
from submission.sandbox.cleanup import (
    kill_uid,
    remove_ipc,
    remove_leftovers,
    remove_tree,
    uid_leases,
    unprivileged_ids,
)
from submission.sandbox.result import ExecResult, State, Status
from submission.sandbox.server import ForkServerClient, SandboxError
from submission.sandbox.session import OVER_CPU, Call, Session

if TYPE_CHECKING:
    from submission.config import Config

log = logging.getLogger(__name__)
_MB = 1024 * 1024
# Signals that mean "a limit or someone stopped it" rather than "it broke".
_KILL_SIGNALS = {signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ}
_WARM_UP_CELL = 'print(end="")'
# How long a new session's prelude may take.
_SPAWN_TIMEOUT_S = 30.0
# How long close() waits for the restores under way to notice their sessions were killed.
_RESTORE_JOIN_S = 5.0
# What a call that met a closed sandbox says (in stderr; its status is crashed/lost).
_CLOSED = "SandboxError: the sandbox is closed\n"
_CLOSED_DURING = "SandboxError: the sandbox was closed during this call\n"

__all__ = ["Sandbox", "SandboxError"]


@dataclass
class _Restore:
    """A session being rebuilt in the background: a new process, its kept cells re-run."""

    name: str
    history: list[tuple[str, str]]
    done: threading.Event = field(default_factory=threading.Event)
    state: State = "restored"  # final once `done` is set
    session: Session | None = None  # the new process, while its cells are re-run
    cancelled: bool = False  # closed meanwhile: never registered
    reported: bool = False  # the call that started it has returned its final state


class Sandbox:
    """Stateful, isolated Python sessions (one process each) for the model's code."""

    def __init__(self, config: SandboxConfig | None = None, max_concurrent_calls: int = 64):
        self.config = config = config or SandboxConfig()
        # (soft, hard) per limit. CPU: `cpu_time_s` is one call's budget, never the
        # session's: the harness stops a call whose process spends it (Call.wait), and the
        # REPL renews its soft limit before each cell (threads or children spinning past
        # it between calls get SIGXCPU). The hard limit stays open: raising one back
        # needs CAP_SYS_RESOURCE, which a container's root usually lacks.
        self._limits = {
            "RLIMIT_AS": (config.memory_mb * _MB, config.memory_mb * _MB),
            "RLIMIT_CPU": (config.cpu_time_s, resource.RLIM_INFINITY),
            "RLIMIT_FSIZE": (config.file_size_mb * _MB, config.file_size_mb * _MB),
            "RLIMIT_NOFILE": (config.open_files, config.open_files),
        }
        user = unprivileged_ids(config.unprivileged_user)
        if user is not None:
            self._limits["RLIMIT_NPROC"] = (config.max_processes, config.max_processes)
        self._uids = uid_leases(config.first_session_uid) if user else None
        self._cgroups = (
            SessionCgroups.create(f"{os.getpid()}-{id(self):x}")
            if (config.use_cgroups and os.geteuid() == 0)
            else None
        )
        self._sessions: dict[str, Session] = {}
        self._spares: list[Session] = []
        self._restores: dict[str, _Restore] = {}
        self._restore_threads: list[threading.Thread] = []
        # Sessions whose background restore failed after their call had returned: their
        # next call says so (state "lost").
        self._lost: set[str] = set()
        self._sessions_lock = threading.Lock()
        self._refilling = False
        self._closed = False
        self._guards_logged = False
        self._executor = ThreadPoolExecutor(max_concurrent_calls, thread_name_prefix="sandbox")
        probe_uid = config.first_session_uid if self._uids is not None else None
        self._server = ForkServerClient(config, user, probe_uid, self._after_server_died)
        self._refill_spares()

    @classmethod
    def from_config(cls, config: Config, family_prelude: str = "") -> Sandbox:
        """The sandbox of `config.sandbox`; an empty `session_prelude` there means
        `family_prelude`, the model family's (e.g. openmath filters warnings, as NeMo-Skills),
        which the caller passes: the sandbox knows no model families."""
        section = config.sandbox
        if not section.session_prelude:
            section = dataclasses.replace(section, session_prelude=family_prelude)
        return cls(section)

    # -- public API -----------------------------------------------------------------------

    def run(self, code: str, session: str = "default", timeout: float = 10.0) -> ExecResult:
        """Run `code` in the named session (created on first use); never raises for bad code.
        Returns within `timeout` + `interrupt_grace_s` + `restore_wait_s` of the cell's
        start; a call whose session is being restored first waits for that."""
        if not isinstance(code, str) or not isinstance(session, str):
            raise TypeError("code and session must be str")
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        start = time.monotonic()
        if self._closed:
            return ExecResult("", _CLOSED, "crashed", 0.0, "lost")
        try:
            return self._run(code, session, timeout, start)
        except Exception as exc:  # the machinery's own failure: the caller gets a result
            log.exception("sandbox call in session %r failed", session)
            with contextlib.suppress(Exception):
                self.close_session(session)
            seconds = time.monotonic() - start
            return ExecResult("", f"SandboxError: {exc!r}\n", "crashed", seconds, "lost")

    def _run(self, code: str, name: str, timeout: float, start: float) -> ExecResult:
        try:
            self._server.check()
            sess, state = self._session_for_call(name)
            if sess.generation != self._server.generation:  # its server died since
                self._discard(sess, grace_s=0.0)
                self._start_restore(sess)
                sess, state = self._session_for_call(name)  # waits for the restore
                state = "lost" if state == "lost" else "restored"
        except SandboxError as exc:
            if self._closed:  # close() raced this call: no fault of the machinery
                return ExecResult("", _CLOSED_DURING, "crashed", time.monotonic() - start, "lost")
            log.error("sandbox cannot start session %r: %s", name, exc)
            return ExecResult(
                "", f"SandboxError: {exc}\n", "crashed", time.monotonic() - start, "lost"
            )
        with sess.lock:  # the deadline counts from here: a new session's start is not the cell's
            status, call, alive = self._call(sess, code, time.monotonic() + timeout)
        if alive and status in ("ok", "error"):  # its effects are in the namespace: replayable
            sess.history.append((code, status))
        if not alive:
            died_at = time.monotonic()
            info = self._discard(sess, grace_s=0.2 if status == "crashed" else 0.0)
            if status == "crashed":  # it died by itself: how?
                status = _death_status(info)
            restore = self._start_restore(sess)
            restored = self._await_restore(restore, died_at + self.config.restore_wait_s)
            state = "lost" if state == "lost" else restored  # an earlier loss is news too
        stdout, stdout_cut = call.stdout.text()
        stderr, stderr_cut = call.stderr.text()
        if self._closed and status != "ok":
            stderr += _CLOSED_DURING
        seconds = time.monotonic() - start
        self._refill_spares()
        return ExecResult(stdout, stderr, status, seconds, state, stdout_cut or stderr_cut)

    async def arun(self, code: str, session: str = "default", timeout: float = 10.0) -> ExecResult:
        """`run` on a worker thread; cancelling the task kills the session (it is not reused)."""
        if self._closed:  # its worker threads are gone: answer here, as `run` would
            return self.run(code, session, timeout)
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
        return self._server.pid

    def session_pids(self) -> dict[str, int]:
        """Process ids of the live sessions by name (spares not included)."""
        with self._sessions_lock:
            return {name: sess.pid for name, sess in self._sessions.items()}

    def guards(self) -> dict[str, str]:
        """Which guards are active on this machine, guard -> how (for doctor and the log)."""
        hello = self._server.ready()
        user = hello.get("user")
        if user is None:
            uid = "off: sessions run as the harness's user"
        elif self._uids is not None and hello.get("session_uids"):
            uid = f"a uid per session, leased host-wide from {self._uids.first}"
        else:
            uid = f"all sessions as uid {user[0]}"
        if hello.get("seccomp"):
            calls = "seccomp: keyrings, new namespaces, mounts, ptrace, bpf, io_uring refused"
        else:
            calls = "off: no seccomp filter here (keyrings: the uid's emptied at each start)"
        namespaces = "off: shared /tmp (cleaned by uid), network and IPC shared"
        if hello.get("namespaces"):
            namespaces = "private /tmp (tmpfs), empty /run, no network, private IPC"
            if hello.get("private_proc"):
                namespaces += ", /proc of its own processes"
            if hello.get("interpreter_binds"):
                namespaces += f"; read-only: {', '.join(hello['interpreter_binds'])}"
        return {
            "memory and processes": "cgroup v1 memory + pids per session"
            if self._cgroups
            else "rlimits per process only",
            "namespaces": namespaces,
            "uid": uid,
            "system calls": calls,
            "signals": "through pidfds: only to processes proven the session's"
            if hello.get("pidfds")
            else "by pid, each process checked first (no pidfds on this kernel)",
            "environment": f"allow-listed: {', '.join(self.config.environment)}",
        }

    def close_session(self, session: str) -> None:
        """Kill the session's processes and remove what it left; unknown names are ignored."""
        with self._sessions_lock:
            sess = self._sessions.get(session)
            restore = self._restores.get(session)
            self._lost.discard(session)
        if restore is not None:
            self._cancel_restore(restore)
        if sess is not None:
            sess.closed_by_user = True
            self._discard(sess, grace_s=0.0)

    def close(self) -> None:
        """Kill every session and the fork server; safe to call twice."""
        with self._sessions_lock:
            if self._closed:
                return
            self._closed = True
            sessions = [*self._sessions.values(), *self._spares]
            self._spares.clear()
            restores = list(self._restores.values())
            threads = list(self._restore_threads)
        for restore in restores:
            self._cancel_restore(restore)
        for sess in sessions:
            self._discard(sess, grace_s=0.0)
        deadline = time.monotonic() + _RESTORE_JOIN_S
        for thread in threads:  # each ends as soon as its session is killed
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self._server.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._cgroups is not None:
            self._cgroups.close()
        if self._uids is not None:
            self._uids.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- one call: deadline, interrupt, kill ------------------------------------------------

    def _call(self, sess: Session, code: str, deadline: float) -> tuple[Status, Call, bool]:
        """Run the cell: its status, the call (its output), whether the session lives on."""
        call = Call(sess, code, self.config.max_capture_chars, deadline)
        if call.send_timed_out:  # a cell too big for a session that does not read
            return "timeout", call, False
        reply = call.wait(deadline)
        # As Jupyter: interrupt the cell and keep the namespace, if it lands in time.
        interrupted = False
        if reply is None:
            sess.send_interrupt_notice()
            interrupted = bool(self._request({"op": "interrupt", "pid": sess.pid}).get("sent"))
            if interrupted:
                reply = call.wait(time.monotonic() + self.config.interrupt_grace_s)
        if reply is None:
            return "timeout", call, False
        if reply == "interrupted":  # only the harness's own interrupt makes a timeout
            return ("timeout" if interrupted else "error"), call, True
        if reply == "crashed":
            return "crashed", call, False
        if reply == OVER_CPU:  # killed by the harness for its budget, as RLIMIT_CPU would
            return "killed", call, False
        return ("ok" if reply == "ok" else "error"), call, True

    # -- sessions -------------------------------------------------------------------------

    def _session_for_call(self, name: str) -> tuple[Session, State]:
        """The named session for a call, once any restore of it has ended; "lost" when a
        restore that ended after its own call had returned did not succeed."""
        while True:
            with self._sessions_lock:
                restore = self._restores.get(name)
                if restore is None:
                    state: State = "lost" if name in self._lost else "kept"
                    self._lost.discard(name)
                    break
            if not restore.done.wait(self.config.restore_timeout_s + _SPAWN_TIMEOUT_S):
                raise SandboxError(f"the restore of session {name!r} did not end")
        return self._session(name), state

    def _session(self, name: str) -> Session:
        """The named session; a new one is a spare when there is one, else forked now."""
        with self._sessions_lock:
            sess = self._sessions.get(name)
            if sess is not None:
                return sess
            while self._spares and sess is None:
                sess = self._spares.pop()
                if sess.generation != self._server.generation:
                    self._executor.submit(self._discard, sess, 0.0)
                    sess = None
            if sess is not None:
                sess.name = name
                self._sessions[name] = sess
            empty = not self._spares
        if empty:  # a burst of new sessions: refill now; else after the call (`_run`),
            self._refill_spares()  # as a fork during it would slow it
        if sess is not None:
            return sess
        sess = self._spawn(name)
        with self._sessions_lock:
            existing = self._sessions.setdefault(name, sess)
        if existing is not sess:  # another thread created it first
            self._discard(sess, grace_s=0.0)
        return existing

    def _start_restore(self, old: Session) -> _Restore:
        """Rebuild `old` (already discarded) in the background: a new process, then every
        cell that ended with the namespace kept re-run in order, within the cap."""
        restore = _Restore(old.name, list(old.history))
        with self._sessions_lock:
            if old.closed_by_user or self._closed:
                restore.state = "lost"
                restore.done.set()
                return restore
            self._restores[old.name] = restore
            thread = threading.Thread(
                target=self._restore, args=(restore,), name="sandbox-restore", daemon=True
            )
            self._restore_threads = [t for t in self._restore_threads if t.is_alive()]
            self._restore_threads.append(thread)
        thread.start()
        return restore

    def _restore(self, restore: _Restore) -> None:
        """The restore's thread. A cell that ended `ok` must do so again; one that raised
        may raise again (what it did before raising is back either way)."""
        deadline = time.monotonic() + self.config.restore_timeout_s
        new: Session | None = None
        try:
            new = self._spawn(restore.name)  # never a spare: those keep new sessions quick
            restore.session = new
            if restore.cancelled:
                raise SandboxError("closed meanwhile")
            with new.lock:
                for code, status in restore.history:
                    ended = Call(new, code, 0, deadline).wait(deadline)
                    if ended != "ok" and not (status == "error" and ended == "error"):
                        raise SandboxError(f"a re-run cell ended {ended or 'past the cap'}")
                    new.history.append((code, status))
            registered = False
            with self._sessions_lock:
                if not (restore.cancelled or self._closed):
                    registered = self._sessions.setdefault(restore.name, new) is new
            if not registered:
                raise SandboxError("closed meanwhile, or started afresh")
        except Exception as exc:  # whatever happens, the restore ends (its waiters with it)
            if isinstance(exc, (SandboxError, OSError)):
                log.info("sandbox session %r not restored: %s", restore.name, exc)
            else:
                log.exception("sandbox session %r not restored", restore.name)
            if new is not None:
                self._discard(new, grace_s=0.0)
            restore.state = "lost"
        with self._sessions_lock:
            if self._restores.get(restore.name) is restore:
                del self._restores[restore.name]
            if restore.state == "lost" and not (restore.reported or restore.cancelled):
                self._lost.add(restore.name)
            restore.done.set()

    def _await_restore(self, restore: _Restore, until: float) -> State:
        """The restore's state if it ends by `until`; else "restored" (under way: if it
        then fails, the session's next call reports "lost")."""
        restore.done.wait(max(0.0, until - time.monotonic()))
        with self._sessions_lock:
            if not restore.done.is_set():
                return "restored"
            restore.reported = True
            if restore.state == "lost":
                self._lost.discard(restore.name)
            return restore.state

    def _cancel_restore(self, restore: _Restore) -> None:
        restore.cancelled = True
        if restore.session is not None:  # its re-run call then fails at once
            self._discard(restore.session, grace_s=0.0)

    def _refill_spares(self) -> None:
        with self._sessions_lock:
            if self._refilling or self._closed or len(self._spares) >= self.config.spare_sessions:
                return
            self._refilling = True
        self._executor.submit(self._refill_loop)

    def _refill_loop(self) -> None:
        """Fork and warm spares up to the target (on a worker thread)."""
        try:
            while True:
                with self._sessions_lock:
                    if self._closed or len(self._spares) >= self.config.spare_sessions:
                        return
                sess = self._spawn("")
                with self._sessions_lock:
                    keep = not self._closed
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

    def _spawn(self, name: str) -> Session:
        """Fork a session, run the prelude (the first cell also pays the copy-on-write faults)."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        hello = self._server.ready()
        if not self._guards_logged:
            self._guards_logged = True
            log.info("sandbox guards: %s", "; ".join(f"{k}: {v}" for k, v in self.guards().items()))
        generation = self._server.generation
        uid = cgroups = workdir = None
        channels = socket.socketpair()
        # Each read then names its sender: only the session process may answer (Call).
        with contextlib.suppress(OSError):
            channels[0].setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        pipes = [os.pipe(), os.pipe()]
        try:
            if self._uids is not None:
                uid = self._uids.take(clear_shared_tmp=not hello.get("namespaces"))
            if self._cgroups is not None:
                cfg = self.config
                cgroups = self._cgroups.new(cfg.memory_mb * _MB, cfg.max_processes)
            if not hello.get("namespaces"):
                workdir = tempfile.mkdtemp(prefix="aimo-sandbox-")  # the session makes it its own
            request = {
                "op": "spawn",
                "uid": uid,
                "cgroups": cgroups,
                "workdir": workdir,
                "disk_mb": self.config.disk_mb,
                "limits": self._limits,
                "cpu_time_s": self.config.cpu_time_s,
            }
            reply = self._server.request(request, [channels[1].fileno(), pipes[0][1], pipes[1][1]])
        except (OSError, SandboxError) as exc:
            reply = {"error": str(exc)}
        finally:
            channels[1].close()
            os.close(pipes[0][1])
            os.close(pipes[1][1])
        for fd in (pipes[0][0], pipes[1][0]):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        pid = int(reply.get("pid") or 0)
        sess = Session(
            name,
            pid,
            channels[0],
            pipes[0][0],
            pipes[1][0],
            generation,
            uid,
            cgroups or [],
            workdir,
            # The server keeps its sessions unreaped until asked to kill them: this pid
            # is still the session's own here, whatever has become of it.
            pidfd=pids.pidfd_open(pid) if pid else None,
            cpu_budget_s=self.config.cpu_time_s,
        )
        if "pid" not in reply:
            self._discard(sess, grace_s=0.0)
            raise SandboxError(f"fork server could not start a session: {reply}")
        prelude = self.config.session_prelude or _WARM_UP_CELL
        deadline = time.monotonic() + _SPAWN_TIMEOUT_S
        if Call(sess, prelude, 0, deadline).wait(deadline) != "ok":
            self._discard(sess, grace_s=0.0)
            raise SandboxError("the session prelude failed")
        return sess

    def _discard(self, sess: Session, grace_s: float) -> dict[str, Any]:
        """Forget the session, kill all its processes, remove what it left; how it ended.
        Idempotent: only the first caller does the work."""
        with self._sessions_lock:
            if self._sessions.get(sess.name) is sess:
                del self._sessions[sess.name]
        if not sess.mark_closed():
            return {}
        info: dict[str, Any] = {}
        try:
            # How it ended, if it is ending: waited for here, never in the fork server,
            # which serves every session.
            if grace_s and sess.pidfd is not None:
                pids.wait_exit(sess.pidfd, grace_s)
            if sess.pid and sess.generation == self._server.generation:
                with contextlib.suppress(SandboxError):
                    info = self._server.request({"op": "kill", "pid": sess.pid})
            self._kill_leftovers(sess)
            # After a call on it has returned (it does once the process is dead): its
            # descriptors are never closed, and their numbers reused, under a live call.
            with sess.lock:
                sess.close_fds()
            if sess.workdir is not None:
                remove_tree(sess.workdir)
            if sess.uid is not None and self._uids is not None:
                if sess.workdir is not None:  # no private /tmp or IPC namespace
                    remove_leftovers(sess.uid)
                    remove_ipc(sess.uid)
                self._uids.release(sess.uid)
        except Exception:  # never raised into a caller; what is left is logged
            log.exception("sandbox could not clean up session %r", sess.name)
        return info

    def _kill_leftovers(self, sess: Session) -> None:
        """Kill what the session started outside its process tree's reach (its server died,
        say): everything in its cgroups, else everything running as its uid."""
        if sess.cgroups and self._cgroups is not None:
            self._cgroups.kill(sess.cgroups)
            self._cgroups.remove(sess.cgroups)
        elif sess.uid is not None:
            kill_uid(sess.uid)

    def _after_server_died(self, generation: int) -> None:
        """The old server's sessions died with it; their children did not: kill them now."""
        with self._sessions_lock:
            orphaned = [
                s for s in (*self._sessions.values(), *self._spares) if s.generation == generation
            ]
        for sess in orphaned:
            self._kill_leftovers(sess)

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._server.request(request)
        except SandboxError:
            return {}


def _death_status(info: dict[str, Any]) -> Status:
    sig = info.get("signal")
    return "killed" if sig is not None and sig in _KILL_SIGNALS else "crashed"
