"""A memory and a pids cgroup (v1) per session: one budget for all of a session's
processes together, and a list of them that no process can leave.

The harness creates the folders (below its own cgroup, under a folder of this
Sandbox's own), the session process joins them as it starts, and the harness
kills what is in them when the session ends, even after the fork server died.
Where the machine offers no writable v1 memory and pids hierarchies (cgroup v2
only, or read-only), `SessionCgroups.create` returns None and the sandbox falls
back to per-process rlimits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time

log = logging.getLogger(__name__)
CGROUP_V1 = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids")
_KILL_ROUNDS = 50


class SessionCgroups:
    """This Sandbox's cgroup folders: one pair (memory, pids) per session."""

    def __init__(self, bases: dict[str, str]) -> None:
        self.bases = bases  # controller -> this Sandbox's folder
        self._names = itertools.count()
        self._dying: list[list[str]] = []  # killed sessions' folders not yet removable

    @classmethod
    def create(cls, tag: str) -> SessionCgroups | None:
        """This Sandbox's folders, or None when the machine offers no usable v1 controllers."""
        bases: dict[str, str] = {}
        try:
            for controller in CONTROLLERS:
                _remove_stale(_own_folder(controller))
                base = os.path.join(_own_folder(controller), f"aimo-sandbox-{tag}")
                os.makedirs(base, exist_ok=True)
                bases[controller] = base
        except OSError as exc:
            log.info("no cgroups for the sandbox (%s)", exc)
            for base in bases.values():
                with contextlib.suppress(OSError):
                    os.rmdir(base)
            return None
        return cls(bases)

    def new(self, memory_bytes: int, max_processes: int) -> list[str]:
        """Folders for one session, limits set; the session writes its pid into them."""
        name = f"s{next(self._names)}"
        folders = [os.path.join(self.bases[c], name) for c in CONTROLLERS]
        try:
            for folder in folders:
                os.mkdir(folder)
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
        (a killed process may still be tearing down, which removes it soon)."""
        killed: set[int] = set()
        for _ in range(_KILL_ROUNDS):
            alive = set(_procs(folders[-1])) | set(_procs(folders[0]))
            if not alive - killed:
                return True
            for pid in alive - killed:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
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
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                os.rmdir(base)


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
    """Folders of Sandboxes whose process died without closing: kill what is left in
    their sessions' folders and remove them (tags start with the owner's pid)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            owner = entry.name.removeprefix("aimo-sandbox-").split("-")[0]
            if entry.name == owner or not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
                continue
            sessions = [f.path for f in os.scandir(entry.path) if f.is_dir()]
            for folder in sessions:
                for pid in _procs(folder):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            _rmdir_all([*sessions, entry.path])


def _write(folder: str, name: str, value: str) -> None:
    with open(os.path.join(folder, name), "w") as file:
        file.write(value)


def _procs(folder: str) -> list[int]:
    try:
        with open(os.path.join(folder, "cgroup.procs")) as file:
            return [int(pid) for pid in file.read().split()]
    except OSError:
        return []


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
