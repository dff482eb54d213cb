"""The warm parent: imports the math stack once, then forks one process per session.

Started by `Sandbox` as a fresh interpreter (`python -m submission.sandbox.forkserver`)
with an allow-listed environment, so it never inherits CUDA or MPI state or the
harness's secrets. It serves requests on one socket from the harness, one at a time:

- ``spawn`` (with three descriptors: the session's channel, stdout and stderr
  pipe ends) forks a session process: new process group, its cgroups, private
  mount (one tmpfs for /tmp and its kin, an empty /run, a /proc showing only its
  own processes), network and IPC namespaces where the
  machine allows them, resource limits, no GPU, its own uid when run as root,
  the seccomp filter where the machine allows it;
- ``interrupt`` sends SIGINT to a session (KeyboardInterrupt in its cell) and
  kills the processes the cell started;
- ``kill`` kills a session's whole process tree and, when the session had
  already died by itself, reports its exit code or signal.

A request that fails gets an error reply; nothing a session does stops the loop,
and no request waits for a process: the loop serves every session, so one slow
kill would stall them all. It is a child subreaper, so processes orphaned by a
session come back to it, and it kills every child that is not a live session.

A live session is never reaped until the harness asks to kill it: while it is an
unreaped child (even a zombie) its pid, and so its process group's id, cannot pass
to another process, so the server's signals to it can never hit a stranger. Its
descendants are signalled through pidfds (`pids.kill_descendants`). When the
harness goes away (channel closed) it kills all sessions and exits.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
from typing import Any

from submission.sandbox import pids, protocol, repl, session_setup

# Named, not __name__: this module also runs as the fork server's __main__.
log = logging.getLogger("submission.sandbox.forkserver")
_REAP_INTERVAL_S = 0.005


def main() -> None:
    """Entry point: argv[1] is the channel's descriptor, argv[2] the JSON settings."""
    logging.basicConfig(level=logging.WARNING, format="forkserver: %(message)s")
    channel = socket.socket(fileno=int(sys.argv[1]))
    settings = json.loads(sys.argv[2])
    failed = _preload(settings["preload"])
    display = repl.display_formatter()
    user = settings.get("user")  # [uid, gid] to drop to, or None
    if user is not None and not session_setup.can_drop(user):
        log.warning("cannot switch to uid %s here; sessions run as this user", user[0])
        user = None
    probe_uid = settings.get("probe_uid")
    own_uids = bool(user is not None and probe_uid and session_setup.can_drop([probe_uid, user[1]]))
    isolate, private_proc = (
        session_setup.can_isolate() if settings.get("namespaces") else (False, False)
    )
    filtered = bool(settings.get("seccomp")) and session_setup.can_filter()
    # Opened before the import-path rewrite below, from the paths as the interpreter has them.
    binds = session_setup.interpreter_paths_to_bind() if isolate else []
    path_fds = session_setup.reachable_import_paths() if user is not None else {}
    session_setup.prctl(session_setup.PR_SET_CHILD_SUBREAPER, 1)
    # Sessions' garbage collections then skip the warm objects, which stay shared
    # with this process instead of being copied page by page on first touch.
    gc.freeze()
    server = _Server(channel, display, path_fds, binds, user, own_uids, isolate, filtered)
    hello = {
        "failed_preloads": failed,
        "user": user,
        "session_uids": own_uids,
        "namespaces": isolate,
        "private_proc": private_proc,
        "seccomp": filtered,
        "interpreter_binds": binds,
        "pidfds": pids.pidfds_work(),
    }
    try:
        protocol.send(channel, hello)
    except OSError:  # the harness closed the sandbox before it was ready
        return
    server.serve()


class _Server:
    """The request loop and what it knows: the live sessions (its unreaped children)."""

    def __init__(
        self,
        channel: socket.socket,
        display: Any,
        path_fds: dict[str, int],
        binds: list[str],
        user: list[int] | None,
        own_uids: bool,
        isolate: bool,
        filtered: bool,
    ) -> None:
        self.channel = channel
        self.display = display
        self.path_fds = path_fds
        self.binds = binds
        self.user = user
        self.own_uids = own_uids
        self.isolate = isolate
        self.filtered = filtered
        self.live: set[int] = set()  # session processes the harness is using

    def serve(self) -> None:
        me = os.getpid()
        while True:
            # Killed sessions and orphans of dead ones: reap those that are gone, kill the rest.
            dying = [pid for pid in pids.children(me) if pid not in self.live]
            waiting = [pid for pid in dying if not _reaped(pid)]
            for pid in waiting:
                _kill_tree(pid)
            # While killed processes are not yet reaped, wake up now and then to reap them.
            wait = _REAP_INTERVAL_S if waiting else None
            if not select.select([self.channel], [], [], wait)[0]:
                continue
            try:
                request, fds = protocol.recv(self.channel, max_fds=3)
            except (protocol.ProtocolError, OSError):
                break
            try:
                reply = self.handle(request, fds)
            except Exception as exc:  # a refused fork, say: that request's error only
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            try:
                protocol.send(self.channel, reply)
            except OSError:
                break
        for pid in pids.children(me):
            _kill_tree(pid)

    def handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op, pid = request.get("op"), request.get("pid")
        if op == "spawn" and len(fds) == 3:
            user = self.user
            if user is not None and self.own_uids and request.get("uid"):
                user = [int(request["uid"]), user[1]]
            setup = {**request, "isolate": self.isolate, "seccomp": self.filtered}
            binds = self.binds if self.isolate else []
            pid = _spawn(setup, user, fds, self.channel, self.display, self.path_fds, binds)
            self.live.add(pid)
            return {"pid": pid, "uid": user[0] if user else os.getuid()}
        if not isinstance(pid, int) or pid not in self.live:
            # An unknown pid belonged to a server that died, or is no session: never signalled.
            return {"sent": False} if op == "interrupt" else {}
        if op == "interrupt":
            if _ended(pid) is not None:
                return {"sent": False}
            # As Jupyter: KeyboardInterrupt in the cell; the processes it started go too.
            os.kill(pid, signal.SIGINT)  # an unreaped child: its pid is its own
            pids.kill_descendants(pid, None)
            return {"sent": True}
        if op == "kill":
            self.live.discard(pid)
            return _kill_session(pid)
        return {"error": f"bad request {op!r}"}


def _preload(modules: list[str]) -> list[str]:
    """Import the warm modules; a missing one is reported, not fatal."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure only costs warmth
            log.warning("cannot preload %s: %s", name, exc)
            failed.append(name)
    return failed


def _spawn(
    request: dict[str, Any],
    user: list[int] | None,
    fds: list[int],
    server_channel: socket.socket,
    display: Any,
    path_fds: dict[str, int],
    binds: list[str],
) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The session process: never return into the server's loop, whatever the cells do to
    # this interpreter (`finally` needs no name looked up: a cell may empty the builtins).
    code = 70
    try:
        try:
            session_setup.become_session(
                request, user, fds, server_channel, list(path_fds.values()), binds
            )
        except BaseException as exc:
            # Into the stderr of the session's first call: the prelude's, never shown.
            with contextlib.suppress(Exception):
                os.write(2, f"session setup failed: {exc!r}\n".encode())
            raise
        channel = socket.socket(fileno=fds[0])
        path_map = {root: f"/proc/self/fd/{fd}" for root, fd in path_fds.items()}
        repl.serve(channel, fds[1], fds[2], display, path_map, float(request["cpu_time_s"]))
        code = 0
    finally:
        os._exit(code)


def _kill_session(pid: int) -> dict[str, Any]:
    """Kill the session's process tree; how it ended if it had already died by itself.

    Nothing here waits: a process still alive is reaped later by the main loop.
    """
    status = _ended(pid)
    # Unreaped (a zombie at worst): its pid and process group id are still its own.
    _kill_tree(pid)
    _reaped(pid)
    if status is None:
        return {}
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit_code": os.WEXITSTATUS(status)}


def _ended(pid: int) -> int | None:
    """The wait status of a child that has exited, left unreaped; None while it runs."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return info.si_status & 0x7F  # killed or dumped by signal si_status


def _reaped(pid: int) -> bool:
    """Reap the child `pid` if it has exited; whether it is gone now."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return bool(reaped)


def _kill_tree(pid: int) -> None:
    """SIGKILL the process group the unreaped child `pid` leads and every descendant
    (setsid escapees too: subreapers keep orphans in the tree)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    pids.kill_descendants(pid, None)


if __name__ == "__main__":
    main()
