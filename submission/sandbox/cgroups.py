"""A memory and a pids cgroup (v1) per session: one budget for all of a session's
processes together, and a list of them that no process can leave.

The harness creates the folders (below its own cgroup, under a folder of this
Sandbox's own), the session process joins them as it starts, and the harness
kills what is in them when the session ends, even after the fork server died.
A Sandbox holds an flock on a file named after its folder for as long as it lives;
a folder whose lock nobody holds is a dead harness's, and the next Sandbox kills what
is left in it and removes it (a pid would not do: a harness in a pid namespace of its
own, as the rehearsal's, sees no other harness's pid).
Where the machine offers no writable v1 memory and pids hierarchies (cgroup v2
only, or read-only), `SessionCgroups.create` returns None and the sandbox falls
back to per-process rlimits.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import signal
import time

from submission.sandbox import pids
from submission.sandbox.cleanup import host_lock_dir

log = logging.getLogger(__name__)
CGROUP_V1 = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids")
_KILL_ROUNDS = 50


class SessionCgroups:
    """This Sandbox's cgroup folders: one pair (memory, pids) per session."""

    def __init__(self, bases: dict[str, str], lock: tuple[str, int] | None) -> None:
        self.bases = bases  # controller -> this Sandbox's folder
        self._lock = lock  # (path, descriptor) of the flock that says this Sandbox lives
        self._names = itertools.count()
        self._dying: list[list[str]] = []  # killed sessions' folders not yet removable

    @classmethod
    def create(cls, tag: str) -> SessionCgroups | None:
        """This Sandbox's folders, or None when the machine offers no usable v1 controllers."""
        name = f"aimo-sandbox-{tag}"
        lock = _hold_lock(name)  # before the folders exist: never seen unlocked
        bases: dict[str, str] = {}
        try:
            for controller in CONTROLLERS:
                _remove_stale(_own_folder(controller))
                base = os.path.join(_own_folder(controller), name)
                os.makedirs(base, exist_ok=True)
                bases[controller] = base
        except OSError as exc:
            log.info("no cgroups for the sandbox (%s)", exc)
            for base in bases.values():
                with contextlib.suppress(OSError):
                    os.rmdir(base)
            _release_lock(lock)
            return None
        return cls(bases, lock)

    def new(self, memory_bytes: int, max_processes: int) -> list[str]:
        """Folders for one session, limits set; the session writes its pid into them."""
        name = f"s{next(self._names)}"
        folders = [os.path.join(self.bases[c], name) for c in CONTROLLERS]
        try:
            for folder in folders:
                # makedirs: a harness of older code elsewhere on the host may have removed
                # this Sandbox's own folder while it had no session.
                os.makedirs(folder)
            _write(folders[0], "memory.limit_in_bytes", str(memory_bytes))
            # Without swap accounting this file is absent: memory then caps RAM only.
            with contextlib.suppress(OSError):
                _write(folders[0], "memory.memsw.limit_in_bytes", str(memory_bytes))
            _write(folders[1], "pids.max", str(max_processes))
        except OSError:
            self.remove(folders)
            raise
        return folders

    def kill(self, folders: list[str]) -> bool:
        """SIGKILL every process in the session's cgroups; True when none is left alive
        (a killed process may still be tearing down, which removes it soon). Each is
        pinned by a pidfd and found in the cgroup again before the signal: nothing can
        leave a cgroup, but a pid read from it may have passed to another process."""
        killed: set[int] = set()
        for _ in range(_KILL_ROUNDS):
            alive = set(_procs(folders[-1])) | set(_procs(folders[0]))
            if not alive - killed:
                return True
            for pid in alive - killed:
                pids.signal_if(pid, signal.SIGKILL, lambda p: _member(p, folders))
            killed |= alive
        return not (set(_procs(folders[-1])) - killed)

    def remove(self, folders: list[str]) -> None:
        """Remove the folders now, or later once their killed processes are gone."""
        if not _rmdir_all(folders):
            self._dying.append(folders)
        self._dying = [f for f in self._dying if not _rmdir_all(f)]

    def close(self, wait_s: float = 2.0) -> None:
        deadline = time.monotonic() + wait_s
        while self._dying and time.monotonic() < deadline:
            for folders in self._dying:
                self.kill(folders)
            self._dying = [f for f in self._dying if not _rmdir_all(f)]
            time.sleep(0.01)
        removed = _rmdir_all(list(self.bases.values()))
        # Folders left behind (processes still tearing down) keep their lock file, free
        # now: the next Sandbox on this host removes them.
        _release_lock(self._lock, forget=removed)
        self._lock = None


def _hold_lock(name: str) -> tuple[str, int] | None:
    """Lock the file that says the Sandbox owning the folders `name` lives; None where
    there is no place for it (its folders are then never taken for a dead one's)."""
    try:
        folder = host_lock_dir("cgroups")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, f"{name}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        log.info("no lock for the sandbox's cgroups (%s)", exc)
        return None
    return path, fd


def _release_lock(lock: tuple[str, int] | None, forget: bool = True) -> None:
    """Let go of the lock (its folders are then a dead owner's); `forget`: they are gone,
    remove the lock file too."""
    if lock is not None:
        if forget:
            with contextlib.suppress(OSError):
                os.unlink(lock[0])
        os.close(lock[1])


def _own_folder(controller: str) -> str:
    """This process's cgroup folder in a v1 hierarchy (the mount's root when the path
    of /proc/self/cgroup is not visible here, as in a cgroup namespace)."""
    mount = os.path.join(CGROUP_V1, controller)
    if not os.path.isfile(os.path.join(mount, "cgroup.procs")):
        raise OSError(f"no cgroup v1 {controller} hierarchy at {mount}")
    with open("/proc/self/cgroup") as file:
        for line in file:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(","):
                own = os.path.join(mount, path.lstrip("/"))
                return own if os.path.isdir(own) else mount
    return mount


def _remove_stale(parent: str) -> None:
    """Folders of Sandboxes whose harness died without closing (their lock is free): kill
    what is left in their sessions' folders and remove them. A folder without a lock
    file is left alone: its owner keeps none (older code) or none could be made."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not entry.name.startswith("aimo-sandbox-"):
                continue
            lock = _free_lock(entry.name)
            if lock is None:
                continue
            sessions = [f.path for f in os.scandir(entry.path) if f.is_dir()]
            for folder in sessions:
                for pid in _procs(folder):
                    pids.signal_if(pid, signal.SIGKILL, lambda p, f=folder: _member(p, [f]))
            _release_lock(lock, forget=_rmdir_all([*sessions, entry.path]))


def _free_lock(name: str) -> tuple[str, int] | None:
    """The lock of a dead owner's folders, now held by us; None while its owner lives."""
    try:
        path = os.path.join(host_lock_dir("cgroups"), f"{name}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return path, fd


def _write(folder: str, name: str, value: str) -> None:
    with open(os.path.join(folder, name), "w") as file:
        file.write(value)


def _procs(folder: str) -> list[int]:
    try:
        with open(os.path.join(folder, "cgroup.procs")) as file:
            return [int(pid) for pid in file.read().split()]
    except OSError:
        return []


def _member(pid: int, folders: list[str]) -> bool:
    return any(pid in _procs(folder) for folder in folders)


def _rmdir_all(folders: list[str]) -> bool:
    done = True
    for folder in folders:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:
            done = False
    return done
