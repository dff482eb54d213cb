"""Processes by pid without ever hitting the wrong one: what /proc/PID/stat says of a process,
and signals that reach only a process proven ours.

A pid names a process only while that process is unreaped; after that the kernel may
hand the number to anyone (a cell can burn through 32,768 pids in half a minute). So a
process found by number (in a cgroup, by uid, as a child of another) is first opened as a
pidfd, which refers to that process and no other, then checked (still in the cgroup, of
the uid, a child of the parent we hold), and only then signalled through the pidfd: a
number reused meanwhile fails the check, and one reused after it is not the pidfd's.
Where the kernel has no pidfds (before Linux 5.3) the check and a plain kill() remain.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable

_CPUCLOCK_SCHED = 2


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`; None when no such process exists (or pidfds are unsupported)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def pidfds_work() -> bool:
    """Whether this kernel has pidfds (pidfd_open of this very process)."""
    fd = pidfd_open(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return True


def exited(pidfd: int) -> bool:
    """Whether the pidfd's process has exited (a zombie counts: it runs no more code)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def wait_exit(pidfd: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the pidfd's process to exit; whether it did."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def send(pidfd: int, signum: int) -> bool:
    """Signal the pidfd's process; False when it is gone or may not be signalled."""
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except OSError:
        return False
    return True


def signal_if(pid: int, signum: int, still_ours: Callable[[int], bool]) -> bool:
    """Signal `pid` only if `still_ours(pid)` holds once it is pinned by a pidfd."""
    fd = pidfd_open(pid)
    if fd is None:
        if not os.path.exists(f"/proc/{pid}") or not still_ours(pid):
            return False
        try:  # no pidfds on this kernel: the check just made is all there is
            os.kill(pid, signum)
        except OSError:
            return False
        return True
    try:
        return still_ours(pid) and send(fd, signum)
    finally:
        os.close(fd)


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and
    parentheses): index 0 is the state, 1 the parent pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    """CPU time the whole process (all its threads) has run, in seconds: its CPU clock
    (clock_gettime of MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), include/linux/posix-timers.h),
    half a microsecond where /proc/PID/stat of a busy process costs a hundred."""
    try:
        return time.clock_gettime((~pid << 3) | _CPUCLOCK_SCHED)
    except OSError:  # gone
        return None


def uid_of(pid: int) -> tuple[int, int] | None:
    """(real, effective) uid from /proc/PID/status (a process that changed uid is not
    dumpable, so /proc/PID itself belongs to root and says nothing)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            for line in file:
                if line.startswith(b"Uid:"):
                    real, effective = line.split()[1:3]
                    return int(real), int(effective)
    except (OSError, ValueError, IndexError):
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of `pid` (of all its threads), zombies included."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found.extend(int(child) for child in file.read().split())
    except FileNotFoundError:
        if os.path.isdir(f"/proc/{pid}/task"):  # a kernel without CONFIG_PROC_CHILDREN
            return [p for p in all_pids() if parent_of(p) == pid]
    except OSError:
        pass
    return found


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def kill_descendants(root: int, root_fd: int | None, limit: int = 100_000) -> int:
    """SIGKILL every descendant of `root`. The tree is walked down first, each child pinned
    by a pidfd and kept only while its parent (pinned before it) is still its parent and has
    not exited, so its number cannot have passed to somebody else; then all are killed at
    once (killing while walking would let grandchildren slip away to a subreaper). `root_fd`
    pins the root (None: the caller guarantees the root's pid, e.g. its own unreaped child).
    Returns how many were signalled."""
    held: dict[int, int | None] = {root: root_fd}
    frontier = [root]
    try:
        while frontier and len(held) < limit:
            parent = frontier.pop()
            parent_fd = held[parent]
            for child in children(parent):
                if child in held:
                    continue
                fd = pidfd_open(child)
                if fd is None:
                    continue
                if parent_of(child) == parent and (parent_fd is None or not exited(parent_fd)):
                    held[child] = fd
                    frontier.append(child)
                else:
                    os.close(fd)
        pinned = [fd for pid, fd in held.items() if pid != root and fd is not None]
        return sum(send(fd, signal.SIGKILL) for fd in pinned)
    finally:
        for pid, fd in held.items():
            if fd is not None and pid != root:
                os.close(fd)
