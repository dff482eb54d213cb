"""The warm parent: imports the math stack once, then forks one process per session.

Started by `Sandbox` as a fresh interpreter (`python -m submission.sandbox.forkserver`)
with an allow-listed environment, so it never inherits CUDA or MPI state or the
harness's secrets. It serves requests on one socket from the harness, one at a time:

- ``spawn`` (with three descriptors: the session's channel, stdout and stderr
  pipe ends) forks a session process: new process group, its cgroups, private
  mount (one tmpfs for /tmp and its kin, an empty /run, a /proc showing only its
  own processes), network and IPC namespaces where the
  machine allows them, resource limits, no GPU, its own uid when run as root;
- ``interrupt`` sends SIGINT to a session (KeyboardInterrupt in its cell) and
  kills the processes the cell started;
- ``kill`` kills a session's whole process tree and, when the session had
  already died by itself (within ``grace_s``), reports its exit code or signal.

A request that fails gets an error reply; nothing a session does stops the loop.
It is a child subreaper, so processes orphaned by a session come back to it,
and it kills every child that is not a live session. It reaps in its loop,
never waiting for a killed process to go. When the harness goes away (channel
closed) it kills all sessions and exits.
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
import time
from typing import Any

import psutil

from submission.sandbox import protocol, repl, session_setup

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
    path_fds = session_setup.reachable_import_paths() if user is not None else {}
    session_setup.prctl(session_setup.PR_SET_CHILD_SUBREAPER, 1)
    # Sessions' garbage collections then skip the warm objects, which stay shared
    # with this process instead of being copied page by page on first touch.
    gc.freeze()
    server = _Server(channel, display, path_fds, user, own_uids, isolate)
    hello = {"failed_preloads": failed, "user": user, "session_uids": own_uids}
    try:
        protocol.send(channel, {**hello, "namespaces": isolate, "private_proc": private_proc})
    except OSError:  # the harness closed the sandbox before it was ready
        return
    server.serve()


class _Server:
    """The request loop and what it knows: the live sessions and how those that died ended."""

    def __init__(
        self,
        channel: socket.socket,
        display: Any,
        path_fds: dict[str, int],
        user: list[int] | None,
        own_uids: bool,
        isolate: bool,
    ) -> None:
        self.channel = channel
        self.display = display
        self.path_fds = path_fds
        self.user = user
        self.own_uids = own_uids
        self.isolate = isolate
        self.live: set[int] = set()  # session processes the harness is using
        self.ended: dict[int, int] = {}  # wait status of live sessions that died on their own

    def serve(self) -> None:
        while True:
            _reap(self.live, self.ended)
            dying = _children(os.getpid()) - self.live
            for pid in dying:  # killed sessions not yet gone, and orphans of dead ones
                _kill_tree(pid)
            # While killed processes are not yet reaped, wake up now and then to reap them.
            wait = _REAP_INTERVAL_S if dying else None
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
        for pid in _children(os.getpid()):
            _kill_tree(pid)

    def handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op, pid = request.get("op"), request.get("pid")
        if op == "spawn" and len(fds) == 3:
            user = self.user
            if user is not None and self.own_uids and request.get("uid"):
                user = [int(request["uid"]), user[1]]
            setup = {**request, "isolate": self.isolate}
            pid = _spawn(setup, user, fds, self.channel, self.display, self.path_fds)
            self.live.add(pid)
            return {"pid": pid, "uid": user[0] if user else os.getuid()}
        if op == "interrupt":
            if pid not in self.live or pid in self.ended:
                return {"sent": False}
            # As Jupyter: KeyboardInterrupt in the cell; the processes it started go too.
            os.kill(pid, signal.SIGINT)
            for child in _descendants(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
            return {"sent": True}
        if op == "kill":
            # An unknown pid belonged to a server that died: nothing left to kill.
            known = pid in self.live
            self.live.discard(pid)
            return _kill_session(pid, float(request["grace_s"]), self.ended) if known else {}
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
) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The session process: never return into the server's loop.
    try:
        session_setup.become_session(
            request, user, fds, server_channel, keep=list(path_fds.values())
        )
        channel = socket.socket(fileno=fds[0])
        path_map = {root: f"/proc/self/fd/{fd}" for root, fd in path_fds.items()}
        repl.serve(channel, fds[1], fds[2], display, path_map)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"session setup failed: {exc!r}\n".encode())
        os._exit(70)
    os._exit(0)


def _kill_session(pid: int, grace_s: float, ended: dict[int, int]) -> dict[str, Any]:
    """Kill the session's process tree; how it ended if it died by itself within `grace_s`.

    Reaping is left to the main loop, so a kill costs no wait for the kernel's teardown.
    """
    deadline = time.monotonic() + grace_s
    status = ended.pop(pid, None)
    while status is None and time.monotonic() < deadline:
        status = _try_reap(pid)
        if status is None:
            time.sleep(0.002)
    if status is None:
        _kill_tree(pid)
        return {}
    # Reaped: its pid may be reused, but not while its group lives, so kill only that;
    # its other orphans came back to this server, which kills them in its loop.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit_code": os.WEXITSTATUS(status)}


def _try_reap(pid: int) -> int | None:
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if reaped else None


def _reap(live: set[int], ended: dict[int, int]) -> None:
    """Reap every child that has exited; keep the status of live sessions."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in live:
            ended[pid] = status


def _children(pid: int) -> set[int]:
    """Direct children of `pid` (all its threads), from /proc without scanning every process."""
    children: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                children.update(int(child) for child in file.read().split())
    except FileNotFoundError:
        # Gone, or a kernel without CONFIG_PROC_CHILDREN: ask psutil (a full /proc scan).
        with contextlib.suppress(psutil.Error):
            children = {child.pid for child in psutil.Process(pid).children()}
    except (ProcessLookupError, PermissionError):
        pass
    return children


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    while frontier and len(found) < 100_000:
        for child in _children(frontier.pop()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL the process group `pid` leads and every descendant (setsid escapees too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    # Subreapers keep orphans in the tree, so this finds every process the session made.
    for victim in (pid, *_descendants(pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


if __name__ == "__main__":
    main()
