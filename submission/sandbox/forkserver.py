"""The warm parent: imports the math stack once, then forks one process per session.

Started by `Sandbox` as a fresh interpreter (`python -m submission.sandbox.forkserver`),
so it never inherits CUDA or MPI state from the harness. It serves requests on
one socket from the harness, one at a time:

- ``spawn`` (with three descriptors: the session's channel, stdout and stderr
  pipe ends) forks a session process: new process group, its own working
  directory, resource limits, no GPU, an unprivileged user when run as root;
- ``kill`` kills a session's whole process tree and, when the session had
  already died by itself (within ``grace_s``), reports its exit code or signal.

It is a child subreaper, so processes orphaned by a session come back to it,
and it kills every child that is not a live session. It reaps in its loop,
never waiting for a killed process to go. When the harness goes away (channel
closed) it kills all sessions and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import itertools
import json
import logging
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
from typing import Any

import psutil

from submission.sandbox import protocol, repl

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
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
    if user is not None and not _can_drop(user):
        log.warning("cannot switch to uid %s here; sessions run as this user", user[0])
        user = None
    first_uid = int(settings.get("first_session_uid") or 0)
    if user is not None and first_uid and not _can_drop([first_uid, user[1]]):
        log.warning("cannot switch to uid %d here; sessions share uid %d", first_uid, user[0])
        first_uid = 0
    uids = SessionUids(first_uid) if user is not None and first_uid else None
    path_fds = _reachable_import_paths() if user is not None else {}
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # Sessions' garbage collections then skip the warm objects, which stay shared
    # with this process instead of being copied page by page on first touch.
    gc.freeze()
    live: set[int] = set()  # session processes the harness is using
    ended: dict[int, int] = {}  # wait status of live sessions that died on their own
    try:
        protocol.send(
            channel, {"failed_preloads": failed, "user": user, "session_uids": uids is not None}
        )
    except OSError:  # the harness closed the sandbox before it was ready
        return
    while True:
        _reap(live, ended)
        dying = _children(os.getpid()) - live
        for pid in dying:  # killed sessions not yet gone, and orphans of dead ones
            _kill_tree(pid)
        # While killed processes are not yet reaped, wake up now and then to reap them.
        if not select.select([channel], [], [], _REAP_INTERVAL_S if dying else None)[0]:
            continue
        try:
            request, fds = protocol.recv(channel, max_fds=3)
        except (protocol.ProtocolError, OSError):
            break
        op = request.get("op")
        if op == "spawn" and len(fds) == 3:
            uid = uids.take() if uids is not None else None
            session_user = [uid, user[1]] if uid is not None and user is not None else user
            pid = _spawn(request, session_user, fds, channel, display, path_fds)
            if uids is not None and uid is not None:
                uids.by_pid[pid] = uid
            live.add(pid)
            reply: dict[str, Any] = {"pid": pid}
        elif op == "kill":
            pid = request.get("pid")
            # An unknown pid belonged to a server that died: nothing left to kill.
            reply = _kill_session(pid, float(request["grace_s"]), ended) if pid in live else {}
            live.discard(pid)
            if uids is not None:
                uids.release(pid)
        else:
            reply = {"error": f"bad request {op!r}"}
        for fd in fds:
            os.close(fd)
        try:
            protocol.send(channel, reply)
        except OSError:
            break
    for pid in _children(os.getpid()):
        _kill_tree(pid)


class SessionUids:
    """One uid per live session, counted up from `first`, so that a session can neither
    signal another's processes (`kill(-1)` reaches only its own uid) nor spend their
    RLIMIT_NPROC; what a uid left in the shared temporary folders goes with it."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.by_pid: dict[int, int] = {}  # live session process -> its uid

    def take(self) -> int:
        """The lowest free uid, cleared of what an earlier holder's stragglers left."""
        used = set(self.by_pid.values())
        uid = next(u for u in itertools.count(self.first) if u not in used)
        remove_leftovers(uid)
        return uid

    def release(self, pid: int) -> None:
        uid = self.by_pid.pop(pid, None)
        if uid is not None:
            remove_leftovers(uid)


# World-writable folders where a session may leave files outside its own directory.
SHARED_TMP = ("/tmp", "/dev/shm", "/var/tmp")


def remove_leftovers(uid: int) -> None:
    """Remove what `uid` owns at the top of the shared temporary folders."""
    for folder in SHARED_TMP:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)


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


def _reachable_import_paths() -> dict[str, int]:
    """Keep the interpreter's files importable after the privilege drop.

    The interpreter may live under a directory the unprivileged user cannot
    enter (pyenv under /root here). Descriptors opened now as root, reached as
    /proc/self/fd/N, skip the check on those ancestors; sys.path and every loaded
    package's __path__ are rewritten to go through them. Returns them by
    directory; every session process inherits them.
    """
    fds: dict[str, int] = {}

    def through_fd(path: str) -> str:
        for root, fd in fds.items():
            if path == root or path.startswith(root + os.sep):
                return f"/proc/self/fd/{fd}{path[len(root) :]}"
        return path

    for entry in sys.path:
        if entry and os.path.isdir(entry) and not _world_reachable(entry):
            fds[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY)
    if not fds:
        return {}
    sys.path[:] = [through_fd(p) for p in sys.path]
    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if package_path is not None:
            with contextlib.suppress(AttributeError, TypeError):
                module.__path__ = [through_fd(p) for p in package_path]
    sys.path_importer_cache.clear()
    return fds


def _world_reachable(path: str) -> bool:
    """Whether any user may walk down to `path` (every ancestor has o+x)."""
    current = os.path.abspath(path)
    while True:
        if not os.stat(current).st_mode & 0o001:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


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
        _become_session(request, user, fds, server_channel, keep=list(path_fds.values()))
        channel = socket.socket(fileno=fds[0])
        path_map = {root: f"/proc/self/fd/{fd}" for root, fd in path_fds.items()}
        repl.serve(channel, fds[1], fds[2], display, path_map)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"session setup failed: {exc!r}\n".encode())
        os._exit(70)
    os._exit(0)


def _become_session(
    request: dict[str, Any],
    user: list[int] | None,
    fds: list[int],
    server_channel: socket.socket,
    keep: list[int],
) -> None:
    server_pid = os.getppid()
    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    os.setsid()
    # Orphans of this session's children stay in its tree, where `kill` finds them.
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    server_channel.detach()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fds[1], 1)
    os.dup2(fds[2], 2)
    _close_all_but({0, 1, 2, *fds, *keep})
    workdir = request["workdir"]
    if user is not None:
        os.chown(workdir, *user)
        # A session uid has no passwd entry: getpass.getuser() reads these first.
        os.environ.update({"USER": "sandbox", "LOGNAME": "sandbox"})
    os.chdir(workdir)
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PWD": workdir})
    limits = request["limits"]
    for name, value in limits.items():
        soft, hard = value
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if user is not None:
        _drop_privileges(user)
    # After the drop, which clears it: die with the server.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:  # the server died before the prctl
        os._exit(0)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 (fd 0 outlives it)


def _drop_privileges(user: list[int]) -> None:
    uid, gid = user
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _can_drop(user: list[int]) -> bool:
    """Whether this machine lets a forked child switch to `user` (some containers do not)."""
    pid = os.fork()
    if pid == 0:
        try:
            _drop_privileges(user)
        except OSError:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


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


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


if __name__ == "__main__":
    main()
