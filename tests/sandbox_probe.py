"""Probes for the adversarial sandbox suite: what a session left on the host; what the host offers.

A hostile cell may leave processes, files in the shared temporary folders, SysV IPC
objects, POSIX message queues, mounts, cgroups or kernel keys behind. `HostSnapshot.take()`
records each before the cell runs; `leftovers(...)` lists what is new afterwards and
belongs to the session (its uid, its process tree, or a name carrying `MARK`). Other
programs on the same machine (other test runs, other sandboxes) create things too, so
every check is scoped to what this session could have made.

`MARK` is in every name this suite's snippets create, so `scrub()` can remove what a
failing sandbox left without touching anybody else's files or processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# In every file, socket, queue and process name the snippets create (short: it is also a
# 15-character process name). Unique per test process, so concurrent runs never collide.
MARK = f"advm{os.getpid()}"
# A SysV IPC key of this run's own (snippets that use a fixed key use this one).
IPC_KEY = 0x5AD00000 + os.getpid() % 0xFFFFF
SHARED_TMP = ("/tmp", "/dev/shm", "/var/tmp")
SYSV_KINDS = ("shm", "sem", "msg")
AS_ROOT = os.geteuid() == 0


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll until `predicate()` holds (kills and reaping are asynchronous)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- what the machine offers ------------------------------------------------------------


@functools.cache
def cgroup_v1_writable(controller: str) -> bool:
    """Whether a cgroup v1 `controller` hierarchy is mounted and we may create groups in it."""
    root = Path("/sys/fs/cgroup") / controller
    if not (root / "cgroup.procs").exists():
        return False
    probe = root / f"{MARK}-probe"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


@functools.cache
def can_unshare(*flags: str) -> bool:
    """Whether `unshare FLAGS true` works here (root and a kernel that allows it)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=30)
    return done.returncode == 0


def network_namespaces_work() -> bool:
    return AS_ROOT and can_unshare("--net")


def mount_namespaces_work() -> bool:
    return AS_ROOT and can_unshare("--mount")


def ipc_namespaces_work() -> bool:
    return AS_ROOT and can_unshare("--ipc")


# -- who the session is -------------------------------------------------------------------

IDENTITY_CELL = "import os\nprint(os.getpid(), os.getuid(), os.getcwd())"


@dataclass
class SessionIdentity:
    """A session as the host sees it: its process, uid and (host-visible) working directory."""

    pid: int | None
    uid: int | None
    workdir: str | None
    cgroups: dict[str, str] = field(default_factory=dict)  # controller -> path

    @classmethod
    def of(cls, host_pid: int | None, identity_stdout: str) -> SessionIdentity:
        """From the session's own answer to IDENTITY_CELL and the pid the sandbox reports."""
        inner_pid, inner_uid, cwd = identity_stdout.split(maxsplit=2)
        pid = host_pid if host_pid is not None else int(inner_pid)
        uid: int | None = int(inner_uid)
        with contextlib.suppress(psutil.Error):
            uid = psutil.Process(pid).uids().real
        cwd = cwd.strip()
        # In a private mount namespace its directory may not be a host path at all.
        workdir = cwd if os.path.isdir(cwd) and os.lstat(cwd).st_uid == uid else None
        return cls(pid, uid, workdir, cgroups_of(pid))


def cgroups_of(pid: int) -> dict[str, str]:
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                if controller in ("memory", "pids"):
                    found[controller] = path
    return found


# -- snapshots --------------------------------------------------------------------------


@dataclass(frozen=True)
class IpcObject:
    kind: str
    key: int
    ident: int
    uid: int
    cuid: int


def sysv_objects() -> set[IpcObject]:
    """Every SysV shared-memory segment, semaphore set and message queue on the host."""
    found: set[IpcObject] = set()
    for kind in SYSV_KINDS:
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            header = lines[0].split()
            for line in lines[1:]:
                row = dict(zip(header, line.split(), strict=False))
                ident = int(row.get("shmid") or row.get("semid") or row.get("msqid") or -1)
                found.add(
                    IpcObject(kind, int(row["key"]), ident, int(row["uid"]), int(row["cuid"]))
                )
    return found


@functools.cache
def _mqueue_listing_works() -> bool:
    return mount_namespaces_work() and posix_mqueues() is not None


def posix_mqueues() -> set[str] | None:
    """Names of the host's POSIX message queues (the mqueue fs mounted in a throw-away
    mount namespace, so the host's mounts stay as they are); None where that fails."""
    if not mount_namespaces_work():
        return None
    # Unmounted before rmdir: a mount point can't be removed, and the folder would outlive
    # the namespace in the host's /tmp.
    script = (
        'd=$(mktemp -d) || exit 1; mount -t mqueue none "$d" && ls -1A "$d"; s=$?; '
        'umount "$d" 2>/dev/null; rmdir "$d"; exit $s'
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=30
    )
    return set(done.stdout.split()) if done.returncode == 0 else None


def mount_points() -> set[tuple[str, str]]:
    """(mount point, file-system type) of every mount the harness sees."""
    points: set[tuple[str, str]] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        points.add((left.split()[4], right.split()[0]))
    return points


def keys_by_uid() -> dict[int, int]:
    """How many kernel keys each uid holds (/proc/key-users: `uid: usage nkeys/nikeys ...`);
    keyrings are not namespaced, so keys a session made outlive it unless removed."""
    counts: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/key-users").read_text().splitlines():
            uid, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                counts[int(uid)] = int(rest.split()[1].split("/")[0])
    return counts


def shared_tmp_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for folder in SHARED_TMP:
        try:
            names[folder] = set(os.listdir(folder))
        except OSError:
            names[folder] = set()
    return names


@dataclass
class HostSnapshot:
    """What the host holds at one moment, for a before/after comparison."""

    tmp: dict[str, set[str]]
    ipc: set[IpcObject]
    mqueues: set[str] | None
    mounts: set[tuple[str, str]]
    keys: dict[int, int]

    @classmethod
    def take(cls) -> HostSnapshot:
        mqueues = posix_mqueues() if _mqueue_listing_works() else None
        return cls(shared_tmp_names(), sysv_objects(), mqueues, mount_points(), keys_by_uid())


def session_processes(identity: SessionIdentity, our_servers: Iterable[int]) -> set[int]:
    """Processes the session made: its tree, its uid's (except those of other sandboxes'
    trees), and any carrying MARK in their name or command line."""
    found: set[int] = set()
    if identity.pid is not None:
        with contextlib.suppress(psutil.Error):
            session = psutil.Process(identity.pid)
            found.add(session.pid)
            found.update(p.pid for p in session.children(recursive=True))
    ours = set(our_servers)
    for proc in psutil.process_iter(["pid", "uids", "name", "cmdline", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        cmdline = " ".join(info["cmdline"] or ())
        if (
            MARK in (info["name"] or "")
            or MARK in cmdline
            or (
                identity.uid is not None
                and info["uids"]
                and info["uids"].real == identity.uid
                and not _in_another_sandbox(proc, ours)
            )
        ):
            found.add(proc.pid)
    return found


def _in_another_sandbox(proc: psutil.Process, our_servers: set[int]) -> bool:
    with contextlib.suppress(psutil.Error):
        for parent in proc.parents():
            if parent.pid in our_servers:
                return False
            if "submission.sandbox" in " ".join(parent.cmdline()):
                return True
    return False


def alive(pids: Iterable[int], since: float) -> set[int]:
    """Those of `pids` still running (not zombies) that were started before `since`."""
    living: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since:
                living.add(pid)
    return living


def leftovers(
    before: HostSnapshot,
    identity: SessionIdentity,
    processes: set[int],
    closed_at: float,
    our_servers: Iterable[int],
) -> dict[str, object]:
    """What the session left behind once it was closed; empty when nothing is left."""
    found: dict[str, object] = {}
    stray = alive(processes, closed_at) | alive(session_processes(identity, our_servers), closed_at)
    if stray:
        found["processes"] = sorted(_describe(pid) for pid in stray)
    files = []
    for folder, names in shared_tmp_names().items():
        for name in names - before.tmp.get(folder, set()):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if MARK in name or os.lstat(path).st_uid == identity.uid:
                    files.append(path)
    if identity.workdir is not None and os.path.lexists(identity.workdir):
        files.append(identity.workdir)
    if files:
        found["files"] = sorted(files)
    ipc = [
        obj
        for obj in sysv_objects() - before.ipc
        if obj.key == IPC_KEY or identity.uid in (obj.uid, obj.cuid)
    ]
    if ipc:
        found["sysv_ipc"] = ipc
    if before.mqueues is not None:
        queues = (posix_mqueues() or set()) - before.mqueues
        if queues:
            found["mqueues"] = sorted(queues)
    mounts = mount_points() - before.mounts
    if mounts:
        found["mounts"] = sorted(mounts)
    if identity.uid is not None and identity.uid != os.geteuid():
        keys = keys_by_uid().get(identity.uid, 0)
        if keys > before.keys.get(identity.uid, 0):
            found["kernel keys"] = f"uid {identity.uid} holds {keys}"
    for controller, path in identity.cgroups.items():
        group = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
        tasks = group / "cgroup.procs"
        if path not in ("", "/") and group != _own_cgroup(controller) and tasks.exists():
            with contextlib.suppress(OSError):
                if tasks.read_text().split():
                    found[f"cgroup {controller}"] = str(group)
    return found


def _own_cgroup(controller: str) -> Path:
    path = cgroups_of(os.getpid()).get(controller, "/")
    return Path("/sys/fs/cgroup") / controller / path.lstrip("/")


def _describe(pid: int) -> str:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        return f"{pid} uid={proc.uids().real} {' '.join(proc.cmdline())[:80]!r}"
    return str(pid)


# -- cleaning up after a failing sandbox ----------------------------------------------------


def remove_tree(path: str) -> None:
    """Remove `path` however deep it is, never following a symbolic link (GNU rm walks
    iteratively; Python 3.11's shutil.rmtree recurses and fails past ~1,000 levels)."""
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True)


def scrub(workdirs: Iterable[str] = (), uids: Iterable[int] = ()) -> None:
    """Remove what this run's snippets may have left: processes, files and IPC objects
    carrying MARK or IPC_KEY, the given session directories, and the SysV IPC objects
    created by the given session uids (a sandbox that does not remove them leaves
    memory held on the machine)."""
    session_uids = set(uids)
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if proc.pid != os.getpid() and (MARK in (proc.info["name"] or "") or MARK in cmdline):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    for folder in SHARED_TMP:
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                if MARK in name:
                    remove_tree(os.path.join(folder, name))
    for workdir in workdirs:
        remove_tree(workdir)
    for obj in sysv_objects():
        if obj.key == IPC_KEY or obj.cuid in session_uids:
            flag = {"shm": "-m", "sem": "-s", "msg": "-q"}[obj.kind]
            subprocess.run(["ipcrm", flag, str(obj.ident)], capture_output=True)
    for uid in session_uids:
        clear_keyrings(uid)
    librt = ctypes.util.find_library("rt")
    if librt is not None:
        mq_unlink = ctypes.CDLL(librt).mq_unlink
        for name in (f"/{MARK}", f"/{MARK}-b"):
            mq_unlink(name.encode())


def clear_keyrings(uid: int) -> None:
    """Unlink every key from `uid`'s user and user-session keyrings (what a sandbox without
    a keyring guard leaves there), as that uid in a throw-away child; needs root."""
    if not AS_ROOT or platform.machine() != "x86_64":  # the syscall number is x86_64's
        return
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(uid)
            libc = ctypes.CDLL(None)
            for ring in (-4, -5):  # KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING
                libc.syscall(250, 7, ctypes.c_long(ring))  # keyctl(KEYCTL_CLEAR, ring)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
