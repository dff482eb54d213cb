"""Clean-up that no session can turn against the harness: the user and uids sessions run
as (uids leased host-wide), processes found by uid, IPC objects by uid, and file trees
removed without recursion or following links.

Everything here runs in the harness and never raises for what a session left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import pwd
import signal
import stat
import tempfile

from submission.sandbox import pids

log = logging.getLogger(__name__)
# World-writable folders where a session without a private /tmp may leave files.
SHARED_TMP = ("/tmp", "/dev/shm", "/var/tmp", "/run/lock")
_LEASE_RANGE = 10_000
_NOBODY_ID = 65534
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def uid_leases(first: int) -> UidLeases | None:
    """Host-wide uid leases from `first`; None when 0 or nowhere to keep the lock files."""
    if not first:
        return None
    try:
        return UidLeases(first)
    except OSError as exc:
        log.warning("sandbox sessions share one uid: no place for uid leases (%s)", exc)
        return None


def unprivileged_ids(user: str) -> tuple[int, int] | None:
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


class UidLeases:
    """Session uids leased host-wide with one flock'ed file per uid, so two Sandbox
    instances (or two runs) on one machine never hand out the same uid.

    A lease is taken only after every process still running as that uid is killed,
    and given back only after the session's processes are killed.
    """

    def __init__(self, first: int, lock_dir: str | None = None) -> None:
        self.first = first
        self.lock_dir = lock_dir or host_lock_dir("uids")
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        self._held: dict[int, int] = {}  # uid -> descriptor holding its lock
        # Uids this holder has cleared once: it killed their processes itself when it
        # gave them back, so taking them again needs no scan of every process.
        self._cleared: set[int] = set()

    def take(self, clear_shared_tmp: bool) -> int:
        for uid in range(self.first, self.first + _LEASE_RANGE):
            if uid in self._held:
                continue
            path = os.path.join(self.lock_dir, f"uid-{uid}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._held[uid] = fd
            if uid not in self._cleared:  # stragglers of a holder that died uncleanly
                kill_uid(uid)
                if clear_shared_tmp:
                    remove_leftovers(uid)
                    remove_ipc(uid)
                self._cleared.add(uid)
            return uid
        raise OSError(f"no free session uid in {self.first}..{self.first + _LEASE_RANGE}")

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock

    def close(self) -> None:
        for uid in list(self._held):
            self.release(uid)


def host_lock_dir(kind: str) -> str:
    """The host-wide folder of `kind` lock files (flock works across pid and mount
    namespaces: a harness in a container of its own on this host sees the same)."""
    for base in ("/run", tempfile.gettempdir()):
        if os.access(base, os.W_OK):
            return os.path.join(base, f"aimo-sandbox-{kind}-{os.geteuid()}")
    raise OSError(f"no writable folder for the {kind} locks")


def processes_of(uid: int) -> list[int]:
    """Processes whose real or effective uid is `uid`."""
    return [pid for pid in pids.all_pids() if _runs_as(pid, uid)]


def _runs_as(pid: int, uid: int) -> bool:
    ids = pids.uid_of(pid)
    return ids is not None and uid in ids


def kill_uid(uid: int) -> int:
    """SIGKILL every process running as `uid` (each checked again once pinned by a pidfd:
    a pid that passed to another process meanwhile is left alone); how many were hit."""
    return sum(
        pids.signal_if(pid, signal.SIGKILL, lambda p: _runs_as(p, uid)) for pid in processes_of(uid)
    )


def remove_tree(path: str) -> None:
    """Remove a directory tree of any depth: no recursion, no symlink followed, each
    folder opened relative to its parent (no path grows past PATH_MAX). Errors are
    skipped: what cannot be removed stays, nothing is raised."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    stack: list[tuple[list[str], str]] = []
    pending = _clear_files(fd)
    while True:
        if pending:
            name = pending.pop()
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
                continue
            stack.append((pending, name))
            os.close(fd)
            fd = child
            pending = _clear_files(fd)
            continue
        if not stack:
            break
        try:
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
        except OSError:
            break
        os.close(fd)
        fd = parent
        pending, name = stack.pop()
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=fd)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-directory in the folder `fd`; return its subfolders' names.
    A folder the session made unreadable (chmod 000) is opened anyway: root may."""
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o700)
    folders = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                except OSError:
                    continue
    except OSError:
        pass
    return folders


def remove_leftovers(uid: int, folders: tuple[str, ...] = SHARED_TMP) -> None:
    """Remove what `uid` owns at the top of the shared temporary folders."""
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_uid != uid:
                continue
            if stat.S_ISDIR(info.st_mode):
                remove_tree(entry.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


# /proc/sysvipc file -> the libc call that removes one of its objects by id.
_IPC_RMID = 0
_SYSV_IPC = {"shm": "shmctl", "sem": "semctl", "msg": "msgctl"}


def remove_ipc(uid: int) -> None:
    """Remove the SysV shared memory segments, semaphore sets and message queues that
    `uid` owns or created (without a private IPC namespace they outlive the session)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, call in _SYSV_IPC.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as file:
                header = file.readline().split()
                rows = [dict(zip(header, line.split(), strict=False)) for line in file]
        except OSError:
            continue
        for row in rows:
            try:
                owners = {int(row["uid"]), int(row["cuid"])}
                ident = int(row[f"{kind}id"] if kind != "msg" else row["msqid"])
            except (KeyError, ValueError):
                continue
            if uid in owners:
                if kind == "sem":
                    getattr(libc, call)(ident, 0, _IPC_RMID)
                else:
                    getattr(libc, call)(ident, _IPC_RMID, None)
